-- A slow reader: takes at most 4 KiB from the kernel per read, sleeps
-- 50 ms after each, and counts the bytes until the server closes. Its
-- small receive buffer (rcvbuf) makes the server's send wait sooner.
-- Arguments: the number of bytes per read and the pause in seconds.
--
-- Try it, installed (`luaecho --help` names the examples directory), with
-- the server of backpressure.lua running:
--   luaecho --listen 127.0.0.1:7000 --trace --handler /usr/share/luaecho/examples/backpressure.lua
--   luaecho --connect 127.0.0.1:7000 /usr/share/luaecho/examples/clients/slow_reader.lua
-- or from a source checkout:
--   build/luaecho --listen 127.0.0.1:7000 --trace --handler lua/examples/backpressure.lua
--   build/luaecho --connect 127.0.0.1:7000 lua/examples/clients/slow_reader.lua 4096 0.05
-- prints "131072 bytes in N reads" after about 1.6 seconds.
local luaecho = require "luaecho"

return function(conn, size, pause)
  size, pause = math.tointeger(tonumber(size or "4096")), tonumber(pause or "0.05")
  conn:setopts{ rcvbuf = size, read_size = size, recv_buffer = size }
  local total, reads = 0, 0
  local data = conn:recv()
  while data do
    total, reads = total + #data, reads + 1
    luaecho.sleep(pause)
    data = conn:recv()
  end
  print(("%d bytes in %d reads"):format(total, reads))
end
