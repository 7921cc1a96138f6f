-- RST versus FIN: reads one line, then ends the connection the orderly way
-- (FIN) or the abortive way (RST), as the line asks.
--
-- What it teaches: the two ways a TCP connection ends. conn:close() (or
-- returning) flushes what is queued, then sends FIN: the client reads the
-- answer "closing" and then end-of-file, and a luaecho recv there returns
-- nil, "closed". conn:reset() closes the socket with SO_LINGER 0: the
-- kernel sends RST, throws away whatever it had not sent yet, and the
-- client's next read fails with "connection reset by peer" (nil,
-- "econnreset" in luaecho). Send "rst" for a reset; any other line gets a
-- FIN. The reset comes without an answer: bytes that arrive right before
-- an RST may reach a libuv program (luaecho's client mode included) as a
-- plain end-of-file, because libuv reports the hang-up after a short read
-- as EOF. Run the server with --trace to see "FIN sent (our side closed)"
-- or "reset (RST sent; 0 queued bytes discarded)". nc exits with status 0
-- either way; clients/rst_vs_fin.lua shows the difference.
--
-- Try it, installed (`luaecho --help` names the examples directory):
--   luaecho --listen 127.0.0.1:7000 --trace --handler /usr/share/luaecho/examples/rst_vs_fin.lua
-- or from a source checkout:
--   build/luaecho --listen 127.0.0.1:7000 --trace --handler lua/examples/rst_vs_fin.lua
-- then:
--   echo fin | nc -N 127.0.0.1 7000
-- prints "closing";
--   echo rst | nc -N 127.0.0.1 7000
-- prints nothing.
return function(conn)
  conn:setopts{ packet = "line" }
  local line = conn:recv()
  if not line then return end
  if line:match("^rst") then
    conn:reset()
  else
    conn:send("closing\n")
    conn:close()
  end
end
