-- The echo handler, tracing connection 1 only (see traced_echo.lua).
return function(conn)
  if conn.id == 1 then conn:trace(true) end
  repeat local data = conn:recv() until not (data and conn:send(data))
end
