-- Daytime (RFC 867): sends the current date and time as one line, then
-- closes. Whatever the client sends is ignored.
--
-- What it teaches: a handler that never reads. When it returns, queued
-- output is flushed and the connection is closed (FIN) for it, so the
-- client reads one line and then end-of-file. The line is UTC in the
-- format RFC 867 suggests: "Weekday, Month Day, Year HH:MM:SS-ZONE".
--
-- Try it, installed (`luaecho --help` names the examples directory):
--   luaecho --listen 127.0.0.1:7000 --handler /usr/share/luaecho/examples/daytime.lua
-- or from a source checkout:
--   build/luaecho --listen 127.0.0.1:7000 --handler lua/examples/daytime.lua
-- then:
--   nc 127.0.0.1 7000
-- prints a line such as "Saturday, November 21, 2026 06:12:00-UTC".
return function(conn)
  conn:send(os.date("!%A, %B %d, %Y %H:%M:%S-UTC\r\n"))
end
