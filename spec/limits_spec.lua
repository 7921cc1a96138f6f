-- Limits: max_connections (global and per listener) pauses accepting and
-- resumes it as soon as a connection ends, without spinning; running out of
-- file descriptors sheds clients with a paced, counted warning; the
-- descriptor limit is raised and logged at start-up.
local server = require "server"
local proc = require "spec_proc"

-- How long a client that must not be served waits to show it is not.  A
-- paused listener never serves it, so a loaded machine cannot make this
-- fail; it can only make the check weaker.
local NOT_SERVED_WAIT = 0.3

local function connect(addr)
  return assert(server.connect(addr))
end

local function assert_echoes(sock, msg)
  assert.same({ msg }, { server.exchange(sock, msg, 10) })
end

-- Sends msg and checks that nothing comes back for NOT_SERVED_WAIT seconds
-- while the connection stays open: the client waits in the backlog.
local function assert_waiting(sock, msg)
  assert.same({ "", "timeout" }, { server.exchange(sock, msg,
    { timeout = NOT_SERVED_WAIT, expect = math.max(1, #msg) }) })
end

local function expect_line(srv, pattern, what)
  local line = srv:wait_line(pattern, 10)
  assert(line, "no " .. what .. " line; log:\n" .. srv:log_text())
  return line
end

-- Checks that a line of the log read so far (start-up included) matches.
local function assert_logged(srv, pattern)
  for _, line in ipairs(srv:log()) do
    if line:find(pattern) then return line end
  end
  error("no line matches " .. pattern .. "; log:\n" .. srv:log_text(), 2)
end

local function paused_line(srv)
  return expect_line(srv, server.record("debug",
    "max_connections reached on " .. server.literal(srv.addrs[1].text) ..
    " %(%d+ connections? here, %d+ in all%): accepting paused"), "paused")
end

-- The echo server's config with the given max_connections.
local function capped_config(max)
  return ('listen = "127.0.0.1:0"\nmax_connections = %d\nlog_level = "debug"\n'):format(max)
end

-- Starts the echo server capped at max connections and fills it: returns
-- the server and the max clients it serves, once it has paused accepting.
local function start_full(max)
  local srv = server.start{ config = capped_config(max) }
  local clients = {}
  for i = 1, max do
    clients[i] = connect(srv.addrs[1])
    assert_echoes(clients[i], "client " .. i)
  end
  paused_line(srv)
  return srv, clients
end

-- Returns the CPU seconds (user + system) the process pid has used.
local function cpu_seconds(pid)
  local stat = assert(server.read_file("/proc/" .. pid .. "/stat"))
  -- Fields after the command (which may hold spaces): state is field 3,
  -- utime and stime are fields 14 and 15.
  local rest = stat:match("^%d+ %b() (.*)$")
  local fields = {}
  for f in rest:gmatch("%S+") do fields[#fields + 1] = f end
  local ticks = tonumber(fields[12]) + tonumber(fields[13])
  local hz = tonumber(io.popen("getconf CLK_TCK"):read("l")) or 100
  return ticks / hz
end

-- Starts luaecho through sh with the descriptor limits given (soft, hard).
local function start_limited(soft, hard, config)
  return server.start{
    bin = "/bin/sh",
    args = { "-c", ("ulimit -S -n %d && ulimit -H -n %d && exec \"$0\" \"$@\""):format(soft, hard), server.bin },
    config = config,
  }
end

describe("limits", function()
  after_each(server.cleanup)

  describe("max_connections", function()
    it("keeps a third client waiting in the backlog until one of two ends, then serves it", function()
      local srv, clients = start_full(2)
      local a, b = clients[1], clients[2]
      -- The kernel completes the handshake; the server does not accept.
      local c = connect(srv.addrs[1])
      assert_waiting(c, "c")
      assert_echoes(a, "a again")
      a:close()
      expect_line(srv, server.record("debug", "accepting again on " ..
        server.literal(srv.addrs[1].text)), "resumed")
      -- c's bytes were waiting in the kernel all along.
      assert.same({ "c" }, { server.recv_exactly(c, 1, 10) })
      assert_echoes(c, "c served")
      assert_echoes(b, "b still served")
    end)

    it("caps one listener (a unix socket) without touching another", function()
      local srv = server.start{
        config = [[
listen = {
  { address = "unix:@DIR@/s.sock", max_connections = 1 },
  "127.0.0.1:0",
}
log_level = "debug"
]],
        expect = 2,
      }
      local capped, free = srv.addrs[1], srv.addrs[2]
      local first = connect(capped)
      assert_echoes(first, "first")
      paused_line(srv)
      local second = connect(capped)
      assert_waiting(second, "second")
      -- The other listener serves as many as come meanwhile.
      local others = {}
      for i = 1, 5 do
        others[i] = connect(free)
        assert_echoes(others[i], "other " .. i)
      end
      assert_waiting(second, "")
      first:close()
      assert.same({ "second" }, { server.recv_exactly(second, 6, 10) })
      for i = 1, 5 do assert_echoes(others[i], "other again " .. i) end
    end)

    it("sleeps while at the limit: the server uses next to no CPU", function()
      local srv, clients = start_full(1)
      local held = clients[1]
      local waiting = {}
      for i = 1, 5 do
        waiting[i] = connect(srv.addrs[1])
        assert(waiting[i]:send("waiting " .. i))
      end
      -- A listener left readable in the event loop would spin on these
      -- five clients: a whole second of CPU per second.  Asleep, it wakes
      -- only for the idle sweep.
      local before = cpu_seconds(srv.pid)
      proc.sleep(1)
      local used = cpu_seconds(srv.pid) - before
      assert(used < 0.2, ("the server used %.2fs of CPU in 1s at the limit"):format(used))
      held:close()
      for i = 1, 5 do
        local msg = "waiting " .. i
        assert.same({ msg }, { server.recv_exactly(waiting[i], #msg, 10) })
        waiting[i]:close()
      end
    end)

    it("takes a new value on SIGHUP and resumes accepting under it", function()
      local srv, clients = start_full(1)
      local a = clients[1]
      local b = connect(srv.addrs[1])
      assert_waiting(b, "b")
      -- The same address text keeps the listener (and its port).
      server.write_file(srv:file("config.lua"), capped_config(2))
      assert(srv:signal("HUP"))
      expect_line(srv, server.record("info", "config reloaded from .*"), "config reloaded")
      assert.same({ "b" }, { server.recv_exactly(b, 1, 10) })
      assert_echoes(a, "a still served")
    end)
  end)

  describe("file descriptors", function()
    it("raises the soft limit to the hard one and logs it with the max_connections it gives", function()
      local srv = start_limited(100, 256, 'listen = "127.0.0.1:0"\n')
      -- 256 less one eighth (32) kept for the server's own descriptors.
      assert_logged(srv, server.record("info",
        "file descriptor limit: 256, max_connections: 224"))
      assert_echoes(connect(srv.addrs[1]), "served")
    end)

    it("logs max_connections = false as no cap", function()
      local srv = server.start{ config = 'listen = "127.0.0.1:0"\nmax_connections = false\n' }
      assert_logged(srv, server.record("info",
        "file descriptor limit: %d+, max_connections: none"))
    end)

    it("sheds clients when out of descriptors, reports the count at most once a second, and recovers", function()
      local srv = start_limited(64, 64, [[
listen = "127.0.0.1:0"
max_connections = false
]])
      assert_logged(srv, server.record("info", "file descriptor limit: 64, max_connections: none"))
      -- Open clients one at a time until the server has no descriptor left:
      -- from then on each new client is accepted and closed at once.
      local served, shed = {}, 0
      for _ = 1, 100 do
        local sock = connect(srv.addrs[1])
        local got, err = server.exchange(sock, "x", 10)
        if got == "x" then
          assert.equal(0, shed, "a client was served after one was shed")
          served[#served + 1] = sock
        else
          assert.same({ "", "closed" }, { got, err })
          shed = shed + 1
          sock:close()
        end
        if shed >= 10 then break end
      end
      assert.equal(10, shed, "the server never ran out of descriptors")
      assert(#served > 10, "only " .. #served .. " clients served before shedding")
      -- The reports add up to every client shed, and come at least a
      -- second apart.
      local reported, last_time, pattern = 0, nil, server.record("warn",
        "out of file descriptors %(EMFILE%): shed (%d+) connections? since the last report")
      while reported < shed do
        local line = expect_line(srv, pattern, "shed report (" .. reported .. " of " .. shed .. " so far)")
        local n = tonumber(line:match(pattern))
        local h, m, s = line:match("^%d+%-%d+%-%d+ (%d+):(%d+):([%d.]+)")
        local t = h * 3600 + m * 60 + s
        if last_time then assert(t - last_time >= 0.99, "two reports within a second") end
        last_time = t
        assert((n == 1) == (line:find("1 connection since") ~= nil))
        reported = reported + n
      end
      assert.equal(shed, reported)
      -- Once descriptors are free again, new clients are served.
      for _, sock in ipairs(served) do sock:close() end
      local deadline = proc.now() + 10
      local ok
      repeat
        local sock = connect(srv.addrs[1])
        ok = server.exchange(sock, "back", 2) == "back"
        sock:close()
      until ok or proc.now() > deadline
      assert(ok, "no client served after the others closed; log:\n" .. srv:log_text())
    end)
  end)
end)
