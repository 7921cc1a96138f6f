local base = tonumber(os.getenv("PORT_BASE") or "7000")
listen = { string.format("127.0.0.1:%d", base), string.format("[::1]:%d", base + 1) }
handler = "handlers/echo.lua"
