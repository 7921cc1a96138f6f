-- luaecho.admin: the handler of the admin listener (`admin = "127.0.0.1:7001"`
-- in the config), written against the same API as any handler: conn:recv,
-- conn:send, luaecho.stats and the introspection module luaecho.inspect.
-- docs/admin.md is the reference.
--
-- One port speaks two protocols, told apart by the first bytes:
--  * a line protocol for nc: `list`, `show ID`, `trace ID on|off`,
--    `close ID`, `stats`, `reload`, `faults [NAME add|remove|clear ...]`,
--    `help`, `quit`; each reply is
--    its lines followed by an empty line, an error is one line
--    "error: ..." (then the empty line);
--  * HTTP/1.1 when they are "GET " or "POST ": /metrics (Prometheus text
--    format), / (the live page), /api/conns, /api/conn?id=N,
--    /events?id=N (Server-Sent Events), POST /api/close?id=N; one request
--    per connection.
local luaecho = require "luaecho"
local inspect = require "luaecho.inspect"

-- ---- JSON -----------------------------------------------------------------

local ARRAY = {} -- metatable marking a table to encode as a JSON array

local function array(t)
  return setmetatable(t, ARRAY)
end

local ESCAPES = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

-- JSON text is UTF-8: a byte sequence that is not (a request's path, a
-- peer's socket path) becomes U+FFFD, as a browser's decoder would show it.
local function valid_utf8(s)
  local out, i = {}, 1
  while true do
    local ok, bad = utf8.len(s, i)
    if ok then
      out[#out + 1] = s:sub(i)
      return table.concat(out)
    end
    out[#out + 1] = s:sub(i, bad - 1) .. "\u{FFFD}"
    i = bad + 1
  end
end

local function json_string(s)
  if not utf8.len(s) then s = valid_utf8(s) end
  return '"' .. s:gsub('[%c"\\]', function(c)
    return ESCAPES[c] or ("\\u%04x"):format(c:byte())
  end) .. '"'
end

local json

local function json_value(v, out)
  local t = type(v)
  if t == "string" then
    out[#out + 1] = json_string(v)
  elseif t == "number" then
    -- JSON has no infinities or NaN.
    out[#out + 1] = (v ~= v or v == math.huge or v == -math.huge) and "null"
      or math.type(v) == "integer" and tostring(v) or ("%.14g"):format(v)
  elseif t == "boolean" then
    out[#out + 1] = tostring(v)
  elseif t == "table" and getmetatable(v) == ARRAY then
    out[#out + 1] = "["
    for i, item in ipairs(v) do
      if i > 1 then out[#out + 1] = "," end
      json_value(item, out)
    end
    out[#out + 1] = "]"
  elseif t == "table" then
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    out[#out + 1] = "{"
    for i, k in ipairs(keys) do
      if i > 1 then out[#out + 1] = "," end
      out[#out + 1] = json_string(k) .. ":"
      json_value(v[k], out)
    end
    out[#out + 1] = "}"
  else
    out[#out + 1] = "null"
  end
end

function json(v)
  local out = {}
  json_value(v, out)
  return table.concat(out)
end

-- ---- reading ----------------------------------------------------------------

-- A line reader over conn's raw input: the first bytes decide the protocol
-- before any framing is chosen. buf holds what was received and pos where
-- the next line starts: taking a line moves pos instead of copying the rest
-- of buf, so a client that sends many lines at once costs time in
-- proportion to its bytes, not to their square.
local Reader = {}
Reader.__index = Reader

local MAX_LINE = 8192

local function new_reader(conn)
  return setmetatable({ conn = conn, buf = "", pos = 1 }, Reader)
end

-- Returns the next line without its end ("\n" or "\r\n"), or nil, err.
function Reader:line()
  while true do
    local nl = self.buf:find("\n", self.pos, true)
    if nl then
      local line = self.buf:sub(self.pos, nl - 1):gsub("\r$", "")
      self.pos = nl + 1
      return line
    end
    local rest = self.buf:sub(self.pos)
    self.buf, self.pos = rest, 1
    if #rest > MAX_LINE then return nil, "line too long" end
    local data, err = self.conn:recv()
    if not data then
      if err == "closed" and #rest > 0 then
        self.buf = ""
        return rest
      end
      return nil, err
    end
    self.buf = rest .. data
  end
end

-- Returns the first bytes (up to the first line's end, or 16 bytes), without
-- consuming them.
function Reader:peek()
  while #self.buf < 16 and not self.buf:find("\n", 1, true) do
    local data = self.conn:recv()
    if not data then break end
    self.buf = self.buf .. data
  end
  return self.buf
end

-- ---- formatting -------------------------------------------------------------

local function fmt_age(s)
  if s < 60 then return ("%.1fs"):format(s) end
  if s < 3600 then return ("%dm%02ds"):format(s // 60, math.floor(s % 60)) end
  return ("%dh%02dm"):format(s // 3600, math.floor(s % 3600) // 60)
end

local LIST_FORMAT = "%-5s %-22s %-22s %-8s %-30s %-4s %-15s %10s %10s %8s"

local function list_lines()
  local out = { LIST_FORMAT:format("ID", "PEER", "LOCAL", "AGE", "LISTENER", "VER",
    "WAITS", "IN", "OUT", "QUEUED") }
  for _, c in ipairs(inspect.conns()) do
    out[#out + 1] = LIST_FORMAT:format(c.id, c.peer, c["local"], fmt_age(c.age),
      (c.listener or "?") .. (c.admin and " (admin)" or ""), c.version, c.waits_on,
      c.bytes_in, c.bytes_out, c.queued)
  end
  return out
end

local SHOW_KEYS = { "id", "peer", "local", "listener", "handler", "version", "latest",
  "state", "waits_on", "age", "bytes_in", "bytes_out", "msgs_in", "msgs_out",
  "buffered", "queued", "trace" }

local function show_lines(c)
  local out = {}
  for _, k in ipairs(SHOW_KEYS) do
    out[#out + 1] = ("%-10s %s"):format(k .. ":", tostring(c[k]))
  end
  if c.kernel then
    local keys = {}
    for k in pairs(c.kernel) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do
      out[#out + 1] = ("%-10s %s"):format("kernel." .. k .. ":", tostring(c.kernel[k]))
    end
  end
  out[#out + 1] = c.traceback or "traceback: (none: the handler is running or has ended)"
  return out
end

-- Returns the counters of luaecho.stats() as sorted "name value" lines.
local function stats_lines()
  local st, out = luaecho.stats(), {}
  for k, v in pairs(st) do
    if type(v) == "table" then
      for k2, v2 in pairs(v) do out[#out + 1] = ("%s.%s %s"):format(k, k2, v2) end
    else
      out[#out + 1] = ("%s %s"):format(k, v)
    end
  end
  table.sort(out)
  return out
end

-- Asks for a reload and waits (bounded) until the server has done it.
-- Returns ok, message.
local function do_reload()
  local before = luaecho.stats()
  inspect.reload()
  for _ = 1, 100 do
    luaecho.sleep(0.02)
    local now = luaecho.stats()
    if now.reloads_rejected > before.reloads_rejected then
      return false, "reload rejected (the server's log says why); the running version keeps serving"
    end
    if now.reloads > before.reloads then
      return true, ("reloaded (%d load(s))"):format(now.reloads - before.reloads)
    end
  end
  return true, "reload requested (nothing was reloaded)"
end

-- Returns one line describing entry f of a live fault list, which Lua code
-- of the server may have filled with anything.
local function describe_fault(faults, f)
  if type(f) ~= "table" then return "not a fault: " .. tostring(f) end
  return faults.describe(f)
end

-- Returns the lines of the `faults` command.
local function faults_lines()
  local ok, faults = pcall(require, "luaecho.faults")
  if not ok then return { "error: luaecho.faults is not available: " .. tostring(faults) } end
  local out = {}
  for _, r in ipairs(faults.active()) do
    out[#out + 1] = ("conn %d proxy %s client %s upstream %s seed %s downstream: %s upstream: %s"):format(
      r.id, tostring(r.name), tostring(r.client), tostring(r.upstream_address), tostring(r.seed),
      #r.downstream > 0 and table.concat(r.downstream, ", ") or "none",
      #r.upstream > 0 and table.concat(r.upstream, ", ") or "none")
  end
  local names = {}
  for name in pairs(faults.lists()) do names[#names + 1] = name end
  table.sort(names)
  local lists = faults.lists()
  for _, name in ipairs(names) do
    local descs = {}
    for i, f in ipairs(lists[name]) do descs[i] = describe_fault(faults, f) end
    out[#out + 1] = ("proxy %s: %s"):format(name, #descs > 0 and table.concat(descs, "; ") or "no faults")
  end
  if #out == 0 then out[1] = "no toxic proxies running" end
  return out
end

-- ---- the line protocol ------------------------------------------------------

local HELP = {
  "commands:",
  "  list              one line per connection",
  "  show ID           one connection in detail, with its Lua traceback",
  "  trace ID on|off   trace a connection's socket events",
  "  close ID          close a connection (its handler gets nil, \"killed\")",
  "  stats             the server's counters",
  "  reload            reload handlers and the configuration, as SIGHUP does",
  "  faults            running toxic proxies (luaecho.faults) and their faults",
  "  faults NAME add TYPE KEY=VALUE...   add a fault to a named proxy's list",
  "  faults NAME remove FAULT|N          remove one (by name or position)",
  "  faults NAME clear                   remove them all",
  "  help              this text",
  "  quit              close this connection",
  "HTTP on this port: GET /metrics, GET / (the live page)",
}

-- Returns the connection id in word, or nil and an error line.
local function conn_id(word, usage)
  if not word then return nil, "error: usage: " .. usage end
  local id = math.tointeger(tonumber(word))
  if not id or id < 1 then return nil, ("error: bad connection id '%s'"):format(word) end
  return id
end

local function no_conn(id)
  return { ("error: no connection %d"):format(id) }
end

local commands = {}

function commands.help() return HELP end

function commands.list() return list_lines() end

function commands.stats() return stats_lines() end

-- `faults NAME add TYPE KEY=VALUE...`, `faults NAME remove FAULT|INDEX`,
-- `faults NAME clear`: edits the live list of a named proxy, which its next
-- connections start from.
local function edit_faults(name, verb, args)
  local ok, faults = pcall(require, "luaecho.faults")
  if not ok then return { "error: luaecho.faults is not available" } end
  local list = faults.lists()[name]
  if not list then return { ("error: no proxy named '%s' (faults lists them)"):format(name) } end
  if verb == "clear" then
    for i = #list, 1, -1 do list[i] = nil end
    return { ("ok: proxy %s: no faults"):format(name) }
  elseif verb == "remove" and args[1] then
    for i, f in ipairs(list) do
      if type(f) == "table" and f.name == args[1] or tostring(i) == args[1] then
        table.remove(list, i)
        return { ("ok: proxy %s: removed %s"):format(name, describe_fault(faults, f)) }
      end
    end
    return { ("error: proxy %s has no fault '%s'"):format(name, args[1]) }
  elseif verb == "add" and args[1] then
    local t = { type = args[1] }
    for i = 2, #args do
      local k, v = args[i]:match("^([%w_]+)=(.+)$")
      if not k then return { ("error: expected KEY=VALUE, got '%s'"):format(args[i]) } end
      t[k] = math.tointeger(tonumber(v)) or tonumber(v) or v
    end
    local made, spec = pcall(faults.new, t)
    if not made then return { "error: " .. tostring(spec) } end
    list[#list + 1] = spec
    return { ("ok: proxy %s: added %s"):format(name, faults.describe(spec)) }
  end
  return { "error: usage: faults [NAME add TYPE KEY=VALUE... | NAME remove FAULT | NAME clear]" }
end

function commands.faults(args)
  if #args == 0 then return faults_lines() end
  return edit_faults(args[1], args[2], table.move(args, 3, #args, 1, {}))
end

function commands.show(args)
  local id, err = conn_id(args[1], "show ID")
  if not id then return { err } end
  local c = inspect.conn(id)
  return c and show_lines(c) or no_conn(id)
end

function commands.trace(args)
  local id, err = conn_id(args[1], "trace ID on|off")
  if not id then return { err } end
  local on = args[2]
  if on ~= "on" and on ~= "off" then return { "error: usage: trace ID on|off" } end
  if not inspect.trace(id, on == "on") then return no_conn(id) end
  return { ("ok: tracing of conn %d is %s"):format(id, on) }
end

function commands.close(args, conn)
  local id, err = conn_id(args[1], "close ID")
  if not id then return { err } end
  if id == conn.id then return { "error: this is the admin connection itself; use quit" } end
  local ok, why = inspect.kill(id)
  if ok then return { ("ok: closing conn %d"):format(id) } end
  return why == "closing" and { ("error: conn %d is already closing"):format(id) } or no_conn(id)
end

function commands.reload()
  local ok, msg = do_reload()
  return { (ok and "ok: " or "error: ") .. msg }
end

-- Runs one command line; returns the reply lines, or nil to quit.
local function run_command(line, conn)
  local words = {}
  for w in line:gmatch("%S+") do words[#words + 1] = w end
  local name = table.remove(words, 1)
  if name == nil then return {} end
  name = name:lower()
  if name == "quit" or name == "exit" then return nil end
  local cmd = commands[name]
  if not cmd then
    if #name > 30 then name = name:sub(1, 30) .. "..." end
    return { ("error: unknown command '%s' (try help)"):format(name) }
  end
  return cmd(words, conn)
end

local function serve_lines(conn, reader)
  while true do
    local line, err = reader:line()
    if err == "line too long" then
      conn:send(("error: line too long (more than %d bytes)\n\n"):format(MAX_LINE))
    end
    if not line then return end
    local reply = run_command(line, conn)
    if not reply then return end
    if #reply > 0 and not conn:send(table.concat(reply, "\n") .. "\n\n") then return end
  end
end

-- ---- metrics ------------------------------------------------------------------

-- Prometheus label values escape backslash, quote and newline.
local function label(v)
  return '"' .. tostring(v):gsub('[\\"\n]', { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }) .. '"'
end

-- Returns the metric families: { name, type, help, samples = { { labels, value } } }.
local function metric_families()
  local st = luaecho.stats()
  local fams = {}
  local function add(name, kind, help, samples)
    fams[#fams + 1] = { name = name, kind = kind, help = help, samples = samples }
  end
  local function one(v) return { { nil, v or 0 } } end
  local open, total = {}, {}
  for _, l in ipairs(inspect.listeners()) do
    open[#open + 1] = { { listener = l.name }, l.open }
    total[#total + 1] = { { listener = l.name }, l.accepted }
  end
  add("luaecho_connections_open", "gauge", "Connections open now, by listener.", open)
  add("luaecho_connections_total", "counter", "Connections accepted, by listener.", total)
  add("luaecho_accepted_total", "counter", "Connections accepted.", one(st.accepted))
  add("luaecho_refused_total", "counter", "Connections refused by a limit.", one(st.refused))
  add("luaecho_shed_total", "counter", "Connections shed for lack of descriptors or memory.", one(st.shed))
  add("luaecho_accept_errors_total", "counter", "Accepts that failed after the kernel's.", one(st.accept_errors))
  add("luaecho_outbound_connections_total", "counter", "Outbound connections opened by handlers.", one(st.connected))
  add("luaecho_received_bytes_total", "counter", "Bytes received from peers.", one(st.bytes_in))
  add("luaecho_sent_bytes_total", "counter", "Bytes sent to peers.", one(st.bytes_out))
  add("luaecho_received_messages_total", "counter", "Messages returned by recv.", one(st.msgs_in))
  add("luaecho_sent_messages_total", "counter", "Messages given to send.", one(st.msgs_out))
  local ended, reasons = {}, {}
  for reason in pairs(st.ended) do reasons[#reasons + 1] = reason end
  table.sort(reasons)
  for _, reason in ipairs(reasons) do ended[#ended + 1] = { { reason = reason }, st.ended[reason] } end
  add("luaecho_connections_ended_total", "counter", "Connections ended, by reason.", ended)
  local e = st.ended
  add("luaecho_errors_total", "counter", "Connections ended by an error, by error name.", {
    { { name = "econnreset" }, e.reset }, { { name = "socket_error" }, e.socket_error },
    { { name = "handler_error" }, e.handler_error }, { { name = "idle" }, e.idle },
    { { name = "send_timeout" }, e.send_timeout }, { { name = "connect_failed" }, e.connect_failed },
    { { name = "accept" }, st.accept_errors } })
  add("luaecho_handler_errors_total", "counter", "Handlers that raised an error.", one(st.handler_errors))
  add("luaecho_handlers_preempted_total", "counter", "Times a long-running handler was preempted.", one(st.preempted))
  add("luaecho_handlers_stopped_total", "counter", "Handlers stopped by cpu_limit.", one(st.cpu_limit_stopped))
  add("luaecho_reloads_total", "counter", "Handler and configuration reloads, by result.", {
    { { result = "ok" }, st.reloads }, { { result = "rejected" }, st.reloads_rejected } })
  add("luaecho_lua_memory_bytes", "gauge", "Memory the Lua state uses.", one(st.lua_memory))
  add("luaecho_lua_memory_limit_bytes", "gauge", "The Lua state's memory cap (max_memory; 0: none).",
    one(st.lua_memory_limit))
  add("luaecho_trace_dropped_lines_total", "counter", "Trace lines dropped because the output fell behind.",
    one(st.trace_dropped))
  return fams
end

local function metrics_text()
  local out = {}
  for _, f in ipairs(metric_families()) do
    out[#out + 1] = ("# HELP %s %s"):format(f.name, f.help)
    out[#out + 1] = ("# TYPE %s %s"):format(f.name, f.kind)
    for _, s in ipairs(f.samples) do
      local labels = ""
      if s[1] then
        local parts = {}
        for k, v in pairs(s[1]) do parts[#parts + 1] = k .. "=" .. label(v) end
        labels = "{" .. table.concat(parts, ",") .. "}"
      end
      out[#out + 1] = ("%s%s %s"):format(f.name, labels, tostring(s[2] or 0))
    end
  end
  return table.concat(out, "\n") .. "\n"
end

-- ---- HTTP -------------------------------------------------------------------

local REASONS = { [200] = "OK", [400] = "Bad Request", [404] = "Not Found",
  [405] = "Method Not Allowed", [409] = "Conflict" }

local function respond(conn, status, ctype, body)
  conn:send(("HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
    .. "Cache-Control: no-store\r\nConnection: close\r\n\r\n%s"):format(
    status, REASONS[status], ctype, #body, body))
end

local function respond_json(conn, status, value)
  respond(conn, status, "application/json", json(value))
end

-- Parses "a=1&b=2" into a table (no percent-decoding: ids are digits).
local function parse_query(q)
  local t = {}
  for k, v in (q or ""):gmatch("([^&=]+)=([^&]*)") do t[k] = v end
  return t
end

local function conns_json()
  local list = inspect.conns()
  for _, c in ipairs(list) do c.age = math.floor(c.age * 10 + 0.5) / 10 end
  local st = luaecho.stats()
  st.ended = nil
  return { conns = array(list), stats = st, now = luaecho.now() }
end

-- Streams the trace events of connection id as Server-Sent Events until it
-- ends or the client goes away.
local function stream_events(conn, id)
  local sub <close> = inspect.subscribe(id)
  if not sub then
    return respond_json(conn, 404, { error = ("no connection %d"):format(id) })
  end
  if not conn:send("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
      .. "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
      .. ("event: hello\ndata: %s\n\n"):format(json(inspect.conn(id) or {}))) then
    return
  end
  local since, quiet = 0, 0
  while true do
    local events, last, alive = sub:events(since)
    local out = {}
    for _, e in ipairs(events) do
      out[#out + 1] = ("id: %d\ndata: %s\n\n"):format(e.seq, json(e))
    end
    since = last
    if not alive then out[#out + 1] = "event: end\ndata: {}\n\n" end
    quiet = #out == 0 and quiet + 1 or 0
    -- A comment now and then finds a client that went away.
    if quiet >= 50 then out[1], quiet = ": ping\n\n", 0 end
    if #out > 0 and not conn:send(table.concat(out)) then return end
    if not alive then return end
    luaecho.sleep(0.1)
  end
end

-- The requesting connection cannot be closed (inspect.kill raises for the
-- connection running the caller) nor followed (the stream's own writes would
-- be events to stream, so it would never go quiet).
local function refuse_itself(conn)
  return respond_json(conn, 409, { ok = false, error = "this is the admin connection itself" })
end

local function route(conn, method, path, query)
  local id = math.tointeger(tonumber(query.id))
  if method == "POST" and path == "/api/close" then
    if not id then return respond_json(conn, 400, { error = "id required" }) end
    if id == conn.id then return refuse_itself(conn) end
    local ok, why = inspect.kill(id)
    return respond_json(conn, ok and 200 or why == "closing" and 409 or 404,
      { ok = ok or false, error = why })
  elseif method ~= "GET" then
    return respond_json(conn, 405, { error = "method not allowed" })
  elseif path == "/" or path == "/index.html" then
    return respond(conn, 200, "text/html; charset=utf-8", require "luaecho.admin_page")
  elseif path == "/metrics" then
    return respond(conn, 200, "text/plain; version=0.0.4; charset=utf-8", metrics_text())
  elseif path == "/api/conns" then
    return respond_json(conn, 200, conns_json())
  elseif path == "/api/conn" then
    local c = id and inspect.conn(id)
    return respond_json(conn, c and 200 or 404, c or { error = "no such connection" })
  elseif path == "/events" then
    if not id then return respond_json(conn, 400, { error = "id required" }) end
    if id == conn.id then return refuse_itself(conn) end
    local target = inspect.conn(id)
    if target and target.admin then
      -- Two streams following each other would feed each other for ever.
      return respond_json(conn, 409, { error = ("connection %d is an admin connection"):format(id) })
    end
    return stream_events(conn, id)
  end
  return respond_json(conn, 404, { error = "not found: " .. path })
end

local function serve_http(conn, reader)
  local request = reader:line()
  local method, target = (request or ""):match("^(%u+) (%S+) HTTP/1%.[01]$")
  if not method then return respond_json(conn, 400, { error = "bad request line" }) end
  repeat -- the headers: nothing in them matters here
    local h = reader:line()
  until h == nil or h == ""
  local path, q = target:match("^([^?]*)%??(.*)$")
  route(conn, method, path, parse_query(q))
end

return function(conn)
  local reader = new_reader(conn)
  local head = reader:peek()
  if head:match("^%u+ /") then
    serve_http(conn, reader)
  else
    serve_lines(conn, reader)
  end
end
