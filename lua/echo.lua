-- The default handler: echo every byte back until the peer closes its side.
-- (`local data` inside the loop also lets the last message be collected
-- while the next recv waits.)
return function(conn)
  repeat local data = conn:recv() until not (data and conn:send(data))
end
