-- luaecho config for bench/run's pp50framed scenario: one listener on a free
-- loopback port with 2-byte big-endian length framing (packet = 2). The
-- built-in echo handler then receives whole packets and each send is framed
-- again, so a client sending framed messages gets the same bytes back.
-- Started as: luaecho bench/framed_echo.lua (the "listening on" log line
-- tells the port).
listen = { address = "127.0.0.1:0", packet = 2 }
