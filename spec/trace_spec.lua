-- The trace (--trace, trace = true, conn:trace(true), trace_file): every
-- socket event of a traced connection gives one line, here provoked one by
-- one over real sockets and checked in the log, in order where the order is
-- fixed. docs/observability.md lists the events these lines come from.
local server = require "server"
local proc = require "spec_proc"
local socket = require "socket"

local record, literal = server.record, server.literal

local ECHO = [[
return function(conn)
  repeat local d = conn:recv() until not (d and conn:send(d))
end
]]

local BASE = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\nshutdown_timeout = 1\n'

-- Starts luaecho with --trace (unless opts.trace == false) running handler
-- (default ECHO) as h.lua. opts: config (added to BASE), config_src
-- (instead of BASE), files, args, expect.
local function start(handler, opts)
  opts = opts or {}
  local args = opts.args or {}
  if opts.trace ~= false then table.insert(args, 1, "--trace") end
  local files = opts.files or {}
  files["h.lua"] = handler or ECHO
  return server.start{
    config = opts.config_src or (BASE .. (opts.config or "")),
    files = files,
    args = args,
    expect = opts.expect,
  }
end

-- A pattern for the trace line of connection `id` whose event matches msg.
local function tr(id, msg)
  return record("trace", "%d+us conn " .. id .. " " .. msg)
end

-- Waits for connection id's trace line matching msg (after the lines
-- already consumed) and returns it; fails with the log otherwise.
local function expect(srv, id, msg, timeout)
  local line, err = srv:wait_line(tr(id, msg), timeout)
  assert(line, ("no trace line 'conn %s %s' (%s); log:\n%s"):format(
    id, msg, tostring(err), srv:log_text()))
  return line
end

-- Waits until connection id is closed, then returns its trace events in
-- order (the message after "conn ID ").
local function events(srv, id, timeout)
  expect(srv, id, "closed %(.*", timeout)
  local out = {}
  for _, line in ipairs(srv:log()) do
    local ev = line:match(tr(id, "(.*)"))
    if ev then out[#out + 1] = ev end
  end
  return out
end

-- Returns whether a log line read so far matches the pattern.
local function logged(srv, pattern)
  for _, line in ipairs(srv:log()) do
    if line:find(pattern) then return true end
  end
  return false
end

-- Returns the index of the first event matching the pattern msg (anchored);
-- fails with the events otherwise.
local function index_of(evs, msg, from)
  for i = from or 1, #evs do
    if evs[i]:find("^" .. msg .. "$") then return i end
  end
  error(("no event '%s' after #%d in:\n%s"):format(msg, from or 1, table.concat(evs, "\n")), 2)
end

-- Checks that no event matches the pattern msg.
local function absent(evs, msg)
  for _, ev in ipairs(evs) do
    assert(not ev:find("^" .. msg .. "$"), ("unexpected event '%s' in:\n%s"):format(ev, table.concat(evs, "\n")))
  end
end

-- Checks that events matching the patterns come in this order.
local function in_order(evs, msgs)
  local at = 0
  for _, msg in ipairs(msgs) do at = index_of(evs, msg, at + 1) end
end

local function connect(srv, n)
  local a = srv.addrs[n or 1]
  return assert(server.connect(a.host, a.port))
end

local function client_port(sock)
  local _, port = sock:getsockname()
  return math.tointeger(tonumber(port))
end

-- Sends data and waits for its echo.
local function echo(sock, data)
  local got, err = server.exchange(sock, data)
  assert(err == nil and got == data, "echo failed: " .. tostring(err))
end

-- Half-closes sock and waits for the server's FIN.
local function finish(sock)
  sock:shutdown("send")
  local _, err = server.read_all_until_close(sock)
  assert.equal("closed", err)
end

-- A LuaSocket client that closes with a reset (SO_LINGER 0).
local function reset(sock)
  assert(sock:setoption("linger", { on = true, timeout = 0 }))
  sock:close()
end

describe("trace", function()
  after_each(server.cleanup)

  describe("an echoed message", function()
    it("traces accepted, read, recv, wrote, peer FIN, closed in order", function()
      local srv = start()
      local sock = connect(srv)
      local cport = client_port(sock)
      echo(sock, "hello\n")
      finish(sock)
      local evs = events(srv, 1)
      in_order(evs, {
        literal(("accepted 127.0.0.1:%d -> 127.0.0.1:%d"):format(cport, srv.port)),
        literal('read 6 bytes "hello\\n"'),
        literal("recv returned 6 bytes (raw)"),
        literal("wrote 6 bytes"),
        literal("peer FIN (end of input)"),
        literal('recv returned nil, "closed"'),
        literal("handler returned"),
        "closed %(peer FIN%) after %d+%.%d+ s; in 6 bytes, out 6 bytes",
      })
    end)
  end)

  describe("read previews", function()
    it("escape the first trace_bytes bytes, in hex with trace_hex, none with 0", function()
      local srv = start(nil, { expect = 3, config_src = [[
handler = "@DIR@/h.lua"
listen = {
  "127.0.0.1:0",
  { address = "127.0.0.1:0", trace_bytes = 0 },
  { address = "127.0.0.1:0", trace_hex = true, trace_bytes = 4 },
}
]] })
      local a = connect(srv, 1)
      echo(a, 'a\tb"c\\\1\255\r\n')
      expect(srv, 1, literal([[read 10 bytes "a\tb\"c\\\x01\xff\r\n"]]))
      echo(a, ("0123456789"):rep(4))
      expect(srv, 1, literal('read 40 bytes "01234567890123456789012345678901"...'))
      local b = connect(srv, 2)
      echo(b, "hello")
      expect(srv, 2, "read 5 bytes")
      local c = connect(srv, 3)
      echo(c, "ab\n")
      expect(srv, 3, "read 3 bytes 61 62 0a")
      echo(c, "abcdef")
      expect(srv, 3, literal("read 6 bytes 61 62 63 64..."))
    end)

    it("are cut to fit a trace line, and still end with ...", function()
      local srv = start(nil, { config_src = [[
handler = "@DIR@/h.lua"
listen = { { address = "127.0.0.1:0", trace_hex = true, trace_bytes = 4096 } }
]] })
      local a = connect(srv, 1)
      echo(a, ("x"):rep(2000))
      local line = srv:wait_line("read 2000 bytes 78 78 .*", 10)
      assert(line, srv:log_text())
      assert.matches(" 78%.%.%.$", line)
      assert.is_true(#line < 1024, #line .. " characters")
    end)
  end)

  describe("recv", function()
    it("names the framing of each message and its errors", function()
      local srv = start(server.SHOW .. [[
return function(conn)
  conn:setopts{ packet = "line" }
  conn:send(assert(conn:recv()))
  conn:setopts{ packet = 2 }
  conn:send(assert(conn:recv()))
  conn:setopts{ packet = "raw", recv_timeout = 0.2 }
  conn:send(show(conn:recv()))
end
]])
      local sock = connect(srv)
      echo(sock, "one\n")
      echo(sock, "\0\3two")
      assert.equal('nil,"timeout",""', server.read_all_until_close(sock))
      in_order(events(srv, 1), {
        literal("recv returned 4 bytes (line)"),
        literal("wrote 4 bytes"),
        literal("recv returned 3 bytes (packet 2)"),
        literal("wrote 5 bytes"),
        literal("recv timeout"),
        literal('recv returned nil, "timeout"'),
        literal("closed (handler returned)") .. ".*",
      })
    end)
  end)


  describe("an outbound connection", function()
    it("traces connected with both addresses, and the far end's accept", function()
      local srv = start([[
local luaecho = require "luaecho"
return function(conn)
  local port = tonumber(conn:recv())
  local up <close> = assert(luaecho.connect("127.0.0.1", port))
  assert(up:send("ping"))
  conn:send(assert(up:recv(4)))
end
]], { expect = 2, files = { ["echo.lua"] = ECHO }, config_src = [[
handler = "@DIR@/h.lua"
listen = { "127.0.0.1:0", { address = "127.0.0.1:0", handler = "@DIR@/echo.lua" } }
]] })
      local sock = connect(srv)
      local up_port = srv.addrs[2].port
      assert.equal("ping", server.exchange(sock, tostring(up_port), { expect = 4 }))
      local line = srv:wait_line(record("trace", "%d+us conn %d+ connected 127%.0%.0%.1:"
        .. up_port .. " %(from 127%.0%.0%.1:%d+%)"))
      assert(line, srv:log_text())
      local id, from = line:match("conn (%d+) connected %S+ %(from 127%.0%.0%.1:(%d+)%)$")
      assert.not_equal("1", id)
      -- The far end is the second listener's accepted connection.
      local far = literal(("accepted 127.0.0.1:%s -> 127.0.0.1:%d"):format(from, up_port))
      assert(logged(srv, tr("%d+", far)), srv:log_text())
      in_order(events(srv, id), { "connected .*", literal("wrote 4 bytes"), "read 4 bytes .*",
                                  literal("recv returned 4 bytes (raw)"), "closed .*" })
    end)
  end)

  describe("backpressure", function()
    it("traces a partial write, send waiting over send_buffer and resuming", function()
      local srv = start([[
return function(conn)
  conn:setopts{ send_buffer = 65536 }
  local chunk = string.rep("x", 65536)
  local n = 0
  -- Fill the kernel's buffers until luaecho queues, then go over send_buffer.
  while conn:stats().queued == 0 and n < 2000 do
    assert(conn:send(chunk))
    n = n + 1
  end
  for _ = 1, 4 do assert(conn:send(chunk)) end
end
]])
      local sock = connect(srv)
      expect(srv, 1, "partial write: the kernel took %d+ of 65536 bytes; %d+ queued in luaecho")
      -- The client reads only once the handler waits.
      expect(srv, 1, "send waits: %d+ bytes queued, over send_buffer 65536")
      local got, err = server.read_all_until_close(sock, 30)
      assert.equal("closed", err)
      sock:close()
      local evs = events(srv, 1)
      local resumed = index_of(evs, "send resumed after %d+ ms")
      assert(index_of(evs, "wrote 65536 queued bytes; %d+ left queued") < resumed)
      index_of(evs, "closed %(handler returned%) after %d+%.%d+ s; in 0 bytes, out " .. #got .. " bytes")
    end)

    it("traces reading paused when recv_buffer is full, and resumed", function()
      local srv = start([[
local luaecho = require "luaecho"
return function(conn)
  local n = 0
  repeat luaecho.sleep(0.01); n = n + 1 until not conn:stats().reading or n > 1000
  local got = 0
  while got < 65536 do got = got + #assert(conn:recv()) end
  conn:send("got " .. got)
end
]], { config = "recv_buffer = 4096\n" })
      local sock = connect(srv)
      assert.equal("got 65536", server.exchange(sock, ("y"):rep(65536), { expect = 9 }))
      in_order(events(srv, 1), {
        "reading paused: %d+ bytes buffered, recv_buffer 4096",
        "reading resumed: %d+ bytes buffered",
        literal("wrote 9 bytes"),
      })
    end)
  end)

  describe("endings", function()
    it("traces the peer's reset", function()
      local srv = start()
      local sock = connect(srv)
      echo(sock, "x")
      reset(sock)
      in_order(events(srv, 1), {
        literal("peer reset the connection (RST)"),
        literal('recv returned nil, "econnreset"'),
        "closed %(reset by the peer%) after %d+%.%d+ s; in 1 bytes, out 1 bytes",
      })
    end)

    it("traces our FIN and a lingering close that the peer's FIN ends", function()
      local srv = start('return function(conn) conn:send("bye\\n") end')
      local sock = connect(srv)
      local got, err = server.read_all_until_close(sock)
      assert.same({ "bye\n", "closed" }, { got, err })
      expect(srv, 1, "lingering: discarding input until the peer's FIN, for up to %d+ ms")
      assert(sock:send("late"))
      expect(srv, 1, literal("lingering: discarded 4 bytes"))
      sock:shutdown("send")
      in_order(events(srv, 1), {
        literal("wrote 4 bytes"),
        literal("handler returned"),
        literal("closing gracefully: 0 bytes to flush, then FIN"),
        literal("FIN sent (our side closed)"),
        "lingering: discarding input .*",
        literal("lingering: discarded 4 bytes"),
        literal("peer FIN (end of input)"),
        literal("linger ended with the peer's FIN"),
        literal("closing the socket"),
        "closed %(handler returned%) after %d+%.%d+ s; in 4 bytes, out 4 bytes",
      })
    end)

    it("traces the FIN of conn:shutdown(\"write\") while reading goes on", function()
      local srv = start([[
return function(conn)
  conn:send("half\n")
  conn:shutdown("write")
  repeat until not conn:recv()
end
]])
      local sock = connect(srv)
      local got, err = server.read_all_until_close(sock)
      assert.same({ "half\n", "closed" }, { got, err })
      expect(srv, 1, literal("FIN sent (our side closed)"))
      assert(sock:send("more"))
      sock:shutdown("send")
      in_order(events(srv, 1), {
        literal("wrote 5 bytes"),
        literal("FIN sent (our side closed)"),
        literal('read 4 bytes "more"'),
        literal("peer FIN (end of input)"),
        literal("handler returned"),
        "closed %(peer FIN%) .*",
      })
    end)

    it("traces a lingering close that ends without the peer's FIN", function()
      local srv = start('return function(conn) conn:send("bye\\n") end')
      local sock = connect(srv)
      assert.equal("bye", server.receive_line(sock))
      in_order(events(srv, 1, 10), {
        literal("FIN sent (our side closed)"),
        "lingering: discarding input .*",
        literal("linger ended without the peer's FIN"),
        "closed %(handler returned%) .*",
      })
    end)

    it("traces a send timeout and the close it causes", function()
      local srv = start([[
return function(conn)
  conn:setopts{ send_buffer = 65536, send_timeout = 0.3 }
  local chunk = string.rep("z", 65536)
  for _ = 1, 2000 do if not conn:send(chunk) then return end end
end
]])
      connect(srv) -- never reads
      local evs = events(srv, 1, 10)
      in_order(evs, {
        "send waits: .*",
        "send timeout: %d+ bytes still queued; closing",
        literal("closing the socket"),
        "send resumed after %d+ ms with an error",
        "closed %(send timeout%) after .*",
      })
      -- Ended from this side: the socket closes at once, no graceful close.
      absent(evs, "closing gracefully.*")
    end)

    it("traces an idle timeout", function()
      local srv = start(nil, { config = "idle_timeout = 0.3\n" })
      connect(srv)
      local evs = events(srv, 1, 10)
      in_order(evs, {
        literal("idle timeout: no traffic for 0.3 s"),
        literal("closing the socket"),
        literal('recv returned nil, "idle"'),
        "closed %(idle timeout%) after %d+%.%d+ s; in 0 bytes, out 0 bytes",
      })
      absent(evs, "closing gracefully.*")
    end)

    it("traces a handler error, cpu_limit included", function()
      local srv = start([[
return function(conn)
  local d = conn:recv()
  if d == "spin" then while true do end end
  error("boom")
end
]], { config = "cpu_limit = 0.2\n" })
      local a = connect(srv)
      assert(a:send("x"))
      in_order(events(srv, 1), {
        'handler error: .*boom',
        "closed %(handler error%) after .*",
      })
      local b = connect(srv)
      assert(b:send("spin"))
      in_order(events(srv, 2), {
        'handler error: .*cpu_limit exceeded.*',
        "closed %(handler error%) after .*",
      })
    end)

    it("traces the server's shutdown ending a connection", function()
      local srv = start(nil, { config = "shutdown_timeout = 0.3\n" })
      local sock = connect(srv)
      echo(sock, "hi")
      srv:signal("TERM")
      assert.equal(0, srv:wait_exit())
      local evs = events(srv, 1)
      in_order(evs, {
        literal("ended by the server (shutdown)"),
        literal("closing the socket"),
        literal('recv returned nil, "shutdown"'),
        "closed %(server shutdown%) after %d+%.%d+ s; in 2 bytes, out 2 bytes",
      })
      absent(evs, "closing gracefully.*")
    end)
  end)

  describe("what is traced", function()
    -- Returns the trace lines of connection id read so far.
    local function count(srv, id)
      local n = 0
      for _, line in ipairs(srv:log()) do
        if line:find(tr(id, "")) then n = n + 1 end
      end
      return n
    end

    it("conn:trace(true) traces that connection only", function()
      local srv = start([[
return function(conn)
  conn:setopts{ packet = "line" }
  local d = conn:recv()
  if d == "trace me\n" then conn:trace(true); conn:send("on\n") end
  repeat d = conn:recv() until not (d and conn:send(d))
end
]], { trace = false })
      local a = connect(srv)
      assert(a:send("plain\n"))
      echo(a, "a\n")
      local b = connect(srv)
      assert.equal("on\n", server.exchange(b, "trace me\n", { expect = 3 }))
      echo(b, "b\n")
      finish(a)
      finish(b)
      in_order(events(srv, 2), { literal("wrote 3 bytes"), literal('read 2 bytes "b\\n"'), literal("recv returned 2 bytes (line)"),
                                 literal("wrote 2 bytes"), "closed .*" })
      assert.equal(0, count(srv, 1))
    end)

    it("trace = true in one listener traces that listener's connections", function()
      local srv = start(nil, { trace = false, expect = 2, config_src = [[
handler = "@DIR@/h.lua"
listen = { "127.0.0.1:0", { address = "127.0.0.1:0", trace = true } }
]] })
      local a = connect(srv, 1)
      echo(a, "a")
      finish(a)
      local b = connect(srv, 2)
      echo(b, "b")
      finish(b)
      in_order(events(srv, 2), { "accepted .*", literal('read 1 bytes "b"'), "closed .*" })
      assert.equal(0, count(srv, 1))
    end)

    it("trace_file takes the lines, without the log's prefix", function()
      local srv = start(nil, { config = 'trace_file = "@DIR@/trace.log"\n' })
      local sock = connect(srv)
      echo(sock, "hi")
      finish(sock)
      srv:signal("TERM")
      assert.equal(0, srv:wait_exit())
      local text = assert(server.read_file(srv:file("trace.log")))
      local lines = {}
      for line in text:gmatch("[^\n]+") do lines[#lines + 1] = line end
      assert.matches("^%d+us conn 1 accepted 127%.0%.0%.1:%d+ %-> 127%.0%.0%.1:" .. srv.port .. "$", lines[1])
      assert.matches("^%d+us conn 1 closed %(peer FIN%) after", lines[#lines])
      assert.is_nil(srv:log_text():find("[trace]", 1, true))
    end)
  end)

  describe("conn_summary", function()
    it("logs one line per connection with its reason, bytes and messages", function()
      local srv = start(nil, { trace = false, config = "conn_summary = true\n" })
      local sock = connect(srv)
      local cport = client_port(sock)
      echo(sock, "hello\n")
      finish(sock)
      local line = srv:wait_line(record("info", ("conn 1 127%%.0%%.0%%.1:%d: ended %%(peer FIN%%) after "
        .. "%%d+%%.%%d%%d%%d s; in 6 bytes in 1 messages, out 6 bytes in 1 messages"):format(cport)))
      assert(line, srv:log_text())
      assert.is_nil(srv:log_text():find("[trace]", 1, true))
    end)
  end)

  describe("start-up", function()
    -- The line comes right after the listening lines, which start() may
    -- already have read past.
    local function startup_line(srv, pattern)
      return logged(srv, pattern) or srv:wait_line(pattern)
    end

    it("names the version, the pid and the config file", function()
      local srv = start(nil, { trace = false })
      assert(startup_line(srv, record("info", "luaecho %S+ running as pid " .. srv.pid
        .. " with " .. literal(srv:file("config.lua")))), srv:log_text())
    end)

    it("says built-in defaults without a config file", function()
      local srv = server.start{ args = { "--listen", "127.0.0.1:0" } }
      assert(startup_line(srv, record("info", "luaecho %S+ running as pid " .. srv.pid
        .. " with built%-in defaults")), srv:log_text())
    end)
  end)
end)

describe("a trace output that falls behind", function()
  after_each(server.cleanup)

  -- Makes a FIFO in a temp dir of its own (luaecho opens trace_file at
  -- start, so it must exist first), removed by the next cleanup().
  local function make_fifo()
    local dir = assert(proc.mkdtemp("/tmp/luaecho-spec."))
    server.defer(function() os.execute("rm -rf '" .. dir .. "'") end)
    local fifo = dir .. "/trace.fifo"
    assert(os.execute("mkfifo '" .. fifo .. "'"))
    return fifo
  end

  -- Waits (bounded) until process p is stopped.
  local function wait_stopped(p)
    local deadline = proc.now() + 5
    repeat
      local stat = server.read_file("/proc/" .. p.pid .. "/stat")
      if stat and stat:match("^%d+ %b() (%a)") == "T" then return end
      proc.sleep(0.005)
    until proc.now() > deadline
    error("the FIFO's reader did not stop")
  end

  it("starts with a FIFO nobody reads yet; a reader that comes later gets the lines", function()
    local fifo = make_fifo()
    local srv = start(nil, { config = ('trace_file = %q\n'):format(fifo) })
    local sock = connect(srv)
    echo(sock, "before any reader\n")
    local reader = assert(proc.spawn({ "cat", fifo }))
    server.defer(function() reader:kill("KILL"); reader:wait(5) end)
    local deadline, seen = proc.now() + 10, nil
    repeat
      local line = reader:readline(math.max(0, deadline - proc.now()))
      if line == nil then break end
      seen = line:find('read 18 bytes "before any reader\\n"', 1, true)
    until seen
    assert(seen, "the reader got no trace of the first read")
    finish(sock)
  end)

  it("never blocks the loop: lines are dropped, counted and reported", function()
    local fifo = make_fifo()
    -- The reader opens the FIFO (so luaecho's open returns), stops itself
    -- without reading, and copies the trace to its output once continued.
    local reader = assert(proc.spawn({ "sh", "-c", 'exec 3<"$0"; echo opened; kill -STOP $$; exec cat <&3', fifo }))
    server.defer(function() reader:kill("KILL"); reader:wait(5) end)
    local srv = start([[
local luaecho = require "luaecho"
return function(conn)
  conn:setopts{ packet = "line" }
  for msg in function() return conn:recv() end do
    if msg == "dropped?\n" then msg = luaecho.stats().trace_dropped .. "\n" end
    if not conn:send(msg) then return end
  end
end
]], { config = ('trace_file = %q\ntrace_bytes = 4096\ntrace_hex = true\n'):format(fifo) })
    assert.equal("opened", reader:readline(5))
    wait_stopped(reader)
    local sock = connect(srv)
    local msg = ("m"):rep(999) .. "\n" -- a trace line of about 1 KiB each
    local dropped, sent = 0, 0
    -- About 1.1 MiB of lines fill the FIFO and the trace's buffer; the
    -- bound leaves room for several times that.
    while dropped == 0 and sent < 20000 do
      for _ = 1, 100 do echo(sock, msg) end
      sent = sent + 100
      assert(sock:send("dropped?\n"))
      dropped = tonumber(server.receive_line(sock))
    end
    assert(dropped > 0, "no trace line dropped after " .. sent .. " messages")
    -- Echo goes on while the output is stuck.
    for _ = 1, 100 do echo(sock, msg) end
    reader:kill("CONT")
    local deadline, note = proc.now() + 20, nil
    repeat
      local line = reader:readline(math.max(0, deadline - proc.now()))
      if line == nil then break end
      note = line:match("^trace: (%d+) lines dropped %(the output fell behind%)$")
    until note
    assert(note and tonumber(note) >= dropped, "no report of the dropped lines")
    finish(sock)
  end)
end)
