-- Connection options: conn:setopts / conn:getopts and their errors, options
-- in config.lua (top level and per listener), what each option does to a
-- connection (recv_timeout, send_timeout, idle_timeout, recv_buffer,
-- keepalive), and the other conn methods that came with them: shutdown,
-- sockname, tostring, <close>, and recv's "busy" for a second reader.
local server = require "server"
local proc = require "spec_proc"
local socket = require "socket"

local KiB, MiB = 1024, 1024 * 1024

-- Lua source defining dump(t) for handler files: a flat table as a Lua
-- chunk returning it, keys sorted, so a spec can load() what a handler saw.
local DUMP = [[
local function dump(t)
  local keys, out = {}, {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v = t[k]
    out[#out + 1] = ("[%q] = %s"):format(k, type(v) == "string" and ("%q"):format(v) or tostring(v))
  end
  return "return { " .. table.concat(out, ", ") .. " }"
end
]]

local PRELUDE = server.SHOW .. server.REPORT .. DUMP

-- Every option's default, as conn:getopts() returns them.
local DEFAULTS = {
  sndbuf = false,
  rcvbuf = false,
  read_size = 65536,
  cpu_limit = 5,
  trace = false,
  trace_bytes = 32,
  trace_hex = false,
  conn_summary = false,
  packet = "raw",
  packet_size = MiB,
  recv_buffer = 256 * KiB,
  send_buffer = 256 * KiB,
  recv_timeout = false,
  send_timeout = 60,
  send_timeout_close = true,
  idle_timeout = 300,
  nodelay = true,
  keepalive = false,
}

-- Returns a copy of DEFAULTS with the given changes.
local function defaults_with(changes)
  local t = {}
  for k, v in pairs(DEFAULTS) do t[k] = v end
  for k, v in pairs(changes) do t[k] = v end
  return t
end

-- Starts luaecho with handler source (prefixed with show, report and dump)
-- and the given extra config lines.
local function start_handler(source, config)
  return server.start{
    config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\n' .. (config or ""),
    handlers = { ["h.lua"] = PRELUDE .. source },
  }
end

local function connect(srv)
  return assert(server.connect(srv.host, srv.port))
end

-- Connects over IPv4 with the client's kernel buffers fixed at `size` bytes
-- (set before connect, so the kernel does not grow them), for specs that
-- fill buffers on purpose.  Closed by the next cleanup().
local function connect_small(srv, size)
  local sock = socket.tcp4()
  assert(sock:setoption("recv-buffer-size", size))
  assert(sock:setoption("send-buffer-size", size))
  sock:settimeout(server.IO_TIMEOUT)
  assert(sock:connect(srv.host, srv.port))
  server.defer(function() sock:close() end)
  return sock
end

-- Waits for the handler's report(name, dump(...)) and returns the table.
local function dumped(srv, name)
  local report = assert(srv:report(name, 10), "no report " .. name .. "; log:\n" .. srv:log_text())
  return assert(load(report[1], "=" .. name))()
end

local line_of = server.line_of

local receive_line = server.receive_line

-- Bad values for each option, as Lua source, and what every error names as
-- expected; the message ends "got <the value>".  Config files and setopts
-- share these words.
local PACKET = 'expected "raw", "line", 0, 1, 2 or 4'
local SIZE = "expected an integer byte count in 1..1073741824"
local TIMEOUT = "expected a number of seconds > 0, or false for none"
local BOOLEAN = "expected a boolean"
local KEEPALIVE = "expected a boolean or a delay in seconds (1..86400)"
local BAD_VALUES = {
  { "packet", "3", PACKET .. ", got 3" },
  { "packet", '"x"', PACKET .. ', got "x"' },
  { "packet", "2.5", PACKET .. ", got 2.5" },
  { "packet", "true", PACKET .. ", got true" },
  { "packet", "{}", PACKET .. ", got table" },
  { "packet_size", "0", SIZE .. ", got 0" },
  { "packet_size", "1073741825", SIZE .. ", got 1073741825" },
  { "packet_size", "1.5", SIZE .. ", got 1.5" },
  { "packet_size", '"10"', SIZE .. ', got "10"' },
  { "recv_buffer", "-1", SIZE .. ", got -1" },
  { "send_buffer", "true", SIZE .. ", got true" },
  { "recv_timeout", "0", TIMEOUT .. ", got 0" },
  { "recv_timeout", "-1", TIMEOUT .. ", got -1" },
  { "recv_timeout", "true", TIMEOUT .. ", got true" },
  { "recv_timeout", '"1"', TIMEOUT .. ', got "1"' },
  { "recv_timeout", "1/0", TIMEOUT .. ", got inf" },
  { "send_timeout", "0", TIMEOUT .. ", got 0" },
  { "idle_timeout", "-0.5", TIMEOUT .. ", got -0.5" },
  { "send_timeout_close", "1", BOOLEAN .. ", got 1" },
  { "send_timeout_close", '"yes"', BOOLEAN .. ', got "yes"' },
  { "nodelay", "0", BOOLEAN .. ", got 0" },
  { "keepalive", "0", KEEPALIVE .. ", got 0" },
  { "keepalive", "86401", KEEPALIVE .. ", got 86401" },
  { "keepalive", "1.5", KEEPALIVE .. ", got 1.5" },
  { "keepalive", '"60"', KEEPALIVE .. ', got "60"' },
}

-- Runs luaecho with config source (as c.lua) expecting a startup error;
-- returns the exit code and stderr lines, with and without --check.
local function assert_config_error(source, message)
  for _, check in ipairs({ false, true }) do
    local code, lines, dir = server.run{
      config = source, config_name = "c.lua", stream = "stderr",
      args = check and { "--check" } or nil,
    }
    assert.same({ 1, { "luaecho: " .. dir .. "/c.lua: " .. message } }, { code, lines })
  end
end

-- Returns the keepalive timer of the server's established connection on
-- port, in seconds, or nil when the socket has none; and the socket's line
-- of /proc/net/tcp.  Its "tr:tm->when" field names the timer running (1
-- retransmission, 2 keepalive) and when it expires, in 1/100 s.  While
-- data the server sent waits for its ACK the retransmission timer shows
-- instead: that is waited out, for at most 3 s.
local function keepalive_timer(port)
  local local_port = (":%04X"):format(port)
  local deadline = proc.now() + 3
  while true do
    local found = {}
    for line in assert(io.lines("/proc/net/tcp")) do
      local laddr, st, tr, when = line:match("^%s*%d+: (%x+:%x+) %x+:%x+ (%x%x) %x+:%x+ (%x%x):(%x+)")
      if laddr and laddr:sub(-5) == local_port and st == "01" then
        found[#found + 1] = { line = line, tr = tonumber(tr, 16), when = tonumber(when, 16) }
      end
    end
    assert.equal(1, #found, "expected one established connection on port " .. port)
    local t = found[1]
    if t.tr ~= 1 or proc.now() > deadline then
      return t.tr == 2 and t.when / 100 or nil, t.line
    end
    proc.sleep(0.05)
  end
end

describe("options", function()
  after_each(server.cleanup)

  describe("conn:getopts()", function()
    it("returns a table of every option with its default", function()
      local srv = start_handler([[
        return function(conn) report("opts", dump(conn:getopts())) end]])
      connect(srv)
      assert.same(DEFAULTS, dumped(srv, "opts"))
    end)

    it("returns the values of the named options, in order", function()
      local srv = start_handler([[
        return function(conn)
          report("opts", conn:getopts("keepalive", "packet", "idle_timeout", "packet", "recv_timeout"))
        end]])
      connect(srv)
      assert.same({ n = 5, false, "raw", 300, "raw", false }, srv:report("opts", 10))
    end)

    it("raises 'conn:getopts: unknown option' for a name that is not an option", function()
      local srv = start_handler([[
        return function(conn)
          report("err", pcall(conn.getopts, conn, "packet", "pakcet"))
        end]])
      connect(srv)
      assert.same({ n = 2, false, "conn:getopts: unknown option 'pakcet'" }, srv:report("err", 10))
    end)
  end)

  describe("conn:setopts()", function()
    it("sets every option and returns true; getopts reads the new values back", function()
      local srv = start_handler([[
        return function(conn)
          local ok = conn:setopts{
            packet = "line", packet_size = 100, recv_buffer = 1000, send_buffer = 2000,
            recv_timeout = 1.5, send_timeout = 2.5, idle_timeout = 3.5,
            send_timeout_close = false, nodelay = false, keepalive = 30,
            cpu_limit = 0.5, trace = true, trace_bytes = 8, trace_hex = true,
            conn_summary = true, read_size = 1000, sndbuf = false, rcvbuf = false,
          }
          report("ok", ok)
          report("opts", dump(conn:getopts()))
          report("named", conn:getopts("packet", "packet_size", "recv_buffer", "send_buffer",
            "recv_timeout", "send_timeout", "idle_timeout", "send_timeout_close", "nodelay", "keepalive",
            "cpu_limit"))
        end]])
      connect(srv)
      assert.same({ n = 1, true }, srv:report("ok", 10))
      local want = {
        packet = "line", packet_size = 100, recv_buffer = 1000, send_buffer = 2000,
        recv_timeout = 1.5, send_timeout = 2.5, idle_timeout = 3.5,
        send_timeout_close = false, nodelay = false, keepalive = 30,
        cpu_limit = 0.5, trace = true, trace_bytes = 8, trace_hex = true,
        conn_summary = true, read_size = 1000, sndbuf = false, rcvbuf = false,
      }
      assert.same(want, dumped(srv, "opts"))
      assert.same({ n = 11, "line", 100, 1000, 2000, 1.5, 2.5, 3.5, false, false, 30, 0.5 },
        srv:report("named", 10))
    end)

    it("takes packet 0 as \"raw\", numbers 1, 2, 4, keepalive true as 60 seconds, and false for no timeout", function()
      -- opts.c: keepalive = true probes after 60 s idle, and reads back so.
      local srv = start_handler([[
        return function(conn)
          local got = {}
          for _, p in ipairs({ 1, 2, 4, "line", 0, "raw" }) do
            conn:setopts{ packet = p }
            got[#got + 1] = conn:getopts("packet")
          end
          conn:setopts{ keepalive = true, recv_timeout = 5, send_timeout = false, idle_timeout = false }
          got[#got + 1] = conn:getopts("keepalive")
          conn:setopts{ keepalive = false, recv_timeout = false }
          report("got", table.unpack(got))
          report("opts", dump(conn:getopts()))
        end]])
      connect(srv)
      assert.same({ n = 7, 1, 2, 4, "line", "raw", "raw", 60 }, srv:report("got", 10))
      assert.same(defaults_with{ send_timeout = false, idle_timeout = false }, dumped(srv, "opts"))
    end)

    it("raises 'conn:setopts: unknown option' for a name that is not an option", function()
      local srv = start_handler([[
        return function(conn)
          report("err", pcall(conn.setopts, conn, { pakcet = 2 }))
        end]])
      connect(srv)
      assert.same({ n = 2, false, "conn:setopts: unknown option 'pakcet'" }, srv:report("err", 10))
    end)

    it("raises naming the option, what it expects and the value it got, for every option", function()
      local cases = {}
      for i, case in ipairs(BAD_VALUES) do
        cases[i] = ("{ %s = %s }"):format(case[1], case[2])
      end
      local srv = start_handler(([[
        local CASES = { %s }
        return function(conn)
          local got = {}
          for i, opts in ipairs(CASES) do
            local ok, err = pcall(conn.setopts, conn, opts)
            got[i] = ok and "no error" or err
          end
          report("errors", table.unpack(got))
        end]]):format(table.concat(cases, ", ")))
      connect(srv)
      local want = { n = #BAD_VALUES }
      for i, case in ipairs(BAD_VALUES) do
        want[i] = ("conn:setopts: option '%s': %s"):format(case[1], case[3])
      end
      assert.same(want, srv:report("errors", 10))
    end)

    it("prefixes the calling line, as Lua's own errors do", function()
      local source = [[
        return function(conn)
          local ok, err = pcall(function()
            conn:setopts{ packet = 3 } -- the raising line
          end)
          report("err", ok, err)
        end]]
      local srv = start_handler(source)
      connect(srv)
      local report = assert(srv:report("err", 10))
      assert.is_false(report[1])
      assert.equal(("%s:%d: conn:setopts: option 'packet': %s, got 3"):format(
        srv:file("h.lua"), line_of(PRELUDE .. source, "the raising line"), PACKET), report[2])
    end)

    it("checks every option before applying any: after an error nothing has changed", function()
      local srv = start_handler([[
        return function(conn)
          local ok = pcall(conn.setopts, conn, { packet = 2, recv_timeout = 1, nodelay = "no" })
          report("opts", dump(conn:getopts()))
        end]])
      connect(srv)
      assert.same(DEFAULTS, dumped(srv, "opts"))
    end)

    it("raises Lua's usual argument error when not given a table", function()
      local srv = start_handler([[
        return function(conn)
          local ok, err = pcall(function() conn:setopts("packet") end)
          report("err", ok, err)
        end]])
      connect(srv)
      local report = assert(srv:report("err", 10))
      assert.is_false(report[1])
      assert.matches("bad argument #1 to 'setopts' %(table expected, got string%)$", report[2])
    end)

    it("changes only the connection it is called on", function()
      local srv = start_handler([[
        return function(conn)
          local tag, n = conn:recv(1), conn:recv(1)
          if tag == "a" then conn:setopts{ packet = 2, recv_timeout = 9 } end
          report("opts" .. n, dump(conn:getopts()))
        end]])
      local a, b = connect(srv), connect(srv)
      assert(a:send("a1"))
      assert.same(defaults_with{ packet = 2, recv_timeout = 9 }, dumped(srv, "opts1"))
      assert(b:send("b2"))
      assert.same(DEFAULTS, dumped(srv, "opts2"))
    end)
  end)

  describe("in config.lua", function()
    it("sets the options of every connection at the top level", function()
      local srv = start_handler([[
        return function(conn) report("opts", dump(conn:getopts())) end]],
        'packet = 4\npacket_size = 5000\nrecv_timeout = 1.5\nidle_timeout = 20\nkeepalive = 30\nnodelay = false\n'
        .. 'send_timeout_close = false\nsend_buffer = 8192\nrecv_buffer = 4096\nsend_timeout = 7\n'
        .. 'cpu_limit = 2\ntrace_bytes = 4\ntrace_hex = true\nconn_summary = true\nread_size = 2048\n')
      connect(srv)
      assert.same({
        packet = 4, packet_size = 5000, recv_timeout = 1.5, idle_timeout = 20, keepalive = 30,
        nodelay = false, send_timeout_close = false, send_buffer = 8192, recv_buffer = 4096, send_timeout = 7,
        cpu_limit = 2, trace = false, trace_bytes = 4, trace_hex = true, conn_summary = true,
        read_size = 2048, sndbuf = false, rcvbuf = false,
      }, dumped(srv, "opts"))
    end)

    it("lets a listener table override top-level options for its own connections", function()
      local srv = server.start{
        config = [[
packet = 2
recv_timeout = 1.5
idle_timeout = 20
listen = {
  "127.0.0.1:0",
  { address = "127.0.0.1:0", packet = "line", recv_timeout = 2.5, send_buffer = 8192 },
}
handler = "@DIR@/h.lua"
]],
        handlers = { ["h.lua"] = PRELUDE .. [[
          return function(conn)
            local _, port = conn:sockname()
            report("opts" .. port, dump(conn:getopts()))
          end]] },
        expect = 2,
      }
      assert(server.connect(srv.addrs[1]))
      assert(server.connect(srv.addrs[2]))
      assert.same(defaults_with{ packet = 2, recv_timeout = 1.5, idle_timeout = 20 },
        dumped(srv, "opts" .. srv.addrs[1].port))
      assert.same(defaults_with{ packet = "line", recv_timeout = 2.5, idle_timeout = 20, send_buffer = 8192 },
        dumped(srv, "opts" .. srv.addrs[2].port))
    end)

    it("applies top-level options to the listeners --listen gives", function()
      local srv = server.start{
        config = 'listen = "unix:@DIR@/unused.sock"\nhandler = "@DIR@/h.lua"\npacket = "line"\nkeepalive = 9\n',
        args = { "--listen", "127.0.0.1:0" },
        handlers = { ["h.lua"] = PRELUDE .. [[
          return function(conn) report("opts", dump(conn:getopts())) end]] },
      }
      assert.equal("127.0.0.1", srv.host)
      connect(srv)
      assert.same(defaults_with{ packet = "line", keepalive = 9 }, dumped(srv, "opts"))
    end)

    it("rejects a bad top-level value with the file, the key and what was expected", function()
      assert_config_error('listen = "127.0.0.1:0"\npacket = 3\n', "key 'packet': " .. PACKET .. ", got 3")
    end)

    it("rejects a bad listener value naming the listener's key", function()
      assert_config_error('listen = { "127.0.0.1:0", { address = "127.0.0.1:0", recv_timeout = 0 } }\n',
        "key 'listen[2].recv_timeout': " .. TIMEOUT .. ", got 0")
    end)

    it("rejects an unknown key in a listener table", function()
      assert_config_error('listen = { { address = "127.0.0.1:0", pakcet = 2 } }\n',
        "unknown key 'listen[1].pakcet'")
    end)

    it("rejects every bad value with the words setopts uses", function()
      for _, case in ipairs(BAD_VALUES) do
        assert_config_error(('listen = "127.0.0.1:0"\n%s = %s\n'):format(case[1], case[2]),
          ("key '%s': %s"):format(case[1], case[3]))
      end
    end)
  end)

  describe("recv_timeout", function()
    it("is the timeout of a recv() given none", function()
      local srv = start_handler([[
        return function(conn)
          conn:setopts{ recv_timeout = 0.3 }
          conn:send(show(conn:recv()) .. "\n")
          conn:send(show(conn:recv(5)) .. "\n")
          conn:send(show(conn:recv(3, 10)) .. "\n")
        end]])
      local sock = connect(srv)
      local t0 = proc.now()
      assert.equal('nil,"timeout",""', receive_line(sock))
      local elapsed = proc.now() - t0
      assert.is_true(elapsed >= 0.25 and elapsed < 5, "timed out after " .. elapsed .. "s")
      assert(sock:send("ab"))
      assert.equal('nil,"timeout","ab"', receive_line(sock))
      -- recv's own timeout argument wins: 10 s, and the bytes come after 0.5 s.
      proc.sleep(0.5) -- pacing only: longer than recv_timeout
      assert(sock:send("cde"))
      assert.equal('"cde"', receive_line(sock))
    end)

    it("set in config.lua applies to recv() on every connection", function()
      local srv = start_handler([[
        return function(conn) conn:send(show(conn:recv()) .. "\n") end]], "recv_timeout = 0.2\n")
      local a, b = connect(srv), connect(srv)
      assert.equal('nil,"timeout",""', receive_line(a))
      assert.equal('nil,"timeout",""', receive_line(b))
    end)
  end)

  describe("send_timeout", function()
    -- The handler sends 64 KiB chunks to a client that never reads, until a
    -- send fails (at most 256 MiB; the client's kernel buffers are fixed at
    -- 64 KiB, so the server's socket fills after a few MiB).
    local FILL = [[
      local function fill(conn)
        local chunk, total = string.rep("x", 64 * 1024), 0
        while total < 256 * 1024 * 1024 do
          local ok, err = conn:send(chunk)
          if not ok then return ok, err, total end
          total = total + #chunk
        end
        return true, "never timed out", total
      end
    ]]

    it("makes a send that waits longer return nil, 'timeout'; with send_timeout_close = false the connection stays open", function()
      local srv = start_handler(FILL .. [[
        return function(conn)
          conn:setopts{ send_buffer = 4096, send_timeout = 0.3, send_timeout_close = false }
          local ok, err = fill(conn)
          report("send", ok, err)
          report("recv", conn:recv(4, 10))
        end]])
      local t0 = proc.now()
      local sock = connect_small(srv, 64 * KiB)
      assert.same({ n = 2, nil, "timeout" }, srv:report("send", 10))
      local elapsed = proc.now() - t0
      assert.is_true(elapsed >= 0.25, "send timed out after " .. elapsed .. "s")
      assert(sock:send("ping"))
      assert.same({ n = 1, "ping" }, srv:report("recv", 10))
    end)

    it("closes the connection after a send timeout when send_timeout_close is true (the default)", function()
      local srv = start_handler(FILL .. [[
        return function(conn)
          conn:setopts{ send_buffer = 4096, send_timeout = 0.3 }
          local ok, err = fill(conn)
          local s = table.pack(conn:send("more"))
          local r = table.pack(conn:recv(0, 1))
          report("send", ok, err, s[1], s[2], r[1], r[2])
        end]])
      local sock = connect_small(srv, 64 * KiB)
      -- The waiting send gets "timeout"; later calls find the connection
      -- closed (lconn.c: so a loop retrying on "timeout" cannot spin).
      assert.same({ n = 6, nil, "timeout", nil, "closed", nil, "closed" }, srv:report("send", 10))
      -- The client now reads what reached it, then finds the connection gone.
      local got, err = server.read_all_until_close(sock, 20)
      assert.is_true(err == "closed" or err == "connection reset by peer", "read ended with " .. tostring(err))
      assert.equal(string.rep("x", #got), got)
    end)

    it("lets a send wait without limit when false", function()
      local srv = start_handler(FILL .. [[
        return function(conn)
          conn:setopts{ send_buffer = 4096, send_timeout = false }
          conn:send("start\n")
          report("send", fill(conn))
        end]])
      local sock = connect_small(srv, 64 * KiB)
      assert.equal("start", receive_line(sock))
      -- Not reading for a second, then reading everything: no timeout.
      proc.sleep(1) -- pacing only: the time a timeout would need to strike
      assert.same({ nil, "timeout" }, { srv:report("send", 0) })
      sock:close()
      local report = assert(srv:report("send", 10))
      assert.is_nil(report[1])
      assert.is_true(report[2] == "epipe" or report[2] == "econnreset", "send failed with " .. tostring(report[2]))
    end)
  end)

  describe("idle_timeout", function()
    it("closes a connection without traffic; a waiting recv returns nil, 'idle'", function()
      local srv = start_handler([[
        return function(conn) report("recv", conn:recv(0, 10)) end]],
        'idle_timeout = 0.3\nlog_level = "debug"\n')
      local t0 = proc.now()
      local sock = connect(srv)
      assert.same({ "", "closed" }, { server.read_all_until_close(sock, 10) })
      local elapsed = proc.now() - t0
      assert.is_true(elapsed >= 0.25 and elapsed < 5, "closed after " .. elapsed .. "s")
      assert.same({ n = 3, nil, "idle", "" }, srv:report("recv", 10))
      assert(srv:wait_line(server.record("debug", "conn 1: idle timeout"), 5), srv:log_text())
    end)

    it("set with setopts closes a handler that waits in recv with no timeout", function()
      local srv = start_handler([[
        return function(conn)
          conn:setopts{ idle_timeout = 0.3 }
          report("recv", conn:recv())
        end]])
      local sock = connect(srv)
      assert.same({ "", "closed" }, { server.read_all_until_close(sock, 10) })
      assert.same({ n = 3, nil, "idle", "" }, srv:report("recv", 10))
    end)

    it("is reset by bytes from the client", function()
      -- The client sends a byte every 0.1 s for 1.5 s, three times
      -- idle_timeout: every echo proves the connection outlived the timeout
      -- counted from its start.  Then it goes quiet, and the timeout counted
      -- from the last byte closes it: not before, and with the log's reason.
      local srv = start_handler([[
        return function(conn)
          local n, data, err = 0, conn:recv()
          while data and conn:send(data) do
            n = n + 1
            data, err = conn:recv()
          end
          report("end", n, data, err)
        end]], 'idle_timeout = 0.5\nlog_level = "debug"\n')
      local sock = connect(srv)
      local last
      for i = 1, 15 do
        if i > 1 then proc.sleep(0.1) end -- pacing only: gaps well under idle_timeout
        assert.same({ tostring(i % 10) }, { server.exchange(sock, tostring(i % 10), 5) })
        last = proc.now()
      end
      assert.same({ "", "closed" }, { server.read_all_until_close(sock, 10) })
      -- At least idle_timeout after the server's last byte; the client saw
      -- that byte a little later, so the bound leaves room for a busy machine.
      local quiet = proc.now() - last
      assert.is_true(quiet >= 0.25, ("closed %.3fs after the last byte"):format(quiet))
      assert(srv:wait_line(server.record("debug", "conn 1: idle timeout"), 5), srv:log_text())
      assert.same({ n = 3, 15, nil, "idle" }, srv:report("end", 10))
    end)

    it("is reset by queued output draining to a slow client", function()
      -- One send of 12 MiB: the kernel takes a few MiB at most (the
      -- client's buffers are fixed at 32 KiB), luaecho queues the rest.
      -- The client reads it in about a second, several times idle_timeout,
      -- and bytes move all that time.
      local srv = start_handler([[
        return function(conn)
          conn:setopts{ idle_timeout = 0.3, send_timeout = false }
          conn:send(string.rep("d", 12 * 1024 * 1024))
          conn:send("done")
          report("recv", conn:recv())
        end]])
      local sock = connect_small(srv, 32 * KiB)
      local got, total, t0 = 0, 12 * MiB + 4, proc.now()
      while got < total and proc.now() < t0 + 30 do
        local data, err = server.recv_exactly(sock, math.min(256 * KiB, total - got), 10)
        got = got + #data
        assert(err == nil, ("connection ended after %d bytes, %.2fs: %s"):format(got, proc.now() - t0, tostring(err)))
        if got == total then assert.equal("done", data:sub(-4)) end
        proc.sleep(0.02) -- pacing only: the slow reader
      end
      assert.equal(total, got)
      assert.is_true(proc.now() - t0 > 0.9, "the client read too fast to show anything")
      -- Silence now: the idle timeout strikes.
      assert.same({ n = 3, nil, "idle", "" }, srv:report("recv", 10))
    end)

    it("is reset by bytes to the client", function()
      -- recv(0, 0.1) paces the handler: timeouts are not traffic, sends are.
      local srv = start_handler([[
        return function(conn)
          for _ = 1, 15 do
            local r = table.pack(conn:recv(0, 0.1))
            if r[2] ~= "timeout" then report("recv", table.unpack(r, 1, r.n)) return end
            conn:send("t")
          end
          conn:send("end")
        end]], "idle_timeout = 0.5\n")
      local sock = connect(srv)
      assert.same({ string.rep("t", 15) .. "end", "closed" }, { server.read_all_until_close(sock, 10) })
    end)
  end)

  describe("recv_buffer", function()
    it("stops reading from a client the handler does not read: its sends block, server memory stays bounded, no byte is lost", function()
      -- The handler first sends 16 MiB the client does not read, so it waits
      -- in send (not in recv) while the client sends as much as it can.
      local BLOB = 16 * MiB
      local srv = start_handler([[
        return function(conn)
          conn:setopts{ send_timeout = false }
          local blob = string.rep("b", 16 * 1024 * 1024)
          conn:send("ready\n")
          conn:send(blob)
          local count, data = 0, conn:recv()
          while data do
            count = count + #data
            data = conn:recv()
          end
          conn:send(("received %d bytes\n"):format(count))
        end]])
      local sock = connect_small(srv, 64 * KiB)
      assert.same({ "ready\n" }, { server.recv_exactly(sock, 6, 10) })
      local rss0 = assert(proc.rss_kib(srv.pid))
      -- Send until no progress for 0.5 s, at most 64 MiB or 30 s.
      local chunk, LIMIT = server.random_bytes(256 * KiB), 64 * MiB
      local sent, deadline = 0, proc.now() + 30
      sock:settimeout(0)
      while sent < LIMIT and proc.now() < deadline do
        local _, writable = socket.select(nil, { sock }, 0.5)
        if not writable[sock] then break end
        local last, err, partial = sock:send(chunk)
        assert(err == nil or err == "timeout", err)
        sent = sent + (last or partial)
      end
      local rss1 = assert(proc.rss_kib(srv.pid))
      assert.is_true(sent < LIMIT, "the client sent all 64 MiB: the server kept reading")
      assert.is_true(proc.now() < deadline, "the client's sends never stopped")
      assert.is_true(rss1 - rss0 < 8 * 1024,
        ("server RSS grew by %d KiB while the client sent %d bytes"):format(rss1 - rss0, sent))
      -- Now the client reads: the handler finishes its send, then counts.
      local got, err = server.exchange(sock, "", { half_close = true, until_close = true, timeout = 60 })
      assert.equal("closed", err)
      local want = string.rep("b", BLOB) .. ("received %d bytes\n"):format(sent)
      assert(server.same_bytes(want, got))
    end)
  end)

  describe("keepalive", function()
    it("sets TCP keepalive on the accepted socket with the given delay; setopts changes it", function()
      local srv = start_handler([[
        return function(conn)
          conn:send("config\n")
          conn:recv(1)
          conn:setopts{ keepalive = false }
          conn:send("off\n")
          conn:recv(1)
          conn:setopts{ keepalive = 40 }
          conn:send("on\n")
          conn:recv(1)
        end]], "keepalive = 20\n")
      local sock = connect(srv)
      assert.equal("config", receive_line(sock))
      local t, line = keepalive_timer(srv.port)
      assert(t and t > 10 and t <= 20, "keepalive = 20: " .. line)
      assert(sock:send("1"))
      assert.equal("off", receive_line(sock))
      t, line = keepalive_timer(srv.port)
      assert(t == nil, "keepalive = false: " .. line)
      assert(sock:send("2"))
      assert.equal("on", receive_line(sock))
      t, line = keepalive_timer(srv.port)
      assert(t and t > 30 and t <= 40, "keepalive = 40: " .. line)
    end)

    it("is off by default", function()
      local srv = start_handler([[
        return function(conn)
          conn:send("hi\n")
          conn:recv(1)
        end]])
      local sock = connect(srv)
      assert.equal("hi", receive_line(sock))
      local t, line = keepalive_timer(srv.port)
      assert(t == nil, line)
    end)
  end)

  describe("conn:shutdown()", function()
    it('"write": the client reads all queued output then EOF; send returns nil, "closed"; recv still works', function()
      local srv = start_handler([[
        return function(conn)
          conn:send(string.rep("q", 1024 * 1024))
          conn:shutdown("write")
          local s = table.pack(conn:send("late"))
          report("half", s[1], s[2], conn:recv(5, 10))
        end]])
      local sock = connect(srv)
      local got, err = server.read_all_until_close(sock, 20)
      assert.equal("closed", err)
      assert(server.same_bytes(string.rep("q", MiB), got))
      assert(sock:send("after"))
      assert.same({ n = 3, nil, "closed", "after" }, srv:report("half", 10))
    end)

    it('"read": recv returns nil, "closed" and drops buffered input; send still works', function()
      local srv = start_handler([[
        return function(conn)
          local first = conn:recv(1)
          conn:shutdown("read")
          local r = table.pack(conn:recv())
          conn:send(show(first, r[1], r[2], r[3]))
        end]])
      local sock = connect(srv)
      assert(sock:send("abc"))
      assert.same({ '"a",nil,"closed",""', "closed" }, { server.read_all_until_close(sock, 10) })
    end)

    it('"both": recv and send return nil, "closed" and the client reads EOF', function()
      local srv = start_handler([[
        return function(conn)
          conn:send("bye")
          conn:shutdown("both")
          local r = table.pack(conn:recv())
          local s = table.pack(conn:send("late"))
          report("both", r[1], r[2], s[1], s[2])
        end]])
      local sock = connect(srv)
      assert.same({ "bye", "closed" }, { server.read_all_until_close(sock, 10) })
      assert.same({ n = 4, nil, "closed", nil, "closed" }, srv:report("both", 10))
    end)

    it("raises Lua's usual argument error for another direction", function()
      local srv = start_handler([[
        return function(conn)
          report("err", pcall(function() conn:shutdown("sideways") end))
        end]])
      connect(srv)
      local report = assert(srv:report("err", 10))
      assert.is_false(report[1])
      assert.matches("bad argument #1 to 'shutdown' %(invalid option 'sideways'%)$", report[2])
    end)
  end)

  describe("conn:recv() in a second coroutine", function()
    it('returns nil, "busy" while another coroutine waits in recv, which then gets the bytes', function()
      local srv = start_handler([[
        local luaecho = require "luaecho"
        return function(conn)
          local task = luaecho.spawn(function() return conn:recv() end)
          report("second", conn:recv())
          report("first", task:join())
        end]])
      local sock = connect(srv)
      assert.same({ n = 2, nil, "busy" }, srv:report("second", 10))
      assert(sock:send("for the first"))
      assert.same({ n = 1, "for the first" }, srv:report("first", 10))
    end)
  end)

  describe("conn:sockname()", function()
    it("returns the listening host and port", function()
      local srv = start_handler([[
        return function(conn) report("name", conn:sockname()) end]])
      connect(srv)
      assert.same({ n = 2, "127.0.0.1", srv.port }, srv:report("name", 10))
    end)

    it("returns the socket path and no port over a unix socket", function()
      local srv = server.start{
        config = 'listen = "unix:@DIR@/s.sock"\nhandler = "@DIR@/h.lua"\n',
        handlers = { ["h.lua"] = PRELUDE .. [[
          return function(conn) report("name", conn:sockname()) end]] },
      }
      assert(server.connect_unix(srv.path))
      assert.same({ n = 2, srv.path, nil }, srv:report("name", 10))
    end)
  end)

  describe("tostring(conn)", function()
    it('is "conn ID (PEER -> LOCAL)"', function()
      local srv = start_handler([[
        return function(conn) conn:send(conn.id .. " " .. tostring(conn)) end]])
      local sock = connect(srv)
      local host, port = sock:getsockname()
      local got = assert(server.read_all_until_close(sock, 10))
      local id = assert(got:match("^(%d+) "), got)
      assert.equal(("%s conn %s (%s:%s -> 127.0.0.1:%d)"):format(id, id, host, port, srv.port), got)
    end)

    it('shows unix sockets as "unix:PATH"', function()
      local srv = server.start{
        config = 'listen = "unix:@DIR@/s.sock"\nhandler = "@DIR@/h.lua"\n',
        handlers = { ["h.lua"] = [[
          return function(conn) conn:send(conn.id .. " " .. tostring(conn)) end]] },
      }
      local sock = assert(server.connect_unix(srv.path))
      local got = assert(server.read_all_until_close(sock, 10))
      local id = assert(got:match("^(%d+) "), got)
      assert.equal(("%s conn %s (unix -> unix:%s)"):format(id, id, srv.path), got)
    end)
  end)

  describe("a <close> variable", function()
    it("closes the connection when its block ends, after flushing queued output", function()
      local srv = start_handler([[
        return function(conn)
          do
            local c <close> = conn
            c:send(string.rep("c", 512 * 1024))
          end
          report("after", pcall(conn.send, conn, "x"))
        end]])
      local sock = connect(srv)
      local got, err = server.read_all_until_close(sock, 20)
      assert.equal("closed", err)
      assert(server.same_bytes(string.rep("c", 512 * KiB), got))
      assert.same({ n = 2, false, "attempt to use a closed connection" }, srv:report("after", 10))
    end)

    it("closes the connection when its block raises", function()
      local srv = start_handler([[
        return function(conn)
          local ok, err = pcall(function()
            local c <close> = conn
            c:send("before the error\n")
            error("inside", 0)
          end)
          report("after", ok, err, pcall(conn.recv, conn))
        end]])
      local sock = connect(srv)
      assert.same({ "before the error\n", "closed" }, { server.read_all_until_close(sock, 10) })
      assert.same({ n = 4, false, "inside", false, "attempt to use a closed connection" }, srv:report("after", 10))
    end)
  end)
end)
