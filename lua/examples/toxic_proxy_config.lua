-- A config that puts toxic_proxy.lua in front of a real server: luaecho
-- listens on LUAECHO_LISTEN (default 127.0.0.1:7000) and relays to
-- LUAECHO_UPSTREAM (default 127.0.0.1:7001) with the faults listed in
-- toxic_proxy.lua. Run it with
--   build/luaecho lua/examples/toxic_proxy_config.lua
-- and see toxic_proxy.lua for the rest.
listen = os.getenv("LUAECHO_LISTEN") or "127.0.0.1:7000"
handler = "toxic_proxy.lua" -- relative to this file
-- A proxied connection may stay quiet for long (a database pool, say).
idle_timeout = false
