if os.getenv("X") then error({ code = 1 }) end
local ok = pcall(error, "line one\nline two")
setmetatable(_ENV, { __newindex = function(t, k, v) rawset(t, k, tostring(v)) end })
shutdown_timeout = 1/0
