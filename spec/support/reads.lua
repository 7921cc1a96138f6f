-- Reading as a client sees it: how many reads, of what sizes, over what
-- time. For specs about pacing and slicing (send_paced, faults.slicer).
--
--   local reads = require "reads"
--   local sizes, data, spread = reads.read_sizes(sock, 20)
local proc = require "spec_proc"
local server = require "server"
local socket = require "socket"

local M = {}

-- Reads n bytes from the LuaSocket client sock as they arrive, within
-- timeout seconds (default IO_TIMEOUT). Returns the size of every read,
-- the bytes, and the seconds from the first read to the last (0 without
-- any). Stops early on an error other than "timeout".
function M.read_sizes(sock, n, timeout)
  local deadline = proc.now() + (timeout and server.scaled(timeout) or server.IO_TIMEOUT)
  local sizes, parts, got, first, last = {}, {}, 0, nil, nil
  sock:settimeout(0)
  while got < n and proc.now() < deadline do
    local readable = socket.select({ sock }, nil, deadline - proc.now())
    if readable[sock] then
      local data, err, partial = sock:receive(n - got)
      data = data or partial
      if #data > 0 then
        last = proc.now()
        first = first or last
        sizes[#sizes + 1], parts[#parts + 1], got = #data, data, got + #data
      end
      if err and err ~= "timeout" then break end
    end
  end
  sock:settimeout(server.IO_TIMEOUT)
  return sizes, table.concat(parts), first and last - first or 0
end

return M
