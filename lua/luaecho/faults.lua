-- luaecho.faults: fault injection for proxy handlers. Toxiproxy's toxics
-- (latency, bandwidth, slicer, slow_close, timeout, limit_data, reset_peer)
-- and a few it lacks (corrupt, duplicate, drop, stall_after), each for one
-- direction or both, with a probability, driven by a seeded generator so a
-- failing run can be replayed. docs/faults.md is the reference.
--
--   local faults = require "luaecho.faults"
--   local FAULTS = { faults.latency(200, 20), faults.bandwidth(10) }
--   return function(conn)
--     local up = assert(luaecho.connect("127.0.0.1", 6379))
--     faults.proxy(conn, up, FAULTS)
--   end
--
-- A fault is a plain table ({ type = "latency", latency = 200, jitter = 20,
-- stream = "downstream", toxicity = 1, name = "latency_downstream" }), so a
-- list of faults can be printed, edited in place or built from data
-- (faults.new). Every connection reads the list when it starts.
local luaecho = require "luaecho"

local M = {}

-- ---- random numbers -------------------------------------------------------

-- SplitMix64 on Lua's 64-bit integers, whose arithmetic wraps around: a
-- seed gives the same numbers on every machine, unlike math.random, whose
-- algorithm and seeding are not fixed by the language.
local GOLDEN = 0x9E3779B97F4A7C15
local SEED_MASK = (1 << 47) - 1 -- seeds shown in logs stay short and positive

local Rng = {}
Rng.__index = Rng

local function new_rng(seed)
  return setmetatable({ s = seed }, Rng)
end

function Rng:next()
  local s = self.s + GOLDEN
  self.s = s
  local z = (s ~ (s >> 30)) * 0xBF58476D1CE4E5B9
  z = (z ~ (z >> 27)) * 0x94D049BB133111EB
  return z ~ (z >> 31)
end

-- Returns a float in [0, 1).
function Rng:float()
  return (self:next() >> 11) * 2.0 ^ -53
end

-- Returns an integer in [lo, hi].
function Rng:int(lo, hi)
  return lo + (self:next() >> 11) % (hi - lo + 1)
end

-- Returns a seed for the stream (a, b) of `seed`: connection a of a proxy,
-- or fault b of direction a, each independent of the others.
local function derive(seed, a, b)
  return new_rng(seed ~ (a * 0x632BE59BD9B4E019) ~ (b * 0x8CB92BA72F3D8DD7)):next() & SEED_MASK
end

-- ---- describing faults ------------------------------------------------------

-- Each type's attributes in the order its constructor takes them:
-- { name, kind, default }; no default means required. Names follow
-- Toxiproxy's JSON attributes where Toxiproxy has the toxic.
local SCHEMA = {
  latency = { { "latency", "ms" }, { "jitter", "ms", 0 } },
  bandwidth = { { "rate", "kbps" } },
  slicer = { { "average_size", "size" }, { "size_variation", "bytes", 0 }, { "delay", "us", 0 } },
  slow_close = { { "delay", "ms" } },
  timeout = { { "timeout", "ms" } },
  limit_data = { { "bytes", "bytes" } },
  reset_peer = { { "timeout", "ms", 0 } },
  corrupt = { { "rate", "fraction" } },
  duplicate = { { "rate", "fraction" } },
  drop = { { "rate", "fraction" } },
  stall_after = { { "bytes", "bytes" } },
}

-- What each kind of attribute accepts: a predicate and its description.
local KINDS = {
  ms = { function(v) return v >= 0 end, "a number of milliseconds >= 0" },
  us = { function(v) return v >= 0 end, "a number of microseconds >= 0" },
  kbps = { function(v) return v >= 0 end, "a number of KB/s >= 0" },
  fraction = { function(v) return v >= 0 and v <= 1 end, "a number from 0 to 1" },
  bytes = { function(v) return math.type(v) == "integer" and v >= 0 end, "an integer >= 0" },
  size = { function(v) return math.type(v) == "integer" and v >= 1 end, "an integer >= 1" },
}

local STREAMS = { downstream = true, upstream = true, both = true }
local COMMON = { type = true, name = true, stream = true, toxicity = true }

local function show(v)
  if type(v) == "string" then return ("%q"):format(v) end
  if type(v) == "table" or type(v) == "function" or type(v) == "userdata" then return "a " .. type(v) end
  if v ~= v then return "nan" end -- C's printf may say "-nan"
  return tostring(v)
end

-- Returns an error message for attribute `attr` of a fault, or nil.
local function check_attr(kind, attr, v)
  local ok, what = KINDS[attr[2]][1], KINDS[attr[2]][2]
  -- Infinity is refused as NaN is: an infinite jitter makes NaN delays
  -- (no delay at all), an infinite latency or delay a wait for ever.
  if type(v) ~= "number" or v ~= v or v == math.huge or v == -math.huge or not ok(v) then
    return ("faults.%s: %s must be %s, got %s"):format(kind, attr[1], what, show(v))
  end
end

-- Fills in defaults and checks spec in place. Returns spec, or nil and a
-- message naming the fault and the attribute.
local function complete(spec)
  local kind = spec.type
  local schema = SCHEMA[kind]
  if not schema then return nil, ("faults: unknown fault type %s"):format(show(kind)) end
  local known = {}
  for _, attr in ipairs(schema) do
    known[attr[1]] = true
    if spec[attr[1]] == nil then spec[attr[1]] = attr[3] end
    local err = check_attr(kind, attr, spec[attr[1]])
    if err then return nil, err end
  end
  for k in pairs(spec) do
    if not known[k] and not COMMON[k] then
      return nil, ("faults.%s: unknown attribute %s"):format(kind, show(k))
    end
  end
  spec.stream = spec.stream or "downstream"
  if not STREAMS[spec.stream] then
    return nil, ('faults.%s: stream must be "downstream", "upstream" or "both", got %s'):format(kind, show(spec.stream))
  end
  spec.toxicity = spec.toxicity or 1
  if type(spec.toxicity) ~= "number" or not (spec.toxicity >= 0 and spec.toxicity <= 1) then
    return nil, ("faults.%s: toxicity must be a number from 0 to 1, got %s"):format(kind, show(spec.toxicity))
  end
  spec.name = spec.name or (kind .. "_" .. spec.stream)
  if type(spec.name) ~= "string" then
    return nil, ("faults.%s: name must be a string, got %s"):format(kind, show(spec.name))
  end
  if kind == "slicer" and spec.size_variation >= spec.average_size then
    return nil, ("faults.slicer: size_variation (%d) must be smaller than average_size (%d)"):format(
      spec.size_variation, spec.average_size)
  end
  return spec
end

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

-- Returns a checked copy of the plain fault table t ({ type = "latency",
-- latency = 200, stream = "upstream" }), defaults filled in. Raises with a
-- message naming the bad attribute.
function M.new(t)
  if type(t) ~= "table" then error(("faults.new: expected a table, got %s"):format(type(t)), 2) end
  local spec, err = complete(copy(t))
  if not spec then error(err, 2) end
  return spec
end

-- The constructors: faults.latency(latency, jitter, opts) and so on, with
-- the attributes in SCHEMA order. Trailing optional attributes may be left
-- out; a table in their place is taken as opts (stream, toxicity, name).
for kind, schema in pairs(SCHEMA) do
  M[kind] = function(...)
    local args = table.pack(...)
    local spec, opts = { type = kind }, nil
    for i = 1, args.n do
      local v = args[i]
      if type(v) == "table" and i == args.n then
        opts = v
      elseif i > #schema then
        error(("faults.%s: too many arguments (%d)"):format(kind, args.n), 2)
      else
        spec[schema[i][1]] = v
      end
    end
    for _, key in ipairs({ "stream", "toxicity", "name" }) do
      if opts and opts[key] ~= nil then spec[key] = opts[key] end
    end
    for k in pairs(opts or {}) do
      if not COMMON[k] or k == "type" then
        error(("faults.%s: unknown option %s"):format(kind, show(k)), 2)
      end
    end
    local ok, err = complete(spec)
    if not ok then error(err, 2) end
    return spec
  end
end

-- Returns one line describing fault f:
-- "latency_downstream: latency latency=200 jitter=20 (downstream, toxicity 1)".
function M.describe(f)
  if type(f) ~= "table" then
    error(("bad argument #1 to 'faults.describe' (fault table expected, got %s)"):format(type(f)), 2)
  end
  f = complete(copy(f)) or f
  local parts = { ("%s: %s"):format(f.name, f.type) }
  for _, attr in ipairs(SCHEMA[f.type] or {}) do
    parts[#parts + 1] = ("%s=%s"):format(attr[1], tostring(f[attr[1]]))
  end
  return ("%s (%s, toxicity %s)"):format(table.concat(parts, " "), f.stream, tostring(f.toxicity))
end

-- ---- what each fault does -----------------------------------------------

-- Data moves through a direction's faults as units: { data = bytes,
-- t = when the proxy read them (luaecho.now()), hlen = bytes of framing
-- header at the front, whole = true for a whole framed message }. Each
-- fault's `data(st, u, nxt)` passes what it lets through to nxt; its
-- `eof(st, nxt)` passes on the end of the stream. st holds the fault's
-- spec, its own generator (rng), the connection's proxy state (ctx) and
-- the fault's own counters. `start(st)` runs when the connection starts.
-- `sleeps` marks faults that wait, which the proxy runs apart from reading
-- so that data keeps its arrival time meanwhile.
local IMPL = {}

local function sleep_until(t)
  local wait = t - luaecho.now()
  if wait > 0 then luaecho.sleep(wait) end
end

local function piece(u, data, first)
  return { data = data, t = u.t, hlen = first and u.hlen or 0, whole = false }
end

-- Toxiproxy's latency: each unit leaves latency +/- jitter ms after it
-- was read, whatever waited before it.
IMPL.latency = { sleeps = true }
function IMPL.latency.data(st, u, nxt)
  local ms, jitter = st.spec.latency, st.spec.jitter
  if jitter > 0 then ms = ms + st.rng:float() * 2 * jitter - jitter end
  sleep_until(u.t + ms / 1000)
  nxt(u)
end

-- Toxiproxy's bandwidth: rate KB/s, 1 KB being 1000 bytes as there. Data
-- leaves in slices of 100 ms worth, each once the link is free again.
IMPL.bandwidth = { sleeps = true }
function IMPL.bandwidth.data(st, u, nxt)
  local rate = st.spec.rate * 1000 -- bytes per second
  if rate <= 0 then return nxt(u) end
  -- A slice is at most the whole unit: 100 ms worth of a huge rate (or of
  -- math.huge) is no integer, and string.sub would raise on it.
  local step = math.tointeger(math.max(1, math.floor(math.min(rate / 10, #u.data))))
  for i = 1, #u.data, step do
    local slice = u.data:sub(i, i + step - 1)
    st.free = math.max(st.free or 0, luaecho.now()) + #slice / rate
    sleep_until(st.free)
    if st.ctx.stop then return end
    nxt(#slice == #u.data and u or piece(u, slice, i == 1))
  end
end

-- Slices of average_size +/- size_variation bytes, one after another (the
-- last one is what remains), with `delay` microseconds after each, as
-- Toxiproxy pauses after each slice.
IMPL.slicer = { sleeps = true }
function IMPL.slicer.data(st, u, nxt)
  local avg, var, delay = st.spec.average_size, st.spec.size_variation, st.spec.delay / 1e6
  -- avg + var wraps around past math.maxinteger, which would give negative
  -- sizes (and slices cut backwards); avg - var >= 1 cannot.
  local hi = avg + var < avg and math.maxinteger or avg + var
  local pos, n = 1, #u.data
  while pos <= n do
    local size = math.min(n - pos + 1, st.rng:int(avg - var, hi))
    nxt(piece(u, u.data:sub(pos, pos + size - 1), pos == 1))
    pos = pos + size
    if delay > 0 then luaecho.sleep(delay) end
    if st.ctx.stop then return end
  end
end

-- The end of the stream is passed on `delay` ms late.
IMPL.slow_close = { sleeps = true }
function IMPL.slow_close.eof(st, nxt)
  luaecho.sleep(st.spec.delay / 1000)
  nxt()
end

-- Nothing gets through; after `timeout` ms from the start of the
-- connection the proxy closes both sides (0: never). The end of the
-- stream still passes, as in Toxiproxy.
IMPL.timeout = {}
function IMPL.timeout.start(st)
  if st.spec.timeout <= 0 then return end
  luaecho.spawn(function()
    luaecho.sleep(st.spec.timeout / 1000)
    st.ctx:close_all("timeout")
  end)
end
function IMPL.timeout.data() end

-- The first `bytes` bytes pass, then the proxy closes both sides.
-- Passes on what is left of the first st.spec.bytes bytes; returns true
-- once they have all passed.
local function pass_first(st, u, nxt)
  local left = st.spec.bytes - (st.sent or 0)
  if left > 0 then
    local data = u.data:sub(1, left)
    st.sent = (st.sent or 0) + #data
    nxt(#data == #u.data and u or piece(u, data, true))
  end
  return st.spec.bytes - (st.sent or 0) <= 0
end

IMPL.limit_data = {}
function IMPL.limit_data.data(st, u, nxt)
  if pass_first(st, u, nxt) then st.ctx:close_all("limit_data") end
end

-- From the first data on, nothing passes; `timeout` ms later both sides
-- are reset (RST, no FIN), as in Toxiproxy.
IMPL.reset_peer = {}
function IMPL.reset_peer.data(st)
  if st.armed then return end
  st.armed = true
  luaecho.spawn(function()
    luaecho.sleep(st.spec.timeout / 1000)
    st.ctx:reset_all("reset_peer")
  end)
end

-- Flips one random bit in each byte chosen with probability `rate`,
-- leaving framing headers alone. The gaps between flipped bytes are drawn
-- from the geometric distribution, so a low rate costs little per byte.
IMPL.corrupt = {}
function IMPL.corrupt.data(st, u, nxt)
  local rate, data = st.spec.rate, u.data
  if rate <= 0 then return nxt(u) end
  -- Below about 1e-16, 1 - rate rounds to 1 and its log to 0 (the gap
  -- would be -inf); -rate is then the log to double precision.
  local scale = math.log(1 - rate)
  if scale == 0 then scale = -rate end
  local parts, from, pos = {}, 1, u.hlen
  while true do
    if rate < 1 then pos = pos + math.floor(math.log(1 - st.rng:float()) / scale) end
    pos = pos + 1
    if pos > #data then break end
    local b = data:byte(pos) ~ (1 << st.rng:int(0, 7))
    parts[#parts + 1] = data:sub(from, pos - 1)
    parts[#parts + 1] = string.char(b)
    from = pos + 1
  end
  if #parts == 0 then return nxt(u) end
  parts[#parts + 1] = data:sub(from)
  nxt({ data = table.concat(parts), t = u.t, hlen = u.hlen, whole = u.whole })
end

-- Whole framed messages, each with probability `rate`, are sent twice or
-- not at all. Pieces cut by an earlier fault are left alone.
IMPL.duplicate = { framed = true }
function IMPL.duplicate.data(st, u, nxt)
  if u.whole and st.rng:float() < st.spec.rate then nxt(u) end
  if not st.ctx.stop then nxt(u) end
end

IMPL.drop = { framed = true }
function IMPL.drop.data(st, u, nxt)
  if u.whole and st.rng:float() < st.spec.rate then return end
  nxt(u)
end

-- The first `bytes` bytes pass; then the direction stops: nothing more is
-- read or sent and the end of the stream is not passed on, while the
-- connection stays open and the other direction goes on.
IMPL.stall_after = {}
function IMPL.stall_after.data(st, u, nxt)
  if pass_first(st, u, nxt) then st.dir.stalled = true end
end

-- ---- framing ----------------------------------------------------------------

-- Splits a byte stream into framed messages like luaecho's own framing
-- (packet = 1, 2, 4 or "line"), so that faults can work on whole
-- messages while the proxy forwards bytes unchanged. A message longer than
-- packet_size cannot be held: from then on the stream passes as raw bytes.
local Decoder = {}
Decoder.__index = Decoder

local function new_decoder(mode, limit)
  return setmetatable({ buf = "", hlen = type(mode) == "number" and mode or nil, limit = limit }, Decoder)
end

-- Returns the length of the message at position pos of buf: an integer,
-- nil when more bytes are needed, or false when it exceeds the limit.
function Decoder:next_len(buf, pos)
  local avail = #buf - pos + 1
  if self.hlen then
    if avail < self.hlen then return nil end
    local n = string.unpack(">I" .. self.hlen, buf, pos)
    if n > self.limit then return false end
    return self.hlen + n
  end
  local nl = buf:find("\n", pos, true)
  if nl then return nl - pos + 1 <= self.limit and nl - pos + 1 or false end
  return avail >= self.limit and false or nil
end

-- Returns the units in data read at time t (a list).
function Decoder:feed(data, t)
  if self.raw then return { { data = data, t = t, hlen = 0, whole = false } } end
  local buf, out, pos = self.buf .. data, {}, 1
  while true do
    local len = self:next_len(buf, pos)
    if len == false then
      self.raw, self.buf = true, ""
      out[#out + 1] = { data = buf:sub(pos), t = t, hlen = 0, whole = false }
      return out
    end
    if not len or #buf - pos + 1 < len then break end
    out[#out + 1] = { data = buf:sub(pos, pos + len - 1), t = t, hlen = self.hlen or 0, whole = true }
    pos = pos + len
  end
  self.buf = buf:sub(pos)
  return out
end

-- Returns the unfinished message left at the end of the stream, or nil.
function Decoder:rest(t)
  if self.buf == "" then return nil end
  return { data = self.buf, t = t, hlen = 0, whole = false }
end

-- ---- the proxy ------------------------------------------------------------------

local QUEUE_LIMIT = 256 * 1024 -- bytes read ahead of a waiting fault

-- Calls conn[method]; a connection that another coroutine has reset or
-- closed meanwhile answers nil, "closed" instead of raising.
local function call(conn, method, ...)
  local ok, a, b = pcall(conn[method], conn, ...)
  if ok then return a, b end
  if tostring(a):find("attempt to use a closed connection", 1, true) then return nil, "closed" end
  error(a, 0)
end

local Ctx = {}
Ctx.__index = Ctx

-- Ends the proxy: both sides get the output already queued, then FIN.
function Ctx:close_all(reason)
  if self.stop then return end
  self.stop, self.reason = true, reason
  call(self.conn, "shutdown", "both")
  call(self.upstream, "shutdown", "both")
end

-- Ends the proxy with an abortive close of both sides: each peer reads a
-- reset (ECONNRESET), queued output is discarded.
function Ctx:reset_all(reason)
  if self.stop then return end
  if not self.conn.reset then
    luaecho.log("warn", "faults: conn:reset is not available in this luaecho; closing with FIN instead")
    return self:close_all(reason)
  end
  self.stop, self.reason = true, reason
  call(self.conn, "reset")
  call(self.upstream, "reset")
end

-- Runs the queued units of direction d through its faults, in order, then
-- marks the direction's writer idle.
local function drain(d)
  while d.head <= d.tail do
    local u = d.queue[d.head]
    d.queue[d.head], d.head = nil, d.head + 1
    d.queued = d.queued - #u.data
    if not d.ctx.stop then d.chain(u) end
  end
  d.busy = false
end

-- Runs d's writer (drain) and waits for it: a writer that raised (its
-- error is logged by luaecho) ends the proxy at once, since the reader may
-- be waiting on a source with nothing more to say, and both sides would
-- stay open with their data gone. It takes a coroutine of its own: a
-- writer stopped for cpu_limit runs no more code, its to-be-closed
-- handlers and a pcall around it included.
local function supervise(d)
  luaecho.spawn(drain, d):join()
  if d.busy then
    d.busy = false
    d.ctx:close_all("error")
  end
end

-- Waits until d's writer has run every queued unit. A writer that raised
-- (its error is logged by luaecho) ends the proxy.
local function wait_writer(d)
  if not d.busy then return end
  d.task:join()
  if d.busy then
    d.busy = false
    d.ctx:close_all("error")
  end
end

-- Hands unit u to d's faults: at once, or through the queue and a writer
-- coroutine when a fault of d may wait.
local function deliver(d, u)
  if not d.split then return d.chain(u) end
  d.tail = d.tail + 1
  d.queue[d.tail], d.queued = u, d.queued + #u.data
  if not d.busy then
    d.busy = true
    d.task = luaecho.spawn(supervise, d)
  elseif d.queued > QUEUE_LIMIT then
    wait_writer(d)
  end
end

-- Reads direction d until its source ends, the proxy stops or d stalls.
local function pump(d)
  local ctx = d.ctx
  while not (ctx.stop or d.stalled) do
    local data, err = call(d.from, "recv")
    if not data then
      wait_writer(d)
      local rest = d.decoder and d.decoder:rest(luaecho.now())
      if rest and not (ctx.stop or d.stalled) then deliver(d, rest) end
      wait_writer(d)
      if err ~= "closed" then ctx:close_all(err) end
      if not (ctx.stop or d.stalled) then d.eof() end
      return
    end
    local t = luaecho.now()
    if d.decoder then
      for _, u in ipairs(d.decoder:feed(data, t)) do deliver(d, u) end
    else
      deliver(d, { data = data, t = t, hlen = 0, whole = false })
    end
  end
  wait_writer(d)
end

-- The last stage of a direction: write to its destination.
local function sender(d)
  return function(u)
    if d.ctx.stop or u.data == "" then return end
    local ok, err = call(d.to, "send", u.data)
    if not ok then d.ctx:close_all(err) end
  end, function()
    call(d.to, "shutdown", "write")
  end
end

-- Links the active faults of direction d, first fault first.
local function build_chain(d, active)
  local data, eof = sender(d)
  for i = #active, 1, -1 do
    local st, impl = active[i], IMPL[active[i].spec.type]
    local nxt_data, nxt_eof = data, eof
    if impl.data then data = function(u) impl.data(st, u, nxt_data) end end
    if impl.eof then eof = function() impl.eof(st, nxt_eof) end end
    if impl.sleeps then d.split = true end
  end
  d.chain, d.eof = data, eof
end

local DIRS = { "downstream", "upstream" }

-- Decides, with the connection's seed, which faults of the list act on
-- which direction (toxicity), and returns { downstream = {...}, upstream =
-- {...} } of fault states in list order.
local function choose(list, seed, ctx)
  local roll = new_rng(derive(seed, 0, 0))
  local active = { downstream = {}, upstream = {} }
  for i, f in ipairs(list) do
    if type(f) ~= "table" then error(("faults.proxy: fault %d: expected a table, got %s"):format(i, type(f)), 3) end
    local spec, err = complete(copy(f))
    if not spec then error(("faults.proxy: fault %d: %s"):format(i, err), 3) end
    for di, dir in ipairs(DIRS) do
      if spec.stream == dir or spec.stream == "both" then
        if roll:float() < spec.toxicity then
          local st = { spec = spec, rng = new_rng(derive(seed, di, i)), ctx = ctx }
          table.insert(active[dir], st)
        end
      end
    end
  end
  return active
end

local PACKETS = { raw = "raw", [0] = "raw", line = "line", [1] = 1, [2] = 2, [4] = 4 }

-- ---- seeds and the registry -------------------------------------------------

local default_seed         -- set by faults.seed
local proxies = setmetatable({}, { __mode = "k" }) -- name or list -> { seed, count }
local fresh = 0
local running = {}         -- conn id -> what faults.active() reports
local named = {}           -- name -> the list last run under that name

-- Sets the seed of every proxy that is not given one, and starts each
-- proxy's connection count again, so the same connections in the same
-- order meet the same faults. Returns the seed in force (nil: random).
function M.seed(n)
  if n ~= nil then
    if math.type(n) ~= "integer" then error(("faults.seed: expected an integer, got %s"):format(show(n)), 2) end
    default_seed = n
    proxies = setmetatable({}, { __mode = "k" })
  end
  return default_seed
end

-- Returns the seed of the next connection of list, the proxy's seed and
-- the connection's number.
local function next_seed(list, opts)
  if opts.conn_seed then return opts.conn_seed, opts.conn_seed, 1 end
  local base = opts.seed or default_seed
  local key = opts.name or list
  local p = proxies[key]
  if not p or (base and p.seed ~= base) then
    if not base then
      fresh = fresh + 1
      -- The wall clock only varies the seed between runs; a sandbox
      -- without os still gets one from the monotonic clock.
      local wall = os and os.time and os.time() or 0
      base = derive(wall, math.floor(luaecho.now() * 1e6), fresh)
    end
    p = { seed = base, count = 0 }
    proxies[key] = p
  end
  p.count = p.count + 1
  return derive(p.seed, p.count, 0), p.seed, p.count
end

-- Returns the proxied connections now running, by connection id: a list
-- of { id, name, client, upstream_address, seed, started, list,
-- downstream = { fault names }, upstream = { fault names } }, where list
-- is the live list of faults the connection started from (editing it
-- changes the next connections) and started is its luaecho.now().
function M.active()
  local out = {}
  for _, r in pairs(running) do out[#out + 1] = r end
  table.sort(out, function(a, b) return a.id < b.id end)
  return out
end

-- Returns { [name] = list }: the fault list each named proxy (opts.name of
-- faults.proxy) last started a connection with. The lists are the live
-- tables: an entry changed in place applies to the next connections.
function M.lists()
  return copy(named)
end

local function names(states)
  local out = {}
  for i, st in ipairs(states) do out[i] = st.spec.name end
  return out
end

local function list_text(states)
  return #states == 0 and "none" or table.concat(names(states), ", ")
end

-- Returns "host:port", "[v6]:port" or "unix:/path" for conn's peer.
local function address(conn)
  local host, port = conn:peername()
  if not port then return "unix:" .. tostring(host) end
  return (host:find(":", 1, true) and "[%s]:%d" or "%s:%d"):format(host, port)
end

local function check_conn(v, arg)
  if type(v) ~= "userdata" or v.setopts == nil then
    error(("bad argument #%d to 'faults.proxy' (conn expected, got %s)"):format(arg, type(v)), 3)
  end
end

-- Checks the arguments of faults.proxy and returns the framing mode and
-- packet_size to decode with.
local function proxy_args(conn, upstream, list, opts)
  check_conn(conn, 1)
  check_conn(upstream, 2)
  if rawequal(conn, upstream) then -- it would wait on itself for ever
    error("bad argument #2 to 'faults.proxy' (the upstream is the client connection itself)", 3)
  end
  if type(list) ~= "table" then
    error(("bad argument #3 to 'faults.proxy' (list of faults expected, got %s)"):format(type(list)), 3)
  end
  if opts.conn_seed ~= nil and math.type(opts.conn_seed) ~= "integer" or
     opts.seed ~= nil and math.type(opts.seed) ~= "integer" then
    error("faults.proxy: seed and conn_seed must be integers", 3)
  end
  local mode = PACKETS[opts.packet or conn:getopts("packet")]
  if mode == nil then
    error(("faults.proxy: packet must be \"raw\", \"line\", 1, 2 or 4, got %s"):format(show(opts.packet)), 3)
  end
  return mode, opts.packet_size or conn:getopts("packet_size")
end

local function new_direction(ctx, name, from, to, states, decoder)
  local d = { name = name, ctx = ctx, from = from, to = to, decoder = decoder,
              queue = {}, head = 1, tail = 0, queued = 0, busy = false }
  for _, st in ipairs(states) do st.dir = d end
  build_chain(d, states)
  return d
end

local function framed_fault(active)
  for _, dir in ipairs(DIRS) do
    for _, st in ipairs(active[dir]) do
      if IMPL[st.spec.type].framed then return st.spec end
    end
  end
end

-- Raises at the caller of fname (level 3) unless opts, its argument n, is
-- a table or nil.
local function check_opts(opts, n, fname)
  if opts ~= nil and type(opts) ~= "table" then
    error(("bad argument #%d to '%s' (table of options expected, got %s)"):format(n, fname, type(opts)), 3)
  end
end

-- Relays between conn (the client) and upstream (from luaecho.connect)
-- until both directions end, each direction through the faults of `list`
-- that act on it. Returns why the proxy ended: "closed" (both sides
-- finished), "timeout", "limit_data", "reset_peer", or a socket error name.
-- Closes upstream before returning. opts: seed, conn_seed, name, packet,
-- packet_size, log (false: no log line per connection).
function M.proxy(conn, upstream, list, opts)
  check_opts(opts, 4, "faults.proxy")
  opts = opts or {}
  local mode, limit = proxy_args(conn, upstream, list, opts)
  local seed, base, count = next_seed(list, opts)
  local ctx = setmetatable({ conn = conn, upstream = upstream, stop = false }, Ctx)
  local active = choose(list, seed, ctx)
  local framed = framed_fault(active)
  if framed and mode == "raw" then
    error(("faults.proxy: %s works on whole messages: set packet to 1, 2, 4 or \"line\""):format(framed.type), 2)
  end
  conn:setopts{ packet = "raw" }
  upstream:setopts{ packet = "raw" }
  local function decoder() return mode ~= "raw" and new_decoder(mode, limit) or nil end
  local down = new_direction(ctx, "downstream", upstream, conn, active.downstream, decoder())
  local up = new_direction(ctx, "upstream", conn, upstream, active.upstream, decoder())
  if opts.log ~= false then
    luaecho.log("info", ("faults: seed %d (proxy seed %d, connection %d); downstream: %s; upstream: %s"):format(
      seed, base, count, list_text(active.downstream), list_text(active.upstream)))
  end
  local record = { id = conn.id, name = opts.name, client = address(conn), upstream_address = address(upstream),
                   seed = seed, started = luaecho.now(), list = list,
                   downstream = names(active.downstream), upstream = names(active.upstream) }
  local _ <close> = setmetatable({}, { __close = function() running[record.id] = nil end })
  running[record.id] = record
  if opts.name then named[opts.name] = list end
  for _, dir in ipairs(DIRS) do
    for _, st in ipairs(active[dir]) do
      if IMPL[st.spec.type].start then IMPL[st.spec.type].start(st) end
    end
  end
  local back = luaecho.spawn(pump, down)
  pump(up)
  back:join()
  call(upstream, "close")
  return ctx.reason or "closed"
end

-- Returns a handler that connects to address ("host:port", "[v6]:port" or
-- "unix:/path") for every client and runs faults.proxy with list and
-- opts. opts.connect holds luaecho.connect's options (timeout 5 s unless
-- given). A client whose upstream cannot be reached is logged and closed.
function M.handler(address, list, opts)
  if type(address) ~= "string" then
    error(("bad argument #1 to 'faults.handler' (address string expected, got %s)"):format(type(address)), 2)
  end
  check_opts(opts, 3, "faults.handler")
  opts = opts or {}
  local host, port = address:match("^%[?(.-)%]?:(%d+)$")
  if address:match("^unix:") then host, port = address, nil end
  if not host then error(("faults.handler: address must be host:port or unix:/path, got %s"):format(show(address)), 2) end
  port = port and math.tointeger(tonumber(port))
  if port and port > 65535 then error(("faults.handler: port must be from 0 to 65535, got %d"):format(port), 2) end
  local connect_opts = opts.connect or { timeout = 5 }
  return function(conn)
    local up, err
    if port then up, err = luaecho.connect(host, port, connect_opts)
    else up, err = luaecho.connect(host, connect_opts) end
    if not up then
      luaecho.log("warn", ("faults: cannot connect to %s: %s"):format(address, err))
      return
    end
    return M.proxy(conn, up, list, opts)
  end
end

return M
