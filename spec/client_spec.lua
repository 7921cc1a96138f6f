-- Client mode: `luaecho --connect ADDR [-c N] client.lua [args...]` runs
-- the script as handler(conn, args...) on outbound connections and exits
-- with its status. Each test starts a luaecho server (the peer) and runs a
-- second luaecho as the client against it, then checks the client's exit
-- status and output.
local server = require "server"
local proc = require "spec_proc"

local record, literal = server.record, server.literal

-- The server side: an echo on TCP and on a Unix socket, and a gatherer
-- that answers only once five connections are open at the same time.
local ECHO = [[
return function(conn)
  repeat local d = conn:recv() until not (d and conn:send(d))
end
]]

local GATHER = [[
local luaecho = require "luaecho"
-- The most connections open at once, shared by this handler's connections:
-- the first to answer may close before the others look again.
local peak = 0
return function(conn)
  luaecho.log("info", "gather accepted")
  local deadline = luaecho.now() + 10
  repeat
    peak = math.max(peak, luaecho.stats().connections)
    if peak < 5 then luaecho.sleep(0.01) end
  until peak >= 5 or luaecho.now() > deadline
  conn:send(peak >= 5 and "together\n" or "alone\n")
end
]]

-- A hosts file (server.hosts_env) in which two.test is 127.0.0.2, where
-- nothing listens, then 127.0.0.1.
local TWO_HOSTS = "127.0.0.2 two.test\n127.0.0.1 two.test\n"

local function start_peer()
  return server.start{
    config = [[
listen = {
  "127.0.0.1:0",
  "unix:@DIR@/echo.sock",
  { address = "127.0.0.1:0", handler = "@DIR@/gather.lua" },
}
handler = "@DIR@/echo.lua"
shutdown_timeout = 1
]],
    handlers = { ["echo.lua"] = ECHO, ["gather.lua"] = GATHER },
    expect = 3,
  }
end

-- Runs luaecho in client mode with `script` as client.lua. opts:
-- addr (required), args = the script's arguments, before = options in
-- front of --connect, count = -c N, stream = "stdout" | "stderr" to keep
-- one stream, files = more files for the run's dir, env = for the process. Returns exit code,
-- output lines.
local function run_client(script, opts)
  local argv = {}
  for _, a in ipairs(opts.before or {}) do argv[#argv + 1] = a end
  argv[#argv + 1] = "--connect"
  argv[#argv + 1] = opts.addr
  if opts.count then
    argv[#argv + 1] = "-c"
    argv[#argv + 1] = tostring(opts.count)
  end
  argv[#argv + 1] = "@DIR@/client.lua"
  for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
  local files = { ["client.lua"] = script }
  for name, src in pairs(opts.files or {}) do files[name] = src end
  local code, lines = server.run{ args = argv, files = files, env = opts.env, stream = opts.stream,
    timeout = 30 }
  return code, lines
end

-- "127.0.0.1:PORT" of the peer's listener i.
local function tcp_addr(srv, i)
  return srv.addrs[i or 1].text
end

-- Returns the lines matching the Lua pattern.
local function matching(lines, pattern)
  local out = {}
  for _, l in ipairs(lines) do
    if l:find(pattern) then out[#out + 1] = l end
  end
  return out
end

local closed_port = server.closed_port

-- A client that sends one line and prints the reply.
local HELLO = [[
return function(conn)
  conn:setopts{ packet = "line" }
  assert(conn:send("hello\n"))
  local line = assert(conn:recv())
  print("reply: " .. line:sub(1, -2)) -- without its "\n"
end
]]

describe("client mode", function()
  after_each(server.cleanup)

  describe("exit status", function()
    it("is 0 when the handler returns, after the echoed reply", function()
      local srv = start_peer()
      local code, lines = run_client(HELLO, { addr = tcp_addr(srv), stream = "stdout" })
      assert.same({ 0, { "reply: hello" } }, { code, lines })
    end)

    it("is the integer the handler returns", function()
      local srv = start_peer()
      local code, lines = run_client([[
return function(conn)
  assert(conn:send("x"))
  print(conn:recv())
  return 3
end
]], { addr = tcp_addr(srv), stream = "stdout" })
      assert.same({ 3, { "x" } }, { code, lines })
    end)

    it("is 1 when the handler raises, with the error logged", function()
      local srv = start_peer()
      local code, lines = run_client([[
return function(conn)
  error("client gave up")
end
]], { addr = tcp_addr(srv), stream = "stderr" })
      assert.equal(1, code)
      assert.equal(1, #matching(lines, record("error",
        "conn %d+ " .. literal(tcp_addr(srv)) .. ": handler error: .*client%.lua:2: client gave up")),
        table.concat(lines, "\n"))
    end)

    it("is the highest status of all the clients of -c", function()
      local srv = start_peer()
      -- Client 1 returns 7 and ends first; the others wait until a
      -- connection has closed, then return 2: the last status is not the
      -- one that counts.
      local code = run_client([[
local luaecho = require "luaecho"
return function(conn)
  if conn.id == 1 then return 7 end
  local deadline = luaecho.now() + 10
  while luaecho.stats().closed < 1 and luaecho.now() < deadline do luaecho.sleep(0.01) end
  return 2
end
]], { addr = tcp_addr(srv), count = 3 })
      assert.equal(7, code)
    end)
  end)

  it("passes the arguments after the script to the handler, as strings", function()
    local srv = start_peer()
    local code, lines = run_client([[
return function(conn, ...)
  local args = table.pack(...)
  for i = 1, args.n do print(i, type(args[i]), args[i]) end
end
]], { addr = tcp_addr(srv), args = { "one", "--two", "3", "-c" }, stream = "stdout" })
    assert.same({ 0, { "1\tstring\tone", "2\tstring\t--two", "3\tstring\t3", "4\tstring\t-c" } },
      { code, lines })
  end)

  it("runs -c N clients at once", function()
    local srv = start_peer()
    local code, lines = run_client([[
local luaecho = require "luaecho"
return function(conn)
  conn:setopts{ packet = "line" }
  local line = assert(conn:recv())
  print("client: " .. line:sub(1, -2))
end
]], { addr = tcp_addr(srv, 3), count = 5, stream = "stdout" })
    assert.same({ 0, { "client: together", "client: together", "client: together",
      "client: together", "client: together" } }, { code, lines })
    for _ = 1, 5 do
      assert.truthy(srv:wait_line(record("info", "conn %d+: gather accepted")), srv:log_text())
    end
    -- The server saw exactly five.
    assert.equal(5, #matching(srv:log(), "gather accepted"))
  end)

  it("connects to a Unix socket with unix:/path", function()
    local srv = start_peer()
    local code, lines = run_client(HELLO, { addr = srv.addrs[2].text, stream = "stdout" })
    assert.same({ 0, { "reply: hello" } }, { code, lines })
  end)

  it("tries every address of a host name in turn until one connects", function()
    -- two.test is 127.0.0.2, where nothing listens, then 127.0.0.1 (as
    -- localhost is often ::1 then 127.0.0.1).
    local srv = start_peer()
    local port = tcp_addr(srv):match(":(%d+)$")
    local code, lines = run_client(HELLO, {
      addr = "two.test:" .. port, stream = "stdout", env = server.hosts_env(),
      files = { hosts = TWO_HOSTS },
    })
    assert.same({ 0, { "reply: hello" } }, { code, lines })
  end)

  it("reports the last address's error when none connects", function()
    local code, lines = run_client(HELLO, {
      addr = "two.test:" .. closed_port(), stream = "stderr", env = server.hosts_env(),
      files = { hosts = TWO_HOSTS },
    })
    assert.equal(1, code)
    assert.equal(1, #lines, table.concat(lines, "\n"))
    assert.truthy(lines[1]:find(record("error", "cannot connect to two%.test:%d+: econnrefused")), lines[1])
  end)

  it("starts no client when a later one cannot even start its connect", function()
    -- With 64 descriptors, some of the 200 clients' connects are under way
    -- (to 127.0.0.2, where nothing listens) when one fails at once with
    -- EMFILE. Start-up fails; the clients under way are abandoned, not
    -- moved on to the name's next address, where they would connect and
    -- run the script while the process tears down.
    local srv = start_peer()
    local port = tcp_addr(srv):match(":(%d+)$")
    local code, lines = server.run{
      bin = "sh",
      args = { "-c", 'ulimit -n 64 && exec "$0" "$@" 2>&1', server.bin,
               "--connect", "two.test:" .. port, "-c", "200", "@DIR@/client.lua" },
      files = { ["client.lua"] = HELLO, hosts = TWO_HOSTS },
      env = server.hosts_env(), timeout = 30,
    }
    local out = table.concat(lines, "\n")
    assert.equal(1, code, out)
    assert.matches("^luaecho: cannot connect to two%.test:%d+: too many open files$", lines[1])
    assert.is_nil(out:find("reply:", 1, true), out)
  end)

  describe("cannot connect", function()
    it("exits 1 with cannot connect to ADDR: econnrefused", function()
      local addr = "127.0.0.1:" .. closed_port()
      local code, lines = run_client(HELLO, { addr = addr, stream = "stderr" })
      assert.equal(1, code)
      assert.same({ addr }, { lines[1]:match(record("error", "cannot connect to (%S+): econnrefused")) },
        table.concat(lines, "\n"))
      assert.equal(1, #lines)
    end)

    it("exits 1 when no Unix socket is at the path", function()
      local code, lines = run_client(HELLO, { addr = "unix:/tmp/luaecho-spec-no-such.sock", stream = "stderr" })
      assert.equal(1, code)
      assert.same({ true }, { lines[1]:find(record("error",
        "cannot connect to unix:/tmp/luaecho%-spec%-no%-such%.sock: enoent")) ~= nil }, table.concat(lines, "\n"))
    end)

    it("exits 1 with one clear line for a host name that does not resolve", function()
      -- A name with an empty label: the resolver refuses it without asking
      -- a DNS server, so the test stays on this machine.
      local code, lines = run_client(HELLO, { addr = "bad..name:7", stream = "stderr" })
      assert.equal(1, code)
      assert.equal(1, #lines, table.concat(lines, "\n"))
      assert.matches("^luaecho: cannot connect to bad%.%.name:7: cannot resolve host 'bad%.%.name': %S", lines[1])
    end)
  end)

  describe("usage errors exit 2", function()
    local function usage(args)
      local code, lines = server.run{ args = args, stream = "stderr" }
      return code, lines[1]
    end

    it("for --connect without a script", function()
      assert.same({ 2, "luaecho: --connect needs a client script: luaecho --connect ADDR client.lua [args...]" },
        { usage{ "--connect", "127.0.0.1:7" } })
    end)

    it("for -c 0 and -c that is not a number", function()
      assert.same({ 2, "luaecho: -c: expected a number of clients 1..100000, got '0'" },
        { usage{ "--connect", "127.0.0.1:7", "-c", "0", "x.lua" } })
      assert.same({ 2, "luaecho: -c: expected a number of clients 1..100000, got 'many'" },
        { usage{ "--connect", "127.0.0.1:7", "-c", "many", "x.lua" } })
    end)

    it("for -c without --connect", function()
      assert.same({ 2, "luaecho: -c goes with --connect" }, { usage{ "-c", "2", "x.lua" } })
    end)
  end)

  it("reports a bad address before connecting", function()
    local code, lines = server.run{ args = { "--connect", "127.0.0.1", "x.lua" }, stream = "stderr" }
    assert.equal(1, code)
    assert.matches("^luaecho: %-%-connect: invalid address '127%.0%.0%.1': ", lines[1])
  end)

  it("traces the outbound connection with --trace", function()
    local srv = start_peer()
    local code, lines = run_client(HELLO, { addr = tcp_addr(srv), before = { "--trace" } })
    assert.equal(0, code)
    local connected = matching(lines, record("trace",
      "%d+us conn %d+ connected " .. literal(tcp_addr(srv)) .. " %(from 127%.0%.0%.1:%d+%)"))
    assert.equal(1, #connected, table.concat(lines, "\n"))
    assert.equal(1, #matching(lines, record("trace", "%d+us conn %d+ read 6 bytes \"hello\\n\"")),
      table.concat(lines, "\n"))
  end)

  it("applies the sandbox: os.exit raises", function()
    local srv = start_peer()
    local code, lines = run_client([[
return function(conn)
  os.exit(5)
end
]], { addr = tcp_addr(srv), stream = "stderr" })
    assert.equal(1, code)
    assert.equal(1, #matching(lines, record("error",
      "conn %d+ .*: handler error: .*os%.exit is disabled by the sandbox "
      .. "%(a client script always runs in the sandbox%)")), table.concat(lines, "\n"))
  end)

  it("reads no config file, not even ./config.lua", function()
    local srv = start_peer()
    -- The run's cwd is its temp dir, where this config.lua would not load.
    local code, lines = run_client(HELLO, {
      addr = tcp_addr(srv), stream = "stdout",
      files = { ["config.lua"] = "this is not Lua\n" },
    })
    assert.same({ 0, { "reply: hello" } }, { code, lines })
  end)

  describe("SIGINT", function()
    -- Starts a client that waits in recv for ever and returns its process
    -- once its handler has said so.
    local function waiting_client(srv)
      local dir = assert(proc.mkdtemp("/tmp/luaecho-spec."))
      server.defer(function() os.execute("rm -rf '" .. dir .. "'") end)
      server.write_file(dir .. "/client.lua", [[
local luaecho = require "luaecho"
return function(conn)
  luaecho.log("info", "client waiting")
  local data, err = conn:recv()
  luaecho.log("info", "client woke:", data, err)
end
]])
      local p = assert(proc.spawn({ server.bin, "--connect", tcp_addr(srv), dir .. "/client.lua" },
        { cwd = dir, stdin_null = true }))
      server.defer(function() p:close() end)
      local function wait_for(pattern, timeout)
        local deadline = proc.now() + server.scaled(timeout or 10)
        repeat
          local line = p:readline(math.max(0, deadline - proc.now()))
          if line and line:find(pattern) then return line end
        until not line
        error("no line matching " .. pattern)
      end
      wait_for(record("info", "conn %d+: client waiting"))
      return p, wait_for
    end

    it("stops a waiting client within the shutdown timeout", function()
      local srv = start_peer()
      local p, wait_for = waiting_client(srv)
      local t0 = proc.now()
      assert(p:kill("INT"))
      wait_for(record("info", "shutting down on SIGINT: 1 connection to drain %(up to 10s%)"))
      -- The drain lasts shutdown_timeout, 10 s by default: no config file
      -- in client mode can shorten it.
      wait_for(record("info", 'conn %d+: client woke: nil shutdown'), 20)
      local code = p:wait(server.scaled(5))
      assert.equal(0, code)
      assert.is_true(proc.now() - t0 < server.scaled(15))
    end)

    it("stops it at once on a second SIGINT", function()
      local srv = start_peer()
      local p, wait_for = waiting_client(srv)
      assert(p:kill("INT"))
      wait_for(record("info", "shutting down on SIGINT: 1 connection to drain %(up to 10s%)"))
      assert(p:kill("INT"))
      wait_for(record("info", 'conn %d+: client woke: nil shutdown'))
      assert.equal(0, p:wait(server.scaled(5)))
    end)

    it("SIGHUP reloads the script only: the client opens no listener", function()
      -- The configuration in client mode is the built-in one, whose
      -- listener (127.0.0.1:7000) is no business of a client's.
      local srv = start_peer()
      local p, wait_for = waiting_client(srv)
      assert(p:kill("HUP"))
      wait_for(record("info", "reloading on SIGHUP"))
      wait_for(record("info", "reloaded .*client%.lua.*"))
      assert(p:kill("INT"))
      -- Every line to the end, with a second SIGINT once the first is seen.
      local rest = {}
      repeat
        local line = p:readline(server.scaled(10))
        rest[#rest + 1] = line
        if line and line:find("shutting down on SIGINT", 1, true) then assert(p:kill("INT")) end
      until not line
      assert.equal(0, p:wait(server.scaled(5)))
      local out = table.concat(rest, "\n")
      assert.is_nil(out:find("listening on", 1, true), out)
      assert.is_nil(out:find("config", 1, true), out)
      assert.truthy(out:find("client woke: nil shutdown", 1, true), out)
    end)
  end)
end)
