-- Discard (RFC 863): reads everything the client sends and throws it away,
-- until the client closes; it never sends a byte.
--
-- What it teaches: the smallest reading loop. recv() returns what has
-- arrived (at least one byte) and nil, "closed" once the client has closed
-- its side, which ends the handler and with it the connection.
--
-- Try it, installed (`luaecho --help` names the examples directory):
--   luaecho --listen 127.0.0.1:7000 --handler /usr/share/luaecho/examples/discard.lua
-- or from a source checkout:
--   build/luaecho --listen 127.0.0.1:7000 --handler lua/examples/discard.lua
-- then:
--   head -c 10000000 /dev/zero | nc -N 127.0.0.1 7000
-- returns when all ten million bytes are read, printing nothing.
return function(conn)
  while conn:recv() do end
end
