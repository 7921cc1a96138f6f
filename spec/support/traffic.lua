-- Client-side traffic for framing specs: length headers as Erlang's
-- {packet, N} writes them, pseudo-random payloads, and an exchange that
-- splits its bytes at random boundaries while it receives.
--
--   local traffic = require "traffic"
--   math.randomseed(seed)   -- every random choice below comes from math.random
--   local got, err = traffic.exchange_split(sock, data, #want, 3000, 30)
local proc = require "spec_proc"
local socket = require "socket"
local server = require "server"

local M = {}

local RECV_CHUNK = 64 * 1024
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

-- Returns n pseudo-random bytes from math.random (seeded by the caller).
function M.rand_bytes(n)
  local parts = {}
  for i = 1, n, 4096 do
    local t = {}
    for j = 1, math.min(4096, n - i + 1) do t[j] = math.random(0, 255) end
    parts[#parts + 1] = string.char(table.unpack(t))
  end
  return table.concat(parts)
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
  local deadline = proc.now() + (timeout or 30)
  local sent, got, chunks, pauses = 0, 0, {}, 0
  sock:setoption("tcp-nodelay", true)
  sock:settimeout(0)
  local function result(err)
    sock:settimeout(server.IO_TIMEOUT)
    return table.concat(chunks), err
  end
  while got < expect do
    local left = deadline - proc.now()
    if left <= 0 then return result("timeout") end
    local readable, writable = socket.select({ sock }, sent < #data and { sock } or {}, left)
    if readable[sock] then
      local piece, err, partial = sock:receive(math.min(RECV_CHUNK, expect - got))
      piece = piece or partial
      if piece and #piece > 0 then
        chunks[#chunks + 1] = piece
        got = got + #piece
      end
      if err and err ~= "timeout" then return result(err) end
    end
    if writable[sock] then
      local last, err, partial = sock:send(data, sent + 1, math.min(#data, sent + piece_size(max_piece)))
      sent = last or partial
      if err and err ~= "timeout" then return result(err) end
      if pauses < MAX_PAUSES and math.random() < 0.2 then
        pauses = pauses + 1
        proc.sleep(0.002) -- pacing only
      end
    end
  end
  return result(nil)
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
