-- Robustness (issue 8): each reproduction listed at the top of the issue,
-- run against the real server.  Every spec checks the log line, what the
-- handler saw (through report()), and that other clients were served
-- meanwhile, and ends with the server still serving.
--
-- os.exit(3) in a handler, in a reloaded handler file and in config.lua on
-- SIGHUP is covered by spec/sandbox_spec.lua, not repeated here: "raises out
-- of a handler that does not catch it", "keeps the server serving other
-- clients, and the caller's own connection", "rejects each version that
-- makes a removed call; version 1 keeps serving" and "rejects a config
-- reload on SIGHUP that calls os.exit, and keeps serving".
local server = require "server"
local proc = require "spec_proc"

local literal, record = server.literal, server.record

-- How long an echo round trip may take while a handler computes without
-- waiting.  Preemption hands the loop back every 10 ms, so this is generous
-- on a loaded machine, yet well below the cpu_limit (3 s) of the specs that
-- use it: a round trip that had to wait for the runaway handler's stop
-- fails it.
local PREEMPTED_BOUND = 1.5
local SPIN_LIMIT = 3

-- How far work() in ops.generators counts at each call: tens of
-- milliseconds, so the watchdog suspends the coroutines it runs in.
local GENERATOR_LOOP = 20000000

-- The handler of every spec here.  The first line a client sends names an
-- operation from `ops`; the handler reports "started.<op>" (with conn.id and
-- its cpu_limit), runs it, reports "ended.<op>" if it returns, and echoes
-- the command and every later line.  A first line naming no operation is
-- simply echoed: that is how other clients are served.
local HANDLER = server.REPORT .. "local GENERATOR_LOOP = " .. GENERATOR_LOOP .. "\n" .. [[
local luaecho = require "luaecho"

local ops = {}

function ops.spin(conn)
  while true do end -- spin: the runaway line
end

function ops.sort(conn)
  local t = {}
  for i = 1, 100 do t[i] = i end
  table.sort(t, function(a, b)
    while true do end -- sort: the runaway line
  end)
end

function ops.pcall(conn)
  while true do pcall(function() while true do end end) end -- pcall: the runaway line
end

function ops.wrap(conn)
  coroutine.wrap(function()
    while true do end -- wrap: the runaway line
  end)()
end

-- Computes in coroutines of its own, nested, long enough to be preempted
-- there many times, and reports what they yielded, returned and raised.
function ops.generators(conn)
  local function work(a)
    local sum = 0
    for i = 1, GENERATOR_LOOP do sum = sum + i end
    return sum + a
  end
  local gen = coroutine.wrap(function(a)
    local b = coroutine.yield(work(a))
    local inner = coroutine.wrap(function(c) return work(c) end)
    return b * 2, inner(2)
  end)
  local first = gen(1)
  local twice, nested = gen(21)
  local co = coroutine.create(function(a)
    coroutine.yield(work(a))
    work(0)
    error("boom") -- generators: the raising line
  end)
  local ok1, third = coroutine.resume(co, 3)
  local ok2, err = coroutine.resume(co)
  local ok3, err3 = pcall(coroutine.wrap(function()
    work(0)
    error("wrapped boom") -- generators: the wrapped raising line
  end))
  report("generators", first, twice, nested, ok1, third, ok2, err, ok3, err3)
end

-- Allocates without bound and does not catch the error.
function ops.hog(conn)
  local t, n = {}, 0
  while true do
    n = n + 1
    t[n] = string.rep("x", 1 << 20) .. n -- hog: the allocating line
  end
end

-- Allocates without bound, catches the error and lets the memory go.
function ops.catch(conn)
  local t, n = {}, 0
  local ok, err = pcall(function()
    while true do
      n = n + 1
      t[n] = string.rep("x", 1 << 20) .. n
    end
  end)
  t = nil
  collectgarbage()
  report("catch", ok, err, n >= 16)
end

-- Takes 40 MiB: it fits only if earlier connections gave theirs back.
function ops.alloc(conn)
  local t = {}
  local ok, err = pcall(function()
    for i = 1, 40 do t[i] = string.rep("z", 1 << 20) end
  end)
  report("alloc", ok, err, #t)
end

-- Fills memory to the cap, keeps it, and waits in recv for 200000 bytes that
-- cannot be delivered; then lets it go and receives them after all.
function ops.hold(conn)
  -- Each chunk is made by `..`, whose allocation Lua's core retries after
  -- a full collection: when one fails, less than a chunk is left free
  -- and no garbage is left to collect.
  local base, t, n = string.rep("y", 64 << 10), {}, 0
  local ok, err = pcall(function()
    while true do
      n = n + 1
      t[n] = base .. n
    end
  end)
  t[n - 1] = nil -- room for what runs until recv: report, setopts, pack
  report("hold", ok, err)
  conn:setopts{ packet = "raw" }
  local got = table.pack(conn:recv(200000))
  t = nil
  collectgarbage()
  report("enomem", got.n, got[1], got[2], got[3])
  local data = conn:recv(200000)
  report("delivered", #data, data == string.rep("d", 200000))
end

-- Waits in recv for 200000 bytes; while they do not fit under max_memory,
-- tries again every 50 ms (at most 200 times).
function ops.reader(conn)
  conn:setopts{ packet = "raw" }
  local got = table.pack(conn:recv(200000))
  report("reader", got.n, got[1], got[2], got[3])
  for _ = 1, 200 do
    if got[1] then break end
    luaecho.sleep(0.05)
    got = table.pack(conn:recv(200000, 0))
  end
  report("reader.delivered", got[1] and #got[1])
end

-- From a spawned task, once the handler waits: coroutine.close and
-- coroutine.resume on the handler's coroutine.
local function meddle(main, name)
  luaecho.spawn(function()
    luaecho.sleep(0) -- the handler waits by now
    local before = coroutine.status(main)
    report(name .. ".close", pcall(coroutine.close, main))
    report(name .. ".resume", coroutine.resume(main))
    report(name .. ".status", before, coroutine.status(main))
  end)
end

function ops.closesleep(conn)
  meddle(coroutine.running(), "sleep")
  report("sleep.woke", select("#", luaecho.sleep(0.5)))
end

function ops.closerecv(conn)
  meddle(coroutine.running(), "recv")
  report("recv.got", conn:recv())
end

-- The same from the handler, on a spawned task's coroutine waiting in sleep.
function ops.closetask(conn)
  local co
  local task = luaecho.spawn(function()
    co = coroutine.running()
    luaecho.sleep(0.2)
    return "slept"
  end)
  report("task.close", pcall(coroutine.close, co))
  report("task.resume", coroutine.resume(co))
  report("task.join", task:join())
end

-- With sandbox = false: another userdata dressed up as a conn, then as a
-- task handle, and io.stderr as an admin subscription.  The forged
-- metatables stay to the end, so their finalizers meet them when the
-- server closes the Lua state.
function ops.forge(conn)
  debug.setmetatable(io.stdout, debug.getmetatable(conn))
  report("forge.tostring", pcall(tostring, io.stdout))
  report("forge.recv", pcall(conn.recv, io.stdout))
  local task = luaecho.spawn(function() end)
  debug.setmetatable(io.stdout, debug.getmetatable(task))
  report("forge.task", pcall(tostring, io.stdout))
  report("forge.join", pcall(task.join, io.stdout))
  local sub = require("luaecho.inspect").subscribe(conn.id)
  debug.setmetatable(io.stderr, debug.getmetatable(sub))
  report("forge.sub", pcall(sub.events, io.stderr))
  report("forge.subclose", pcall(sub.close, io.stderr))
  sub:close()
end

-- Waits in recv until something ends the connection, then tries again.
function ops.wait(conn)
  report("wait", conn:recv())
  local _, recv_err = conn:recv()
  local _, send_err = conn:send("late\n")
  report("wait.later", recv_err, send_err)
end

return function(conn)
  conn:setopts{ packet = "line" }
  local line = conn:recv()
  local name = line and line:match("^(%w+)\n$")
  if ops[name] then
    report("started." .. name, conn.id, conn:getopts("cpu_limit"))
    ops[name](conn)
    report("ended." .. name)
  end
  while line do
    conn:send(line)
    line = conn:recv()
  end
end
]]

local line_of = server.line_of

-- Starts luaecho running HANDLER, with extra config lines.
local function start(config)
  return server.start{
    config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\n' .. (config or ""),
    handlers = { ["h.lua"] = HANDLER },
  }
end

-- Waits for a handler's report; fails with the log if none comes.
local function report_of(srv, name, timeout)
  return assert(srv:report(name, timeout or 10), "no report " .. name .. "; log:\n" .. srv:log_text())
end

-- Connects and starts operation `op`.  Returns the socket and the
-- connection's id, once the handler reported it started.
local function start_op(srv, op)
  local sock = assert(server.connect(srv.host, srv.port))
  assert(sock:send(op .. "\n"))
  local started = report_of(srv, "started." .. op)
  return sock, started[1]
end

-- Opens a new connection and makes three echo round trips on it, all within
-- `bound` seconds.  Returns how long they took.
local function assert_served(srv, bound)
  local t0 = proc.now()
  local sock = assert(server.connect(srv.host, srv.port, bound))
  for i = 1, 3 do
    local msg = "ping " .. i .. "\n"
    assert.same({ msg }, { server.exchange(sock, msg, bound) })
  end
  sock:close()
  local took = proc.now() - t0
  assert(took < bound, ("an echo round trip took %.2f s (bound %g s)"):format(took, bound))
  return took
end

-- Waits for a log line matching pattern; fails with the log if none comes.
local function expect_line(srv, pattern, timeout)
  return assert(srv:wait_line(pattern, timeout or 10), "no line matching '" .. pattern .. "'; log:\n" .. srv:log_text())
end

-- The pattern of the log record of a handler stopped by its cpu_limit of
-- `limit` seconds at the line of HANDLER containing `marker`, on the
-- connection `id` whose client is `sock`.  Captures the seconds computed.
local function stopped_record(srv, sock, id, marker, limit)
  local _, port = sock:getsockname()
  return record("error", literal(("conn %d 127.0.0.1:%d: handler error: %s:%d: cpu_limit exceeded: computed for ")
    :format(id, port, srv:file("h.lua"), line_of(HANDLER, marker)))
    .. "(%d+%.%d) s" .. literal((" without waiting (cpu_limit = %g s)"):format(limit)))
end

-- Waits for that record and checks that the handler computed for its limit
-- (not less: the stop came from cpu_limit, not from something earlier).
local function expect_stopped(srv, sock, id, marker, limit, timeout)
  local pattern = stopped_record(srv, sock, id, marker, limit)
  local line = expect_line(srv, pattern, timeout or limit + 10)
  local seconds = tonumber(line:match(pattern))
  assert(seconds >= limit and seconds < 2 * limit, "computed for " .. seconds .. " s: " .. line)
  assert.equal("stack traceback:", srv:next_line(5))
end

-- Checks that a handler stopped in operation op never went on past it.
local function assert_never_ended(srv, op)
  assert.is_nil(server.read_file(srv:file("report.ended." .. op)))
end

-- Checks that the server still runs.
local function assert_alive(srv)
  assert.same({ nil, "timeout" }, { srv:wait_exit(0.1) })
end

-- Runs operation op, whose runaway line is marked "<op>: the runaway line",
-- under cpu_limit = limit.  While it computes, another client's round trips
-- complete within `bound` seconds; then it is stopped with the record
-- naming its connection, the line and the limit; its client sees the
-- connection close, its code never goes on, and the server serves on.
local function assert_runaway_stopped(op, limit, bound)
  local srv = start("cpu_limit = " .. limit .. "\n")
  local bad, id = start_op(srv, op)
  assert.same({ n = 2, id, limit }, report_of(srv, "started." .. op))
  local t0 = proc.now()
  assert_served(srv, bound)
  assert_served(srv, bound)
  expect_stopped(srv, bad, id, op .. ": the runaway line", limit)
  assert(proc.now() - t0 > limit / 2, "stopped too early")
  assert.same({ "", "closed" }, { server.read_all_until_close(bad, 5) })
  assert_never_ended(srv, op)
  assert_served(srv, 5)
  assert_alive(srv)
end

describe("robustness", function()
  after_each(server.cleanup)

  describe("a handler computing without end", function()
    it("is preempted so others are served, and stopped at cpu_limit naming conn, file:line and the limit", function()
      assert_runaway_stopped("spin", SPIN_LIMIT, PREEMPTED_BOUND)
    end)

    for _, sig in ipairs({ "TERM", "INT" }) do
      it("does not hold up SIG" .. sig .. ": after a short shutdown_timeout the server exits", function()
        -- cpu_limit far beyond the bounds below: only the signal can end it.
        local srv = start("cpu_limit = 60\nshutdown_timeout = 0.5\n")
        start_op(srv, "spin")
        assert(srv:signal(sig))
        expect_line(srv, record("info", literal("shutting down on SIG" .. sig .. ": 1 connection to drain (up to 0.5s)")), 5)
        expect_line(srv, record("warn", literal("shutdown timeout: closing 1 connection")), 5)
        assert.equal(0, srv:wait_exit(10))
        assert.matches(record("info", "stopped"), srv:log()[#srv:log()])
        assert_never_ended(srv, "spin")
      end)

      it("does not hold up a second SIG" .. sig .. ", which closes everything at once", function()
        local srv = start("cpu_limit = 60\n") -- shutdown_timeout: the default 10 s
        start_op(srv, "spin")
        assert(srv:signal(sig))
        expect_line(srv, record("info", literal("shutting down on SIG" .. sig .. ": 1 connection to drain (up to 10s)")), 5)
        assert(srv:signal(sig))
        expect_line(srv, record("warn", literal("SIG" .. sig .. " again: closing 1 connection now")), 5)
        assert.equal(0, srv:wait_exit(5))
        assert.matches(record("info", "stopped"), srv:log()[#srv:log()])
        assert_never_ended(srv, "spin")
      end)
    end

    it("is stopped at cpu_limit inside a table.sort comparator, where it cannot be preempted", function()
      -- Nothing can yield inside the comparator, so the other client waits
      -- until the stop (cpu_limit = 1 keeps that short); the limit still
      -- ends the handler.
      assert_runaway_stopped("sort", 1, 1 + 10)
    end)

    it("is preempted, and stopped at cpu_limit, even when it catches every error with pcall", function()
      assert_runaway_stopped("pcall", SPIN_LIMIT, PREEMPTED_BOUND)
    end)

    it("is preempted, and stopped at cpu_limit, inside a coroutine.wrap of its own", function()
      assert_runaway_stopped("wrap", SPIN_LIMIT, PREEMPTED_BOUND)
    end)

    it("is preempted inside its own coroutines without changing what they yield, return or raise", function()
      local srv = start("cpu_limit = " .. SPIN_LIMIT .. "\n")
      local sock = start_op(srv, "generators")
      local sum = 0
      for i = 1, GENERATOR_LOOP do sum = sum + i end
      local function at(marker) return srv:file("h.lua") .. ":" .. line_of(HANDLER, marker) .. ": " end
      assert.same({ n = 9, sum + 1, 42, sum + 2, true, sum + 3,
        false, at("generators: the raising line") .. "boom",
        false, at("generators: the wrapped raising line") .. "wrapped boom" },
        report_of(srv, "generators", 20))
      assert.same({ "generators\n" }, { server.recv_exactly(sock, 11, 20) })
      assert_alive(srv)
    end)
  end)

  describe("code that computes without end while it loads", function()
    it("in a saved handler file: the reload is rejected on one line, the old version keeps serving", function()
      local limit = 1
      local srv = start("cpu_limit = " .. limit .. "\n")
      local open = assert(server.connect(srv.host, srv.port))
      assert.same({ "before\n" }, { server.exchange(open, "before\n") })
      local h = srv:file("h.lua")
      -- Saved by rename, so the watcher sees the whole file at once.
      server.write_file(h .. ".tmp", "while true do end\nreturn function(conn) conn:send('v2') end\n")
      assert(os.rename(h .. ".tmp", h))
      expect_line(srv, record("error", literal(
        ("reload of %s failed: %s:1: cpu_limit exceeded (%g s); version 1 keeps serving"):format(h, h, limit))), limit + 10)
      assert.same({ "after\n" }, { server.exchange(open, "after\n") })
      assert_served(srv, 5) -- version 1: it echoes; version 2 would send "v2"
      assert_alive(srv)
      for _, line in ipairs(srv:log()) do -- the error took one line
        assert.matches(server.LOG_TIME, line)
      end
    end)

    it("in a handler file given to --check: exit status 1 with the message", function()
      local t0 = proc.now()
      local code, lines, dir = server.run{
        config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\ncpu_limit = 1\n',
        files = { ["h.lua"] = "local n = 0\nwhile true do n = n + 1 end\n" },
        args = { "--check" }, stream = "stderr", timeout = 20,
      }
      assert.same({ 1, { ("luaecho: %s/h.lua:2: cpu_limit exceeded (1 s)"):format(dir) } }, { code, lines })
      assert(proc.now() - t0 < 20)
    end)

    it("in config.lua on SIGHUP: the config reload is rejected and the server keeps serving", function()
      local srv = start()
      local open = assert(server.connect(srv.host, srv.port))
      assert.same({ "before\n" }, { server.exchange(open, "before\n") })
      local config = srv:file("config.lua")
      server.write_file(config, 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\nwhile true do end\n')
      assert(srv:signal("HUP"))
      -- config.lua always runs under a 5 s limit.
      expect_line(srv, record("error", literal(("config reload failed: %s:3: cpu_limit exceeded (5 s); "
        .. "keeping the running configuration"):format(config))), 20)
      assert.same({ "after\n" }, { server.exchange(open, "after\n") })
      assert_served(srv, 5)
      assert_alive(srv)
    end)

    it("in config.lua given to --check: exit status 1 with the message, after the 5 s limit", function()
      local t0 = proc.now()
      local code, lines, dir = server.run{
        config = 'listen = "127.0.0.1:0"\nwhile true do end\n',
        args = { "--check" }, stream = "stderr", timeout = 30,
      }
      assert.same({ 1, { ("luaecho: %s/config.lua:2: cpu_limit exceeded (5 s)"):format(dir) } }, { code, lines })
      assert(proc.now() - t0 < 30)
    end)
  end)

  describe("a handler allocating without bound (max_memory = 64 MiB)", function()
    local CONFIG = "max_memory = 64 * 1024 * 1024\n"

    it("gets 'not enough memory'; the server lives, serves others and gets the memory back", function()
      local srv = start(CONFIG)
      local other = assert(server.connect(srv.host, srv.port))
      assert.same({ "before\n" }, { server.exchange(other, "before\n") })
      local hog, id = start_op(srv, "hog")
      local _, port = hog:getsockname()
      expect_line(srv, record("error", literal(("conn %d 127.0.0.1:%d: handler error: not enough memory"):format(id, port))))
      expect_line(srv, "^\t" .. literal(("%s:%d:"):format(srv:file("h.lua"), line_of(HANDLER, "hog: the allocating line"))))
      assert.same({ "", "closed" }, { server.read_all_until_close(hog, 5) })
      assert.same({ "after\n" }, { server.exchange(other, "after\n") })
      -- A handler that catches the error sees Lua's message, and once it
      -- drops what it took, nothing stays taken.
      local catch = start_op(srv, "catch")
      assert.same({ n = 3, false, "not enough memory", true }, report_of(srv, "catch"))
      assert.same({ "catch\n" }, { server.recv_exactly(catch, 6) })
      local alloc = start_op(srv, "alloc")
      assert.same({ n = 3, true, nil, 40 }, report_of(srv, "alloc"))
      assert.same({ "alloc\n" }, { server.recv_exactly(alloc, 6) })
      assert_served(srv, 5)
      assert_alive(srv)
      assert.is_nil(srv:log_text():find("PANIC", 1, true))
    end)

    it("holding memory near the cap, it and others get nil, 'enomem' from recv for data that cannot be taken", function()
      local srv = start(CONFIG)
      local other = assert(server.connect(srv.host, srv.port))
      assert.same({ "before\n" }, { server.exchange(other, "before\n") })
      local reader = start_op(srv, "reader")
      local holder = start_op(srv, "hold")
      assert.same({ n = 2, false, "not enough memory" }, report_of(srv, "hold"))
      local data = string.rep("d", 200000)
      -- Another client's data arriving now (the PANIC of issue 8).
      assert(reader:send(data))
      assert.same({ n = 4, 3, nil, "enomem", "" }, report_of(srv, "reader"))
      assert(holder:send(data))
      assert.same({ n = 4, 3, nil, "enomem", "" }, report_of(srv, "enomem"))
      -- Nothing was lost: once the holder let its memory go, the same
      -- bytes arrive, on both connections.
      assert.same({ n = 2, 200000, true }, report_of(srv, "delivered"))
      assert.same({ n = 1, 200000 }, report_of(srv, "reader.delivered"))
      assert.same({ "after\n" }, { server.exchange(other, "after\n") })
      assert_served(srv, 5)
      assert_alive(srv)
      assert.is_nil(srv:log_text():find("PANIC", 1, true))
    end)
  end)

  describe("coroutine.close and coroutine.resume on luaecho's coroutines", function()
    local CLOSE_ERROR = "coroutine.close: cannot close a coroutine run by luaecho (a handler or a spawned task); "
      .. "return from it, or close its connection"
    local RESUME_ERROR = "cannot resume a coroutine run by luaecho (a handler or a spawned task): only luaecho resumes it"

    -- Stops the server and checks that it ended cleanly: every connection
    -- ended on its own, before the drain timeout (10 s) would have closed
    -- one left behind.
    local function assert_clean_exit(srv)
      assert(srv:signal("TERM"))
      expect_line(srv, record("info", "shutting down on SIGTERM: %d connections? to drain %(up to 10s%)"), 5)
      assert.equal(0, srv:wait_exit(8))
      assert.matches(record("info", "stopped"), srv:log()[#srv:log()])
    end

    it("refuse a handler waiting in luaecho.sleep, which wakes as if nothing happened", function()
      local srv = start()
      local sock = start_op(srv, "closesleep")
      assert.same({ n = 2, false, CLOSE_ERROR }, report_of(srv, "sleep.close"))
      assert.same({ n = 2, false, RESUME_ERROR }, report_of(srv, "sleep.resume"))
      assert.same({ n = 2, "suspended", "suspended" }, report_of(srv, "sleep.status"))
      assert.same({ n = 1, 0 }, report_of(srv, "sleep.woke"))
      assert.same({ "closesleep\n" }, { server.recv_exactly(sock, 11) })
      assert.same({ "still here\n" }, { server.exchange(sock, "still here\n") })
      assert_served(srv, 5)
      sock:close()
      assert_clean_exit(srv)
    end)

    it("refuse a handler waiting in recv, which still gets its data; the connection is freed", function()
      local srv = start()
      local sock = start_op(srv, "closerecv")
      assert.same({ n = 2, false, CLOSE_ERROR }, report_of(srv, "recv.close"))
      assert.same({ n = 2, false, RESUME_ERROR }, report_of(srv, "recv.resume"))
      assert.same({ n = 2, "suspended", "suspended" }, report_of(srv, "recv.status"))
      assert_served(srv, 5)
      assert(sock:send("data\n"))
      assert.same({ n = 1, "data\n" }, report_of(srv, "recv.got"))
      assert.same({ "closerecv\n" }, { server.recv_exactly(sock, 10) })
      sock:close()
      assert_clean_exit(srv) -- the connection was freed
    end)

    it("refuse a spawned task waiting in luaecho.sleep, which ends normally", function()
      local srv = start()
      local sock = start_op(srv, "closetask")
      assert.same({ n = 2, false, CLOSE_ERROR }, report_of(srv, "task.close"))
      assert.same({ n = 2, false, RESUME_ERROR }, report_of(srv, "task.resume"))
      assert.same({ n = 1, "slept" }, report_of(srv, "task.join"))
      assert.same({ "closetask\n" }, { server.recv_exactly(sock, 10) })
      assert_served(srv, 5)
      sock:close()
      assert_clean_exit(srv)
    end)
  end)

  describe("with sandbox = false, a userdata given a conn's or a task's metatable", function()
    it("raises a type error instead of crashing, and the server exits cleanly", function()
      local srv = start("sandbox = false\n")
      local other = assert(server.connect(srv.host, srv.port))
      assert.same({ "before\n" }, { server.exchange(other, "before\n") })
      local sock = start_op(srv, "forge")
      -- Called through pcall, the functions have no name ('?').
      local function type_error(what)
        return ("bad argument #1 to '?' (%s expected, got another userdata with its metatable)"):format(what)
      end
      assert.same({ n = 2, false, type_error("luaecho.conn") }, report_of(srv, "forge.tostring"))
      assert.same({ n = 2, false, type_error("luaecho.conn") }, report_of(srv, "forge.recv"))
      assert.same({ n = 2, false, type_error("luaecho.task") }, report_of(srv, "forge.task"))
      assert.same({ n = 2, false, type_error("luaecho.task") }, report_of(srv, "forge.join"))
      local sub_error = type_error("luaecho.inspect.sub")
      assert.same({ n = 2, false, sub_error }, report_of(srv, "forge.sub"))
      assert.same({ n = 2, false, sub_error }, report_of(srv, "forge.subclose"))
      assert.same({ "forge\n" }, { server.recv_exactly(sock, 6) })
      assert.same({ "after\n" }, { server.exchange(other, "after\n") })
      assert_served(srv, 5)
      other:close()
      sock:close()
      assert(srv:signal("TERM"))
      assert.equal(0, srv:wait_exit(10))
      assert.matches(record("info", "stopped"), srv:log()[#srv:log()])
    end)
  end)

  describe("a recv that waits when the server ends the connection", function()
    it("returns nil, 'idle' when idle_timeout ends it", function()
      local srv = start("idle_timeout = 0.5\nlog_level = 'debug'\n")
      local sock, id = start_op(srv, "wait")
      assert_served(srv, 5)
      expect_line(srv, record("debug", literal(("conn %d: idle timeout"):format(id))))
      assert.same({ n = 3, nil, "idle", "" }, report_of(srv, "wait"))
      assert.same({ n = 2, "idle", "idle" }, report_of(srv, "wait.later"))
      assert.same({ "", "closed" }, { server.read_all_until_close(sock, 5) })
      assert_served(srv, 5)
      assert_alive(srv)
    end)

    it("returns nil, 'shutdown' when the shutdown ends it", function()
      local srv = start("shutdown_timeout = 2\n")
      local other = assert(server.connect(srv.host, srv.port))
      assert.same({ "before\n" }, { server.exchange(other, "before\n") })
      start_op(srv, "wait")
      assert(srv:signal("TERM"))
      expect_line(srv, record("info", literal("shutting down on SIGTERM: 2 connections to drain (up to 2s)")), 5)
      -- Served while the server drains.
      assert.same({ "draining\n" }, { server.exchange(other, "draining\n") })
      other:close()
      expect_line(srv, record("warn", literal("shutdown timeout: closing 1 connection")), 10)
      assert.equal(0, srv:wait_exit(10))
      assert.same({ n = 3, nil, "shutdown", "" }, report_of(srv, "wait"))
      assert.same({ n = 2, "shutdown", "shutdown" }, report_of(srv, "wait.later"))
      assert.matches(record("info", "stopped"), srv:log()[#srv:log()])
    end)
  end)
end)
