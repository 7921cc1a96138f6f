-- The options that size the kernel's buffers and luaecho's reads: sndbuf
-- and rcvbuf (SO_SNDBUF, SO_RCVBUF, reported as the kernel set them) and
-- read_size (the most bytes one read takes from the kernel).
local server = require "server"

local record = server.record

-- Starts luaecho with --trace running handler as h.lua; `config` is added.
local function start(handler, config)
  return server.start{
    config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\ntrace = true\nshutdown_timeout = 1\n' .. (config or ""),
    handlers = { ["h.lua"] = server.REPORT .. handler },
  }
end

local function connect(srv)
  return assert(server.connect(srv.host, srv.port))
end

describe("sndbuf and rcvbuf", function()
  after_each(server.cleanup)

  it("read back as the kernel set them: twice the request on Linux", function()
    local srv = start([[
return function(conn)
  report("default", conn:getopts("sndbuf", "rcvbuf"))
  conn:setopts{ sndbuf = 16384, rcvbuf = 16384 }
  report("set", conn:getopts("sndbuf", "rcvbuf"))
  conn:setopts{ sndbuf = 65536 }
  report("changed", conn:getopts("sndbuf", "rcvbuf"))
  conn:setopts{ nodelay = false }
  report("other", conn:getopts("sndbuf", "rcvbuf"))
end
]])
    connect(srv)
    assert.same({ n = 2, false, false }, srv:report("default"))
    assert.same({ n = 2, 32768, 32768 }, srv:report("set"))
    -- setopts applies a new size to the open socket at once.
    -- Only the size set changes: re-applying the sizes the socket has,
    -- with another socket option, does not double them again.
    assert.same({ n = 2, 131072, 32768 }, srv:report("changed"))
    assert.same({ n = 2, 131072, 32768 }, srv:report("other"))
  end)

  it("apply from the config to every accepted connection", function()
    local srv = start([[
return function(conn)
  report("opts", conn:getopts("sndbuf", "rcvbuf"))
end
]], "sndbuf = 16384\nrcvbuf = 32768\n")
    connect(srv)
    assert.same({ n = 2, 32768, 65536 }, srv:report("opts"))
  end)

  it("make send wait after kilobytes when the client does not read (sndbuf = 4096)", function()
    -- A task sends 1 KiB pieces to a client that never reads. Once the
    -- kernel takes no more, output queues in luaecho and, past send_buffer,
    -- send waits. With the default buffers on loopback the kernel takes
    -- megabytes first; with sndbuf = 4096 only what fits in the client's
    -- receive window and 8 KiB more.
    local srv = start([[
local luaecho = require "luaecho"
return function(conn)
  conn:setopts{ sndbuf = 4096, send_buffer = 1024 }
  local sent, waiting = 0, false
  local piece = ("s"):rep(1024)
  local sender = luaecho.spawn(function()
    while true do
      waiting = true
      local ok, err = conn:send(piece)
      waiting = false
      if not ok then return err end
      sent = sent + #piece
    end
  end)
  conn:recv(1) -- the spec's go-ahead, once the trace showed send waiting
  report("sent", sent, waiting)
  luaecho.log("info", "sender ended:", sender:join())
end
]])
    local sock = connect(srv)
    local line = srv:wait_line(record("trace", "%d+us conn %d+ send waits: %d+ bytes queued, over send_buffer 1024"))
    assert(line, srv:log_text())
    assert(sock:send("?"))
    local sent = srv:report("sent")
    assert.is_true(sent[2], "the sender was not waiting in send")
    assert.is_true(sent[1] > 0 and sent[1] < 1 << 20, sent[1] .. " bytes sent before send waited")
    -- Once the client goes, the waiting send fails.
    sock:close()
    local ended = assert(srv:wait_line(record("info", "conn %d+: sender ended: .*")), srv:log_text())
    assert.matches("sender ended: e%l+$", ended)
  end)
end)

describe("read_size", function()
  after_each(server.cleanup)

  it("splits what the kernel holds into reads of at most read_size bytes", function()
    local srv = start([[
return function(conn)
  conn:setopts{ read_size = 3 }
  local sizes, got = {}, 0
  while got < 10 do
    local data = assert(conn:recv())
    sizes[#sizes + 1], got = #data, got + #data
  end
  report("sizes", table.concat(sizes, ","))
end
]])
    local sock = connect(srv)
    assert(sock:send("abcdefghij"))
    assert.same({ n = 1, "3,3,3,1" }, srv:report("sizes"))
    for _, piece in ipairs{ "abc", "def", "ghi" } do
      assert.truthy(srv:wait_line(record("trace", '%d+us conn %d+ read 3 bytes "' .. piece .. '"')), srv:log_text())
    end
    assert.truthy(srv:wait_line(record("trace", '%d+us conn %d+ read 1 bytes "j"')), srv:log_text())
  end)
end)
