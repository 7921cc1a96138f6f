local weird = setmetatable({}, { __index = function(_, k) return k end,
  __tostring = function() error("no") end, __len = function() return 3 end })
listen = weird
handler = setmetatable({}, { __name = "path" })
