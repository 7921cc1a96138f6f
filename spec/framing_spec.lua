-- Message framing (the `packet` option): recv returns one whole message and
-- send adds the header, for packet = 1, 2, 4 and "line", set in config.lua
-- or with conn:setopts; zero-length messages; packet_size; and the limits of
-- the headers.  Clients split and join messages at random byte boundaries
-- (a seeded RNG: LUAECHO_SPEC_SEED=n reproduces a failure).
local server = require "server"
local traffic = require "traffic"

local KiB, MiB = 1024, 1024 * 1024
local SEED = tonumber(os.getenv("LUAECHO_SPEC_SEED") or "") or 20261121

-- ---- building streams ------------------------------------------------------

local header, frame, rand_bytes = traffic.header, traffic.frame, server.random_bytes

-- The largest message each mode's header (or the default packet_size of
-- 1 MiB, for lines) allows, used once per stream; 4 and line also cross
-- the 256 KiB recv_buffer, which a waiting reader must raise.
local LARGEST = { [1] = 255, [2] = 65535, [4] = 300 * KiB, line = 300 * KiB }

-- Returns a list of `count` messages for mode: mostly short, a few up to
-- 1000 bytes, zero-length ones (a bare "\n" in line mode), and one of
-- LARGEST[mode] bytes.  Lines hold no "\n" but their last byte.
local function messages(mode, count)
  local list = {}
  for i = 1, count do
    local r, len = math.random(), nil
    if r < 0.1 then
      len = 0
    elseif r < 0.8 then
      len = math.random(1, 64)
    else
      len = math.random(65, math.min(1000, LARGEST[mode]))
    end
    if i == count // 2 then len = LARGEST[mode] end
    local payload = rand_bytes(len)
    if mode == "line" then
      payload = payload:gsub("\n", "n"):sub(1, len - 1) .. "\n"
      if len == 0 then payload = "\n" end
    end
    list[i] = payload
  end
  return list
end

-- The handlers' reply to one message: the message itself (send adds the
-- header) in modes 1, 2 and 4; in line mode "<length>:" and the line, so
-- that two lines returned as one, or one split, show in the reply.
local function reply(mode, msg)
  if mode == "line" then return #msg .. ":" .. msg end
  return frame(mode, msg)
end

local function receive_frame(sock, mode)
  return assert(traffic.receive_frame(sock, mode, 10))
end

-- ---- servers ---------------------------------------------------------------

-- Handler source for mode: replies to every message as reply() does.  With
-- via_setopts the handler sets the mode itself, else config.lua sets it.
local function echo_source(mode, via_setopts)
  return ([[
local MODE = %s
return function(conn)
  if %s then conn:setopts{ packet = MODE } end
  local msg = conn:recv()
  while msg do
    local out = MODE == "line" and #msg .. ":" .. msg or msg
    if not conn:send(out) then break end
    msg = conn:recv()
  end
end
]]):format(mode == "line" and '"line"' or mode, tostring(via_setopts))
end

local function packet_config(mode)
  return ("packet = %s\n"):format(mode == "line" and '"line"' or mode)
end

-- Starts luaecho with handler source (prefixed with show and report) and
-- the given extra config lines.
local function start_handler(source, config)
  return server.start{
    config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\n' .. (config or ""),
    handlers = { ["h.lua"] = server.SHOW .. server.REPORT .. source },
  }
end

local function connect(srv)
  return assert(server.connect(srv.host, srv.port))
end

-- Sends `count` random messages through srv in random pieces and checks
-- every reply, byte for byte.
local function assert_round_trip(srv, mode, seed, count)
  math.randomseed(seed)
  local list = messages(mode, count)
  local sent, expected = {}, {}
  for i, msg in ipairs(list) do
    sent[i] = frame(mode, msg)
    expected[i] = reply(mode, msg)
  end
  local data, want = table.concat(sent), table.concat(expected)
  local sock = connect(srv)
  local got, err = traffic.exchange_split(sock, data, #want, 3000, 60)
  assert.is_nil(err, ("seed %d: %s after %d of %d bytes"):format(seed, tostring(err), #got, #want))
  local same, diff = server.same_bytes(want, got)
  assert(same, ("seed %d: %s"):format(seed, tostring(diff)))
  sock:close()
end

describe("framing", function()
  after_each(server.cleanup)

  for index, mode in ipairs({ 1, 2, 4, "line" }) do
    describe(("packet = %s"):format(mode == "line" and '"line"' or mode), function()
      it("set in config.lua: recv returns each message whole however the bytes are split or joined", function()
        local srv = start_handler(echo_source(mode, false), packet_config(mode))
        assert_round_trip(srv, mode, SEED + index, 400)
      end)

      it("set with conn:setopts: recv returns each message whole however the bytes are split or joined", function()
        local srv = start_handler(echo_source(mode, true))
        assert_round_trip(srv, mode, SEED + 10 + index, 400)
      end)

      it("set in config.lua: is in force for many connections at once", function()
        local srv = start_handler(echo_source(mode, false), packet_config(mode))
        math.randomseed(SEED + 20 + index)
        local socks, wants = {}, {}
        for i = 1, 20 do
          socks[i] = connect(srv)
          local msg = mode == "line" and ("conn %d\n"):format(i) or ("conn %d"):format(i)
          assert(socks[i]:send(frame(mode, msg)))
          wants[i] = reply(mode, msg)
        end
        for i = 1, 20 do
          assert.same({ wants[i] }, { server.recv_exactly(socks[i], #wants[i], 10) })
        end
      end)
    end)
  end

  describe("recv()", function()
    it("ignores the byte count in framed modes and returns the whole message", function()
      local srv = start_handler([[
        return function(conn)
          conn:setopts{ packet = 2 }
          report("recv", conn:recv(1), conn:recv(100))
        end]])
      local sock = connect(srv)
      assert(sock:send(header(2, 5) .. "hello" .. header(2, 3) .. "abc"))
      assert.same({ n = 2, "hello", "abc" }, srv:report("recv", 10))
    end)

    it("returns zero-length messages as empty strings", function()
      local srv = start_handler([[
        return function(conn)
          local got = {}
          for i = 1, 4 do got[i] = conn:recv() end
          report("recv", table.unpack(got))
        end]], "packet = 4\n")
      local sock = connect(srv)
      assert(sock:send(header(4, 0) .. header(4, 0) .. header(4, 1) .. "x" .. header(4, 0)))
      assert.same({ n = 4, "", "", "x", "" }, srv:report("recv", 10))
    end)

    it("returns a bare newline as a line", function()
      local srv = start_handler([[
        return function(conn)
          report("recv", conn:recv(), conn:recv(), conn:recv())
        end]], 'packet = "line"\n')
      local sock = connect(srv)
      assert(sock:send("\n\r\nend\n"))
      assert.same({ n = 3, "\n", "\r\n", "end\n" }, srv:report("recv", 10))
    end)

    it("leaves an unfinished message buffered after a timeout, so framing is kept", function()
      local srv = start_handler([[
        return function(conn)
          conn:setopts{ packet = 2 }
          local a = table.pack(conn:recv(0, 0.2))
          conn:send("timed out")
          report("recv", a[1], a[2], a[3], conn:recv(0, 10))
        end]])
      local sock = connect(srv)
      assert(sock:send(header(2, 10) .. "01234"))
      assert.same({ "timed out" }, { receive_frame(sock, 2) })
      assert(sock:send("56789"))
      assert.same({ n = 4, nil, "timeout", "", "0123456789" }, srv:report("recv", 10))
    end)

    it("returns nil, 'closed', '' when the peer closes in the middle of a message", function()
      local srv = start_handler([[
        return function(conn)
          report("recv", conn:recv(), conn:recv())
        end]], "packet = 1\n")
      local sock = connect(srv)
      assert(sock:send(header(1, 2) .. "ok" .. header(1, 9) .. "part"))
      assert(sock:shutdown("send"))
      assert.same({ n = 4, "ok", nil, "closed", "" }, srv:report("recv", 10))
    end)

    for _, mode in ipairs({ 4, "line" }) do
      it(("receives a message larger than recv_buffer that arrived while the handler was busy (packet = %s)")
        :format(mode == "line" and '"line"' or mode), function()
        -- Reading pauses at recv_buffer while nobody is in recv; a reader
        -- waiting for a longer message must resume it.
        local srv = start_handler(([[
          local luaecho = require "luaecho"
          return function(conn)
            conn:setopts{ packet = %s, recv_buffer = 4096 }
            luaecho.sleep(0.3)
            local msg, err = conn:recv()
            report("recv", msg and #msg, err)
          end]]):format(mode == "line" and '"line"' or mode))
        local sock = connect(srv)
        local msg = string.rep("m", 300 * KiB - 1) .. "\n"
        assert(sock:send(frame(mode, msg)))
        assert.same({ n = 2, 300 * KiB, nil }, srv:report("recv", 10))
      end)
    end

    it("keeps buffered bytes when the mode changes between messages", function()
      local srv = start_handler([[
        return function(conn)
          conn:setopts{ packet = "line" }
          local line = conn:recv()
          conn:setopts{ packet = 2 }
          local msg = conn:recv()
          conn:setopts{ packet = "raw" }
          report("recv", line, msg, conn:recv(4))
        end]])
      local sock = connect(srv)
      -- One send, so the three parts are likely buffered together.
      assert(sock:send("hello\n" .. header(2, 3) .. "a\nc" .. "rest"))
      assert.same({ n = 3, "hello\n", "a\nc", "rest" }, srv:report("recv", 10))
    end)
  end)

  describe("packet_size", function()
    for _, mode in ipairs({ 1, 2, 4 }) do
      it(("accepts a message of packet_size bytes and ends input at a longer header (packet = %d)"):format(mode), function()
        local srv = start_handler([[
          return function(conn)
            local a = conn:recv()
            local b = table.pack(conn:recv())
            local c = table.pack(conn:recv())
            report("recv", a, b[1], b[2], b[3], c[1], c[2], c[3])
            conn:send("still open")
          end]], ("packet = %d\npacket_size = 10\n"):format(mode))
        local sock = connect(srv)
        -- Only the header of the long message is sent: the error must not
        -- wait for a payload that will never come.
        assert(sock:send(header(mode, 10) .. "0123456789" .. header(mode, 11)))
        assert.same({ n = 7, "0123456789", nil, "emsgsize", "", nil, "emsgsize", "" }, srv:report("recv", 10))
        -- Only input ended: send still works.
        assert.same({ "still open" }, { receive_frame(sock, mode) })
      end)
    end

    it("ends input at a header above a packet_size set with setopts", function()
      local srv = start_handler([[
        return function(conn)
          conn:setopts{ packet = 4, packet_size = 1000 }
          report("recv", conn:recv())
        end]])
      local sock = connect(srv)
      assert(sock:send(header(4, 1001)))
      assert.same({ n = 3, nil, "emsgsize", "" }, srv:report("recv", 10))
    end)

    it("ends input at a header above the default packet_size of 1 MiB", function()
      local srv = start_handler([[
        return function(conn)
          conn:setopts{ packet = 4 }
          report("recv", conn:recv())
        end]])
      local sock = connect(srv)
      assert(sock:send(header(4, MiB + 1)))
      assert.same({ n = 3, nil, "emsgsize", "" }, srv:report("recv", 10))
    end)

    it("accepts a line of packet_size bytes with its newline and ends input at a longer one", function()
      local srv = start_handler([[
        return function(conn)
          local a = conn:recv()
          report("recv", a, conn:recv())
        end]], 'packet = "line"\npacket_size = 8\n')
      local sock = connect(srv)
      assert(sock:send("1234567\n12345678\n"))
      assert.same({ n = 4, "1234567\n", nil, "emsgsize", "" }, srv:report("recv", 10))
    end)

    it("ends input once packet_size bytes hold no newline, without waiting for more", function()
      local srv = start_handler([[
        return function(conn)
          conn:setopts{ packet = "line", packet_size = 100 }
          report("recv", conn:recv())
        end]])
      local sock = connect(srv)
      assert(sock:send(string.rep("x", 100)))
      assert.same({ n = 3, nil, "emsgsize", "" }, srv:report("recv", 10))
    end)
  end)

  describe("send()", function()
    it("adds the header of each mode, and writes data as given in line and raw modes", function()
      local srv = start_handler([[
        return function(conn)
          for _, mode in ipairs({ 1, 2, 4, "line", "raw" }) do
            conn:setopts{ packet = mode }
            conn:send("abc")
          end
          conn:setopts{ packet = 4 }
          conn:send(string.rep("z", 70000))
          conn:send("")
        end]])
      local sock = connect(srv)
      local want = "\3abc" .. "\0\3abc" .. "\0\0\0\3abc" .. "abc" .. "abc"
        .. "\0\1\17\112" .. string.rep("z", 70000) .. "\0\0\0\0"
      local got, err = server.read_all_until_close(sock, 10)
      assert.equal("closed", err)
      assert(server.same_bytes(want, got))
    end)

    it("returns nil, 'emsgsize' for data longer than the header can state, and sends nothing", function()
      local srv = start_handler([[
        return function(conn)
          conn:setopts{ packet = 1 }
          local a = table.pack(conn:send(string.rep("x", 300)))
          local b = table.pack(conn:send(string.rep("y", 255)))
          conn:setopts{ packet = 2 }
          local c = table.pack(conn:send(string.rep("x", 65536)))
          local d = table.pack(conn:send("ok"))
          report("send", a[1], a[2], b[1], c[1], c[2], d[1])
        end]])
      local sock = connect(srv)
      local got, err = server.read_all_until_close(sock, 10)
      assert.equal("closed", err)
      assert.same({ n = 6, nil, "emsgsize", true, nil, "emsgsize", true }, srv:report("send", 10))
      assert(server.same_bytes("\255" .. string.rep("y", 255) .. "\0\2ok", got))
    end)
  end)
end)
