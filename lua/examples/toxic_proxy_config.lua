-- A config that puts toxic_proxy.lua in front of a real server: luaecho
-- listens on LUAECHO_LISTEN (default 127.0.0.1:7000) and relays to
-- LUAECHO_UPSTREAM (default 127.0.0.1:7001) with the faults listed in
-- toxic_proxy.lua. Run it, installed:
--   luaecho --listen 127.0.0.1:7001 &
--   luaecho /usr/share/luaecho/examples/toxic_proxy_config.lua
-- or from a source checkout:
--   build/luaecho --listen 127.0.0.1:7001 &
--   build/luaecho lua/examples/toxic_proxy_config.lua
-- (the first line starts an echo server as the upstream), and see
-- toxic_proxy.lua for the rest.
listen = os.getenv("LUAECHO_LISTEN") or "127.0.0.1:7000"
handler = "toxic_proxy.lua" -- relative to this file
-- A proxied connection may stay quiet for long (a database pool, say).
idle_timeout = false
