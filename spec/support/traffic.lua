-- Client-side traffic for framing specs: length headers as Erlang's
-- {packet, N} writes them, and an exchange that splits its bytes at random
-- boundaries while it receives (server.random_bytes makes the payloads).
--
--   local traffic = require "traffic"
--   math.randomseed(seed)   -- every random choice below comes from math.random
--   local got, err = traffic.exchange_split(sock, data, #want, 3000, 30)
local proc = require "spec_proc"
local server = require "server"

local M = {}

local MAX_PAUSES = 300 -- bounds the pacing sleeps of one exchange_split

-- Returns the big-endian header for a payload of len bytes in packet mode n
-- (1, 2 or 4).
function M.header(n, len)
  assert(len < 1 << (8 * n), "payload too long for the header")
  return (">I" .. n):pack(len)
end

-- Returns msg as it travels in mode: after its header in modes 1, 2 and 4;
-- as it is in line mode ("line"), where msg ends with "\n".
function M.frame(mode, msg)
  if mode == "line" then return msg end
  return M.header(mode, #msg) .. msg
end

-- Returns one piece size: half the time 1..16 bytes (splitting headers and
-- short messages), else 1..max_piece (joining messages).
local function piece_size(max_piece)
  if math.random() < 0.5 then return math.random(1, 16) end
  return math.random(1, max_piece)
end

-- Sends data in pieces of random sizes while receiving, until `expect`
-- bytes arrived.  After some pieces (at most 300) it pauses 2 ms, so pieces
-- also reach the server one by one rather than joined by the kernel.
-- Returns the bytes received and nil, or them and "timeout" | LuaSocket's
-- error message.
function M.exchange_split(sock, data, expect, max_piece, timeout)
  local pauses = 0
  sock:setoption("tcp-nodelay", true)
  return server.exchange(sock, data, {
    expect = expect,
    timeout = timeout or 30,
    piece = function() return piece_size(max_piece) end,
    after_send = function()
      if pauses < MAX_PAUSES and math.random() < 0.2 then
        pauses = pauses + 1
        proc.sleep(0.002) -- pacing only
      end
    end,
  })
end

-- Receives one frame of mode 1, 2 or 4 and returns its payload, or nil and
-- an error.
function M.receive_frame(sock, mode, timeout)
  local hdr, err = server.recv_exactly(sock, mode, timeout or 10)
  if err then return nil, err end
  local len = (">I" .. mode):unpack(hdr)
  if len == 0 then return "" end
  local payload
  payload, err = server.recv_exactly(sock, len, timeout or 10)
  if err then return nil, err end
  return payload
end

return M
