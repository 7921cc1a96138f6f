-- conn:reset(): an abortive close (SO_LINGER 0). LuaSocket reports a reset
-- as "closed", like a FIN, so the peer here is a luaecho in client mode,
-- whose conn:recv names it: `luaecho --connect ADDR peer.lua COMMAND`.
-- The server's handler does what COMMAND asks and logs what it saw; the
-- peer prints what its reads returned.
local server = require "server"
local proc = require "spec_proc"

local record = server.record

-- The server's handler: the first line from the peer says what to do.
local HANDLER = server.SHOW .. [[
local luaecho = require "luaecho"
local MiB = 1 << 20

local commands = {}

function commands.reset(conn)
  conn:reset()
end

function commands.close(conn)
  conn:close()
end

-- 1 MiB is sent by a task; what the kernel does not take at once stays
-- queued in luaecho, with the task waiting in send, when reset() comes.
function commands.queued(conn)
  conn:setopts{ sndbuf = 4096 }
  local sender = luaecho.spawn(function() return conn:send(("q"):rep(MiB)) end)
  -- The task may be preempted before it reaches send (a slow build takes
  -- more than a tick to make the megabyte): wait, bounded, until it has
  -- queued its output and waits in send.
  for _ = 1, 500 do
    if conn:stats().queued > 0 then break end
    luaecho.sleep(0.01)
  end
  luaecho.log("info", "queued before reset:", conn:stats().queued)
  conn:reset()
  luaecho.log("info", "sender got:", show(sender:join()))
end

-- A task waiting in recv when reset() comes, then every method.
function commands.methods(conn)
  local reader = luaecho.spawn(function() return conn:recv() end)
  luaecho.log("info", "reset returned:", show(conn:reset()))
  luaecho.log("info", "reader got:", show(reader:join()))
  local args = { send = { "x" }, shutdown = { "write" }, setopts = { {} } }
  for _, m in ipairs{ "recv", "send", "shutdown", "setopts", "getopts", "stats",
                      "trace", "peername", "sockname", "reset", "close" } do
    luaecho.log("info", m .. ":", show(pcall(conn[m], conn, table.unpack(args[m] or {}))))
  end
  luaecho.log("info", "id:", conn.id, tostring(conn))
end

return function(conn)
  conn:setopts{ packet = "line" }
  local command = conn:recv():sub(1, -2)
  conn:setopts{ packet = "raw" }
  commands[command](conn)
end
]]

-- The peer: sends COMMAND, then reads until a read fails and prints the
-- error and how many bytes came before it. It takes in little at a time
-- (rcvbuf, recv_buffer), so a queued megabyte cannot all reach it at once.
local PEER = server.SHOW .. [[
return function(conn, command)
  conn:setopts{ rcvbuf = 4096, recv_buffer = 4096 }
  assert(conn:send(command .. "\n"))
  local total, data, err = 0, nil, nil
  repeat
    data, err = conn:recv(0, 10)
    if data then total = total + #data end
  until not data
  print(show(err), total)
end
]]

local function start()
  return server.start{
    config = [[
listen = { "127.0.0.1:0", "unix:@DIR@/s.sock" }
handler = "@DIR@/h.lua"
trace = true
shutdown_timeout = 1
]],
    handlers = { ["h.lua"] = HANDLER },
    expect = 2,
  }
end

-- Runs the peer against addr with command; returns its exit status and
-- the err and byte count it printed.
local function peer(addr, command)
  local code, lines = server.run{
    args = { "--connect", addr, "@DIR@/peer.lua", command },
    files = { ["peer.lua"] = PEER },
    stream = "stdout",
    timeout = 30,
  }
  assert.equal(1, #lines, table.concat(lines, "\n"))
  local err, total = lines[1]:match('^"(%w+)"\t(%d+)$')
  return code, err, tonumber(total)
end

-- Returns the first log line matching the pattern, wherever it is in the
-- log: trace lines are written by a thread of their own, so they may come
-- before or after the handler's lines. Waits up to 10 s for it.
local function find_line(srv, pattern)
  local deadline = proc.now() + server.scaled(10)
  repeat
    for _, line in ipairs(srv:log()) do
      if line:find(pattern) then return line end
    end
  until not srv:next_line(0.1) and proc.now() > deadline
  error("no log line matching " .. pattern .. ":\n" .. srv:log_text(), 2)
end

-- Returns REST of the handler's log line "NAME: REST".
local function logged(srv, name)
  return find_line(srv, record("info", "conn %d+: " .. name .. ": .*")):match(": " .. name .. ": (.*)$")
end

describe("conn:reset()", function()
  after_each(server.cleanup)

  it("makes the peer's read fail with econnreset", function()
    local srv = start()
    assert.same({ 0, "econnreset", 0 }, { peer(srv.addrs[1].text, "reset") })
    find_line(srv, record("trace", "%d+us conn %d+ reset %(RST sent; 0 queued bytes discarded%)"))
    find_line(srv, record("trace", "%d+us conn %d+ closed %(handler reset it%) .*"))
  end)

  it("where conn:close() gives the peer a FIN: closed", function()
    local srv = start()
    assert.same({ 0, "closed", 0 }, { peer(srv.addrs[1].text, "close") })
  end)

  -- The peer reads data and gets the RST in the same wakeup here, which
  -- libuv alone reports as EOF ("closed"); conn.c checks the socket's
  -- pending error so the peer sees econnreset.
  it("discards queued output", function()
    local srv = start()
    local code, err, total = peer(srv.addrs[1].text, "queued")
    assert.same({ 0, "econnreset" }, { code, err })
    local queued = math.tointeger(tonumber(logged(srv, "queued before reset")))
    local line = find_line(srv, record("trace", "%d+us conn %d+ reset %(RST sent; %d+ queued bytes discarded%)"))
    local discarded = math.tointeger(tonumber(line:match("RST sent; (%d+) queued")))
    -- Most of the megabyte never left luaecho, and the peer never got it.
    -- (The two figures may overlap: libuv may hand the kernel part of a
    -- queued write before its callback, and luaecho counts it as queued
    -- until then.)
    assert.equal(queued, discarded)
    assert.is_true(discarded > (1 << 19) and discarded <= 1 << 20, "discarded " .. discarded)
    assert.is_true(total < 1 << 19, ("peer got %d bytes"):format(total))
    -- The task waiting in send is woken with nil, "closed".
    assert.equal('nil,"closed"', logged(srv, "sender got"))
  end)

  it("wakes a task waiting in recv with nil, closed, and the methods raise afterwards", function()
    local srv = start()
    assert.same({ 0, "econnreset", 0 }, { peer(srv.addrs[1].text, "methods") })
    assert.equal("true", logged(srv, "reset returned"))
    assert.equal('nil,"closed",""', logged(srv, "reader got"))
    for _, m in ipairs{ "recv", "send", "shutdown", "setopts", "getopts", "stats",
                        "trace", "peername", "sockname", "reset" } do
      assert.equal('false,"attempt to use a closed connection"', logged(srv, m))
    end
    -- As after close(), closing again is harmless and the id stays.
    assert.equal("true,true", logged(srv, "close"))
    assert.matches("^%d+ conn %d+ %(127%.0%.0%.1:%d+ %-> %?%) closed$", logged(srv, "id"))
  end)

  it("just closes a Unix socket, which has no RST", function()
    local srv = start()
    assert.same({ 0, "closed", 0 }, { peer(srv.addrs[2].text, "reset") })
  end)
end)
