-- Client for nagle.lua: answers the server's question with "nagle" (the
-- server turns Nagle's algorithm on) or "nodelay" (off, the default), then
-- reads to the end and prints every read and how many reads the bytes took.
--
-- Try it, installed (`luaecho --help` names the examples directory), with
-- the server of nagle.lua running:
--   luaecho --listen 127.0.0.1:7000 --handler /usr/share/luaecho/examples/nagle.lua
--   luaecho --connect 127.0.0.1:7000 /usr/share/luaecho/examples/clients/nagle.lua nagle
-- or from a source checkout:
--   build/luaecho --listen 127.0.0.1:7000 --handler lua/examples/nagle.lua
--   build/luaecho --connect 127.0.0.1:7000 lua/examples/clients/nagle.lua nagle
-- prints a line per read, then "150 bytes in N reads".
return function(conn, mode)
  conn:setopts{ packet = "line" }
  local question = conn:recv()
  if not question then return 1 end
  conn:setopts{ packet = "raw" }
  conn:send((mode or "nodelay") .. "\n")
  local total, reads = 0, 0
  local data = conn:recv()
  while data do
    total, reads = total + #data, reads + 1
    print(("read %d bytes: %s"):format(#data, (data:gsub(" $", ""))))
    data = conn:recv()
  end
  print(("%d bytes in %d reads"):format(total, reads))
end
