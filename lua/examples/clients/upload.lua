-- An uploader: sends a word and a newline followed by a number of zero
-- bytes (4 MB by default) without reading, then half-closes and reads the
-- answer to the end. Prints what its send and recv returned, so the
-- difference between an orderly end (FIN) and a reset (RST) shows.
-- Arguments: the word (default "hello") and the number of zero bytes.
--
-- Try it, installed (`luaecho --help` names the examples directory), with
-- a server that stops reading early, for example sink_then_reply.lua for
-- the other case (it reads everything):
--   luaecho --listen 127.0.0.1:7000 --handler /usr/share/luaecho/examples/sink_then_reply.lua
--   luaecho --connect 127.0.0.1:7000 /usr/share/luaecho/examples/clients/upload.lua hello
-- or from a source checkout:
--   build/luaecho --listen 127.0.0.1:7000 --handler lua/examples/sink_then_reply.lua
--   build/luaecho --connect 127.0.0.1:7000 lua/examples/clients/upload.lua hello
-- prints "send returned true", "got: received 4000006 bytes" and
-- "recv failed: closed". Chapter 6 of docs/tutorial.md runs it against a
-- handler that stops reading, and one that raises.
return function(conn, word, size)
  local zeros = ("\0"):rep(math.tointeger(tonumber(size or "4000000")))
  local ok, err = conn:send((word or "hello") .. "\n" .. zeros)
  print("send returned " .. (ok and "true" or "nil, " .. err))
  conn:shutdown("write")
  local data
  data, err = conn:recv()
  while data do
    print("got: " .. (data:gsub("\n$", "")))
    data, err = conn:recv()
  end
  print("recv failed: " .. err)
end
