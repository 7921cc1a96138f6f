-- The `luaecho` module handlers get with require "luaecho": connect, spawn
-- and task:join, sleep, now, log; require of modules next to the handler;
-- and waiting where Lua cannot yield.  latest() and version() are covered by
-- hotswap_spec.lua.
--
-- Everything is observed from outside the server: replies to the client,
-- the server's log (srv:wait_line) or report files.  Upstreams are a second
-- luaecho started by the spec, or plain LuaSocket sockets on loopback.
local server = require "server"
local proc = require "spec_proc"
local socket = require "socket"
local unix = require "socket.unix"

-- Handler files start with show(), report() and the module.
local PRELUDE = server.SHOW .. server.REPORT .. 'local luaecho = require "luaecho"\n'

-- Replaces @NAME@ in source by tostring(vars.NAME); other @...@ (such as
-- @DIR@) are left for server.start.
local function fill(source, vars)
  return (source:gsub("@(%u+)@", function(name)
    local v = vars and vars[name]
    return v ~= nil and tostring(v) or nil
  end))
end

-- Starts luaecho on 127.0.0.1:0 with h.lua = PRELUDE .. source (filled with
-- vars).  opts: files, config (extra config lines).
local function start_handler(source, vars, opts)
  opts = opts or {}
  return server.start{
    config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\n' .. (opts.config or ""),
    handlers = { ["h.lua"] = PRELUDE .. fill(source, vars) },
    files = opts.files,
  }
end

-- An upstream echo handler that logs when each of its connections opens and
-- how it ended ("upstream: end closed").
local LOGGING_ECHO = [[
local luaecho = require "luaecho"
return function(conn)
  luaecho.log("info", "upstream: open")
  local data, err = conn:recv()
  while data do
    conn:send(data)
    data, err = conn:recv()
  end
  luaecho.log("info", "upstream: end", err)
end
]]

-- Starts an upstream luaecho echoing on TCP and on a unix socket.  Returns
-- the server and its TCP and unix addresses.
local function start_upstream(handler)
  local up = server.start{
    config = 'listen = { "127.0.0.1:0", "unix:@DIR@/up.sock" }\n'
      .. (handler and 'handler = "@DIR@/up.lua"\n' or ""),
    handlers = handler and { ["up.lua"] = handler } or nil,
    expect = 2,
  }
  local tcp, path
  for _, a in ipairs(up.addrs) do
    if a.path then path = a.path else tcp = a end
  end
  return up, tcp, path
end

local closed_port = server.closed_port

-- Returns the port of a loopback listener that answers no SYN: its backlog
-- is 0 and one connection, never accepted, already fills its accept queue,
-- so the kernel drops further SYNs and their connects stay pending (Linux
-- with net.ipv4.tcp_abort_on_overflow = 0, the default; gVisor alike).
local function blackhole_port()
  local l = assert(socket.bind("127.0.0.1", 0, 0))
  server.defer(function() l:close() end)
  local _, port = l:getsockname()
  assert(server.connect("127.0.0.1", port, 5)) -- fills the queue
  return math.tointeger(tonumber(port))
end

local function connect(srv)
  return assert(server.connect(srv.host, srv.port))
end

-- Receives one "\n"-terminated reply line.
local receive_line = server.receive_line

-- Waits for a log line matching pattern; fails with the log otherwise.
local function expect_line(srv, pattern, timeout)
  return assert(srv:wait_line(pattern, timeout or 10),
    "no log line matching " .. pattern .. "; log:\n" .. srv:log_text())
end

describe("luaecho", function()
  after_each(server.cleanup)

  describe("connect()", function()
    it("connects over TCP and returns a conn with the same methods", function()
      local _, up = start_upstream()
      local srv = start_handler([[
        return function(conn)
          local up, err = luaecho.connect("@HOST@", @PORT@)
          if not up then return conn:send(show(up, err)) end
          conn:send(show(getmetatable(up) == getmetatable(conn), math.type(up.id), up.id ~= conn.id) .. "\n")
          local data = conn:recv()
          up:send(data)
          conn:send(up:recv(#data))
          up:close()
        end]], { HOST = up.host, PORT = up.port })
      local sock = connect(srv)
      assert.equal('true,"integer",true', receive_line(sock))
      assert.same({ "through upstream", "closed" },
        { server.exchange(sock, "through upstream", { until_close = true }) })
    end)

    it("connects to a unix socket given as 'unix:/path'", function()
      local _, _, path = start_upstream()
      local srv = start_handler([[
        return function(conn)
          local up, err = luaecho.connect("unix:@PATH@")
          if not up then return conn:send(show(up, err)) end
          conn:send(show(up:peername()) .. "\n")
          local data = conn:recv()
          up:send(data)
          conn:send(up:recv(#data))
        end]], { PATH = path })
      local sock = connect(srv)
      -- On a unix socket the host is the path connected to, the port nil.
      assert.equal(("%q,nil"):format(path), receive_line(sock))
      assert.same({ "over unix", "closed" }, { server.exchange(sock, "over unix", { until_close = true }) })
    end)

    it("resolves a host name ('localhost') and connects to the address found", function()
      -- luaecho uses the first address the resolver gives; the upstream
      -- listens on whichever loopback address that is here.
      local first = assert(socket.dns.getaddrinfo("localhost"))[1]
      local loopback = first.family == "inet6" and "[::1]:0" or "127.0.0.1:0"
      local up = server.start{ config = ('listen = %q\n'):format(loopback) }
      local srv = start_handler([[
        return function(conn)
          local up, err = luaecho.connect("localhost", @PORT@)
          if not up then return conn:send(show(up, err)) end
          up:send("resolved")
          conn:send(up:recv(8))
        end]], { PORT = up.port })
      local sock = connect(srv)
      assert.same({ "resolved", "closed" }, { server.read_all_until_close(sock, 10) })
    end)

    it("returns nil, 'econnrefused' when nothing listens on the port", function()
      local srv = start_handler([[
        return function(conn)
          conn:send(show(luaecho.connect("127.0.0.1", @PORT@)))
        end]], { PORT = closed_port() })
      local sock = connect(srv)
      assert.same({ 'nil,"econnrefused"', "closed" }, { server.read_all_until_close(sock, 10) })
    end)

    it("returns nil, 'enoent' for a missing unix socket and 'econnrefused' for one nobody listens on", function()
      local srv = start_handler([[
        return function(conn)
          conn:send(show(luaecho.connect("unix:@DIR@/missing.sock")) .. "\n")
          conn:recv(1)
          conn:send(show(luaecho.connect("unix:@DIR@/dead.sock")) .. "\n")
        end]])
      local sock = connect(srv)
      assert.equal('nil,"enoent"', receive_line(sock))
      -- A socket file left by a socket that is gone: bound, never listening.
      local dead = unix.stream()
      assert(dead:bind(srv:file("dead.sock")))
      dead:close()
      assert(sock:send("g"))
      assert.equal('nil,"econnrefused"', receive_line(sock))
    end)

    it("returns nil, 'eai_noname' for a host name that does not exist", function()
      -- .invalid never resolves (RFC 6761).  A host whose resolver cannot
      -- be reached would give "eai_again" instead.
      local srv = start_handler([[
        return function(conn)
          conn:send(show(luaecho.connect("no-such-host.invalid", 80)))
        end]])
      local sock = connect(srv)
      assert.same({ 'nil,"eai_noname"', "closed" }, { server.read_all_until_close(sock, 10) })
    end)

    it("returns nil, 'timeout' once opts.timeout passes without an answer", function()
      local srv = start_handler([[
        return function(conn)
          local t0 = luaecho.now()
          local up, err = luaecho.connect("127.0.0.1", @PORT@, { timeout = 0.3 })
          conn:send(show(up, err) .. ("\n%.3f\n"):format(luaecho.now() - t0))
        end]], { PORT = blackhole_port() })
      local sock = connect(srv)
      assert.equal('nil,"timeout"', receive_line(sock))
      local elapsed = tonumber(receive_line(sock))
      assert.is_true(elapsed >= 0.29 and elapsed < 5, "connect gave up after " .. elapsed .. "s")
    end)

    it("gives the new conn the connection options in opts", function()
      local _, up = start_upstream()
      local srv = start_handler([[
        return function(conn)
          local up = assert(luaecho.connect("@HOST@", @PORT@, { packet = "line", timeout = 5 }))
          up:send("one\ntwo\n")
          conn:send(show(up:getopts("packet"), up:recv(), up:recv(), conn:getopts("packet")))
        end]], { HOST = up.host, PORT = up.port })
      local sock = connect(srv)
      assert.same({ '"line","one\\\n","two\\\n","raw"', "closed" }, { server.read_all_until_close(sock, 10) })
    end)

    it("raises for an unknown option and a bad timeout, before connecting", function()
      local up, tcp, path = start_upstream(LOGGING_ECHO)
      local srv = start_handler([[
        return function(conn)
          local ok1, err1 = pcall(luaecho.connect, "127.0.0.1", @PORT@, { bogus = 1 })
          local ok2, err2 = pcall(luaecho.connect, "127.0.0.1", @PORT@, { timeout = 0 })
          local ok3, err3 = pcall(luaecho.connect, "unix:@PATH@", { x = true })
          report("raised", ok1, err1, ok2, err2, ok3, err3)
          local c = assert(luaecho.connect("127.0.0.1", @PORT@))
          conn:send("connected once\n")
          conn:recv()
        end]], { PORT = tcp.port, PATH = path })
      local sock = connect(srv)
      assert.equal("connected once", receive_line(sock))
      assert.same({ n = 6, false, "luaecho.connect: unknown option 'bogus'",
        false, "luaecho.connect: option 'timeout': expected a number of seconds > 0",
        false, "luaecho.connect: unknown option 'x'" }, srv:report("raised"))
      -- Only the last call reached the upstream.
      expect_line(up, server.record("info", "conn %d+: upstream: open"))
      assert.is_nil(up:wait_line("upstream: open", 0.2))
    end)

    it("closes the outbound conn when the handler that opened it ends", function()
      local up = start_upstream(LOGGING_ECHO)
      local srv = start_handler([[
        return function(conn)
          local up = assert(luaecho.connect("127.0.0.1", @PORT@))
          up:send("ping")
          conn:send(show(up:recv(4)) .. "\n")
          conn:recv() -- until the client says so; `up` is left open
        end]], { PORT = up.port })
      local sock = connect(srv)
      assert.equal('"ping"', receive_line(sock))
      expect_line(up, server.record("info", "conn %d+: upstream: open"))
      assert(sock:send("done"))
      expect_line(up, server.record("info", "conn %d+: upstream: end closed"))
      assert.same({ "", "closed" }, { server.read_all_until_close(sock, 10) })
    end)

    it("belongs to the connection: a spawned coroutine opens it, the handler uses it", function()
      local _, up = start_upstream()
      local srv = start_handler([[
        return function(conn)
          local task = luaecho.spawn(luaecho.connect, "@HOST@", @PORT@)
          local up = assert(task:join())
          up:send("shared")
          conn:send(up:recv(6))
        end]], { HOST = up.host, PORT = up.port })
      local sock = connect(srv)
      assert.same({ "shared", "closed" }, { server.read_all_until_close(sock, 10) })
    end)

    it("raises when another connection's handler recvs or sends on it", function()
      local _, up = start_upstream()
      local srv = start_handler([[
        return function(conn)
          if conn:recv(1) == "A" then
            shared = assert(luaecho.connect("@HOST@", @PORT@))
            conn:send("ready " .. shared.id .. "\n")
            local cmd = conn:recv()
            shared:send(cmd)
            conn:send(shared:recv(#cmd))
          else
            local ok1, err1 = pcall(function() return shared:recv() end)
            local ok2, err2 = pcall(function() return shared:send("x") end)
            report("foreign", ok1, err1, ok2, err2)
            conn:send("tried\n")
          end
        end]], { HOST = up.host, PORT = up.port })
      local a = connect(srv)
      assert(a:send("A"))
      local id = assert(receive_line(a):match("^ready (%d+)$"))
      local b = connect(srv)
      assert(b:send("B"))
      assert.equal("tried", receive_line(b))
      local r = assert(srv:report("foreign"))
      local function message(method)
        return "^" .. server.literal(srv:file("h.lua")) .. ":%d+: " .. server.literal(
          ("conn:%s() called from a coroutine that does not own connection %s; " ..
           "call it from the connection's handler"):format(method, id)) .. "$"
      end
      assert.equal(4, r.n)
      assert.is_false(r[1])
      assert.matches(message("recv"), r[2])
      assert.is_false(r[3])
      assert.matches(message("send"), r[4])
      -- The owner's use of it is undisturbed (nothing was left waiting).
      assert.same({ "still mine", "closed" }, { server.exchange(a, "still mine", { until_close = true }) })
    end)

    it("is abandoned cleanly when its handler ends while the connect is pending", function()
      local srv = start_handler([[
        return function(conn)
          if conn:recv(1) == "p" then
            luaecho.spawn(function()
              local up, err = luaecho.connect("127.0.0.1", @PORT@, { timeout = 0.3 })
              report("pending", up, err) -- never: the task ends with its handler
            end)
            conn:send("pending\n")
          else
            luaecho.sleep(0.8) -- well past the abandoned connect's timeout
            conn:send("served\n")
          end
        end]], { PORT = blackhole_port() })
      local a = connect(srv)
      assert(a:send("p"))
      assert.same({ "pending\n", "closed" }, { server.read_all_until_close(a, 10) })
      local b = connect(srv)
      assert(b:send("s"))
      assert.equal("served", receive_line(b))
      assert.is_false(server.exists(srv:file("report.pending")))
      assert.is_nil(srv:wait_line("%[error%]", 0.1))
    end)
  end)

  describe("spawn()", function()
    it("runs fn(...) at once, until it first waits, before spawn returns", function()
      local srv = start_handler([[
        return function(conn)
          local order = {}
          local task = luaecho.spawn(function(x)
            order[#order + 1] = "task " .. x
            luaecho.sleep(0.01)
            order[#order + 1] = "task woke"
            return "result"
          end, "arg")
          order[#order + 1] = "handler"
          local result = task:join()
          order[#order + 1] = "joined " .. result
          conn:send(table.concat(order, ","))
        end]])
      local sock = connect(srv)
      assert.same({ "task arg,handler,task woke,joined result", "closed" },
        { server.read_all_until_close(sock, 10) })
    end)

    it("lets the spawned coroutine recv and send on the connection", function()
      local srv = start_handler([[
        return function(conn)
          local task = luaecho.spawn(function()
            local data = conn:recv(5)
            conn:send("task got " .. data .. "\n")
            return #data
          end)
          conn:send(show(task:join()) .. "\n")
        end]])
      local sock = connect(srv)
      assert(sock:send("hello"))
      assert.same({ "task got hello\n5\n", "closed" }, { server.read_all_until_close(sock, 10) })
    end)
  end)

  describe("task:join()", function()
    it("returns all of fn's results, nils included, and the same again later", function()
      local srv = start_handler([[
        return function(conn)
          local task = luaecho.spawn(function(a, b)
            luaecho.sleep(0.01)
            return a + b, nil, "x", nil
          end, 1, 2)
          local before = tostring(task)
          conn:send(show(task:join()) .. "\n")
          conn:send(show(task:join()) .. "\n")
          conn:send(before .. "|" .. tostring(task) .. "\n")
          conn:send(show(luaecho.spawn(function() return "no wait" end):join()) .. "\n")
        end]])
      local sock = connect(srv)
      assert.same({ '3,nil,"x",nil\n3,nil,"x",nil\nluaecho.task (running)|luaecho.task (done)\n"no wait"\n',
        "closed" }, { server.read_all_until_close(sock, 10) })
    end)

    it("returns nil and the error with its traceback when fn raised; the error is logged", function()
      local srv = start_handler([[
        return function(conn)
          local task = luaecho.spawn(function()
            luaecho.sleep(0.01)
            error("kaboom")
          end)
          report("failed", conn.id, tostring(task), task:join())
          conn:send("handler carries on\n")
        end]])
      local sock = connect(srv)
      assert.equal("handler carries on", receive_line(sock))
      local r = assert(srv:report("failed"))
      local where = server.literal(srv:file("h.lua")) .. ":%d+: "
      assert.equal(4, r.n)
      assert.equal("luaecho.task (running)", r[2])
      assert.is_nil(r[3])
      assert.matches("^" .. where .. "kaboom\nstack traceback:\n", r[4])
      expect_line(srv, server.record("error",
        "conn " .. r[1] .. ": spawned coroutine error: " .. where .. "kaboom"))
      assert.equal("stack traceback:", srv:next_line(5))
    end)

    it("is not needed for an error to be logged, even one raised before spawn returns", function()
      local srv = start_handler([[
        return function(conn)
          local task = luaecho.spawn(function() error("nobody joins") end)
          conn:send(tostring(task) .. "\n")
        end]])
      local sock = connect(srv)
      assert.same({ "luaecho.task (failed)\n", "closed" }, { server.read_all_until_close(sock, 10) })
      expect_line(srv, server.record("error", "conn %d+: spawned coroutine error: "
        .. server.literal(srv:file("h.lua")) .. ":%d+: nobody joins"))
    end)

    it("returns nil, 'busy' at once while another coroutine joins the same task", function()
      local srv = start_handler([[
        return function(conn)
          local slow = luaecho.spawn(function()
            luaecho.sleep(0.2)
            return "slow done"
          end)
          local first = luaecho.spawn(function() return slow:join() end)
          conn:send(show(slow:join()) .. "\n")
          conn:send(show(first:join()) .. "\n")
        end]])
      local sock = connect(srv)
      assert.same({ 'nil,"busy"\n"slow done"\n', "closed" }, { server.read_all_until_close(sock, 10) })
    end)

    it("raises 'a task cannot join itself'", function()
      local srv = start_handler([[
        return function(conn)
          local task
          task = luaecho.spawn(function()
            luaecho.sleep(0)
            return pcall(task.join, task)
          end)
          conn:send(show(task:join()))
        end]])
      local sock = connect(srv)
      assert.same({ 'false,"a task cannot join itself"', "closed" }, { server.read_all_until_close(sock, 10) })
    end)
  end)

  describe("a spawned coroutine", function()
    it("is ended where it waits when its handler returns; it does not hold the connection open", function()
      -- Connection "k" spawns a victim that would report after 0.3 s and
      -- returns.  Connection "w", opened afterwards, sleeps 0.8 s on the same
      -- loop and then looks: the victim's report must not exist, and the
      -- victim's to-be-closed variable has been closed.
      local srv = start_handler([[
        return function(conn)
          if conn:recv(1) == "k" then
            victim = luaecho.spawn(function()
              local guard <close> = setmetatable({}, {
                __close = function() report("guard", "closed") end,
              })
              luaecho.sleep(0.3)
              report("victim", "woke")
            end)
            conn:send("spawned\n")
          else
            luaecho.sleep(0.8)
            report("witness", tostring(victim), pcall(victim.join, victim))
            conn:send("looked\n")
          end
        end]])
      local a = connect(srv)
      assert(a:send("k"))
      assert.same({ "spawned\n", "closed" }, { server.read_all_until_close(a, 10) })
      assert.same({ n = 1, "closed" }, srv:report("guard"))
      local w = connect(srv)
      assert(w:send("w"))
      assert.equal("looked", receive_line(w))
      -- Only the victim's own connection may join it; that one is gone.
      assert.same({ n = 3, "luaecho.task (closed)", false, "task:join: the task belongs to another connection" },
        srv:report("witness"))
      assert.is_false(server.exists(srv:file("report.victim")))
    end)

    it("pumping one direction while the handler pumps the other relays both ways (a mini proxy)", function()
      local _, up = start_upstream()
      local srv = start_handler([[
        -- Copies from `from` to `to` until `from` ends; returns why.
        local function pump(from, to)
          while true do
            local data, err = from:recv()
            if not data then return err end
            local ok, serr = to:send(data)
            if not ok then return serr end
          end
        end
        return function(conn)
          local up = assert(luaecho.connect("@HOST@", @PORT@))
          local back = luaecho.spawn(pump, up, conn) -- upstream -> client
          local err = pump(conn, up)                   -- client -> upstream
          up:shutdown("write")
          report("proxy", err, back:join())
          up:close()
        end]], { HOST = up.host, PORT = up.port })
      -- More than the buffers on the way hold (256 KiB send_buffer per
      -- conn, socket buffers): both pumps must run at once to get through.
      local data = server.random_bytes(8 * 1024 * 1024)
      local sock = connect(srv)
      local got, err = server.exchange(sock, data, { until_close = true, half_close = true, timeout = 60 })
      assert.equal("closed", err)
      assert(server.same_bytes(data, got))
      assert.same({ n = 2, "closed", "closed" }, srv:report("proxy"))
    end)
  end)

  describe("two coroutines on one connection", function()
    it("a second recv while one waits returns nil, 'busy'; the first still gets its data", function()
      local srv = start_handler([[
        return function(conn)
          local reader = luaecho.spawn(function() return conn:recv(5) end)
          conn:send(show(conn:recv()) .. "\n")
          conn:send(show(reader:join()) .. "\n")
        end]])
      local sock = connect(srv)
      assert.equal('nil,"busy"', receive_line(sock))
      assert(sock:send("hello"))
      assert.equal('"hello"', receive_line(sock))
    end)

    it("a second send while one is blocked in send returns nil, 'busy' and sends nothing", function()
      local size = 16 * 1024 * 1024
      local srv = start_handler([[
        return function(conn)
          conn:setopts{ send_buffer = 1 }
          local big = string.rep("x", @SIZE@)
          local writer = luaecho.spawn(function() return conn:send(big) end)
          report("send_busy", tostring(writer), conn:send("y"))
          conn:send("|" .. show(writer:join()))
        end]], { SIZE = size })
      local sock = connect(srv)
      -- The client reads nothing until the handler has tried its send.
      assert.same({ n = 3, "luaecho.task (running)", nil, "busy" }, srv:report("send_busy", 10))
      local got, err = server.read_all_until_close(sock, 60)
      assert.equal("closed", err)
      assert.equal(size + 5, #got)
      assert.equal("|true", got:sub(-5))
      assert.is_nil(got:sub(1, size):find("[^x]"))
    end)
  end)

  describe("sleep()", function()
    it("suspends only its own connection: another connection is served meanwhile", function()
      local srv = start_handler([[
        return function(conn)
          local mode = conn:recv(1)
          if mode == "s" then
            conn:send("sleeping\n")
            luaecho.sleep(2)
            conn:send("slept\n")
          else
            conn:send("echo " .. mode .. "\n")
          end
        end]])
      local a = connect(srv)
      assert(a:send("s"))
      assert.equal("sleeping", receive_line(a))
      local b = connect(srv)
      assert(b:send("e"))
      assert.equal("echo e", receive_line(b, 1.5))
      -- a's handler is still asleep: nothing has arrived for it yet.
      a:settimeout(0)
      assert.same({ nil, "timeout", "" }, { a:receive("*l") })
      assert.equal("slept", receive_line(a))
    end)

    it("suspends only the calling coroutine, not its handler", function()
      local srv = start_handler([[
        return function(conn)
          local sleeper = luaecho.spawn(function()
            luaecho.sleep(0.5)
            conn:send("task woke\n")
          end)
          conn:send("echo " .. conn:recv() .. "\n")
          sleeper:join()
        end]])
      local sock = connect(srv)
      assert(sock:send("now"))
      assert.equal("echo now", receive_line(sock))
      assert.equal("task woke", receive_line(sock))
    end)

    it("raises in a coroutine the handler made itself, which luaecho cannot resume", function()
      local srv = start_handler([[
        return function(conn)
          local own = coroutine.wrap(function()
            return pcall(luaecho.sleep, 0.01)
          end)
          conn:send(show(own()))
        end]])
      local sock = connect(srv)
      assert.same({ 'false,"luaecho.sleep must be called from a connection\'s handler or a coroutine it spawned"',
        "closed" }, { server.read_all_until_close(sock, 10) })
    end)

    it("raises for a negative time", function()
      local srv = start_handler([[
        return function(conn)
          conn:send(show(pcall(function() luaecho.sleep(-1) end)))
        end]])
      local sock = connect(srv)
      local reply = server.read_all_until_close(sock, 10)
      assert.matches("^false,\".-h%.lua:%d+: bad argument #1 to 'sleep' %(seconds must be >= 0%)\"$", reply)
    end)
  end)

  describe("now()", function()
    it("is a float that grows by about the time slept", function()
      local srv = start_handler([[
        return function(conn)
          local t0 = luaecho.now()
          luaecho.sleep(0.25)
          local t1 = luaecho.now()
          report("now", math.type(t0), t1 - t0)
        end]])
      connect(srv)
      local r = assert(srv:report("now", 10))
      assert.equal("float", r[1])
      -- Timers run on the loop's cached clock, so a little less is possible.
      assert.is_true(r[2] >= 0.2 and r[2] < 5, "slept " .. r[2] .. "s")
    end)
  end)

  describe("log()", function()
    it("writes '[level] conn ID: args joined by spaces', honours log_level, and raises for a bad level", function()
      local srv = start_handler([[
        luaecho.log("info", "loading", 1)
        return function(conn)
          luaecho.log("debug", "hidden", "below log_level")
          luaecho.log("warn", "bad request", 42, nil, true, 1.5)
          local ok, err = pcall(function() luaecho.log("fatal", "x") end)
          luaecho.log("error", "pcall:", ok, err)
          conn:send(conn.id .. "\n")
        end]])
      local sock = connect(srv)
      local id = receive_line(sock)
      expect_line(srv, server.record("warn", server.literal("conn " .. id .. ": bad request 42 nil true 1.5")))
      expect_line(srv, server.record("error", server.literal("conn " .. id .. ": pcall: false ")
        .. server.literal(srv:file("h.lua")) .. ":%d+: "
        .. server.literal("bad argument #1 to 'log' (invalid option 'fatal')")))
      local loading = false
      for _, line in ipairs(srv:log()) do
        assert.is_nil(line:find("hidden", 1, true), "a debug record was written: " .. line)
        -- At load time there is no connection: no "conn ID: " prefix.
        loading = loading or line:find(server.record("info", "loading 1")) ~= nil
      end
      assert.is_true(loading, "no load-time record; log:\n" .. srv:log_text())
    end)

    -- A handler that logs what a client sent must not let the client split
    -- the record (and forge the next one) or rewrite it on a terminal.
    it("writes one line, with control bytes escaped", function()
      local srv = start_handler([[
        return function(conn)
          luaecho.log("warn", "got", conn:recv())
          conn:send("logged\n")
        end]])
      local sock = connect(srv)
      assert(sock:send("a\n2026-01-01 00:00:00.000 [error] forged\27[2J\0z"))
      assert.equal("logged", receive_line(sock))
      expect_line(srv, server.record("warn", "conn %d+: "
        .. server.literal("got a\\n2026-01-01 00:00:00.000 [error] forged\\x1b[2J\\x00z")))
    end)
  end)

  describe("require", function()
    it("finds modules next to the handler file, at load time and inside the handler", function()
      local srv = start_handler([[
        local shout = require "shout"
        return function(conn)
          local suffix = require "suffix"
          conn:send(shout(conn:recv()) .. suffix)
        end]], nil, { files = {
          ["shout.lua"] = "return function(s) return s:upper() end\n",
          ["suffix.lua"] = 'return "!"\n',
        } })
      local sock = connect(srv)
      assert.same({ "HELLO!", "closed" }, { server.exchange(sock, "hello", { until_close = true }) })
    end)
  end)

  describe("waiting where Lua cannot yield", function()
    -- Mode "p": every waiting call is tried (protected) inside a table.sort
    -- comparator, then the connection is used normally.  Mode "u": an
    -- unprotected conn:recv in a comparator.  Mode "e": echo.
    local HANDLER = [[
      return function(conn)
        local mode = conn:recv(1)
        if mode == "p" then
          local task = luaecho.spawn(function()
            luaecho.sleep(0.05)
            return "task ok"
          end)
          local errs
          table.sort({ 2, 1 }, function(a, b)
            if not errs then
              errs = {}
              for _, f in ipairs{
                function() return conn:recv() end,
                function() return luaecho.sleep(0.01) end,
                function() return luaecho.connect("127.0.0.1", 1) end,
                function() return task:join() end,
              } do
                local ok, err = pcall(f)
                errs[#errs + 1] = ok and "no error" or err
              end
            end
            return a < b
          end)
          report("boundary", table.unpack(errs))
          conn:send("tried\n")
          conn:send(show(conn:recv(5), task:join()) .. "\n")
        elseif mode == "u" then
          conn:send("sorting\n")
          table.sort({ 3, 1, 2 }, function(a, b)
            conn:recv()
            return a < b
          end)
          conn:send("not reached\n")
        else
          conn:send(conn:recv())
        end
      end]]
    local TAIL = ": attempt to yield across a C-call boundary " ..
      "(inside a C function such as a table.sort comparator or a string.gsub callback)"

    it("raises '<call> cannot wait here: ...' and leaves nothing waiting", function()
      local srv = start_handler(HANDLER)
      local sock = connect(srv)
      assert(sock:send("p"))
      assert.equal("tried", receive_line(sock))
      local r = assert(srv:report("boundary"))
      local where = "^" .. server.literal(srv:file("h.lua")) .. ":%d+: "
      assert.equal(4, r.n)
      for i, what in ipairs{ "conn:recv", "luaecho.sleep", "luaecho.connect", "task:join" } do
        assert.matches(where .. server.literal(what .. " cannot wait here" .. TAIL) .. "$", r[i])
      end
      -- The failed recv and join left no waiter behind: both work now.
      assert(sock:send("after"))
      assert.equal('"after","task ok"', receive_line(sock))
    end)

    it("ends the handler with an error when not caught; the server keeps serving", function()
      local srv = start_handler(HANDLER)
      local sock = connect(srv)
      local host, port = sock:getsockname()
      assert(sock:send("u"))
      assert.same({ "sorting\n", "closed" }, { server.read_all_until_close(sock, 10) })
      expect_line(srv, server.record("error", ("conn %%d+ %s: handler error: "):format(
        server.literal(host .. ":" .. port)) .. server.literal(srv:file("h.lua")) .. ":%d+: "
        .. server.literal("conn:recv cannot wait here" .. TAIL)))
      local again = connect(srv)
      assert.same({ "echo", "closed" }, { server.exchange(again, "eecho", { until_close = true }) })
    end)
  end)
end)
