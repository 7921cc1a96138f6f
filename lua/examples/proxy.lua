-- TCP proxy: relays every byte between the client and an upstream server,
-- both ways at once, and passes half-closes through.
--
-- The upstream address is "host:port" in the environment variable
-- LUAECHO_UPSTREAM (default 127.0.0.1:7001).
--
-- What it teaches:
--   * luaecho.connect(host, port, { timeout = s }) opens an outbound
--     connection from a handler; it returns a conn with the same methods as
--     the accepted one, or nil and an error ("econnrefused", "timeout").
--   * luaecho.spawn(fn, ...) runs fn in a second coroutine of this
--     connection, so the two directions are copied at the same time;
--     task:join() waits for it. One coroutine reads a connection while the
--     other writes it: each may have one reader and one writer at a time
--     (a second reader gets nil, "busy").
--   * Half-close: when one side sends FIN, recv returns nil, "closed"; the
--     pump passes it on with shutdown("write") and the other direction keeps
--     flowing until that side finishes too. Any other failure (a reset, a
--     timeout) ends both directions: shutdown("both") on both connections
--     wakes the other pump, which is waiting in recv.
--   * When the handler returns, connections it opened are closed at once,
--     so it closes the upstream itself, which flushes what is queued.
--
-- Try it, installed (`luaecho --help` names the examples directory):
--   luaecho --listen 127.0.0.1:7001 &   # the built-in echo, upstream
--   luaecho --listen 127.0.0.1:7000 --handler /usr/share/luaecho/examples/proxy.lua
-- or from a source checkout:
--   build/luaecho --listen 127.0.0.1:7001 &
--   build/luaecho --listen 127.0.0.1:7000 --handler lua/examples/proxy.lua
-- then:
--   printf 'via the proxy\n' | nc -N 127.0.0.1 7000
local luaecho = require "luaecho"

local UPSTREAM = os.getenv("LUAECHO_UPSTREAM") or "127.0.0.1:7001"
local HOST, PORT = UPSTREAM:match("^%[?(.-)%]?:(%d+)$")
assert(HOST, "LUAECHO_UPSTREAM must be host:port, got " .. UPSTREAM)
PORT = math.tointeger(tonumber(PORT))
local CONNECT_TIMEOUT = 5 -- seconds

-- Copies bytes from `from` to `to` until `from` ends or `to` fails.
local function pump(from, to)
  local data, err = from:recv()
  while data do
    local ok, send_err = to:send(data)
    if not ok then
      err = send_err
      break
    end
    data, err = from:recv()
  end
  if err == "closed" then
    to:shutdown("write") -- `from` half-closed: pass it on
  else
    to:shutdown("both")
    from:shutdown("both")
  end
end

return function(conn)
  local upstream, err = luaecho.connect(HOST, PORT, { timeout = CONNECT_TIMEOUT })
  if not upstream then
    -- luaecho.log puts "conn ID: " in front of the message.
    luaecho.log("warn", ("proxy: cannot connect to %s: %s"):format(UPSTREAM, err))
    return
  end
  local back = luaecho.spawn(pump, upstream, conn)
  pump(conn, upstream)
  back:join()
  upstream:close()
end
