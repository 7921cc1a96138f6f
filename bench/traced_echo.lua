-- luaecho config for bench/run's pp50traced scenario: the echo handler on
-- a free loopback port, with the first connection of the run traced (every
-- socket event of it written as a trace line) and the other 49 not. It
-- measures what tracing one connection of many costs the whole server.
-- Trace lines go to LUAECHO_TRACE_FILE (bench/run puts it in its results
-- directory), else /dev/null.
listen = "127.0.0.1:0"
handler = "traced_handler.lua"
trace_file = os.getenv("LUAECHO_TRACE_FILE") or "/dev/null"
