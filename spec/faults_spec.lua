-- The fault library, require "luaecho.faults": each fault measured through
-- real sockets, as Toxiproxy's own tests do. One luaecho runs the proxy
-- handler on 127.0.0.1:0 and, on a Unix socket in the run's directory, the
-- upstream it fronts (an echo unless a test says otherwise); the spec is
-- the client. Timing bounds are generous (2 shared cores): each checks
-- that a fault added at least what it promises, and not wildly more.
local server = require "server"
local proc = require "spec_proc"
local socket = require "socket"
local read_sizes = require("reads").read_sizes

local record = server.record

-- The upstream handlers a test may choose.
local ECHO = [[
return function(conn)
  repeat local d = conn:recv() until not (d and conn:send(d))
end
]]

-- Starts luaecho with the fault list `faults_src` (Lua source of a list
-- expression, `faults` in scope) in front of an upstream handler. opts:
-- upstream = handler source (default ECHO), proxy_opts = Lua source of
-- faults.proxy's options, prelude = Lua source run before the list,
-- listeners = extra listener entries (Lua source), files = extra files.
local function start_proxy(faults_src, opts)
  opts = opts or {}
  local files = opts.files or {}
  files["up.lua"] = server.REPORT .. (opts.upstream or ECHO)
  files["h.lua"] = ([[
local luaecho = require "luaecho"
local faults = require "luaecho.faults"
%s
local FAULTS = %s
return faults.handler("unix:@DIR@/up.sock", FAULTS, %s)
]]):format(opts.prelude or "", faults_src, opts.proxy_opts or "{}")
  local listeners = { '"127.0.0.1:0"', '{ address = "unix:@DIR@/up.sock", handler = "@DIR@/up.lua" }' }
  for _, l in ipairs(opts.listeners or {}) do listeners[#listeners + 1] = l end
  return server.start{
    config = ('listen = { %s }\nhandler = "@DIR@/h.lua"\nshutdown_timeout = 1\n%s'):format(table.concat(listeners, ", "), opts.config or ""),
    files = files,
    expect = #listeners,
  }
end

local function connect(srv)
  return assert(server.connect(srv.addrs[1].host, srv.addrs[1].port))
end

-- Sends data and returns the seconds until n bytes came back, and them.
local function timed_exchange(sock, data, n)
  local t0 = proc.now()
  local got, err = server.exchange(sock, data, { expect = n or #data })
  assert(err == nil, "exchange failed: " .. tostring(err))
  return proc.now() - t0, got
end

-- The number of byte positions where a and b differ.
local function differences(a, b)
  local n = 0
  for i = 1, math.max(#a, #b) do
    if a:byte(i) ~= b:byte(i) then n = n + 1 end
  end
  return n
end

-- A fixed payload, the same in every run.
local function payload(n)
  local t = {}
  for i = 1, n do t[i] = string.char(32 + (i * 7) % 95) end
  return table.concat(t)
end

-- Waits for the log line of the next proxied connection; returns its seed
-- and the names of the faults on each direction.
local function conn_line(srv)
  local line = assert(srv:wait_line("faults: seed %d+", 5), "no faults log line:\n" .. srv:log_text())
  local seed, down, up = line:match("faults: seed (%d+) %b(); downstream: (.-); upstream: (.*)$")
  return math.tointeger(tonumber(seed)), down, up
end

-- Runs luaecho --check on a handler with source src; returns the exit code
-- and the output (stderr only when stream says so) as one string.
local function check_handler(src, stream)
  local code, lines = server.run{
    args = { "--check" },
    config = 'handler = "@DIR@/h.lua"\n',
    stream = stream,
    files = { ["h.lua"] = src },
  }
  return code, table.concat(lines, "\n")
end

-- Handler source that loads the library and defines raises(text, f, ...):
-- asserts that f(...) raises an error containing text.
local RAISES = [[
local faults = require "luaecho.faults"
local function raises(pattern, f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok and err:find(pattern, 1, true), tostring(err))
end
]]

describe("luaecho.faults", function()
  after_each(server.cleanup)

  describe("loading", function()
    it("is bundled in the binary: require works from any directory, and --check loads it", function()
      local code, out = check_handler([[
local faults = require "luaecho.faults"
assert(package.preload["luaecho.faults"], "not bundled")
local f = faults.latency(200, 20)
assert(f.type == "latency" and f.stream == "downstream" and f.toxicity == 1 and f.name == "latency_downstream")
return function() end
]])
      assert.equal(0, code, out)
    end)

    it("rejects a bad fault at load time with a message naming it", function()
      local code, out = check_handler(
        'local faults = require "luaecho.faults"\nlocal F = { faults.latency(-1) }\nreturn function() end\n', "stderr")
      assert.equal(1, code)
      assert.matches("h.lua:2: faults.latency: latency must be a number of milliseconds >= 0, got %-1", out)
    end)

    it("checks plain fault tables with faults.new and describes them in one line", function()
      local code, out = check_handler([[
local faults = require "luaecho.faults"
local f = faults.new{ type = "slicer", average_size = 100, stream = "upstream" }
assert(faults.describe(f) == "slicer_upstream: slicer average_size=100 size_variation=0 delay=0 (upstream, toxicity 1)", faults.describe(f))
local ok, err = pcall(faults.new, { type = "slicer", average_size = 10, size_variation = 10 })
assert(not ok and err:find("size_variation %(10%) must be smaller than average_size %(10%)"), err)
ok, err = pcall(faults.new, { type = "latency", latency = 1, stream = "sideways" })
assert(not ok and err:find('stream must be "downstream", "upstream" or "both", got "sideways"', 1, true), err)
faults.new{ type = "warp" }
]], "stderr")
      assert.equal(1, code)
      assert.matches('faults: unknown fault type "warp"', out)
    end)
  end)

  describe("attributes", function()
    it("refuse infinity, which would make a fault do nothing (jitter: NaN delays) or wait for ever", function()
      local code, out = check_handler(RAISES .. [[
raises("faults.latency: jitter must be a number of milliseconds >= 0, got inf", faults.latency, 1, math.huge)
raises("faults.latency: latency must be a number of milliseconds >= 0, got inf", faults.latency, math.huge)
raises("faults.bandwidth: rate must be a number of KB/s >= 0, got inf", faults.bandwidth, math.huge)
raises("faults.slicer: delay must be a number of microseconds >= 0, got inf", faults.slicer, 10, 0, math.huge)
raises("faults.slow_close: delay must be a number of milliseconds >= 0, got inf", faults.slow_close, math.huge)
raises("faults.latency: latency must be a number of milliseconds >= 0, got -inf", faults.latency, -math.huge)
-- NaN reads "nan" (C's printf says "-nan" for 0/0 on this platform).
raises("faults.latency: latency must be a number of milliseconds >= 0, got nan", faults.latency, 0/0)
return function() end
]])
      assert.equal(0, code, out)
    end)
  end)

  describe("misuse", function()
    it("raises at the caller's line, naming the function and the argument", function()
      local code, out = check_handler(RAISES .. [[
raises("bad argument #1 to 'faults.handler' (address string expected, got number)", faults.handler, 7000, {})
raises("faults.handler: port must be from 0 to 65535, got 99999", faults.handler, "127.0.0.1:99999", {})
raises("bad argument #3 to 'faults.handler' (table of options expected, got number)", faults.handler, "127.0.0.1:1", {}, 5)
raises("bad argument #1 to 'faults.describe' (fault table expected, got number)", faults.describe, 5)
raises("bad argument #4 to 'faults.proxy' (table of options expected, got string)", faults.proxy, nil, nil, {}, "x")
local _, err = pcall(function() local d = faults.describe(5); return d end)
assert(err:find("h%.lua:%d+: bad argument #1 to 'faults%.describe'"), err)
return function() end
]])
      assert.equal(0, code, out)
    end)
  end)

  describe("proxy()", function()
    -- It waited on itself for ever.
    it("refuses the client connection as its own upstream", function()
      local srv = server.start{
        config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\n',
        handlers = { ["h.lua"] = [[
local faults = require "luaecho.faults"
return function(conn)
  local _, err = pcall(faults.proxy, conn, conn, {})
  conn:send(err)
end
]] },
      }
      local sock = assert(server.connect(srv.host, srv.port))
      local got = server.read_all_until_close(sock, 10)
      assert.equal("bad argument #2 to 'faults.proxy' (the upstream is the client connection itself)", got)
    end)
  end)

  describe("latency()", function()
    it("delays the answer by latency ms, downstream by default", function()
      local srv = start_proxy("{ faults.latency(200) }")
      local sock = connect(srv)
      local elapsed, got = timed_exchange(sock, "ping")
      assert.equal("ping", got)
      assert.is_true(elapsed >= 0.19 and elapsed < 0.9, ("round trip %.3f s"):format(elapsed))
    end)

    it("keeps each chunk's own delay: chunks sent back to back are not delayed one after another", function()
      local srv = start_proxy("{ faults.latency(400) }")
      local sock = connect(srv)
      -- One byte every 100 ms, each timed from its send to its echo. A
      -- proxy that read nothing while a chunk waited would read the second
      -- byte 400 ms after the first and send it back 700 ms after its send.
      local sent, delays, next_send = {}, {}, proc.now()
      local deadline = proc.now() + 10
      sock:settimeout(0)
      while #delays < 6 and proc.now() < deadline do
        if #sent < 6 and proc.now() >= next_send then
          assert(sock:send(tostring(#sent + 1)))
          sent[#sent + 1], next_send = proc.now(), proc.now() + 0.1
        end
        socket.select({ sock }, nil, 0.01)
        local data, _, partial = sock:receive(6)
        for _ = 1, #(data or partial) do delays[#delays + 1] = proc.now() - sent[#delays + 1] end
      end
      sock:settimeout(server.IO_TIMEOUT)
      assert.equal(6, #delays)
      for i, d in ipairs(delays) do
        assert.is_true(d >= 0.39 and d < 0.6, ("chunk %d came back after %.3f s"):format(i, d))
      end
    end)

    it("adds latency +/- jitter on each direction it is given", function()
      local srv = start_proxy('{ faults.latency(150, 30, { stream = "both" }) }')
      local sock = connect(srv)
      for _ = 1, 3 do
        local elapsed = timed_exchange(sock, "x")
        assert.is_true(elapsed >= 0.235 and elapsed < 1.2, ("round trip %.3f s"):format(elapsed))
      end
    end)
  end)

  describe("bandwidth()", function()
    it("passes data at the rate set, in KB/s of 1000 bytes", function()
      local srv = start_proxy("{ faults.bandwidth(10) }")
      local sock = connect(srv)
      local data = payload(10000)
      local elapsed, got = timed_exchange(sock, data)
      assert(server.same_bytes(data, got))
      -- 10000 bytes at 10 KB/s: 1 s.
      assert.is_true(elapsed >= 0.9 and elapsed < 3, ("10000 bytes took %.3f s"):format(elapsed))
    end)

    it("passes data unthrottled at a rate too large to slice (1e300, 1e17)", function()
      local srv = start_proxy("{ faults.bandwidth(1e300), faults.bandwidth(1e17, { stream = 'upstream' }) }")
      local sock = connect(srv)
      local data = payload(10000)
      local _, got = timed_exchange(sock, data)
      assert(server.same_bytes(data, got))
      assert.is_nil(srv:log_text():find("[error]", 1, true), srv:log_text())
    end)
  end)

  describe("slicer()", function()
    it("cuts data into slices of average_size +/- size_variation, delay microseconds apart", function()
      local srv = start_proxy("{ faults.slicer(100, 20, 40000) }")
      local sock = connect(srv)
      local data = payload(1000)
      assert(sock:send(data))
      local sizes, got, spread = read_sizes(sock, #data)
      assert(server.same_bytes(data, got))
      local in_range = 0
      for i = 1, #sizes - 1 do
        if sizes[i] >= 80 and sizes[i] <= 120 then in_range = in_range + 1 end
      end
      -- 1000 bytes make 9 to 13 slices. A loaded machine may join two
      -- slices in one read now and then, so most reads, not all, are
      -- slice-sized.
      assert.is_true(#sizes >= 6, "reads: " .. table.concat(sizes, " "))
      assert.is_true(in_range >= (#sizes - 1) * 0.6, "reads: " .. table.concat(sizes, " "))
      assert.is_true(spread >= 7 * 0.04, ("slices spread over %.3f s"):format(spread))
    end)

    it("keeps every byte, once, when average_size + size_variation overflows an integer", function()
      local srv = start_proxy("{ faults.slicer(math.maxinteger, math.maxinteger - 1) }")
      local sock = connect(srv)
      local data = payload(1000)
      local got, err = server.exchange(sock, data, { half_close = true, until_close = true })
      assert.equal("closed", err)
      assert(got == data, ("sent %d bytes, got %d, %d of them different"):format(#data, #got, differences(data, got)))
    end)
  end)

  describe("slow_close()", function()
    it("passes the end of the stream delay ms late", function()
      local srv = start_proxy("{ faults.slow_close(300) }")
      local sock = connect(srv)
      local got = server.exchange(sock, "bye", { half_close = true })
      assert.equal("bye", got)
      local t0 = proc.now()
      local rest, err = server.read_all_until_close(sock)
      local elapsed = proc.now() - t0
      assert.equal("", rest)
      assert.equal("closed", err)
      assert.is_true(elapsed >= 0.27 and elapsed < 2, ("FIN came %.3f s after the data"):format(elapsed))
    end)
  end)

  describe("timeout()", function()
    it("lets nothing through and closes the connection after timeout ms", function()
      local srv = start_proxy("{ faults.timeout(300) }")
      local sock = connect(srv)
      local t0 = proc.now()
      local got, err = server.exchange(sock, "hello", { until_close = true })
      local elapsed = proc.now() - t0
      assert.equal("", got)
      assert.equal("closed", err)
      assert.is_true(elapsed >= 0.28 and elapsed < 2, ("closed after %.3f s"):format(elapsed))
    end)

    it("with 0 holds the connection open without data until the client ends it", function()
      local srv = start_proxy("{ faults.timeout(0) }")
      local sock = connect(srv)
      local got, err = server.exchange(sock, "hello", { expect = 1, timeout = 0.6 })
      assert.equal("", got)
      assert.equal("timeout", err)
      -- Still open: the client's FIN goes through the echo and back.
      got, err = server.exchange(sock, "", { until_close = true, half_close = true })
      assert.equal("", got)
      assert.equal("closed", err)
    end)
  end)

  describe("limit_data()", function()
    it("cuts the stream at the limit and closes the connection", function()
      local srv = start_proxy("{ faults.limit_data(300) }")
      local sock = connect(srv)
      local data = payload(1000)
      local got, err = server.exchange(sock, data, { until_close = true })
      assert.equal("closed", err)
      assert.equal(data:sub(1, 300), got)
    end)

    it("upstream, lets the upstream server read exactly the limit", function()
      local srv = start_proxy('{ faults.limit_data(300, { stream = "upstream" }) }', {
        upstream = [[
return function(conn)
  local n, d = 0, conn:recv()
  while d do n = n + #d; d = conn:recv() end
  report("got", n)
end
]] })
      local sock = connect(srv)
      local _, err = server.exchange(sock, payload(1000), { until_close = true })
      assert.equal("closed", err)
      assert.equal(300, srv:report("got")[1])
    end)
  end)

  describe("reset_peer()", function()
    it("resets the client's connection timeout ms after the first data", function()
      -- LuaSocket reports a reset as "closed", like a FIN; a luaecho
      -- outbound connection names it. So the client here is a handler on a
      -- third listener: it connects to the proxy port the spec sends it.
      local srv = start_proxy("{ faults.reset_peer(100) }", {
        listeners = { '{ address = "unix:@DIR@/client.sock", handler = "@DIR@/client.lua" }' },
        files = { ["client.lua"] = server.SHOW .. [[
local luaecho = require "luaecho"
return function(conn)
  conn:setopts{ packet = "line" }
  local port = math.tointeger(tonumber(conn:recv():match("%d+")))
  local c = assert(luaecho.connect("127.0.0.1", port))
  local t0 = luaecho.now()
  c:send("x")
  local data, err = c:recv(0, 5)
  conn:send(show(data, err, luaecho.now() - t0 >= 0.09) .. "\n")
end
]] },
      })
      local drv = assert(server.connect_unix(srv.addrs[3].path))
      assert(drv:send(srv.addrs[1].port .. "\n"))
      assert.equal('nil,"econnreset",true', assert(drv:receive("*l")))
    end)
  end)

  describe("corrupt()", function()
    it("flips bytes at the rate set and leaves the length alone", function()
      local srv = start_proxy("{ faults.corrupt(0.1) }", { proxy_opts = "{ seed = 7 }" })
      local sock = connect(srv)
      local data = payload(4000)
      local _, got = timed_exchange(sock, data)
      assert.equal(#data, #got)
      local n = differences(data, got)
      -- About 400 expected (sd 19).
      assert.is_true(n >= 300 and n <= 500, n .. " bytes differ")
    end)

    it("with a rate too small for a float (1e-17, 1e-300) corrupts nothing and raises nothing", function()
      local srv = start_proxy("{ faults.corrupt(1e-17, { stream = 'upstream' }), faults.corrupt(1e-300) }")
      local sock = connect(srv)
      local data = payload(4000)
      local _, got = timed_exchange(sock, data)
      assert(got == data, ("%d of %d bytes changed"):format(differences(data, got), #data))
      assert.is_nil(srv:log_text():find("[error]", 1, true), srv:log_text())
    end)

    it("leaves length headers alone in a framed mode, so messages stay whole", function()
      local srv = start_proxy("{ faults.corrupt(0.5) }", { config = "packet = 2\n" })
      local sock = connect(srv)
      local msgs = {}
      for i = 1, 20 do msgs[i] = string.pack(">s2", payload(50 + i)) end
      local data = table.concat(msgs)
      local _, got = timed_exchange(sock, data)
      local pos = 1
      for i = 1, 20 do
        local body, nxt = string.unpack(">s2", got, pos)
        assert.equal(50 + i, #body)
        pos = nxt
      end
    end)
  end)

  describe("duplicate() and drop()", function()
    it("send whole line-mode messages twice or not at all", function()
      local srv = start_proxy("{ faults.duplicate(0.3), faults.drop(0.3) }",
        { config = 'packet = "line"\n', proxy_opts = "{ seed = 11 }" })
      local sock = connect(srv)
      local lines = {}
      for i = 1, 60 do lines[i] = ("line %02d\n"):format(i) end
      -- Three end markers: drop could take one.
      assert(sock:send(table.concat(lines) .. "end\nend\nend\n"))
      local seen, dup, dropped = {}, 0, 0
      repeat
        local l = assert(sock:receive("*l"))
        assert.matches("^line %d%d$", l == "end" and "line 00" or l)
        if l ~= "end" then seen[l] = (seen[l] or 0) + 1 end
      until l == "end"
      for i = 1, 60 do
        local count = seen[("line %02d"):format(i)] or 0
        assert.is_true(count <= 2)
        if count == 2 then dup = dup + 1 elseif count == 0 then dropped = dropped + 1 end
      end
      -- About 18 of each are expected; "end" may itself be doubled or lost,
      -- which only changes where reading stops.
      assert.is_true(dup >= 5 and dup <= 35, dup .. " duplicated")
      assert.is_true(dropped >= 5 and dropped <= 35, dropped .. " dropped")
    end)

    it("work on length-prefixed messages in packet = 1, whatever TCP does to them", function()
      local srv = start_proxy("{ faults.duplicate(1) }", { config = "packet = 1\n" })
      local sock = connect(srv)
      local data = string.pack(">s1>s1>s1", "one", "", "three")
      local _, got = timed_exchange(sock, data, 2 * #data)
      assert.equal(string.pack(">s1>s1>s1>s1>s1>s1", "one", "one", "", "", "three", "three"), got)
    end)

    it("refuse a raw connection, naming the fault", function()
      local srv = start_proxy("{ faults.drop(0.5) }")
      local sock = connect(srv)
      local _, err = server.read_all_until_close(sock)
      assert.equal("closed", err)
      assert(srv:wait_line('faults.proxy: drop works on whole messages: set packet to 1, 2, 4 or "line"'),
        srv:log_text())
    end)
  end)

  describe("stall_after()", function()
    it("passes the first bytes, then nothing more while the connection stays open", function()
      local srv = start_proxy("{ faults.stall_after(100) }")
      local sock = connect(srv)
      local data = payload(300)
      local got, err = server.exchange(sock, data, { timeout = 0.8 })
      assert.equal("timeout", err)
      assert.equal(data:sub(1, 100), got)
      got, err = server.exchange(sock, "more", { expect = 1, timeout = 0.4 })
      assert.equal("", got)
      assert.equal("timeout", err)
    end)

    it("stops reading the stalled side, so its writes block", function()
      local srv = start_proxy("{ faults.stall_after(10) }", {
        upstream = [[
return function(conn)
  conn:setopts{ send_timeout = 0.5 }
  local chunk, sent, ok, err = string.rep("x", 65536), 0, true, nil
  while ok and sent < 64 * 1024 * 1024 do
    ok, err = conn:send(chunk)
    if ok then sent = sent + #chunk end
  end
  report("sent", sent, err)
end
]] })
      local sock = connect(srv)
      local got = server.exchange(sock, "go", { expect = 10 })
      assert.equal(10, #got)
      local sent = srv:report("sent", 10)
      assert.equal("timeout", sent[2])
      assert.is_true(sent[1] < 16 * 1024 * 1024, sent[1] .. " bytes sent")
    end)
  end)

  describe("a fault that fails", function()
    it("ends the proxy at once instead of leaving the client waiting", function()
      -- corrupt(1) after latency runs in the writer coroutine; flipping
      -- every byte of 100 KB computes past a cpu_limit of 1 ms, which
      -- stops that coroutine with an error.
      local srv = start_proxy("{ faults.latency(0), faults.corrupt(1) }", { config = "cpu_limit = 0.001\n" })
      local sock = connect(srv)
      local _, err = server.exchange(sock, payload(100000), { until_close = true, timeout = 5 })
      assert.equal("closed", err)
      assert.truthy(srv:wait_line("spawned coroutine error: .*cpu_limit exceeded", 5), srv:log_text())
    end)
  end)

  describe("directions", function()
    local FIXED_REPLY = [[
return function(conn)
  local n = (_G.count or 0) + 1
  _G.count = n
  local d = conn:recv(10)
  report("c" .. n, d == "abcdefghij")
  conn:send("0123456789")
end
]]

    it("apply a fault only to the direction it names", function()
      local srv = start_proxy('{ faults.corrupt(1, { stream = "upstream" }) }', { upstream = FIXED_REPLY })
      local sock = connect(srv)
      local _, got = timed_exchange(sock, "abcdefghij", 10)
      assert.equal("0123456789", got)
      assert.is_false(srv:report("c1")[1])
    end)

    it("roll toxicity per connection and per direction, and the log says which", function()
      local srv = start_proxy('{ faults.corrupt(1, { stream = "both", toxicity = 0.5 }) }',
        { upstream = FIXED_REPLY, proxy_opts = "{ seed = 2026 }" })
      local down, up, differ = 0, 0, 0
      for i = 1, 40 do
        local sock = connect(srv)
        local _, got = timed_exchange(sock, "abcdefghij", 10)
        sock:close()
        local down_hit = got ~= "0123456789"
        local up_hit = srv:report("c" .. i)[1] == false
        local _, log_down, log_up = conn_line(srv)
        assert.equal(down_hit, log_down == "corrupt_both", "connection " .. i)
        assert.equal(up_hit, log_up == "corrupt_both", "connection " .. i)
        down = down + (down_hit and 1 or 0)
        up = up + (up_hit and 1 or 0)
        differ = differ + (down_hit ~= up_hit and 1 or 0)
      end
      assert.is_true(down >= 8 and down <= 32, down .. " of 40 downstream")
      assert.is_true(up >= 8 and up <= 32, up .. " of 40 upstream")
      assert.is_true(differ >= 4, differ .. " connections had one direction only")
    end)
  end)

  describe("seeds", function()
    -- Runs 3 connections through corrupt(0.05) and returns what each got
    -- back and the seed each logged.
    local function corrupted_runs(proxy_opts)
      local srv = start_proxy("{ faults.corrupt(0.05) }", { proxy_opts = proxy_opts })
      local outs, seeds = {}, {}
      for i = 1, 3 do
        local sock = connect(srv)
        outs[i] = select(2, timed_exchange(sock, payload(2000)))
        seeds[i] = conn_line(srv)
        sock:close()
      end
      srv:stop()
      return outs, seeds
    end

    it("give the same faults to the same connections in a new run, and another seed other faults", function()
      local a, seeds_a = corrupted_runs("{ seed = 99 }")
      local b, seeds_b = corrupted_runs("{ seed = 99 }")
      local c = corrupted_runs("{ seed = 100 }")
      for i = 1, 3 do
        assert.equal(seeds_a[i], seeds_b[i])
        assert.is_true(a[i] == b[i], "connection " .. i .. " differs between runs")
        assert.is_true(a[i] ~= c[i], "connection " .. i .. " is the same with another seed")
        assert.is_true(a[i] ~= payload(2000))
      end
      assert.is_true(a[1] ~= a[2] and a[2] ~= a[3], "connections of one run got the same faults")
    end)

    it("replay one logged connection with conn_seed, and faults.seed sets every proxy's seed", function()
      local a, seeds = corrupted_runs("{ seed = 5 }")
      local replay = corrupted_runs(("{ conn_seed = %d }"):format(seeds[2]))
      assert.is_true(replay[1] == a[2], "conn_seed did not replay connection 2")
      local srv = start_proxy("{ faults.corrupt(0.05) }", { prelude = "faults.seed(5)" })
      local sock = connect(srv)
      local _, got = timed_exchange(sock, payload(2000))
      assert.is_true(got == a[1], "faults.seed(5) differs from { seed = 5 }")
    end)
  end)

  describe("changing faults while the server runs", function()
    it("gives new connections the new list after a reload; open ones keep theirs", function()
      local srv = start_proxy("{}", { config = "watch = false\n" })
      local old = connect(srv)
      assert.equal("abc", select(2, timed_exchange(old, "abc")))
      server.write_file(srv:file("h.lua"), ([[
local faults = require "luaecho.faults"
return faults.handler("unix:%s", { faults.limit_data(2) })
]]):format(srv:file("up.sock")))
      srv:signal("HUP")
      assert(srv:wait_line(record("info", "reloaded .*h%.lua %(version 2%)"), 5), srv:log_text())
      local new = connect(srv)
      local got, err = server.exchange(new, "abc", { until_close = true })
      assert.equal("ab", got)
      assert.equal("closed", err)
      assert.equal("def", select(2, timed_exchange(old, "def")))
    end)

    it("lists running proxies with faults.active() and edits a named list in place", function()
      local srv = start_proxy("{}", {
        proxy_opts = '{ name = "main" }',
        listeners = { '{ address = "unix:@DIR@/admin.sock", handler = "@DIR@/admin.lua" }' },
        files = { ["admin.lua"] = [[
local faults = require "luaecho.faults"
return function(conn)
  conn:setopts{ packet = "line" }
  local cmd = conn:recv()
  if cmd == "list\n" then
    for _, p in ipairs(faults.active()) do
      conn:send(("%d %s %s %s [%s]\n"):format(p.id, p.name, p.client, p.seed, table.concat(p.downstream, ",")))
    end
  elseif cmd == "limit\n" then
    table.insert(faults.lists().main, faults.limit_data(2))
  end
  conn:send("ok\n")
end
]] },
      })
      local function admin(cmd)
        local a = assert(server.connect_unix(srv.addrs[3].path))
        assert(a:send(cmd .. "\n"))
        local lines = {}
        repeat
          local l = assert(a:receive("*l"))
          lines[#lines + 1] = l
        until l == "ok"
        return lines
      end
      local open = connect(srv)
      assert.equal("abc", select(2, timed_exchange(open, "abc")))
      local seed = conn_line(srv)
      local listed = admin("list")
      assert.equal(2, #listed)
      assert.matches("^%d+ main 127%.0%.0%.1:%d+ " .. seed .. " %[%]$", listed[1])
      admin("limit")
      local new = connect(srv)
      local got, err = server.exchange(new, "abc", { until_close = true })
      assert.equal("ab", got)
      assert.equal("closed", err)
      assert.equal("def", select(2, timed_exchange(open, "def")))
    end)
  end)

  describe("lua/examples/toxic_proxy_config.lua", function()
    it("fronts the upstream in LUAECHO_UPSTREAM with the example's faults, as its header says", function()
      local upstream = server.start{ args = { "--listen", "127.0.0.1:0" } }
      local srv = server.start{
        args = { server.REPO .. "/lua/examples/toxic_proxy_config.lua" },
        env = { LUAECHO_LISTEN = "127.0.0.1:0", LUAECHO_UPSTREAM = "127.0.0.1:" .. upstream.port,
                LUAECHO_FAULTS_SEED = "7" },
      }
      local t0 = proc.now()
      local code, lines = server.sh(("printf 'slow\\n' | nc -N 127.0.0.1 %d"):format(srv.port))
      local elapsed = proc.now() - t0
      assert.equal(0, code)
      assert.same({ "slow" }, lines)
      assert.is_true(elapsed >= 0.18 and elapsed < 2, ("answer after %.3f s"):format(elapsed))
      local _, down, up = conn_line(srv)
      assert.equal("latency_downstream, bandwidth_downstream", down)
      assert.equal("slicer_upstream", up)
    end)

    it("runs from an installed luaecho, which has the library built in", function()
      local build = os.getenv("LUAECHO_BUILD_DIR") or "./build"
      local prefix = assert(proc.mkdtemp("/tmp/luaecho-spec."))
      server.defer(function() os.execute("rm -rf '" .. prefix .. "'") end)
      local code, lines = server.sh(("cmake --install '%s' --prefix '%s'"):format(build, prefix), 120)
      assert.equal(0, code, table.concat(lines, "\n"))
      assert.is_true(server.exists(prefix .. "/share/luaecho/luaecho/faults.lua"))
      local upstream = server.start{ args = { "--listen", "127.0.0.1:0" } }
      local saved = server.bin
      server.bin = prefix .. "/bin/luaecho"
      local ok, srv = pcall(server.start, {
        args = { prefix .. "/share/luaecho/examples/toxic_proxy_config.lua" },
        env = { LUAECHO_LISTEN = "127.0.0.1:0", LUAECHO_UPSTREAM = "127.0.0.1:" .. upstream.port,
                LUAECHO_FAULTS_SEED = "7" },
      })
      server.bin = saved
      assert(ok, srv)
      local sock = connect(srv)
      local elapsed, got = timed_exchange(sock, "installed")
      assert.equal("installed", got)
      assert.is_true(elapsed >= 0.18, ("answer after %.3f s"):format(elapsed))
    end)
  end)
end)
