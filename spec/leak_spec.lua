-- Leak check: runs luaecho under valgrind through a workload that walks
-- every path that allocates and frees (many connections echoing, handler
-- and task errors, timers, outbound connections, clients resetting or
-- vanishing mid-transfer, idle timeouts, reloads by saving a file and by
-- SIGHUP, a shutdown that has to cut connections short), stops it with
-- SIGTERM and requires exit status 0 and no byte definitely lost.
--
-- valgrind runs with --error-exitcode, so a memory error (an invalid read
-- or write, a use of uninitialised memory) fails the check as well. The
-- workload is a list of steps: adding one is a few lines in STEPS. It takes
-- a few seconds; the steps wait on replies and log lines, never on fixed
-- sleeps, with deadlines long enough for valgrind's slowdown.
--
-- The check needs valgrind and the normal build: without valgrind it is
-- reported pending (skipped, with the reason), and in the sanitizer build,
-- whose binary valgrind cannot run, LeakSanitizer does this job at every
-- server exit instead.
local server = require "server"
local proc = require "spec_proc"

local record, literal = server.record, server.literal

local VALGRIND_ARGS = {
  "--leak-check=full", "--show-leak-kinds=definite",
  "--errors-for-leak-kinds=definite", "--error-exitcode=99",
  "--num-callers=30",
}
local START_TIMEOUT = 60 -- seconds: valgrind starts slowly
local EXIT_TIMEOUT = 60  -- seconds for shutdown plus valgrind's leak scan
local WAIT = 20          -- seconds for one answer or log line under valgrind

-- ---- the server ---------------------------------------------------------

-- A line protocol: every line is answered with the handler's version, its
-- module's tag and the line; a few commands do more first.
local function handler_src(version)
  return [[
local luaecho = require "luaecho"
local helper = require "helper"
return function(conn)
  conn:setopts{ packet = "line" }
  while true do
    local line = conn:recv()
    if not line then return end
    local cmd, arg = line:match("^(%S*)%s*(.-)\n$")
    if cmd == "boom" then error("boom") end
    if cmd == "spin" then
      conn:setopts{ cpu_limit = tonumber(arg) }
      while true do end
    end
    if cmd == "hog" then
      -- Few large strings: valgrind is slow, and cpu_limit must not stop
      -- this handler before max_memory does.
      conn:setopts{ cpu_limit = false }
      local t = {}
      for i = 1, 1e6 do t[i] = ("x"):rep(8 << 20) .. i end
    end
    if cmd == "sleep" then luaecho.sleep(tonumber(arg)) end
    if cmd == "tasks" then
      local ok = luaecho.spawn(function() luaecho.sleep(0.01) return "joined" end)
      local bad = luaecho.spawn(function() error("task boom") end)
      luaecho.spawn(function() luaecho.sleep(600) end) -- ends with conn
      local _, err = bad:join()
      line = ok:join() .. " " .. tostring(err ~= nil) .. "\n"
    end
    if cmd == "connect" then
      local _, port = conn:sockname()
      local up = assert(luaecho.connect("127.0.0.1", port, { packet = "line" }))
      assert(up:send("hello\n"))
      line = assert(up:recv())
      up:close()
    end
    if not conn:send("]] .. version .. [[ " .. helper.tag .. " " .. line) then return end
  end
end
]]
end

local function helper_src(tag)
  return 'return { tag = "' .. tag .. '" }\n'
end

local CONFIG = [[
listen = { "127.0.0.1:0", { address = "127.0.0.1:0", idle_timeout = 0.2 } }
handler = "@DIR@/h.lua"
log_level = "debug"
shutdown_timeout = 0.5
max_memory = 64 * 1024 * 1024
]]

-- ---- clients ------------------------------------------------------------

local function connect(addr)
  return assert(server.connect(addr.host, addr.port, WAIT))
end

-- Sends one line and returns the answer line (without "\n").
local function ask(sock, line)
  assert(sock:send(line .. "\n"))
  local answer, err = sock:receive("*l")
  assert(answer, ("no answer to %q: %s"):format(line, tostring(err)))
  return answer
end

-- Asserts that the server ended the connection: end of file, nothing more.
local function expect_closed(sock)
  local line, err, partial = sock:receive("*l")
  assert.same({ nil, "closed", "" }, { line, err, partial })
end

-- Closes with RST instead of FIN.
local function reset(sock)
  assert(sock:setoption("linger", { on = true, timeout = 0 }))
  sock:close()
end

-- Waits for n log lines matching pattern.
local function expect_lines(srv, pattern, n)
  for i = 1, n do
    local line = srv:wait_line(pattern, WAIT)
    assert(line, ("log line %d of %d matching %q missing; log:\n%s"):format(
      i, n, pattern, srv:log_text()))
  end
end

-- ---- the workload -------------------------------------------------------

-- Each step gets the workload state w: w.srv (the server), w.main and
-- w.idle (its two listeners), w.version and w.tag (what answers carry).
local STEPS = {
  { name = "many connections echoing, closed, half-closed or reset", run = function(w)
    for round = 1, 20 do
      local socks = {}
      for i = 1, 50 do socks[i] = connect(w.main) end
      for i, sock in ipairs(socks) do
        assert.equal(("%s %s r%d c%d"):format(w.version, w.tag, round, i), ask(sock, ("r%d c%d"):format(round, i)))
      end
      for i, sock in ipairs(socks) do
        if i % 3 == 0 then reset(sock)
        elseif i % 3 == 1 then sock:shutdown("send") expect_closed(sock) sock:close()
        else sock:close() end
      end
    end
  end },

  { name = "handler errors", run = function(w)
    for _ = 1, 20 do
      local sock = connect(w.main)
      assert(sock:send("boom\n"))
      expect_closed(sock)
      sock:close()
    end
    expect_lines(w.srv, record("error", "conn %d+ .-: handler error: .*: boom"), 20)
  end },

  { name = "timers, spawned tasks (one failing, one ended with its connection)", run = function(w)
    for _ = 1, 5 do
      local sock = connect(w.main)
      assert.equal(w.version .. " " .. w.tag .. " joined true", ask(sock, "tasks"))
      assert.equal(w.version .. " " .. w.tag .. " sleep 0.01", ask(sock, "sleep 0.01"))
      sock:close()
    end
    expect_lines(w.srv, record("error", "conn %d+: spawned coroutine error: .*task boom.*"), 5)
  end },

  { name = "outbound connections", run = function(w)
    for _ = 1, 5 do
      local sock = connect(w.main)
      local inner = w.version .. " " .. w.tag .. " hello"
      assert.equal(w.version .. " " .. w.tag .. " " .. inner, ask(sock, "connect"))
      sock:close()
    end
  end },

  { name = "clients resetting mid-transfer and flooding without reading", run = function(w)
    local big = string.rep("0123456789abcdef", 16 * 1024) .. "\n" -- 256 KiB line
    for i = 1, 10 do
      local sock = connect(w.main)
      sock:settimeout(0.05)
      sock:send(big) -- partial: the server's answer fills our receive buffer
      if i % 2 == 0 then reset(sock) else sock:close() end
    end
    local sock = connect(w.main) -- everyone else is still served
    assert.equal(w.version .. " " .. w.tag .. " after", ask(sock, "after"))
    sock:close()
  end },

  { name = "idle timeouts", run = function(w)
    local socks = {}
    for i = 1, 5 do socks[i] = connect(w.idle) end
    expect_lines(w.srv, record("debug", "conn %d+: idle timeout"), 5)
    for _, sock in ipairs(socks) do
      expect_closed(sock)
      sock:close()
    end
  end },

  { name = "reloads by saving the handler and its module, one broken", run = function(w)
    local h = w.srv:file("h.lua")
    local held = connect(w.main) -- stays on the old version throughout
    assert.equal(w.version .. " " .. w.tag .. " held", ask(held, "held"))
    local old, reloaded = w.version, record("info", "reloaded " .. literal(h) .. " %(version %d+%)")
    local function save(name, src)
      server.write_file(w.srv:file(name), src)
      assert(w.srv:wait_line(reloaded, WAIT), "no reload after saving " .. name .. "; log:\n" .. w.srv:log_text())
    end
    for n = 1, 3 do
      w.version = "v" .. (tonumber(w.version:sub(2)) + 1)
      save("h.lua", handler_src(w.version))
      w.tag = "m" .. n
      save("helper.lua", helper_src(w.tag))
      local sock = connect(w.main)
      assert.equal(w.version .. " " .. w.tag .. " new", ask(sock, "new"))
      sock:close()
    end
    server.write_file(h, "return function(conn) end end\n")
    assert(w.srv:wait_line(record("error", "reload of " .. literal(h) .. " failed: .*"), WAIT),
      "no failed reload; log:\n" .. w.srv:log_text())
    assert.equal(old .. " m0 held", ask(held, "held"))
    held:close()
    w.version = "v" .. (tonumber(w.version:sub(2)) + 1)
    save("h.lua", handler_src(w.version))
  end },

  { name = "reloads on SIGHUP", run = function(w)
    for _ = 1, 3 do
      assert(w.srv:signal("HUP"))
      assert(w.srv:wait_line(record("info", "config reloaded.*"), WAIT),
        "no config reload; log:\n" .. w.srv:log_text())
    end
    local sock = connect(w.main)
    assert.equal(w.version .. " " .. w.tag .. " hup", ask(sock, "hup"))
    sock:close()
  end },

  { name = "a spinning handler preempted, then stopped by cpu_limit", run = function(w)
    -- While one handler computes without end, another is served (it is
    -- preempted every tick); past its cpu_limit it is stopped and its
    -- connection closed, with the coroutine's memory given back.
    local spinner = connect(w.main)
    assert(spinner:send("spin 1\n"))
    for i = 1, 3 do
      local sock = connect(w.main)
      assert.equal(w.version .. " " .. w.tag .. " during" .. i, ask(sock, "during" .. i))
      sock:close()
    end
    expect_lines(w.srv, record("error", "conn %d+ [^ ]+: handler error: .*cpu_limit exceeded.*"), 1)
    expect_closed(spinner)
    spinner:close()
  end },

  { name = "handlers past max_memory get not enough memory", run = function(w)
    -- Each hog allocates until max_memory refuses; the error ends only its
    -- own connection, and the memory is free again for the next client.
    for _ = 1, 2 do
      local hog = connect(w.main)
      assert(hog:send("hog\n"))
      expect_lines(w.srv, record("error", "conn %d+ [^ ]+: handler error: not enough memory"), 1)
      expect_closed(hog)
      hog:close()
    end
    local sock = connect(w.main)
    assert.equal(w.version .. " " .. w.tag .. " after", ask(sock, "after"))
    sock:close()
  end },

  { name = "connections still open at shutdown", run = function(w)
    -- One waits in recv and one in sleep when SIGTERM comes; both are cut
    -- short after shutdown_timeout. The step leaves them to cleanup().
    local waiting = connect(w.main)
    assert.equal(w.version .. " " .. w.tag .. " open", ask(waiting, "open"))
    local sleeping = connect(w.main)
    assert(sleeping:send("sleep 600\n"))
    w.open = { waiting, sleeping }
  end },
}

-- ---- the check ----------------------------------------------------------

local function have_valgrind()
  local code = server.sh("command -v valgrind >/dev/null 2>&1")
  return code == 0
end

describe("leak check", function()
  after_each(server.cleanup)

  it("valgrind finds no definite leak and no memory error after the workload", function()
    if server.SANITIZED then
      pending("valgrind cannot run a sanitizer build; LeakSanitizer checks every server exit here")
      return
    end
    if not have_valgrind() then
      io.stderr:write("leak_spec: valgrind is not installed; the leak check is SKIPPED\n")
      pending("valgrind is not installed (sh .ci/install-deps installs it)")
      return
    end
    local argv = { "valgrind" }
    for _, a in ipairs(VALGRIND_ARGS) do argv[#argv + 1] = a end
    argv[#argv + 1] = server.bin
    local bin = server.bin
    server.bin = table.remove(argv, 1)
    local ok, srv = pcall(server.start, {
      args = argv, config = CONFIG, expect = 2, timeout = START_TIMEOUT,
      handlers = { ["h.lua"] = handler_src("v1"), ["helper.lua"] = helper_src("m0") },
    })
    server.bin = bin
    assert(ok, srv)

    local w = { srv = srv, main = srv.addrs[1], idle = srv.addrs[2], version = "v1", tag = "m0" }
    for _, step in ipairs(STEPS) do
      local t0 = proc.now()
      local step_ok, err = pcall(step.run, w)
      assert(step_ok, ("step %q failed: %s"):format(step.name, tostring(err)))
      io.stderr:write(("leak_spec: %-70s %5.2f s\n"):format(step.name, proc.now() - t0))
    end

    assert(srv:signal("TERM"))
    assert(srv:wait_line(record("warn", "shutdown timeout: closing %d+ connections"), WAIT),
      "connections were not cut short at shutdown; log:\n" .. srv:log_text())
    local code = srv:wait_exit(EXIT_TIMEOUT)
    local log = srv:log_text()
    assert(code, "luaecho under valgrind did not exit; log:\n" .. log)
    for _, line in ipairs(srv:log()) do -- valgrind's summary, for the record
      if line:find("^==%d+== ") then io.stderr:write(line, "\n") end
    end
    local lost = log:match("definitely lost: ([%d,]+) bytes")
    local clean = log:find("All heap blocks were freed %-%- no leaks are possible")
    assert(clean or lost, "no valgrind leak summary; log:\n" .. log)
    assert(clean or lost == "0", "valgrind: " .. tostring(lost) .. " bytes definitely lost; log:\n" .. log)
    assert.equal(0, code, "exit status (99: valgrind found errors); log:\n" .. log)
  end)
end)
