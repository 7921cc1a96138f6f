-- Slow echo: echoes what it receives, but waits half a second before every
-- reply.
--
-- What it teaches: luaecho.sleep(seconds) suspends only this connection's
-- handler. While one client waits for its reply the server keeps serving
-- every other client, so a hundred clients that connect together all get
-- their replies about half a second later, not fifty seconds later. Never
-- block in a handler with os.execute("sleep 1") or a busy loop: that
-- stops the whole server.
--
-- Try it, installed (`luaecho --help` names the examples directory):
--   luaecho --listen 127.0.0.1:7000 --handler /usr/share/luaecho/examples/slow_echo.lua
-- or from a source checkout:
--   build/luaecho --listen 127.0.0.1:7000 --handler lua/examples/slow_echo.lua
-- then, in two terminals at once or more:
--   nc 127.0.0.1 7000
-- and type lines: each comes back half a second later.
local luaecho = require "luaecho"

local DELAY = 0.5 -- seconds before each reply

return function(conn)
  local data = conn:recv()
  while data do
    luaecho.sleep(DELAY)
    if not conn:send(data) then break end
    data = conn:recv()
  end
end
