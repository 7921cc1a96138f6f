-- The default handler: echo every byte back until the peer closes its side.
return function(conn)
  local data = conn:recv()
  while data and conn:send(data) do data = conn:recv() end
end
