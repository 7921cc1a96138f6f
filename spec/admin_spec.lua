-- The admin listener (admin = "ADDR", docs/admin.md): every command of its
-- line protocol over a real socket, nc as a client, the warning for an
-- address beyond loopback, closing a connection from the admin, the
-- Prometheus metrics as a real parser reads them, and the HTTP endpoints
-- the live page uses (the page itself: admin_page_spec.lua).
local server = require "server"
local socket = require "socket"

local record = server.record

-- A handler whose wait shows in tracebacks under a name of its own, and
-- which reports what its recv returned when that fails.
local HANDLER = server.REPORT .. [[
local luaecho = require "luaecho"
local function wait_for_input(conn)
  return conn:recv()
end
return function(conn)
  while true do
    local data, err = wait_for_input(conn)
    if not data then
      report("recv" .. conn.id, data, err)
      return
    end
    conn:send(data)
  end
end
]]

-- Starts luaecho with HANDLER (or handler) and the admin listener on
-- `admin` (default "127.0.0.1:0"); returns the server and the admin
-- address ({ host, port } or { path }) as its log states it.
local function start(opts)
  opts = opts or {}
  local srv = server.start{
    config = ('listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\nadmin = %q\nwatch = false\nconn_summary = true\n%s')
      :format(opts.admin or "127.0.0.1:0", opts.config or ""),
    handlers = { ["h.lua"] = opts.handler or HANDLER },
    files = opts.files,
  }
  -- server.start reads up to the "running as pid" line, which comes after
  -- every listener's line, the admin's included.
  local line
  for _, l in ipairs(srv:log()) do
    if l:find(record("info", "admin interface on .+")) then line = l end
  end
  assert(line, srv:log_text())
  return srv, server.parse_addr(line:match("admin interface on (.+)$"))
end

-- Waits (bounded) until a log line read so far, or read from now on,
-- matches pattern: for lines whose order is not fixed (a trace line comes
-- from the trace's writer thread, a log line from the loop). Returns it.
local function wait_logged(srv, pattern)
  for _ = 1, 100 do
    for _, l in ipairs(srv:log()) do
      if l:find(pattern) then return l end
    end
    srv:next_line(0.1)
  end
  error("no log line matches " .. pattern .. "\n" .. srv:log_text(), 2)
end

-- Sends one command line and returns the reply's lines (without the empty
-- line that ends every reply).
local function command(sock, line)
  assert(sock:send(line .. "\n"))
  local out = {}
  while true do
    local l, err = sock:receive("*l")
    assert(l, "admin reply cut short: " .. tostring(err))
    if l == "" then return out end
    out[#out + 1] = l
  end
end

local function admin_conn(addr)
  return assert(server.connect(addr))
end

-- Returns the `list` row of the connection whose peer is client's local
-- address, split into its columns.
local function row_of(admin, client)
  local host, port = client:getsockname()
  for _, line in ipairs(command(admin, "list")) do
    local cols = {}
    for w in line:gmatch("%S+") do cols[#cols + 1] = w end
    if cols[2] == ("%s:%d"):format(host, port) then return cols end
  end
end

-- Connects a client and exchanges one line with the echo, so the server
-- has counted it. Returns the socket.
local function client_of(srv, text)
  local c = assert(server.connect(srv.host, srv.port))
  text = text or "hello\n"
  local got, err = server.exchange(c, text)
  assert.is_nil(err)
  assert.equal(text, got)
  return c
end

-- Sends an HTTP request on a new admin connection; returns status,
-- headers (lower-case names) and body.
local function http(addr, method, target)
  local s = admin_conn(addr)
  assert(s:send(("%s %s HTTP/1.1\r\nHost: admin\r\n\r\n"):format(method, target)))
  local status = assert(s:receive("*l")):match("^HTTP/1%.1 (%d+) ")
  local headers = {}
  while true do
    local l = assert(s:receive("*l"))
    if l == "" then break end
    local k, v = l:match("^([^:]+):%s*(.*)$")
    headers[k:lower()] = v
  end
  local body = headers["content-length"] and assert(s:receive(tonumber(headers["content-length"]))) or nil
  s:close()
  return tonumber(status), headers, body, s
end

-- Starts as start() does with one echoing client; returns the server, the
-- admin address, the client, an admin connection and the client's id.
local function start_with_client(opts)
  local srv, addr = start(opts)
  local c = client_of(srv)
  local admin = admin_conn(addr)
  return srv, addr, c, admin, row_of(admin, c)[1]
end

-- A toxic proxy named "slow" in front of an echo on a unix socket.
local PROXY = [[
local faults = require "luaecho.faults"
return faults.handler("unix:@DIR@/up.sock", { faults.latency(5) }, { name = "slow" })
]]
local ECHO = "return function(conn) repeat local d = conn:recv() until not (d and conn:send(d)) end\n"

describe("admin listener", function()
  after_each(server.cleanup)

  it("is off by default", function()
    local srv = server.start{ config = 'listen = "127.0.0.1:0"\n' }
    -- server.start has read every start-up line, up to "running as pid".
    local log = srv:log_text()
    assert.truthy(log:find("running as pid %d+ with "), log)
    for _, l in ipairs(srv:log()) do assert.is_nil(l:find("admin", 1, true), l) end
  end)

  it("is named by --check", function()
    local code, lines = server.run{ config = 'listen = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n', args = { "--check" } }
    assert.equal(0, code, table.concat(lines, "\n"))
    assert.truthy(table.concat(lines, "\n"):find("would serve the admin interface on 127.0.0.1:0", 1, true))
  end)

  it("rejects an admin key that is not an address", function()
    local code, lines = server.run{ config = 'admin = 7001\n', args = { "--check" } }
    assert.are_not.equal(0, code)
    assert.truthy(table.concat(lines, "\n"):find("key 'admin': expected address string (or false for none), got number", 1, true))
  end)

  describe("line protocol", function()
    it("help lists every command", function()
      local _, addr = start()
      local lines = table.concat(command(admin_conn(addr), "help"), "\n")
      for _, cmd in ipairs{ "list", "show ID", "trace ID on|off", "close ID", "stats", "reload", "faults", "help", "quit" } do
        assert.truthy(lines:find("  " .. cmd, 1, true), cmd)
      end
    end)

    it("list shows each connection: id, addresses, age, listener, version, what it waits on, bytes, queued", function()
      local srv, addr = start()
      local c = client_of(srv, "hello\n")
      local admin = admin_conn(addr)
      local header = command(admin, "list")[1]
      assert.truthy(header:match("^ID%s+PEER%s+LOCAL%s+AGE%s+LISTENER%s+VER%s+WAITS%s+IN%s+OUT%s+QUEUED$"), header)
      local row = assert(row_of(admin, c))
      local listener = ("%s:%d"):format(srv.host, srv.port)
      assert.truthy(math.tointeger(tonumber(row[1])))
      assert.equal(listener, row[3])
      assert.truthy(row[4]:match("^%d+%.%ds$"), row[4])
      assert.equal(listener, row[5])
      assert.equal("1", row[6])
      assert.equal("conn:recv", row[7])
      assert.same({ "6", "6", "0" }, { row[8], row[9], row[10] })
      -- The admin's own connection is listed too, running this command.
      local own = table.concat(command(admin, "list"), "\n")
      assert.truthy(own:find(server.literal(("%s:%d"):format(addr.host, addr.port)) .. " %(admin%)%s+1%s+running"), own)
    end)

    it("show ID gives one connection in detail with its Lua traceback", function()
      local srv, addr, c, admin, id = start_with_client()
      local text = table.concat(command(admin, "show " .. id), "\n")
      assert.truthy(text:find("\nwaits_on:  conn:recv\n", 1, true), text)
      assert.truthy(text:find("\nbytes_in:  6\n", 1, true), text)
      assert.truthy(text:find("\nhandler:   " .. srv:file("h.lua") .. "\n", 1, true), text)
      assert.truthy(text:find("\nkernel.state: ESTABLISHED\n", 1, true), text)
      assert.truthy(text:find("stack traceback:\n\t[C]: in method 'recv'\n", 1, true), text)
      assert.truthy(text:find("h.lua:%d+: in upvalue 'wait_for_input'"), text)
    end)

    it("trace ID on|off turns a connection's trace on and off", function()
      local srv, addr, c, admin, id = start_with_client()
      assert.same({ ("ok: tracing of conn %s is on"):format(id) }, command(admin, "trace " .. id .. " on"))
      server.exchange(c, "first\n")
      assert.truthy(srv:wait_line(record("trace", "%d+us conn " .. id .. ' read 6 bytes "first\\n"')), srv:log_text())
      assert.same({ ("ok: tracing of conn %s is off"):format(id) }, command(admin, "trace " .. id .. " off"))
      server.exchange(c, "quiet\n")
      assert.truthy(table.concat(command(admin, "show " .. id), "\n"):find("\ntrace:     false\n", 1, true))
      command(admin, "trace " .. id .. " on")
      server.exchange(c, "again\n")
      local line = assert(srv:wait_line("conn " .. id .. " read 6 bytes"), srv:log_text())
      assert.truthy(line:find('"again\\n"', 1, true), line) -- nothing of "quiet" came before
    end)

    it("close ID ends a connection: a waiting recv returns nil, \"killed\"", function()
      local srv, addr, c, admin, id = start_with_client()
      command(admin, "trace " .. id .. " on")
      assert.same({ "ok: closing conn " .. id }, command(admin, "close " .. id))
      wait_logged(srv, record("trace", "%d+us conn " .. id .. " ended by the server %(killed%)"))
      wait_logged(srv, record("trace", "%d+us conn " .. id .. " closed %(killed from the admin%) after .*"))
      wait_logged(srv, record("info", "conn " .. id .. " [%d.:]+: ended %(killed from the admin%) after .*"))
      local r = assert(srv:report("recv" .. id))
      assert.same({ n = 2, nil, "killed" }, r)
      local _, err = c:receive(1)
      assert.equal("closed", err)
      assert.is_nil(row_of(admin, c))
      assert.same({ "error: no connection " .. id }, command(admin, "close " .. id))
    end)

    it("close ID ends a handler waiting on something else than its connection", function()
      local srv, addr = start{ handler = 'local luaecho = require "luaecho"\nreturn function(conn) conn:send("ready\\n") luaecho.sleep(100) end\n' }
      local c = assert(server.connect(srv.host, srv.port))
      assert.equal("ready", c:receive("*l"))
      local admin = admin_conn(addr)
      local row = assert(row_of(admin, c))
      assert.equal("luaecho.sleep", row[7])
      assert.same({ "ok: closing conn " .. row[1] }, command(admin, "close " .. row[1]))
      assert.truthy(srv:wait_line("conn " .. row[1] .. " .*ended %(killed from the admin%)"), srv:log_text())
    end)

    it("close refuses the admin connection itself", function()
      local _, addr = start()
      local admin = admin_conn(addr)
      local own = table.concat(command(admin, "list"), "\n"):match("\n(%d+) [^\n]*%(admin%)")
      assert.same({ "error: this is the admin connection itself; use quit" }, command(admin, "close " .. own))
      assert.same({ "ok: tracing of conn " .. own .. " is off" }, command(admin, "trace " .. own .. " off"))
    end)

    it("answers mistakes with one line starting with \"error: \"", function()
      local _, addr = start()
      local admin = admin_conn(addr)
      assert.same({ "error: unknown command 'frobnicate' (try help)" }, command(admin, "frobnicate 1"))
      assert.same({ "error: bad connection id 'x'" }, command(admin, "show x"))
      assert.same({ "error: bad connection id '-3'" }, command(admin, "close -3"))
      assert.same({ "error: no connection 999" }, command(admin, "show 999"))
      assert.same({ "error: no connection 999" }, command(admin, "trace 999 on"))
      assert.same({ "error: usage: show ID" }, command(admin, "show"))
      assert.same({ "error: usage: close ID" }, command(admin, "close"))
      assert.same({ "error: usage: trace ID on|off" }, command(admin, "trace 1 sideways"))
      -- The connection is still served after every mistake.
      assert.equal("commands:", command(admin, "help")[1])
      -- A line without end is refused, and the connection closed.
      assert.same({ "error: unknown command 'yyyyyyyyyyyyyyyyyyyyyyyyyyyyyy...' (try help)" },
        command(admin, ("y"):rep(100)))
      assert(admin:send(("x"):rep(9000)))
      assert.equal("error: line too long (more than 8192 bytes)", admin:receive("*l"))
      assert.equal("", admin:receive("*l"))
      local _, err = admin:receive("*l")
      assert.equal("closed", err)
    end)

    it("stats gives the counters", function()
      local srv, addr = start()
      client_of(srv, "12345\n"):close()
      assert.truthy(srv:wait_line("ended %(peer FIN%)"))
      local admin = admin_conn(addr)
      local st = {}
      for _, l in ipairs(command(admin, "stats")) do
        local k, v = l:match("^(%S+) (%d+)$")
        st[assert(k, l)] = tonumber(v)
      end
      assert.equal(2, st.accepted) -- the client and this admin connection
      assert.equal(1, st["ended.peer_fin"])
      assert.equal(0, st.handler_errors)
      assert.truthy(st.bytes_in >= 6 + #"stats\n")
      assert.truthy(st.lua_memory > 0)
    end)

    it("reload reloads handlers as SIGHUP does, and reports a rejected one", function()
      local srv, addr = start()
      local admin = admin_conn(addr)
      server.write_file(srv:file("h.lua"), HANDLER .. "-- version 2\n")
      assert.same({ "ok: reloaded (2 load(s))" }, command(admin, "reload"))
      assert.truthy(srv:wait_line(record("info", "reloaded .*h%.lua %(version 2%)")))
      local c = client_of(srv)
      assert.equal("2", row_of(admin, c)[6])
      server.write_file(srv:file("h.lua"), "return 42\n")
      local reply = command(admin, "reload")
      assert.same({ "error: reload rejected (the server's log says why); the running version keeps serving" }, reply)
      assert.truthy(srv:wait_line(record("error", "reload of .*h%.lua failed: .*handler must return a function, got number; version 2 keeps serving")))
    end)

    it("faults lists the running toxic proxies and their faults", function()
      local srv, addr = start{
        handler = PROXY,
        config = 'listen = { "127.0.0.1:0", { address = "unix:@DIR@/up.sock", handler = "@DIR@/up.lua" } }\n',
        files = { ["up.lua"] = ECHO },
      }
      local admin = admin_conn(addr)
      assert.same({ "no toxic proxies running" }, command(admin, "faults"))
      local c = client_of(srv, "via the proxy\n")
      local id = row_of(admin, c)[1]
      local text = table.concat(command(admin, "faults"), "\n")
      assert.truthy(text:find("conn " .. id .. " proxy slow client ", 1, true), text)
      assert.truthy(text:find("downstream: latency_downstream upstream: none", 1, true), text)
      assert.truthy(text:find("\nproxy slow: latency", 1, true), text)
    end)

    it("faults NAME add|remove|clear edits a proxy's list for its next connections", function()
      local srv, addr = start{
        handler = PROXY,
        config = 'listen = { "127.0.0.1:0", { address = "unix:@DIR@/up.sock", handler = "@DIR@/up.lua" } }\n',
        files = { ["up.lua"] = ECHO },
      }
      local admin = admin_conn(addr)
      client_of(srv, "first\n") -- the proxy's list is known once it ran
      assert.same({ "ok: proxy slow: added bandwidth_upstream: bandwidth rate=1000 (upstream, toxicity 1)" },
        command(admin, "faults slow add bandwidth rate=1000 stream=upstream"))
      assert.same({ "ok: proxy slow: removed latency_downstream: latency latency=5 jitter=0 (downstream, toxicity 1)" },
        command(admin, "faults slow remove latency_downstream"))
      local c = client_of(srv, "second\n")
      local id = row_of(admin, c)[1]
      local text = table.concat(command(admin, "faults"), "\n")
      assert.truthy(text:find("conn " .. id .. " proxy slow .* downstream: none upstream: bandwidth_upstream"), text)
      assert.same({ "ok: proxy slow: no faults" }, command(admin, "faults slow clear"))
      assert.same({ "error: no proxy named 'fast' (faults lists them)" }, command(admin, "faults fast clear"))
      assert.same({ 'error: faults: unknown fault type "bogus"' }, command(admin, "faults slow add bogus"))
      assert.same({ "error: proxy slow has no fault 'latency_downstream'" }, command(admin, "faults slow remove latency_downstream"))
    end)

    it("faults shows and removes an entry of a live list that is not a fault", function()
      local srv, addr = start{
        handler = PROXY,
        config = 'listen = { "127.0.0.1:0", { address = "unix:@DIR@/up.sock", handler = "@DIR@/up.lua" },'
          .. ' { address = "unix:@DIR@/junk.sock", handler = "@DIR@/junk.lua" } }\n',
        files = {
          ["up.lua"] = ECHO,
          -- Lua code of the same server puts junk in the live list.
          ["junk.lua"] = 'return function(conn) table.insert(require("luaecho.faults").lists().slow, 42) conn:send("ok\\n") end\n',
        },
      }
      local admin = admin_conn(addr)
      client_of(srv, "first\n")
      local junk = assert(server.connect_unix(srv:file("junk.sock")))
      assert.equal("ok", junk:receive("*l"))
      local text = table.concat(command(admin, "faults"), "\n")
      assert.truthy(text:find("proxy slow: latency_downstream: latency latency=5 jitter=0 (downstream, toxicity 1); not a fault: 42", 1, true), text)
      assert.same({ "error: proxy slow has no fault '42'" }, command(admin, "faults slow remove 42"))
      assert.same({ "ok: proxy slow: removed not a fault: 42" }, command(admin, "faults slow remove 2"))
      text = table.concat(command(admin, "faults"), "\n")
      assert.truthy(text:find("proxy slow: latency_downstream: latency latency=5 jitter=0 (downstream, toxicity 1)", 1, true), text)
      assert.falsy(text:find("not a fault", 1, true), text)
    end)

    it("quit closes the admin connection", function()
      local _, addr = start()
      local admin = admin_conn(addr)
      assert(admin:send("quit\n"))
      local _, err = admin:receive("*l")
      assert.equal("closed", err)
    end)

    -- Taking a line used to copy the rest of the buffer: a megabyte of
    -- empty lines at once then computed past the 5 s cpu_limit, which ended
    -- the admin connection before it answered.
    it("reads many lines sent at once in time proportional to their bytes", function()
      local srv, addr = start()
      local admin = admin_conn(addr)
      assert.same({ "commands:" }, { command(admin, string.rep("\n", 1000000) .. "help")[1] })
      assert.is_nil(srv:log_text():find("cpu_limit exceeded", 1, true))
    end)

    it("works from nc", function()
      local srv, addr = start()
      client_of(srv)
      local code, lines = server.sh(("printf 'list\\n' | nc -N %s %d"):format(addr.host, addr.port))
      assert.equal(0, code)
      assert.truthy(lines[1]:match("^ID%s+PEER"), lines[1])
      local listener = server.literal(("%s:%d"):format(srv.host, srv.port))
      local found = false
      for _, l in ipairs(lines) do
        found = found or l:find("^%d+%s+%S+%s+" .. listener .. "%s+%S+%s+" .. listener .. "%s+1%s+conn:recv%s") ~= nil
      end
      assert.truthy(found, table.concat(lines, "\n"))
    end)

    it("listens on a unix socket", function()
      local srv, addr = start{ admin = "unix:@DIR@/admin.sock" }
      assert.equal(srv:file("admin.sock"), addr.path)
      assert.equal("commands:", command(admin_conn(addr), "help")[1])
    end)

    it("warns when its address is not loopback", function()
      local srv, addr = start{ admin = "0.0.0.0:0" }
      -- A start-up line: server.start has read it already.
      assert.truthy(srv:log_text():find(record("warn", "the admin interface on 0%.0%.0%.0:" .. addr.port
        .. " is not limited to this host: anyone who reaches it can list, trace and close connections")
        :gsub("%$$", ""):gsub("^%^", "")), srv:log_text())
      assert.equal("commands:", command(admin_conn({ host = "127.0.0.1", port = addr.port }), "help")[1])
    end)

    it("does not warn on loopback", function()
      local srv = start()
      for _, l in ipairs(srv:log()) do assert.is_nil(l:find("[warn]", 1, true), l) end
    end)

    it("does not hold up the shutdown", function()
      local srv, addr = start()
      local admin = admin_conn(addr)
      command(admin, "help")
      srv:signal("TERM")
      assert.truthy(srv:wait_line(record("info", "shutting down on SIGTERM: 0 connections to drain %(up to 10s%)")), srv:log_text())
      assert.equal(0, srv:wait_exit(5))
      local _, err = admin:receive("*l")
      assert.equal("closed", err)
    end)
  end)

  describe("HTTP", function()
    -- Reads the metrics of addr through prometheus_client's parser and
    -- returns { ["name{labels}"] = value }, each family's type by name,
    -- and the help texts by name; raises if the parser rejects the text.
    local function parse_metrics(srv, addr)
      local status, headers, body = http(addr, "GET", "/metrics")
      assert.equal(200, status)
      assert.equal("text/plain; version=0.0.4; charset=utf-8", headers["content-type"])
      server.write_file(srv:file("metrics.txt"), body)
      local code, lines = server.sh(([[/usr/bin/python3 -c '
import json, sys
from prometheus_client.parser import text_string_to_metric_families
for f in text_string_to_metric_families(open(sys.argv[1]).read()):
    print("family", f.name, f.type, json.dumps(f.documentation))
    for s in f.samples:
        print("sample", s.name + json.dumps(s.labels, sort_keys=True), repr(s.value))
' %s 2>&1]]):format(srv:file("metrics.txt")))
      assert.equal(0, code, table.concat(lines, "\n"))
      local samples, types, helps = {}, {}, {}
      for _, l in ipairs(lines) do
        local name, kind, help = l:match("^family (%S+) (%S+) (.*)$")
        if name then
          types[name], helps[name] = kind, help
        else
          local key, value = l:match("^sample (.+) (%S+)$")
          assert(key, l)
          samples[key] = tonumber(value)
        end
      end
      return samples, types, helps, body
    end

    it("GET /metrics is valid Prometheus text with the server's counters", function()
      local srv, addr = start()
      local n = 3
      for i = 1, n do client_of(srv, ("message %d\n"):format(i)):close() end
      for _ = 1, n do assert.truthy(srv:wait_line("ended %(peer FIN%)"), srv:log_text()) end
      local samples, types, helps, body = parse_metrics(srv, addr)
      local main = ('{"listener": "%s:%d"}'):format(srv.host, srv.port)
      local admin = ('{"listener": "%s:%d"}'):format(addr.host, addr.port)
      -- The parser names counter families without their _total suffix.
      assert.equal(n + 1, samples["luaecho_accepted_total{}"]) -- and this request
      assert.equal(n, samples["luaecho_connections_total" .. main])
      assert.equal(1, samples["luaecho_connections_total" .. admin])
      assert.equal(0, samples["luaecho_connections_open" .. main])
      assert.equal(1, samples["luaecho_connections_open" .. admin])
      assert.equal(n, samples['luaecho_connections_ended_total{"reason": "peer_fin"}'])
      assert.equal(0, samples['luaecho_connections_ended_total{"reason": "killed"}'])
      assert.equal(n * #"message 1\n", samples["luaecho_sent_bytes_total{}"])
      assert.equal(n, samples["luaecho_sent_messages_total{}"])
      assert.truthy(samples["luaecho_received_bytes_total{}"] > n * #"message 1\n")
      assert.equal(0, samples['luaecho_reloads_total{"result": "ok"}'])
      assert.equal(0, samples['luaecho_reloads_total{"result": "rejected"}'])
      assert.equal(0, samples["luaecho_refused_total{}"])
      assert.equal(0, samples["luaecho_shed_total{}"])
      assert.equal(0, samples["luaecho_handler_errors_total{}"])
      assert.equal(0, samples['luaecho_errors_total{"name": "econnreset"}'])
      assert.equal(0, samples["luaecho_handlers_preempted_total{}"])
      assert.equal(0, samples["luaecho_handlers_stopped_total{}"])
      assert.equal(0, samples["luaecho_trace_dropped_lines_total{}"])
      assert.truthy(samples["luaecho_lua_memory_bytes{}"] > 0)
      assert.equal(1024 * 1024 * 1024, samples["luaecho_lua_memory_limit_bytes{}"])
      -- Every family has a type and a help text.
      local families = 0
      for name, kind in pairs(types) do
        families = families + 1
        assert.truthy(name:match("^luaecho_"), name)
        assert.truthy(kind == "counter" or kind == "gauge", name .. " " .. kind)
        assert.truthy(#helps[name] > 2, name)
      end
      assert.equal(select(2, body:gsub("# TYPE ", "")), families)
    end)

    it("GET /metrics counts handler errors and kills", function()
      local srv, addr = start{ handler = 'return function(conn) local d = conn:recv() if d == "boom\\n" then error("boom") end conn:recv() end\n' }
      local c = assert(server.connect(srv.host, srv.port))
      c:send("boom\n")
      assert.truthy(srv:wait_line("handler error: .*boom"))
      local c2 = assert(server.connect(srv.host, srv.port))
      c2:send("x")
      local admin = admin_conn(addr)
      local id = assert(row_of(admin, c2))[1]
      command(admin, "close " .. id)
      assert.truthy(srv:wait_line("ended %(killed from the admin%)"))
      local samples = parse_metrics(srv, addr)
      assert.equal(1, samples["luaecho_handler_errors_total{}"])
      assert.equal(1, samples['luaecho_errors_total{"name": "handler_error"}'])
      assert.equal(1, samples['luaecho_connections_ended_total{"reason": "killed"}'])
      assert.equal(1, samples['luaecho_connections_ended_total{"reason": "handler_error"}'])
    end)

    it("GET / serves the page from the binary, with nothing fetched from elsewhere", function()
      local _, addr = start()
      local status, headers, body = http(addr, "GET", "/")
      assert.equal(200, status)
      assert.equal("text/html; charset=utf-8", headers["content-type"])
      assert.truthy(body:find('<table id="conns">', 1, true))
      assert.truthy(body:find('<svg id="timeline"', 1, true))
      for url in body:gmatch("%a+://[^\"'%s)]+") do
        assert.equal("http://www.w3.org/2000/svg", url)
      end
    end)

    it("GET /api/conns lists connections as JSON", function()
      local srv, addr = start()
      local c = client_of(srv)
      local host, port = c:getsockname()
      local status, headers, body = http(addr, "GET", "/api/conns")
      assert.equal(200, status)
      assert.equal("application/json", headers["content-type"])
      assert.truthy(body:find(('"peer":"%s:%d"'):format(host, port), 1, true), body)
      assert.truthy(body:find('"waits_on":"conn:recv"', 1, true), body)
      assert.truthy(body:find('"stats":{', 1, true), body)
    end)

    it("answers unknown paths with 404 and other methods with 405", function()
      local _, addr = start()
      assert.equal(404, (http(addr, "GET", "/nope")))
      assert.equal(404, (http(addr, "GET", "/api/conn?id=999")))
      assert.equal(405, (http(addr, "PUT", "/metrics")))
      assert.equal(400, (http(addr, "GET", "/events")))
    end)

    it("POST /api/close?id=N closes a connection", function()
      local srv, addr = start()
      local c = client_of(srv)
      local id = row_of(admin_conn(addr), c)[1]
      local status, _, body = http(addr, "POST", "/api/close?id=" .. id)
      assert.equal(200, status, body)
      assert.same({ n = 2, nil, "killed" }, assert(srv:report("recv" .. id)))
      assert.equal(404, (http(addr, "POST", "/api/close?id=" .. id)))
    end)

    it("POST /api/close?id=N refuses the requesting connection itself with 409", function()
      local srv, addr = start()
      local s = admin_conn(addr)
      local id = row_of(admin_conn(addr), s)[1]
      assert(s:send(("POST /api/close?id=%s HTTP/1.1\r\n\r\n"):format(id)))
      local reply = server.read_all_until_close(s, 10)
      assert.matches("^HTTP/1%.1 409 ", reply)
      assert.truthy(reply:find('"error":"this is the admin connection itself"', 1, true), reply)
      assert.is_nil(srv:log_text():find("handler error", 1, true))
    end)

    -- Following itself, the stream's own writes were events to send: it
    -- never went quiet and put a trace line in the log every 0.1 s.
    it("GET /events?id=N refuses the requesting connection itself with 409", function()
      local _, addr = start()
      local s = admin_conn(addr)
      local id = row_of(admin_conn(addr), s)[1]
      assert(s:send(("GET /events?id=%s HTTP/1.1\r\n\r\n"):format(id)))
      assert.matches("^HTTP/1%.1 409 ", assert(s:receive("*l")))
      local reply = server.read_all_until_close(s, 10)
      assert.truthy(reply:find('"error":"this is the admin connection itself"', 1, true), reply)
    end)

    -- Two streams following each other fed each other without end.
    it("GET /events?id=N refuses another admin connection with 409", function()
      local _, addr = start()
      local other = admin_conn(addr)
      local id = row_of(admin_conn(addr), other)[1]
      local status, _, body = http(addr, "GET", "/events?id=" .. id)
      assert.equal(409, status, body)
      assert.equal(('{"error":"connection %s is an admin connection"}'):format(id), body)
    end)

    it("answers valid UTF-8 JSON for a path that is not UTF-8", function()
      local _, addr = start()
      local status, _, body = http(addr, "GET", "/\xff\xc3(")
      assert.equal(404, status, body)
      assert.equal('{"error":"not found: /\u{FFFD}\u{FFFD}("}', body)
      assert.truthy(utf8.len(body))
    end)

    it("GET /events?id=N streams the connection's trace events until it ends", function()
      local srv, addr, c, admin, id = start_with_client()
      local ev = admin_conn(addr)
      assert(ev:send(("GET /events?id=%s HTTP/1.1\r\n\r\n"):format(id)))
      assert.equal("HTTP/1.1 200 OK", ev:receive("*l"))
      local lines = {}
      -- Reads event-stream lines until one matches pattern.
      local function until_line(pattern)
        while true do
          local l = assert(ev:receive("*l"))
          lines[#lines + 1] = l
          if l:find(pattern) then return l end
        end
      end
      until_line("^event: hello$")
      -- Subscribing turned tracing on.
      assert.truthy(table.concat(command(admin, "show " .. id), "\n"):find("\ntrace:     true\n", 1, true))
      server.exchange(c, "ping\n")
      assert.truthy(until_line('^data: {"event":"read 5 bytes \\"ping\\\\n\\"","seq":%d+,"us":%d+}$'))
      until_line('^data: {"event":"wrote 5 bytes"')
      c:close()
      until_line('^data: {"event":"peer FIN')
      until_line('^data: {"event":"closed %(peer FIN%)')
      until_line("^event: end$")
      -- The stream ends with the connection, and so does the trace.
      local _, err = ev:receive("*l")
      assert.truthy(err == "closed" or err == nil)
    end)

    it("puts the trace back when the event stream ends", function()
      local _, addr, _, admin, id = start_with_client()
      local ev = admin_conn(addr)
      assert(ev:send(("GET /events?id=%s HTTP/1.1\r\n\r\n"):format(id)))
      repeat local l = assert(ev:receive("*l")) until l == "event: hello"
      assert.truthy(table.concat(command(admin, "show " .. id), "\n"):find("\ntrace:     true\n", 1, true))
      -- The stream's handler waits in luaecho.sleep: closing its connection
      -- ends it there, and its subscription with it.
      local ev_id
      for _, l in ipairs(command(admin, "list")) do
        ev_id = ev_id or l:match("^(%d+) .*%(admin%)%s+1%s+luaecho%.sleep")
      end
      assert.same({ "ok: closing conn " .. ev_id }, command(admin, "close " .. ev_id))
      local _, err = ev:receive("*a")
      assert.is_nil(err)
      assert.truthy(table.concat(command(admin, "show " .. id), "\n"):find("\ntrace:     false\n", 1, true))
    end)
  end)
end)
