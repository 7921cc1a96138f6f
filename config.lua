-- luaecho configuration. This file is Lua: the globals it assigns are the
-- settings (use `local` for helper variables). See docs/config.md.

-- Where to listen: one address or a list. Each entry may also be a table
-- with its own handler and backlog, for example
--   { address = "unix:/tmp/luaecho.sock", handler = "lua/echo.lua" }.
listen = "127.0.0.1:7000"

-- The default handler, relative to this file's directory.
handler = "lua/echo.lua"

-- Seconds open connections may take to finish after SIGINT or SIGTERM.
shutdown_timeout = 10

log_level = "info"
