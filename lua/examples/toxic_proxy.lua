-- Toxic proxy: relays to an upstream server, as proxy.lua does, and
-- injects network faults on the way, as Toxiproxy does, with the fault
-- library bundled in luaecho (require "luaecho.faults"; docs/faults.md).
--
-- The upstream is "host:port", "[v6]:port" or "unix:/path" in the
-- environment variable LUAECHO_UPSTREAM (default 127.0.0.1:7001). A number
-- in LUAECHO_FAULTS_SEED fixes the random seed, so a run can be replayed;
-- without it every start picks a new one.
--
-- What it teaches:
--   * faults.handler(address, FAULTS) is a whole proxy handler: for each
--     client it connects to the upstream and relays both ways through the
--     faults in FAULTS. Each fault acts on the downstream direction
--     (upstream server -> client) unless its options name another
--     (stream = "upstream" or "both"), on every connection or, with
--     toxicity = p, on a fraction p of them.
--   * FAULTS is plain data, read by each new connection: save this file
--     with other faults and the next connections get them, while open
--     ones keep theirs.
--   * Every connection logs its seed and its faults:
--       conn 1: faults: seed 84036151886333 (proxy seed 7, connection 1); downstream: latency_downstream, ...
--     With LUAECHO_FAULTS_SEED=7 the same connections meet the same faults
--     again.
--
-- Try it, installed (`luaecho --help` names the examples directory), with
-- the built-in echo as the upstream:
--   luaecho --listen 127.0.0.1:7001 &
--   luaecho --listen 127.0.0.1:7000 --handler /usr/share/luaecho/examples/toxic_proxy.lua
-- or from a source checkout:
--   build/luaecho --listen 127.0.0.1:7001 &
--   build/luaecho --listen 127.0.0.1:7000 --handler lua/examples/toxic_proxy.lua
-- then:
--   printf 'slow\n' | nc -N 127.0.0.1 7000          # slow, about 200 ms later
-- toxic_proxy_config.lua does the same as a config file. In front of a
-- real server, say Redis:
--   LUAECHO_UPSTREAM=127.0.0.1:6379 build/luaecho lua/examples/toxic_proxy_config.lua
--   redis-cli -p 7000 ping                           # PONG, 200 ms late
local faults = require "luaecho.faults"

local UPSTREAM = os.getenv("LUAECHO_UPSTREAM") or "127.0.0.1:7001"
local SEED = math.tointeger(tonumber(os.getenv("LUAECHO_FAULTS_SEED") or ""))

local FAULTS = {
  faults.latency(200, 20),                         -- answers 180 to 220 ms late
  faults.bandwidth(100),                           -- at most 100 KB/s towards the client
  faults.slicer(512, 128, 1000, { stream = "upstream" }), -- requests in ~512-byte pieces
  faults.reset_peer(500, { toxicity = 0.05 }),     -- one connection in 20 is reset
}

return faults.handler(UPSTREAM, FAULTS, { name = "toxic_proxy", seed = SEED })
