-- Upgrade: numbers every line it answers, and moves its open connections to
-- new code, count and all, when the file is saved.
--
-- What it teaches: a saved handler file is loaded as a new version. New
-- connections run the newest version; an open connection keeps the
-- function it started with unless it opts in, as this one does, by
-- tail-calling the newest version with its state (Erlang's
-- ?MODULE:loop(State)):
--
--   return luaecho.latest()(conn, state)
--
-- * The handler is function(conn, state): state is nil for a new connection
--   and the previous version's table after an upgrade. A new version must
--   take an old version's state as it is (give new fields defaults).
-- * Upgrade where the state is whole: here between reading a line and
--   answering it, with the unanswered line kept in the state, so the first
--   line after a save is already answered by the new code.
-- * luaecho.version() returns the version this connection runs (the one it
--   started with, or the last one luaecho.latest() handed it) and the
--   newest good one. The state keeps its own copy too, so a version's code
--   can tell which version the state was last handled by.
-- * A save that fails to load (a syntax error, say) is logged and leaves
--   the newest good version in force: nobody upgrades to broken code.
-- * One-time setup (setopts) runs only for a new connection, not on each
--   upgrade; being a tail call, an upgrade never grows the stack.
--
-- Try it on a copy you can edit, in a directory of its own: the server
-- watches the directory of the file it runs and reloads when any .lua file
-- there changes, so a busy directory such as /tmp would reload it for
-- every other script saved there. Installed (`luaecho --help` names the
-- examples directory):
--   mkdir -p /tmp/upgrade && cp /usr/share/luaecho/examples/upgrade.lua /tmp/upgrade/
--   luaecho --listen 127.0.0.1:7000 --handler /tmp/upgrade/upgrade.lua
-- or from a source checkout:
--   mkdir -p /tmp/upgrade && cp lua/examples/upgrade.lua /tmp/upgrade/
--   build/luaecho --listen 127.0.0.1:7000 --handler /tmp/upgrade/upgrade.lua
-- then:
--   nc 127.0.0.1 7000            and type: hello, world
-- answers "1 hello" and "2 world". Change REPLY in /tmp/upgrade/upgrade.lua
-- to "line %d: %s" and save; the same nc session answers the next line
-- with "line 3: ...". (Ctrl-C ends nc: from a terminal, nc -N would send
-- its FIN only at Ctrl-D.)
local luaecho = require "luaecho"

local REPLY = "%d %s" -- the answer to line number n; edit and save

local function serve(conn, state)
  if state == nil then
    conn:setopts{ packet = "line" }
    state = { lines = 0, version = (luaecho.version()) }
  end
  local line = state.pending or conn:recv()
  state.pending = nil
  while line do
    local _, newest = luaecho.version()
    if newest ~= state.version then
      local latest
      latest, state.version = luaecho.latest()
      state.pending = line
      return latest(conn, state)
    end
    state.lines = state.lines + 1
    if not conn:send(REPLY:format(state.lines, line)) then return end
    line = conn:recv()
  end
end

return serve
