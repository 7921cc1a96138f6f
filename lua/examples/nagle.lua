-- Nagle: asks the client "nagle or nodelay?", then sends 50 small pieces
-- a millisecond apart, with Nagle's algorithm on or off as the answer says.
--
-- What it teaches: with TCP_NODELAY set (luaecho's default, nodelay =
-- true) every send leaves at once in its own segment, so a reader that
-- keeps up sees about one read per send. With nodelay = false the kernel
-- applies Nagle's algorithm: while sent data waits for its ACK, small
-- writes are held back and leave together when the ACK comes. On loopback
-- the ACK comes at once unless the receiver delays it, and a receiver
-- delays ACKs when the connection looks interactive: here the client
-- answered the question quickly, so its kernel waits up to 40 ms before
-- it ACKs, and the pieces sent meanwhile arrive as one read. Answer
-- "nagle" to turn the algorithm on; any other answer keeps nodelay =
-- true. Run the client with --trace to see its "read N bytes" lines.
--
-- Try it, installed (`luaecho --help` names the examples directory):
--   luaecho --listen 127.0.0.1:7000 --handler /usr/share/luaecho/examples/nagle.lua
--   luaecho --connect 127.0.0.1:7000 /usr/share/luaecho/examples/clients/nagle.lua nagle
-- or from a source checkout:
--   build/luaecho --listen 127.0.0.1:7000 --handler lua/examples/nagle.lua
--   build/luaecho --connect 127.0.0.1:7000 lua/examples/clients/nagle.lua nagle
-- prints how many reads the 50 pieces took: a handful; with nodelay
-- instead of nagle, about 50.
local luaecho = require "luaecho"

local PIECES, GAP = 50, 0.001

return function(conn)
  conn:setopts{ packet = "line" }
  conn:send("nagle or nodelay?\n")
  local line = conn:recv()
  if not line then return end
  conn:setopts{ nodelay = not line:match("^nagle") }
  for n = 1, PIECES do
    if not conn:send(("%02d "):format(n)) then return end
    luaecho.sleep(GAP)
  end
end
