-- The teaching examples in lua/examples/, each run as the handler of a real
-- server and driven through real sockets (and, where an example's header
-- says so, through nc).  slow_echo and proxy need the luaecho module
-- (sleep, connect, spawn): they carry the tag #needs_luaecho_module, so
--   busted --exclude-tags=needs_luaecho_module spec/examples_spec.lua
-- leaves them out until it exists.
local server = require "server"
local proc = require "spec_proc"
local traffic = require "traffic"

local KiB, MiB = 1024, 1024 * 1024
local SEED = tonumber(os.getenv("LUAECHO_SPEC_SEED") or "") or 20261121
local EXAMPLES = server.REPO .. "/lua/examples/"

-- Starts luaecho on 127.0.0.1:0 with lua/examples/<name> as its handler.
-- opts: config = extra config lines, env = for the process.
local function start_example(name, opts)
  opts = opts or {}
  return server.start{
    config = ('listen = "127.0.0.1:0"\nhandler = %q\n'):format(EXAMPLES .. name) .. (opts.config or ""),
    env = opts.env,
  }
end

-- Starts luaecho with lua/examples/<name> run through a wrapper that
-- watches its conn: when the example's handler ends, the wrapper reports
-- "done" with pcall's results and the error of the last failed send (or
-- "no failed send"), and reports "sent" with the number of sends.
local function start_watched(name)
  return server.start{
    config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\n',
    handlers = { ["h.lua"] = server.REPORT .. ([[
local example = dofile(%q)
return function(conn)
  local send_error, sends = "no failed send", 0
  -- Forwards every method to conn, noting how sends end.
  local spy = setmetatable({}, { __index = function(_, name)
    return function(_, ...)
      local r = table.pack(conn[name](conn, ...))
      if name == "send" then
        sends = sends + 1
        if not r[1] then send_error = r[2] end
      end
      return table.unpack(r, 1, r.n)
    end
  end })
  local ok, err = pcall(example, spy)
  report("sent", sends)
  report("done", ok, err, send_error)
end
]]):format(EXAMPLES .. name) },
  }
end

local function connect(srv)
  return assert(server.connect(srv.host, srv.port))
end

local assert_same_bytes = server.assert_same_bytes

-- The RFC 864 pattern, built independently of the example: line n (from 0)
-- holds the 72 printable characters starting at character n mod 95 of the
-- ring " " .. "~", then CR LF.  Returns the first `count` lines joined.
local function chargen_lines(count)
  local lines = {}
  for n = 0, count - 1 do
    local chars = {}
    for i = 0, 71 do chars[i + 1] = 32 + (n + i) % 95 end
    lines[#lines + 1] = string.char(table.unpack(chars)) .. "\r\n"
  end
  return table.concat(lines)
end

-- Runs lua/examples/clients/<name> in client mode against srv with the
-- given arguments. Returns its exit code and output lines.
local function run_client(srv, name, ...)
  local argv = { server.bin, "--connect", ("%s:%d"):format(srv.host, srv.port), EXAMPLES .. "clients/" .. name, ... }
  return server.run_cmd(argv, { timeout = 30 })
end

-- Waits for the trace line that starts with an event (given literally,
-- without the time and connection id); returns it, or fails with the log.
local function expect_trace(srv, event, timeout)
  local line = srv:wait_line(server.record("trace", "%d+us conn %d+ " .. server.literal(event) .. ".*"), timeout or 10)
  assert(line, ("no trace line %q in:\n%s"):format(event, srv:log_text()))
  return line
end

-- The number of reads clients/nagle.lua reported, after checking that all
-- 150 bytes arrived.
local function nagle_reads(srv, mode)
  local code, lines = run_client(srv, "nagle.lua", mode)
  assert.equal(0, code, table.concat(lines, "\n"))
  local total, reads = lines[#lines]:match("^(%d+) bytes in (%d+) reads$")
  assert.equal("150", total, table.concat(lines, "\n"))
  return tonumber(reads)
end

describe("examples", function()
  after_each(server.cleanup)

  describe("framed_echo.lua", function()
    it("echoes 2-byte-length messages split and joined at random boundaries, headers included", function()
      local srv = start_example("framed_echo.lua")
      math.randomseed(SEED)
      local msgs = {}
      for i = 1, 300 do
        local len = math.random() < 0.1 and 0 or math.random(1, 2000)
        if i == 150 then len = 65535 end
        msgs[i] = traffic.frame(2, server.random_bytes(len))
      end
      local data = table.concat(msgs)
      local sock = connect(srv)
      local got, err = traffic.exchange_split(sock, data, #data, 4000, 60)
      assert.is_nil(err, ("seed %d: %s"):format(SEED, tostring(err)))
      assert_same_bytes(data, got)
    end)

    it("echoes zero-length messages as bare headers", function()
      local srv = start_example("framed_echo.lua")
      local sock = connect(srv)
      local data = "\0\0\0\0\0\1x\0\0"
      assert.same({ data }, { server.exchange(sock, data, 10) })
    end)

    it("answers the socat command of its header", function()
      local srv = start_example("framed_echo.lua")
      local code, lines = server.sh(("printf '\\000\\005hello\\000\\002hi' | socat -t 1 - TCP:127.0.0.1:%d | od -An -c")
        :format(srv.port), 20)
      assert.equal(0, code)
      assert.equal("\\0 005   h   e   l   l   o  \\0 002   h   i", table.concat(lines, " "):match("^%s*(.-)%s*$"))
    end)
  end)

  describe("line_upper.lua", function()
    it("answers every line in upper case, however the lines are split and joined", function()
      local srv = start_example("line_upper.lua")
      math.randomseed(SEED + 1)
      local sent, want = {}, {}
      for i = 1, 400 do
        local chars = {}
        for j = 1, math.random(0, i == 200 and 100000 or 120) do chars[j] = math.random(32, 126) end
        local line = string.char(table.unpack(chars)) .. (i % 7 == 0 and "\r\n" or "\n")
        sent[i], want[i] = line, line:upper()
      end
      local data, reply = table.concat(sent), table.concat(want)
      local sock = connect(srv)
      local got, err = traffic.exchange_split(sock, data, #reply, 3000, 60)
      assert.is_nil(err, ("seed %d: %s"):format(SEED + 1, tostring(err)))
      assert_same_bytes(reply, got)
    end)

    it("does not answer bytes after the last newline, and closes after the client's FIN", function()
      local srv = start_example("line_upper.lua")
      local sock = connect(srv)
      assert.same({ "ABC\n", "closed" },
        { server.exchange(sock, "abc\nno newline", { half_close = true, until_close = true }) })
    end)

    it("answers the nc command of its header", function()
      local srv = start_example("line_upper.lua")
      local code, lines = server.sh(("printf 'hello\\nworld\\n' | nc -N 127.0.0.1 %d"):format(srv.port), 20)
      assert.same({ 0, { "HELLO", "WORLD" } }, { code, lines })
    end)
  end)

  describe("discard.lua", function()
    it("reads 10 MiB, sends nothing back, and closes after the client's FIN", function()
      local srv = start_example("discard.lua")
      local sock = connect(srv)
      local got, err = server.exchange(sock, server.random_bytes(10 * MiB),
        { half_close = true, until_close = true, timeout = 60 })
      assert.same({ "", "closed" }, { got, err })
    end)

    it("takes the nc command of its header and prints nothing", function()
      local srv = start_example("discard.lua")
      local code, lines = server.sh(("head -c 10000000 /dev/zero | nc -N 127.0.0.1 %d"):format(srv.port), 60)
      assert.same({ 0, {} }, { code, lines })
    end)
  end)

  describe("chargen.lua", function()
    it("sends the RFC 864 pattern: 72-character lines, each starting one character later, repeating after 95", function()
      local srv = start_example("chargen.lua")
      local sock = connect(srv)
      local want = chargen_lines(300)
      local got, err = server.recv_exactly(sock, #want, 10)
      assert.is_nil(err)
      assert_same_bytes(want, got)
      assert.equal(" !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefg\r\n", got:sub(1, 74))
    end)

    it("holds a slow reader's output in bounded memory, and ends when the reader closes", function()
      local srv = start_watched("chargen.lua")
      local sock = connect(srv)
      local cycle = chargen_lines(95)
      local function check(data, offset)
        -- data must be the pattern from byte `offset` (0-based) of the stream
        local start = offset % #cycle
        local expected = (cycle:rep(2 + #data // #cycle)):sub(start + 1, start + #data)
        assert(server.same_bytes(expected, data))
      end
      local first = assert(server.recv_exactly(sock, 74, 10))
      check(first, 0)
      local rss0 = assert(proc.rss_kib(srv.pid))
      -- Reads 4 KiB every 10 ms for 3 s: about 1.2 MB of a stream the
      -- server could produce much faster.
      local offset, deadline = #first, proc.now() + 3
      while proc.now() < deadline do
        local data = assert(server.recv_exactly(sock, 4 * KiB, 10))
        check(data, offset)
        offset = offset + #data
        proc.sleep(0.01) -- pacing only: the slow reader
      end
      local rss1 = assert(proc.rss_kib(srv.pid))
      assert.is_true(rss1 - rss0 < 8 * 1024,
        ("server RSS grew by %d KiB while the client read %d bytes"):format(rss1 - rss0, offset))
      assert.same({ nil, "timeout" }, { srv:report("done", 0) })
      sock:close()
      local done = assert(srv:report("done", 10))
      assert.equal(true, done[1])
      assert.is_true(done[3] == "epipe" or done[3] == "econnreset", "the last send failed with " .. tostring(done[3]))
    end)

    it("prints the lines of its header's nc command", function()
      local srv = start_example("chargen.lua")
      local code, lines = server.sh(("nc 127.0.0.1 %d | head -n 3"):format(srv.port), 20)
      local want = {}
      for line in chargen_lines(3):gmatch("([^\n]*)\n") do want[#want + 1] = line end
      assert.same({ 0, want }, { code, lines })
    end)
  end)

  describe("daytime.lua", function()
    it("sends the UTC date and time as one RFC 867 line, then closes", function()
      local srv = start_example("daytime.lua")
      local before = os.time()
      local sock = connect(srv)
      local got, err = server.read_all_until_close(sock, 10)
      local after = os.time()
      assert.equal("closed", err)
      local accepted = {}
      for t = before - 1, after + 1 do
        accepted[#accepted + 1] = os.date("!%A, %B %d, %Y %H:%M:%S-UTC\r\n", t)
      end
      assert.matches("^%a+day, %a+ %d%d, %d%d%d%d %d%d:%d%d:%d%d%-UTC\r\n$", got)
      assert.is_truthy(table.concat(accepted, "|"):find(got, 1, true), got .. " is not within " .. table.concat(accepted, "|"))
    end)

    it("ignores what the client sends: one line, then a clean end of file", function()
      -- The request, 1 MiB (four times recv_buffer), is in the server's
      -- socket before the handler runs (the server is paused while the
      -- client connects and sends), and the handler never reads it.
      -- Closing a socket with unread input resets the connection; luaecho
      -- reads and drops the input and closes with FIN instead.
      local srv = start_example("daytime.lua")
      srv:pause()
      local sock = connect(srv)
      sock:settimeout(0)
      local sent, _, partial = sock:send(string.rep("what time is it?\n", MiB // 17))
      assert.is_true((sent or partial) > 0)
      srv:resume()
      local got, err = server.read_all_until_close(sock, 10)
      assert.equal("closed", err)
      assert.matches("^%a+day, %a+ %d%d, %d%d%d%d %d%d:%d%d:%d%d%-UTC\r\n$", got)
      -- After a FIN the client may still send; after a reset (which Linux
      -- also reports as end of file once the reply is read) it may not.
      assert.same({ 1 }, { sock:send("x") })
    end)

    it("prints one line for its header's nc command", function()
      local srv = start_example("daytime.lua")
      local code, lines = server.sh(("nc 127.0.0.1 %d < /dev/null"):format(srv.port), 20)
      assert.equal(0, code)
      assert.equal(1, #lines)
      assert.matches("^%a+day, %a+ %d%d, %d%d%d%d %d%d:%d%d:%d%d%-UTC\r$", lines[1])
    end)
  end)

  describe("sink_then_reply.lua", function()
    it("counts every byte until the client half-closes, then replies over the still-open direction", function()
      local srv = start_example("sink_then_reply.lua")
      local sock = connect(srv)
      local payload = server.random_bytes(MiB + 17)
      assert.same({ "received 1048593 bytes\n", "closed" },
        { server.exchange(sock, payload, { half_close = true, until_close = true, timeout = 30 }) })
    end)

    it("replies 'received 0 bytes' to a client that half-closes at once", function()
      local srv = start_example("sink_then_reply.lua")
      local sock = connect(srv)
      assert.same({ "received 0 bytes\n", "closed" },
        { server.exchange(sock, "", { half_close = true, until_close = true }) })
    end)

    it("sends nothing until the half-close", function()
      local srv = start_example("sink_then_reply.lua")
      local sock = connect(srv)
      assert(sock:send("some bytes"))
      assert.same({ "", "timeout" }, { server.recv_exactly(sock, 1, 0.3) })
      assert.same({ "received 10 bytes\n", "closed" },
        { server.exchange(sock, "", { half_close = true, until_close = true }) })
    end)

    it("does not reply when the connection is reset instead", function()
      -- No bytes before the reset: libuv reports a reset that arrives in
      -- the same poll as data as a plain end of input ("closed").
      local srv = start_watched("sink_then_reply.lua")
      local sock = connect(srv)
      assert(sock:setoption("linger", { on = true, timeout = 0 }))
      sock:close() -- sends RST
      assert.same({ n = 3, true, nil, "no failed send" }, srv:report("done", 10))
      assert.same({ n = 1, 0 }, srv:report("sent", 10))
    end)

    it("answers the nc command of its header", function()
      local srv = start_example("sink_then_reply.lua")
      local code, lines = server.sh(("head -c 100000 /dev/zero | nc -N 127.0.0.1 %d"):format(srv.port), 20)
      assert.same({ 0, { "received 100000 bytes" } }, { code, lines })
    end)
  end)

  describe("slow_echo.lua #needs_luaecho_module", function()
    it("echoes each message after half a second", function()
      local srv = start_example("slow_echo.lua")
      local sock = connect(srv)
      local t0 = proc.now()
      assert.same({ "slowly" }, { server.exchange(sock, "slowly", 10) })
      local elapsed = proc.now() - t0
      assert.is_true(elapsed >= 0.45 and elapsed < 5, "echoed after " .. elapsed .. "s")
      t0 = proc.now()
      assert.same({ "again" }, { server.exchange(sock, "again", 10) })
      elapsed = proc.now() - t0
      assert.is_true(elapsed >= 0.45 and elapsed < 5, "echoed after " .. elapsed .. "s")
    end)

    it("sleeps only the waiting connection: 50 clients at once all get their replies within about half a second", function()
      local srv = start_example("slow_echo.lua")
      local socks = {}
      for i = 1, 50 do socks[i] = connect(srv) end
      local t0 = proc.now()
      for i, sock in ipairs(socks) do assert(sock:send(("client %02d"):format(i))) end
      for i, sock in ipairs(socks) do
        assert.same({ ("client %02d"):format(i) }, { server.recv_exactly(sock, 9, 10) })
      end
      local elapsed = proc.now() - t0
      -- One after another would take 25 s.
      assert.is_true(elapsed >= 0.45 and elapsed < 3, "all replies took " .. elapsed .. "s")
    end)

    it("closes after the client's FIN once the last reply is sent", function()
      local srv = start_example("slow_echo.lua")
      local sock = connect(srv)
      assert.same({ "last words", "closed" },
        { server.exchange(sock, "last words", { half_close = true, until_close = true }) })
    end)
  end)

  describe("rst_vs_fin.lua", function()
    it("ends with a FIN after \"fin\": the client reads the answer, then end-of-file", function()
      local srv = start_example("rst_vs_fin.lua", { config = "trace = true\n" })
      local code, lines = run_client(srv, "rst_vs_fin.lua", "fin")
      assert.same({ 0, { "got 8 bytes: closing", "recv failed: closed" } }, { code, lines })
      expect_trace(srv, "FIN sent (our side closed)")
      expect_trace(srv, "closed (handler closed it)")
    end)

    it("ends with an RST after \"rst\": the client's recv fails with econnreset", function()
      local srv = start_example("rst_vs_fin.lua", { config = "trace = true\n" })
      local code, lines = run_client(srv, "rst_vs_fin.lua", "rst")
      assert.same({ 1, { "recv failed: econnreset" } }, { code, lines })
      expect_trace(srv, "reset (RST sent; 0 queued bytes discarded)")
      expect_trace(srv, "closed (handler reset it)")
    end)

    it("answers the nc commands of its header", function()
      local srv = start_example("rst_vs_fin.lua")
      local fmt = "echo %s | nc -N 127.0.0.1 %d"
      assert.same({ 0, { "closing" } }, { server.sh(fmt:format("fin", srv.port), 20) })
      assert.same({ 0, {} }, { server.sh(fmt:format("rst", srv.port), 20) })
    end)
  end)

  describe("clients/reset.lua", function()
    it("resets its connection: the server's recv fails with econnreset", function()
      local srv = server.start{ config = 'listen = "127.0.0.1:0"\ntrace = true\nhandler = "@DIR@/h.lua"\n',
        handlers = { ["h.lua"] = server.REPORT .. [[
return function(conn)
  local data, err = conn:recv()
  while data do data, err = conn:recv() end
  report("end", err)
end]] } }
      assert.same({ 0, {} }, { run_client(srv, "reset.lua") })
      assert.same({ n = 1, "econnreset" }, srv:report("end", 10))
      expect_trace(srv, "peer reset the connection (RST)")
      expect_trace(srv, "closed (reset by the peer)")
    end)
  end)

  describe("clients/upload.lua", function()
    it("uploads a word and zeros, half-closes, and prints the answer (its header's command)", function()
      local srv = start_example("sink_then_reply.lua")
      assert.same({ 0, { "send returned true", "got: received 4000006 bytes", "recv failed: closed" } },
        { run_client(srv, "upload.lua", "hello") })
    end)

    it("takes the number of zero bytes as its second argument", function()
      local srv = start_example("sink_then_reply.lua")
      assert.same({ 0, { "send returned true", "got: received 13 bytes", "recv failed: closed" } },
        { run_client(srv, "upload.lua", "word", "8") })
    end)
  end)

  describe("nagle.lua", function()
    -- Nagle plus the client's delayed ACK (up to 40 ms) coalesces the 50
    -- pieces sent a millisecond apart into a handful of reads; without it
    -- a reader that keeps up gets about one read per piece. Load on the
    -- machine only makes the reader slower, which coalesces the nodelay
    -- run too, so the margin asked for is wide of what a quiet machine
    -- shows (about 15 against 48).
    it("delivers small sends in fewer, larger reads with nodelay = false", function()
      local srv = start_example("nagle.lua")
      local with_nagle = nagle_reads(srv, "nagle")
      local without = nagle_reads(srv, "nodelay")
      assert(with_nagle * 2 <= without,
        ("reads with Nagle: %d, without: %d"):format(with_nagle, without))
    end)
  end)

  describe("backpressure.lua", function()
    it("makes send wait for a slow reader, and logs how long each send waited", function()
      local srv = start_example("backpressure.lua", { config = "trace = true\n" })
      local code, lines = run_client(srv, "slow_reader.lua", "4096", "0.05")
      assert.same({ 0, { "131072 bytes in 32 reads" } }, { code, lines })
      local longest = 0
      for n = 1, 8 do
        local line = srv:wait_line(server.record("info", ("conn %%d+: send %d of 16384 bytes waited [%%d.]+ s"):format(n)), 10)
        assert(line, srv:log_text())
        longest = math.max(longest, tonumber(line:match("waited ([%d.]+) s")))
      end
      -- The reader takes 4 KiB every 50 ms: a 16 KiB block takes 200 ms.
      assert(longest >= 0.1, srv:log_text())
      -- Trace lines come from a thread of their own, out of step with the
      -- log's other lines, but in order among themselves: once "closed"
      -- is there, so is every "send waits" and "send resumed" before it.
      assert(srv:wait_line("closed %(handler returned%)", 10), srv:log_text())
      local waits = 0
      for _, line in ipairs(srv:log()) do
        if line:find("send waits: %d+ bytes queued, over send_buffer 16384$") then waits = waits + 1 end
        if line:find("send resumed after %d+ ms$") then waits = waits - 1 end
      end
      assert.equal(0, waits, "every send that waited resumed:\n" .. srv:log_text())
      assert(srv:log_text():find("send waits:", 1, true), srv:log_text())
    end)

    it("sends all 131072 bytes at once to a reader that keeps up (the nc command of its header)", function()
      local srv = start_example("backpressure.lua")
      assert.same({ 0, { "131072" } }, { server.sh(("nc -d 127.0.0.1 %d | wc -c"):format(srv.port), 20) })
    end)
  end)

  describe("proxy.lua #needs_luaecho_module", function()
    -- Starts an upstream server (the built-in echo unless opts.handler /
    -- opts.example is given) and the proxy example pointing at it.
    local function start_chain(opts)
      opts = opts or {}
      local upstream
      if opts.example then
        upstream = start_example(opts.example)
      elseif opts.handler then
        upstream = server.start{
          config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\n',
          handlers = { ["h.lua"] = server.REPORT .. opts.handler },
        }
      else
        upstream = server.start{ args = { "--listen", "127.0.0.1:0" } }
      end
      local proxy = start_example("proxy.lua", { env = { LUAECHO_UPSTREAM = "127.0.0.1:" .. upstream.port } })
      return proxy, upstream
    end

    it("relays 16 MiB both ways at once, byte-exact, through to an echo server", function()
      local proxy = start_chain()
      local sock = connect(proxy)
      local payload = server.random_bytes(16 * MiB)
      local got, err = server.exchange(sock, payload, 90)
      assert.is_nil(err)
      assert_same_bytes(payload, got)
    end)

    it("relays 16 MiB, then passes the client's half-close on and the echo's close back", function()
      local proxy = start_chain()
      local sock = connect(proxy)
      local payload = server.random_bytes(16 * MiB)
      local got, err = server.exchange(sock, payload, { half_close = true, until_close = true, timeout = 90 })
      assert.equal("closed", err)
      assert_same_bytes(payload, got)
    end)

    it("passes the client's half-close upstream while the reply still flows back", function()
      -- sink_then_reply answers only after a FIN: the proxy must pass it on.
      local proxy = start_chain{ example = "sink_then_reply.lua" }
      local sock = connect(proxy)
      assert.same({ "received 1048576 bytes\n", "closed" },
        { server.exchange(sock, server.random_bytes(MiB), { half_close = true, until_close = true, timeout = 30 }) })
    end)

    it("passes the upstream's half-close to the client while the client's bytes still flow up", function()
      local proxy, upstream = start_chain{ handler = [[
        return function(conn)
          conn:send("from upstream\n")
          conn:shutdown("write")
          local count, data = 0, conn:recv()
          while data do
            count = count + #data
            data = conn:recv()
          end
          report("count", count)
        end]] }
      local sock = connect(proxy)
      assert.same({ "from upstream\n", "closed" }, { server.read_all_until_close(sock, 10) })
      -- The client has read EOF; its own direction is still open.
      assert(sock:send("after eof"))
      assert(sock:shutdown("send"))
      assert.same({ n = 1, 9 }, upstream:report("count", 10))
    end)

    it("ends the upstream connection when the client resets, without a handler error", function()
      local proxy, upstream = start_chain{ handler = [[
        return function(conn)
          local data, err = conn:recv()
          while data and conn:send(data) do data, err = conn:recv() end
          report("end", err)
        end]] }
      local sock = connect(proxy)
      assert.same({ "hello" }, { server.exchange(sock, "hello", 10) })
      assert(sock:setoption("linger", { on = true, timeout = 0 }))
      sock:close() -- sends RST
      assert.same({ n = 1, "closed" }, upstream:report("end", 10))
      proxy:signal("TERM")
      assert.equal(0, proxy:wait_exit(10))
      for _, line in ipairs(proxy:log()) do
        assert.is_nil(line:find("[error]", 1, true), proxy:log_text())
      end
    end)

    it("serves many clients at once, each its own upstream connection", function()
      local proxy = start_chain()
      local socks, payloads = {}, {}
      for i = 1, 20 do
        socks[i] = connect(proxy)
        payloads[i] = server.random_bytes(100 * KiB + i)
        assert(socks[i]:send(payloads[i]:sub(1, 1000)))
      end
      for i, sock in ipairs(socks) do
        assert.same({ payloads[i]:sub(1, 1000) }, { server.recv_exactly(sock, 1000, 10) })
        local got, err = server.exchange(sock, payloads[i]:sub(1001), 30)
        assert.is_nil(err)
        assert_same_bytes(payloads[i]:sub(1001), got)
      end
    end)

    it("closes the client's connection and logs a warning when the upstream refuses", function()
      local probe = assert(require("socket").bind("127.0.0.1", 0))
      local _, port = probe:getsockname()
      probe:close() -- nobody listens on port now
      local proxy = start_example("proxy.lua", { env = { LUAECHO_UPSTREAM = "127.0.0.1:" .. port } })
      local sock = connect(proxy)
      assert.same({ "", "closed" }, { server.read_all_until_close(sock, 10) })
      assert(proxy:wait_line(server.record("warn", "conn %d+: proxy: cannot connect to "
        .. server.literal("127.0.0.1:" .. port) .. ": econnrefused"), 10), proxy:log_text())
    end)
  end)
end)
