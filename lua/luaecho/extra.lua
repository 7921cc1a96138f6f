-- Functions of the `luaecho` module written in Lua. This chunk is compiled
-- into the binary (src/bundled.c) and run once, when `require "luaecho"`
-- builds the module table: it receives that table and adds to it, so
-- handlers call these like the functions written in C. docs/api.md
-- documents them with the others.
local luaecho = ...

-- Raises "bad argument #n to 'fname' (msg)" at the caller's line, as
-- luaL_argerror does for the functions written in C.
local function argerror(n, fname, msg)
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), 3)
end

-- luaecho.send_paced(conn, data, chunk [, delay]) -> true | nil, err
-- Sends data in pieces of `chunk` bytes (the last may be shorter), one
-- conn:send per piece, sleeping `delay` seconds between pieces, so each
-- piece reaches the kernel as a write of its own: the way to show how TCP
-- coalesces small writes (with nodelay = false, Nagle's algorithm) or
-- how a reader sees data arrive in parts. Stops at the first failed send
-- and returns its nil, err; the pieces before it were sent.
function luaecho.send_paced(conn, data, chunk, delay)
  if type(conn) ~= "userdata" then
    argerror(1, "send_paced", "conn expected, got " .. type(conn))
  end
  if type(data) == "number" then data = tostring(data) end
  if type(data) ~= "string" then
    argerror(2, "send_paced", "string expected, got " .. type(data))
  end
  if math.type(chunk) ~= "integer" or chunk < 1 then
    argerror(3, "send_paced", "chunk must be an integer >= 1")
  end
  delay = delay or 0
  if type(delay) ~= "number" or not (delay >= 0) then
    argerror(4, "send_paced", "delay must be >= 0 seconds")
  end
  -- Empty data is one send, which in modes 1, 2 and 4 is an empty message.
  if #data == 0 then return conn:send(data) end
  for i = 1, #data, chunk do
    if i > 1 and delay > 0 then luaecho.sleep(delay) end
    local ok, err = conn:send(data:sub(i, i + chunk - 1))
    if not ok then return nil, err end
  end
  return true
end
