-- Sink, then reply: reads until the client half-closes its side, then
-- answers with the number of bytes it received, "received N bytes\n".
--
-- What it teaches: half-close. A TCP connection has two directions, and a
-- client may end its own (shutdown(SHUT_WR), sending FIN) while it still
-- reads the other. recv() then returns nil, "closed", and the handler can
-- still send; returning from the handler closes the server's side. Only a
-- FIN counts: if recv fails with another error ("econnreset", "timeout"),
-- nobody is there to answer and the handler just returns.
--
-- Try it, installed (`luaecho --help` names the examples directory):
--   luaecho --listen 127.0.0.1:7000 --handler /usr/share/luaecho/examples/sink_then_reply.lua
-- or from a source checkout:
--   build/luaecho --listen 127.0.0.1:7000 --handler lua/examples/sink_then_reply.lua
-- then:
--   head -c 100000 /dev/zero | nc -N 127.0.0.1 7000
-- prints "received 100000 bytes" (nc -N sends FIN when its input ends).
return function(conn)
  local count = 0
  local data, err = conn:recv()
  while data do
    count = count + #data
    data, err = conn:recv()
  end
  if err == "closed" then conn:send(("received %d bytes\n"):format(count)) end
end
