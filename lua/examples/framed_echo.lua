-- Framed echo: echoes whole messages, each preceded by a 2-byte big-endian
-- length, like Erlang's {packet, 2}.
--
-- What it teaches: with conn:setopts{ packet = 2 }, recv() returns exactly
-- one message without its header, however TCP split or joined the bytes
-- (recv's byte count is ignored), and send(data) puts the header in front
-- of data. A message longer than packet_size (1 MiB by default) ends the
-- input: recv returns nil, "emsgsize" and this loop stops. The same code
-- works for packet = 1 or 4, or for a config.lua that sets packet = 2 for
-- the whole listener.
--
-- Try it, installed (`luaecho --help` names the examples directory):
--   luaecho --listen 127.0.0.1:7000 --handler /usr/share/luaecho/examples/framed_echo.lua
-- or from a source checkout:
--   build/luaecho --listen 127.0.0.1:7000 --handler lua/examples/framed_echo.lua
-- then:
--   printf '\000\005hello\000\002hi' | socat -t 1 - TCP:127.0.0.1:7000 | od -c
-- prints the same 11 bytes back: two messages, each with its header.
return function(conn)
  conn:setopts{ packet = 2 }
  local msg = conn:recv()
  while msg and conn:send(msg) do msg = conn:recv() end
end
