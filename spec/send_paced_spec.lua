-- luaecho.send_paced(conn, data, chunk [, delay]): output split into
-- pieces of `chunk` bytes, `delay` seconds apart. The spec is the reader,
-- a LuaSocket client that times what it reads; the server's trace shows
-- each piece as a write of its own.
local server = require "server"
local proc = require "spec_proc"
local read_sizes = require("reads").read_sizes

local record = server.record

-- Starts luaecho with `handler` as h.lua; `config` is added to the base.
local function start(handler, config)
  return server.start{
    config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\nshutdown_timeout = 1\n' .. (config or ""),
    handlers = { ["h.lua"] = handler },
  }
end

-- A handler that paces `size` bytes ("a", "b", ... one letter per piece)
-- as the client's first line asks: "CHUNK DELAY NODELAY SIZE". It logs
-- what send_paced returned and how long it took, then waits for the
-- client to close.
local PACER = [[
local luaecho = require "luaecho"
return function(conn)
  conn:setopts{ packet = "line" }
  local chunk, delay, nodelay, size = conn:recv():match("^(%d+) (%S+) (%a+) (%d+)\n$")
  chunk, size = math.tointeger(tonumber(chunk)), math.tointeger(tonumber(size))
  conn:setopts{ packet = "raw", nodelay = nodelay == "true" }
  local pieces = {}
  for i = 0, (size - 1) // chunk do
    pieces[#pieces + 1] = string.char(97 + i % 26):rep(chunk)
  end
  local data = table.concat(pieces):sub(1, size)
  local t0 = luaecho.now()
  local ok, err = luaecho.send_paced(conn, data, chunk, tonumber(delay))
  luaecho.log("info", "paced", ok, err, ("%.3f"):format(luaecho.now() - t0))
  conn:recv()
end
]]

-- Asks the PACER server for `request` and reads `size` bytes.
local function paced(srv, request, size)
  local sock = assert(server.connect(srv.host, srv.port))
  assert(sock:send(request .. "\n"))
  return read_sizes(sock, size)
end

-- The seconds send_paced took, from the handler's log line; fails unless
-- it returned true.
local function paced_seconds(srv)
  local line = assert(srv:wait_line(record("info", "conn %d+: paced .*")), srv:log_text())
  local result, seconds = line:match("paced (.-) ([%d.]+)$")
  assert.equal("true nil", result)
  return tonumber(seconds)
end

-- Returns how many log lines match the pattern once n of them have come
-- (trace lines are written by a thread of their own, so they may follow
-- later lines), or after 10 s.
local function count_lines(srv, pattern, n)
  local deadline = proc.now() + server.scaled(10)
  local function count()
    local k = 0
    for _, line in ipairs(srv:log()) do
      if line:find(pattern) then k = k + 1 end
    end
    return k
  end
  while count() < n and proc.now() < deadline do srv:next_line(0.1) end
  return count()
end

describe("luaecho.send_paced()", function()
  after_each(server.cleanup)

  it("sends pieces of chunk bytes, delay seconds apart, each read on its own", function()
    -- With nodelay = true and 0.1 s between pieces, each piece is a
    -- segment of its own, read before the next is sent.
    local srv = start(PACER)
    local sizes, data, spread = paced(srv, "5 0.1 true 17", 17)
    assert.same({ 5, 5, 5, 2 }, sizes)
    assert.equal("aaaaabbbbbcccccdd", data)
    -- Three pauses of 0.1 s (sleep rounds up to the millisecond): the last
    -- piece cannot come sooner; a generous upper bound for a loaded host.
    assert.is_true(spread >= 0.28, "pieces came within " .. spread .. " s")
    assert.is_true(spread < server.scaled(3), "pieces took " .. spread .. " s")
    local seconds = paced_seconds(srv)
    assert.is_true(seconds >= 0.29 and seconds < server.scaled(3), seconds .. " s")
  end)

  it("lets a burst of small writes coalesce with nodelay = false and no delay", function()
    -- 200 writes of one byte: the trace shows each write, while the
    -- reader gets them in far fewer reads (Nagle's algorithm holds each
    -- small segment while one is unacknowledged, and the reader's buffer
    -- joins what arrives between two reads).
    local srv = start(PACER, "trace = true\n")
    local sizes, data = paced(srv, "1 0 false 200", 200)
    assert.equal(200, #data)
    -- The sanitizer build's server is several times slower than the
    -- reader, which then catches more writes one by one; it still sees far
    -- fewer reads than writes.
    local most = server.SANITIZED and 160 or 100
    assert.is_true(#sizes <= most, #sizes .. " reads for 200 one-byte writes")
    paced_seconds(srv)
    assert.equal(200, count_lines(srv, record("trace", "%d+us conn %d+ wrote 1 bytes"), 200),
      srv:log_text())
  end)

  it("frames each piece as a message of its own in a framed mode", function()
    local srv = start([[
local luaecho = require "luaecho"
return function(conn)
  conn:setopts{ packet = 2 }
  assert(luaecho.send_paced(conn, "abcdef", 4))
  assert(luaecho.send_paced(conn, 12345, 10))   -- a number, converted
  assert(luaecho.send_paced(conn, "", 3))       -- one empty message
  conn:close()
end
]])
    local sock = assert(server.connect(srv.host, srv.port))
    local got, err = server.read_all_until_close(sock)
    assert.equal("closed", err)
    assert.equal("\0\4abcd\0\2ef\0\00512345\0\0", got)
  end)

  it("returns nil, err from the send that failed", function()
    local srv = start([[
local luaecho = require "luaecho"
return function(conn)
  conn:shutdown("write")
  luaecho.log("info", "result", luaecho.send_paced(conn, "abc", 1, 0.01))
end
]])
    assert(server.connect(srv.host, srv.port))
    assert.truthy(srv:wait_line(record("info", "conn %d+: result nil closed")), srv:log_text())
  end)

  it("raises for bad arguments at the caller's line", function()
    local srv = start(server.SHOW .. [[
local luaecho = require "luaecho"
return function(conn)
  local function try(c, ...)
    local ok, err = pcall(function(...) luaecho.send_paced(c, ...) end, ...)
    conn:send(show(ok, err) .. "\n")
  end
  try(conn, {}, 1)
  try(conn, "x", 0)
  try(conn, "x", 1.5)
  try(conn, "x", 1, -1)
  try(conn, "x", 1, "soon")
  try(nil, "x", 1)
end
]])
    local sock = assert(server.connect(srv.host, srv.port))
    local lines = {}
    for i = 1, 6 do lines[i] = server.receive_line(sock) end
    local at = srv.dir .. "/h.lua:12: "
    assert.same({
      ("false,%q"):format(at .. "bad argument #2 to 'send_paced' (string expected, got table)"),
      ("false,%q"):format(at .. "bad argument #3 to 'send_paced' (chunk must be an integer >= 1)"),
      ("false,%q"):format(at .. "bad argument #3 to 'send_paced' (chunk must be an integer >= 1)"),
      ("false,%q"):format(at .. "bad argument #4 to 'send_paced' (delay must be >= 0 seconds)"),
      ("false,%q"):format(at .. "bad argument #4 to 'send_paced' (delay must be >= 0 seconds)"),
      ("false,%q"):format(at .. "bad argument #1 to 'send_paced' (conn expected, got nil)"),
    }, lines)
  end)
end)
