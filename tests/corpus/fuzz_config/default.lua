listen = "127.0.0.1:7000"
handler = "lua/echo.lua"
shutdown_timeout = 10
log_level = "info"
