-- A client that resets: sends a line, waits a moment, then ends the
-- connection with conn:reset(), an RST instead of a FIN. The server's
-- recv then fails with nil, "econnreset" (and with --trace the server logs
-- "peer reset the connection (RST)"). The pause lets the server read the
-- line on its own first, so that the trace shows the read and the reset as
-- two events.
-- Arguments: the line to send (default "hello") and the pause in seconds.
--
-- Try it, installed (`luaecho --help` names the examples directory), with
-- any server, for example the echo server:
--   luaecho --listen 127.0.0.1:7000 --trace
--   luaecho --connect 127.0.0.1:7000 /usr/share/luaecho/examples/clients/reset.lua
-- or from a source checkout:
--   build/luaecho --listen 127.0.0.1:7000 --trace
--   build/luaecho --connect 127.0.0.1:7000 lua/examples/clients/reset.lua
-- the server's trace ends with "closed (reset by the peer)".
local luaecho = require "luaecho"

return function(conn, line, pause)
  conn:send((line or "hello") .. "\n")
  luaecho.sleep(tonumber(pause or "0.2"))
  conn:reset()
end
