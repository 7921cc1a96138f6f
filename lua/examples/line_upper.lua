-- Line upper: answers every line with the same line in upper case.
--
-- What it teaches: with conn:setopts{ packet = "line" }, recv() returns one
-- whole line, ending with its "\n", however the bytes arrived; send(data)
-- writes data as given (line mode adds no header). A line longer than
-- packet_size ends the input with nil, "emsgsize", and bytes after the last
-- "\n" when the client closes are not a line: recv returns nil, "closed".
--
-- Try it, installed (`luaecho --help` names the examples directory):
--   luaecho --listen 127.0.0.1:7000 --handler /usr/share/luaecho/examples/line_upper.lua
-- or from a source checkout:
--   build/luaecho --listen 127.0.0.1:7000 --handler lua/examples/line_upper.lua
-- then:
--   printf 'hello\nworld\n' | nc -N 127.0.0.1 7000
-- prints HELLO and WORLD.
return function(conn)
  conn:setopts{ packet = "line" }
  local line = conn:recv()
  while line and conn:send(line:upper()) do line = conn:recv() end
end
