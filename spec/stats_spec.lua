-- conn:stats() and luaecho.stats(): every field, observed from a handler
-- while real clients provoke what it counts (docs/observability.md lists
-- the fields).
local pretty = require "pl.pretty"
local proc = require "spec_proc"
local server = require "server"

local record, literal = server.record, server.literal

-- Lua source defining ser(t): a table of strings, numbers, booleans and
-- tables as one line of Lua source ("return {...}").
local SER = [[
local function ser(t)
  local function val(v)
    if type(v) == "table" then
      local out = {}
      for k, x in pairs(v) do out[#out + 1] = ("[%q]=%s"):format(k, val(x)) end
      return "{" .. table.concat(out, ",") .. "}"
    elseif type(v) == "string" then
      return ("%q"):format(v)
    elseif math.type(v) == "float" then
      return ("%.17g"):format(v)
    end
    return tostring(v)
  end
  return "return " .. val(t)
end
local luaecho = require "luaecho"
]]

-- Starts luaecho running SER .. REPORT .. handler as h.lua.
local function start(handler, config)
  return server.start{
    config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\nshutdown_timeout = 1\n' .. (config or ""),
    handlers = { ["h.lua"] = SER .. server.REPORT .. handler },
  }
end

local function connect(srv)
  return assert(server.connect(srv.host, srv.port))
end

-- Sends a command line and returns the reply line.
local function say(sock, cmd)
  assert(sock:send(cmd .. "\n"))
  return server.receive_line(sock)
end

-- Sends a command line and returns the reply loaded as Lua.
local function ask(sock, cmd)
  return assert(load(say(sock, cmd), "=reply"))()
end

-- Waits for the handler's report(name, ser(...)) and returns the table.
local function reported(srv, name)
  local r = assert(srv:report(name), "no report " .. name .. "; log:\n" .. srv:log_text())
  return assert(load(r[1], "=" .. name))()
end

-- A handler answering "stats" with conn:stats(), "server" with
-- luaecho.stats(), and echoing anything else; line framing.
local COMMANDS = [[
local function serve(conn)
  conn:setopts{ packet = "line" }
  for cmd in function() return conn:recv() end do
    cmd = cmd:gsub("\n$", "")
    local reply
    if cmd == "stats" then
      reply = ser(conn:stats())
    elseif cmd == "server" then
      reply = ser(luaecho.stats())
    elseif cmd == "recv?" or cmd == "sleep?" then
      -- A task says what the handler waits on once it does.
      luaecho.spawn(function()
        luaecho.sleep(0.001)
        conn:send(conn:stats().waits_on .. "\n")
      end)
      if cmd == "sleep?" then luaecho.sleep(0.3) end
    elseif cmd == "boom" then
      error("boom")
    elseif cmd == "spin" then
      local t = luaecho.now()
      while luaecho.now() - t < 0.1 do end
      reply = "spun"
    elseif cmd == "forever" then
      while true do end
    else
      reply = cmd
    end
    if reply and not conn:send(reply .. "\n") then return end
  end
end
return serve
]]

describe("conn:stats()", function()
  after_each(server.cleanup)

  it("counts bytes and messages, and shows the kernel's view", function()
    local srv = start(COMMANDS)
    local sock = connect(srv)
    assert.equal("hello", say(sock, "hello"))
    local s = ask(sock, "stats")
    -- In: "hello\n" and "stats\n"; out: the echoed line.
    assert.same({ 1, 12, 2, 6, 1, 0, 0, false, true, "open", "running" },
      { s.id, s.bytes_in, s.msgs_in, s.bytes_out, s.msgs_out, s.buffered, s.queued,
        s.peer_fin, s.reading, s.state, s.waits_on })
    assert.is_number(s.age)
    assert(s.age >= 0 and s.age < 60)
    local k = s.kernel
    assert.equal("ESTABLISHED", k.state)
    assert.equal(0, k.recv_q)
    assert(k.send_q >= 0)
    assert(k.rtt_ms >= 0 and k.rttvar_ms >= 0)
    assert(k.cwnd > 0 and k.mss > 0)
    assert(k.retransmits >= 0 and k.total_retrans >= 0)
  end)

  it("says what the handler waits on", function()
    local srv = start(COMMANDS)
    local sock = connect(srv)
    assert.equal("conn:recv", say(sock, "recv?"))
    assert.equal("luaecho.sleep", say(sock, "sleep?"))
  end)

  it("counts bytes buffered but not yet received", function()
    local srv = start([[
return function(conn)
  local n = 0
  repeat luaecho.sleep(0.005); n = n + 1 until conn:stats().buffered == 6 or n > 1000
  report("before", ser(conn:stats()))
  local d = conn:recv()
  report("after", ser(conn:stats()))
  conn:send(d)
end
]])
    local sock = connect(srv)
    assert.equal("abcdef", server.exchange(sock, "abcdef"))
    local before, after = reported(srv, "before"), reported(srv, "after")
    assert.same({ 6, 6, 0 }, { before.buffered, before.bytes_in, before.msgs_in })
    assert.same({ 0, 6, 1 }, { after.buffered, after.bytes_in, after.msgs_in })
  end)

  it("shows the kernel's receive queue when reading paused (recv_q)", function()
    local srv = start([[
return function(conn)
  conn:setopts{ recv_buffer = 1024 }
  local n, s = 0, nil
  repeat
    luaecho.sleep(0.005); n = n + 1
    s = conn:stats()
  until (not s.reading and s.kernel.recv_q > 0) or n > 1000
  report("paused", ser(s))
  local got = 0
  while got < 262144 do got = got + #assert(conn:recv()) end
  conn:send("done")
end
]])
    local sock = connect(srv)
    assert.equal("done", server.exchange(sock, ("r"):rep(262144), { expect = 4 }))
    local s = reported(srv, "paused")
    assert.is_false(s.reading)
    assert(s.buffered >= 1024, "buffered " .. s.buffered)
    assert(s.kernel.recv_q > 0, "recv_q " .. s.kernel.recv_q)
  end)

  it("shows output queued in luaecho and the kernel's send queue (send_q)", function()
    local srv = start([[
return function(conn)
  local chunk = string.rep("s", 65536)
  local n = 0
  while conn:stats().queued == 0 and n < 2000 do
    assert(conn:send(chunk))
    n = n + 1
  end
  report("full", ser(conn:stats()), n * 65536)
end
]])
    local sock = connect(srv) -- reads only after the report
    local r = assert(srv:report("full"))
    local s = assert(load(r[1]))()
    assert(s.queued > 0, "queued " .. s.queued)
    assert(s.kernel.send_q > 0, "send_q " .. s.kernel.send_q)
    assert(s.bytes_out + s.queued == r[2], "bytes_out + queued ~= sent")
    assert.equal(r[2] // 65536, s.msgs_out)
    local got, err = server.read_all_until_close(sock, 30)
    assert.same({ r[2], "closed" }, { #got, err })
  end)

  it("shows the peer's FIN, and CLOSE_WAIT in the kernel", function()
    local srv = start([[
return function(conn)
  local d, err = conn:recv()
  report("fin", ser(conn:stats()), err)
end
]])
    local sock = connect(srv)
    sock:shutdown("send")
    local r = assert(srv:report("fin"))
    local s = assert(load(r[1]))()
    assert.equal("closed", r[2])
    assert.is_true(s.peer_fin)
    assert.equal("CLOSE_WAIT", s.kernel.state)
  end)
end)

describe("luaecho.stats()", function()
  after_each(server.cleanup)

  -- Asks conn for luaecho.stats() until ok(stats) holds (bounded).
  local function until_stats(sock, ok)
    local s
    for _ = 1, 200 do
      s = ask(sock, "server")
      if ok(s) then return s end
      proc.sleep(0.02)
    end
    error("the counters never showed it; last: " .. pretty.write(s))
  end

  it("moves as connections come, go and fail", function()
    local srv = start(COMMANDS, "cpu_limit = 0.3\n")
    local a = connect(srv)
    local s = ask(a, "server")
    assert.same({ 1, 1, 0, 0, 0, 0, 0, 0, 0, 0 },
      { s.connections, s.accepted, s.closed, s.connected, s.accept_errors, s.handler_errors,
        s.cpu_limit_stopped, s.reloads, s.reloads_rejected, s.trace_dropped })
    assert.same({ 7, 1, 0, 0 }, { s.bytes_in, s.msgs_in, s.bytes_out, s.msgs_out })
    assert(s.lua_memory > 0)
    assert.equal(1 << 30, s.lua_memory_limit)
    for key, n in pairs(s.ended) do assert.equal(0, n, "ended." .. key) end
    assert.is_not_nil(s.ended.peer_fin)

    -- One that ends with its FIN: counted, and its bytes stay in the totals.
    local b = connect(srv)
    assert.equal("x", say(b, "x"))
    b:shutdown("send")
    s = until_stats(a, function(t) return t.closed == 1 end)
    assert.same({ 1, 2, 1, 1 }, { s.connections, s.accepted, s.closed, s.ended.peer_fin })
    assert(s.bytes_in >= 7 * 2 + #"x\n", "bytes_in " .. s.bytes_in)

    -- A handler error, and a handler stopped by cpu_limit.
    assert(connect(srv):send("boom\n"))
    s = until_stats(a, function(t) return t.closed == 2 end)
    assert.same({ 1, 1 }, { s.ended.handler_error, s.handler_errors })
    assert(connect(srv):send("forever\n"))
    s = until_stats(a, function(t) return t.closed == 3 end)
    assert.same({ 2, 2, 1 }, { s.ended.handler_error, s.handler_errors, s.cpu_limit_stopped })

    -- A handler that computes for a while without waiting is preempted.
    assert.equal("spun", say(a, "spin"))
    s = ask(a, "server")
    assert(s.preempted > 0, "preempted " .. s.preempted)

    -- A saved handler is reloaded.
    server.write_file(srv:file("h.lua"), SER .. server.REPORT .. COMMANDS .. "-- v2\n")
    assert(srv:wait_line(record("info", "reloaded " .. literal(srv:file("h.lua")) .. " %(version 2%)"), 10),
      srv:log_text())
    s = until_stats(a, function(t) return t.reloads == 1 end)
    assert.equal(0, s.reloads_rejected)
  end)
end)
