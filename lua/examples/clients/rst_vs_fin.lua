-- Client for rst_vs_fin.lua: sends one word as a line, then prints every
-- piece its recv returns and, last, the error that ended the reading:
-- "closed" after the server's FIN, "econnreset" after its RST. Exits with
-- status 0 after a FIN and 1 after anything else, so a script can tell.
--
-- Try it, installed (`luaecho --help` names the examples directory), with
-- the server of rst_vs_fin.lua running:
--   luaecho --listen 127.0.0.1:7000 --handler /usr/share/luaecho/examples/rst_vs_fin.lua
--   luaecho --connect 127.0.0.1:7000 /usr/share/luaecho/examples/clients/rst_vs_fin.lua rst
-- or from a source checkout:
--   build/luaecho --listen 127.0.0.1:7000 --handler lua/examples/rst_vs_fin.lua
--   build/luaecho --connect 127.0.0.1:7000 lua/examples/clients/rst_vs_fin.lua rst
-- prints "recv failed: econnreset" and exits with status 1; with fin
-- instead of rst, "got 8 bytes: closing" and "recv failed: closed", status 0.
return function(conn, word)
  conn:send((word or "fin") .. "\n")
  local data, err = conn:recv()
  while data do
    print(("got %d bytes: %s"):format(#data, (data:gsub("\n$", ""))))
    data, err = conn:recv()
  end
  print("recv failed: " .. err)
  return err == "closed" and 0 or 1
end
