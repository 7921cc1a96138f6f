-- Backpressure: sends 8 blocks of 16 KiB through a small kernel send
-- buffer, and logs how long each send waited for the client to read.
--
-- What it teaches: send() returns as soon as luaecho has queued the data,
-- unless more than send_buffer bytes are queued; then it waits, suspending
-- only this connection, until the client reads enough. With sndbuf = 4096
-- the kernel holds little, so a slow reader makes the sender wait at
-- once: with a fast reader every send logs "waited 0.000 s"; with a
-- reader that takes 4 KiB every 50 ms the sends wait about as long as the
-- reader needs for a block. Run the server with --trace to see "send
-- waits: N bytes queued, over send_buffer 16384" and "send resumed after
-- N ms".
--
-- Try it, installed (`luaecho --help` names the examples directory):
--   luaecho --listen 127.0.0.1:7000 --trace --handler /usr/share/luaecho/examples/backpressure.lua
--   luaecho --connect 127.0.0.1:7000 /usr/share/luaecho/examples/clients/slow_reader.lua
-- or from a source checkout:
--   build/luaecho --listen 127.0.0.1:7000 --trace --handler lua/examples/backpressure.lua
--   build/luaecho --connect 127.0.0.1:7000 lua/examples/clients/slow_reader.lua
-- and, for a reader that keeps up:
--   nc -d 127.0.0.1 7000 | wc -c
-- prints 131072.
local luaecho = require "luaecho"

local BLOCK, COUNT = 16 * 1024, 8

return function(conn)
  conn:setopts{ sndbuf = 4096, send_buffer = BLOCK }
  local block = ("x"):rep(BLOCK - 1) .. "\n"
  for n = 1, COUNT do
    local started = luaecho.now()
    local ok, err = conn:send(block)
    luaecho.log("info", ("send %d of %d bytes waited %.3f s"):format(n, BLOCK, luaecho.now() - started))
    if not ok then
      luaecho.log("info", "send failed: " .. err)
      return
    end
  end
end
