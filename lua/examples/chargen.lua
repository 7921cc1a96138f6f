-- Character generator (RFC 864): sends lines of printable characters
-- forever, until the client goes away.
--
-- The pattern: the 95 printable ASCII characters, " " (32) to "~" (126),
-- form a ring. Line 0 is ring characters 0 to 71, line 1 is characters 1
-- to 72, line N starts at character N mod 95; every line is 72 characters
-- and "\r\n". After 95 lines the pattern repeats, so it is built once.
--
-- What it teaches: a sender that is faster than its reader. send() returns
-- at once while the kernel takes the bytes; once more than send_buffer
-- bytes wait for a slow client, send suspends this handler until the
-- client reads, so the server holds at most send_buffer bytes for it (here
-- 64 KiB) however long the client dawdles. When the client closes, send
-- returns nil and an error ("epipe", "econnreset", ...) and the loop ends.
-- A client that stops reading altogether is closed after send_timeout.
-- RFC 864 says received data is thrown away; this handler never reads it,
-- so a client that sends a lot is simply pushed back by TCP.
--
-- Try it, installed (`luaecho --help` names the examples directory):
--   luaecho --listen 127.0.0.1:7000 --handler /usr/share/luaecho/examples/chargen.lua
-- or from a source checkout:
--   build/luaecho --listen 127.0.0.1:7000 --handler lua/examples/chargen.lua
-- then:
--   nc 127.0.0.1 7000 | head -n 3
local LINE = 72
local RING = {}
for c = 32, 126 do RING[#RING + 1] = string.char(c) end
RING = table.concat(RING)

local function cycle()
  local ring2 = RING .. RING -- a line may wrap past the ring's end
  local lines = {}
  for n = 0, #RING - 1 do lines[#lines + 1] = ring2:sub(n + 1, n + LINE) .. "\r\n" end
  return table.concat(lines)
end

local CYCLE = cycle()

return function(conn)
  conn:setopts{ send_buffer = 64 * 1024 }
  while conn:send(CYCLE) do end
end
