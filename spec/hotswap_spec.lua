-- Hot swap: a saved handler file (or a module next to it) becomes a new
-- version for new connections while open ones finish on theirs, a broken
-- save is rejected with one log line, luaecho.latest() moves a willing
-- connection to new code with its state, and SIGHUP reloads the handlers
-- and the configuration (listeners, options), all or nothing.
--
-- Readiness always comes from the log: a save is in force once the server
-- logs "reloaded FILE (version N)". The few waits for something NOT to
-- happen (no reload with watch = false, no log line while --check runs)
-- are bounded and say so.
local server = require "server"
local proc = require "spec_proc"
local socket = require "socket"

local record, literal = server.record, server.literal

local RELOAD_TIMEOUT = 10  -- seconds for one reload to show in the log
local QUIET = 1            -- seconds a non-event is given to happen (20x the 50 ms settle)

-- ---- saving files -------------------------------------------------------

-- Saves src at path the way an editor would: "inplace" truncates and
-- writes, "rename" writes a temp file (not *.lua) and renames it over path,
-- "recreate" deletes path and writes it anew.
local function save(path, src, how)
  if how == "rename" then
    server.write_file(path .. ".tmp", src)
    assert(os.rename(path .. ".tmp", path))
  elseif how == "recreate" then
    assert(os.remove(path))
    server.write_file(path, src)
  else
    assert(how == "inplace", how)
    server.write_file(path, src)
  end
end

-- The log record of a good reload of path, capturing the version.
local function reloaded(path, version)
  return record("info", "reloaded " .. literal(path) .. " %(version " .. (version or "(%d+)") .. "%)")
end

-- The log record of a rejected reload of path: the message, then the
-- version that keeps serving.
local function reload_failed(path)
  return record("error", "reload of " .. literal(path) .. " failed: (.*); version (%d+) keeps serving")
end

-- Waits for the line matching pattern; raises with the log if it does not come.
local function expect_line(srv, pattern, timeout)
  local line, err = srv:wait_line(pattern, timeout or RELOAD_TIMEOUT)
  if not line then
    error(("no log line matching %q (%s); log:\n%s"):format(pattern, err, srv:log_text()), 2)
  end
  return line
end

-- Asserts that no log line matching pattern comes within QUIET seconds.
local function expect_quiet(srv, pattern)
  local line = srv:wait_line(pattern, QUIET)
  assert(line == nil, "unexpected log line: " .. tostring(line))
end

-- ---- line clients -------------------------------------------------------

-- Connects to an address table (a Server, srv.addrs[i], or { host=, port= }).
local function connect(addr)
  local sock, err = server.connect(addr.host, addr.port, 5)
  return assert(sock, err)
end

-- Sends one line and returns the one-line answer (without its "\n").
local function ask(sock, line)
  assert(sock:send(line .. "\n"))
  local answer, err, partial = sock:receive("*l")
  assert(answer, ("no answer to %q: %s (partial %q)"):format(line, tostring(err), tostring(partial)))
  return answer
end

-- Half-closes sock and asserts that the server ends the connection in
-- order: no more bytes, then FIN (not a reset, not a timeout).
local function finish(sock)
  sock:shutdown("send")
  assert.same({ "", "closed" }, { server.read_all_until_close(sock, 5) })
  sock:close()
end

-- ---- handlers -----------------------------------------------------------

-- The end of a line handler: answers each line with answer(line), which
-- the source put in front of it defines.
local LINE_LOOP = [[
return function(conn)
  conn:setopts{ packet = "line" }
  local line = conn:recv()
  while line and conn:send(answer(line)) do line = conn:recv() end
end
]]

-- Behaviour A answers "A<save>:" and the line; behaviour B answers
-- "B<save>:" and the line reversed. <save> says which save is running.
local BEHAVIOUR = {
  A = 'local function answer(line) return "A%d:" .. line end\n',
  B = 'local function answer(line) return "B%d:" .. line:sub(1, -2):reverse() .. "\\n" end\n',
}

local function good_handler(tag, n)
  return ("-- save %d, behaviour %s\n"):format(n, tag) .. BEHAVIOUR[tag]:format(n) .. LINE_LOOP
end

-- What a connection running save n of behaviour tag answers to line.
local function answer_of(tag, n, line)
  return tag .. n .. ":" .. (tag == "A" and line or line:reverse())
end

-- Broken saves and what their rejection says (h: the handler's path).
local BROKEN = {
  syntax = {
    src = 'return function(conn)\n  conn:send("x" +)\nend\n',
    message = function(h) return h .. ":2: unexpected symbol near ')'" end,
  },
  raise = {
    src = 'local loaded = true\nerror("refusing to load")\n',
    message = function(h) return h .. ":2: refusing to load" end,
  },
  ["nil"] = {
    src = "-- forgot the function\nreturn nil\n",
    message = function(h) return h .. ": handler must return a function, got nil" end,
  },
}

local function start_line_server(tag)
  return server.start{
    config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\n',
    handlers = { ["h.lua"] = good_handler(tag, 0) },
  }
end

-- ---- load: many clients while the handler changes ------------------------

local CLIENTS = 20        -- client sockets open at any time
local REPLACED = 1        -- clients closed and replaced by new ones per round
local LOG_POLL = 0.002    -- seconds a round waits for log lines with requests in flight
local IO_TIMEOUT = 5      -- seconds for one answer

-- Drives CLIENTS line clients round-robin: each round sends one request on
-- every client, then reads every answer, and replaces the REPLACED oldest
-- clients by new connections. A client learns which save it runs from its
-- first answer, which must lie between the newest good save the log had
-- confirmed when it connected and the newest good save written by then;
-- every later answer must come from the same save. Anything else (an error,
-- a reset, a timeout, a wrong byte) is a problem.
local Load = {}
Load.__index = Load

function Load.new(srv, first_tag)
  return setmetatable({
    srv = srv,
    clients = {},
    tags = { [0] = first_tag }, -- behaviour of every good save
    confirmed = 0,              -- newest good save the log confirmed
    written = 0,                -- newest good save on disk
    opened = 0,
    exchanges = 0,
    problems = {},
  }, Load)
end

function Load:problem(fmt, ...)
  self.problems[#self.problems + 1] = fmt:format(...)
end

function Load:open()
  self.opened = self.opened + 1
  local sock, err = server.connect(self.srv.host, self.srv.port, IO_TIMEOUT)
  if not sock then return self:problem("connection %d: connect: %s", self.opened, err) end
  local c = { sock = sock, id = self.opened, n = 0, low = self.confirmed }
  self.clients[#self.clients + 1] = c
  return c
end

function Load:drop(c, why)
  self:problem("connection %d (save %s, exchange %d): %s", c.id, tostring(c.save), c.n, why)
  c.dropped = true
  for i, other in ipairs(self.clients) do
    if other == c then table.remove(self.clients, i) break end
  end
  c.sock:close()
end

function Load:request(c)
  c.n = c.n + 1
  c.pending = ("c%d-%d"):format(c.id, c.n)
  local ok, err = c.sock:send(c.pending .. "\n")
  if not ok then self:drop(c, "send: " .. err) end
end

-- Checks one answer against what connection c must say.
function Load:check(c, answer)
  local tag, n = answer:match("^([AB])(%d+):")
  n = math.tointeger(tonumber(n))
  if c.save == nil and n then
    if n < c.low or n > self.written or self.tags[n] ~= tag then
      return ("first answer %q: expected a good save in %d..%d"):format(answer, c.low, self.written)
    end
    c.save = n
  end
  local want = answer_of(self.tags[c.save] or "?", c.save or -1, c.pending)
  if answer ~= want then return ("answer %q, expected %q"):format(answer, want) end
end

function Load:response(c)
  local answer, err, partial = c.sock:receive("*l")
  if not answer then return self:drop(c, ("receive: %s (partial %q)"):format(err, partial)) end
  local wrong = self:check(c, answer)
  if wrong then return self:drop(c, wrong) end
  self.exchanges = self.exchanges + 1
end

-- Closes c in order (half-close, then the server's FIN).
function Load:close(c)
  table.remove(self.clients, 1)
  c.sock:shutdown("send")
  local rest, err = server.read_all_until_close(c.sock, IO_TIMEOUT)
  if rest ~= "" or err ~= "closed" then
    self:problem("connection %d: at close got %q, %s", c.id, rest, err)
  end
  c.sock:close()
end

-- One round; `between` (optional) runs while every request is in flight.
function Load:round(between)
  for _ = 1, REPLACED do
    local c = self.clients[1]
    if c and c.n >= 3 then self:close(c) end
  end
  while #self.clients < CLIENTS and #self.problems < 20 do self:open() end
  local clients = table.move(self.clients, 1, #self.clients, 1, {})
  for _, c in ipairs(clients) do self:request(c) end
  if between then between() end
  for _, c in ipairs(clients) do
    if not c.dropped then self:response(c) end
  end
end

-- Opens one more connection at once and returns the save it runs.
function Load:probe()
  local c = self:open()
  if not c then return nil end
  self:request(c)
  if not c.dropped then self:response(c) end
  return c.save
end

describe("hot swap", function()
  after_each(server.cleanup)

  describe("saving a handler file", function()
    it("keeps every exchange whole under load through 50 saves, good and broken", function()
      local srv = start_line_server("A")
      local h = srv:file("h.lua")
      local load = Load.new(srv, "A")
      local hows = { "inplace", "rename", "recreate" }
      local kinds = { "syntax", "raise", "nil" }
      local version, good, broken, seen_hows = 1, 0, 0, {}
      load:round() -- answers show the server's loop (and its watch) running
      for save_n = 1, 50 do
        local how = hows[(save_n - 1) % #hows + 1]
        seen_hows[how] = true
        local kind, src
        if save_n % 5 == 0 then
          kind = kinds[(save_n // 5 - 1) % #kinds + 1]
          src = BROKEN[kind].src
        else
          kind = load.tags[load.written] == "A" and "B" or "A"
          src = good_handler(kind, save_n)
        end
        load:round(function()
          save(h, src, how)
          if BROKEN[kind] == nil then
            load.tags[save_n] = kind
            load.written = save_n
          end
        end)
        -- Rounds go on until the log tells how the save went; each round
        -- reads the log while its requests are in flight.
        local outcome
        local function read_log()
          local line = srv:next_line(LOG_POLL)
          while line and not outcome do
            if line:find(reloaded(h)) or line:find(reload_failed(h)) then
              outcome = line
            else
              load:problem("save %d: unexpected log line %q", save_n, line)
            end
            line = not outcome and srv:next_line(0) or nil
          end
        end
        local deadline = proc.now() + RELOAD_TIMEOUT
        while not outcome and proc.now() < deadline and #load.problems == 0 do
          load:round(read_log)
        end
        assert(outcome, ("save %d (%s, %s): no reload line within %ds; problems:\n%s\nlog:\n%s"):format(
          save_n, kind, how, RELOAD_TIMEOUT, table.concat(load.problems, "\n"), srv:log_text()))
        if BROKEN[kind] then
          broken = broken + 1
          local message, serving = outcome:match(reload_failed(h))
          assert.equal(BROKEN[kind].message(h), message, "save " .. save_n)
          assert.equal(tostring(version), serving, "save " .. save_n)
        else
          good, version = good + 1, version + 1
          assert.equal(tostring(version), outcome:match(reloaded(h)), "save " .. save_n)
          load.confirmed = save_n
        end
        -- A connection opened now runs the newest good save.
        assert.equal(load.confirmed, load:probe(),
          ("save %d (%s, %s): a new connection; problems:\n%s"):format(
            save_n, kind, how, table.concat(load.problems, "\n")))
        load:round()
      end
      while #load.clients > 0 do load:close(load.clients[1]) end
      assert.same({}, load.problems)
      assert.same({ inplace = true, rename = true, recreate = true }, seen_hows)
      assert.equal(40, good)
      assert.equal(10, broken)
      assert.equal(41, version)
      -- Continual churn: many more connections than clients at a time.
      assert(load.opened >= 50 * REPLACED, "only " .. load.opened .. " connections opened")
      assert(load.exchanges >= 50 * CLIENTS, "only " .. load.exchanges .. " exchanges")
      -- Nothing but reload lines in the whole log (no handler errors).
      for _, line in ipairs(srv:log()) do
        local level, message = server.parse_log(line)
        assert(level, "not a log record: " .. line)
        assert(message:find("^listening on ") or message:find("^luaecho [%d.]+ running as pid ")
          or message:find("^file descriptor limit: ")
          or line:find(reloaded(h)) or line:find(reload_failed(h)),
          "unexpected log line: " .. line)
      end
    end)

    it("reloads a save made as soon as the server reports listening", function()
      -- "listening on" is the readiness signal: a save made right after it
      -- must not be lost. Five servers, so that a race cannot pass by luck.
      for attempt = 1, 5 do
        local srv = start_line_server("A")
        local h = srv:file("h.lua")
        save(h, good_handler("B", 1), "rename")
        local line = srv:wait_line(reloaded(h, 2), RELOAD_TIMEOUT)
        assert(line, ("server %d of 5: a save made right after the listening line was never reloaded; log:\n%s")
          :format(attempt, srv:log_text()))
        local sock = connect(srv)
        assert.equal("B1:olleh", ask(sock, "hello"))
        finish(sock)
        srv:stop()
      end
    end)

    it("leaves a connection opened before the save on its old version to its end", function()
      local srv = start_line_server("A")
      local h = srv:file("h.lua")
      local old = connect(srv)
      assert.equal("A0:before", ask(old, "before"))
      save(h, good_handler("B", 1), "rename")
      expect_line(srv, reloaded(h, 2))
      assert.equal("B1:olleh", ask(connect(srv), "hello"))
      save(h, BROKEN.syntax.src, "inplace")
      expect_line(srv, reload_failed(h))
      save(h, good_handler("A", 2), "recreate")
      expect_line(srv, reloaded(h, 3))
      assert.equal("A2:hello", ask(connect(srv), "hello"))
      for i = 1, 5 do
        assert.equal("A0:after " .. i, ask(old, "after " .. i))
      end
      finish(old)
    end)

    it("reloads the handler when a module next to it changes", function()
      local srv = server.start{
        config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\n',
        handlers = {
          ["h.lua"] = 'local helper = require "helper"\n' ..
            'local function answer(line) return helper.tag .. line end\n' .. LINE_LOOP,
          ["helper.lua"] = 'return { tag = "one:" }\n',
        },
      }
      local h, helper = srv:file("h.lua"), srv:file("helper.lua")
      local old = connect(srv)
      assert.equal("one:x", ask(old, "x"))
      save(helper, 'return { tag = "two:" }\n', "rename")
      expect_line(srv, reloaded(h, 2))
      assert.equal("two:x", ask(connect(srv), "x"))
      -- An open connection keeps the module its version required.
      assert.equal("one:y", ask(old, "y"))
      -- A broken module is a failed reload of the handler, on one line
      -- naming the line that requires it and the module's own line.
      save(helper, "return { tag = + }\n", "inplace")
      assert.equal(("reload of %s failed: %s:1: error loading module 'helper': %s:1: unexpected symbol near '+'; "
          .. "version 2 keeps serving"):format(h, h, helper),
        select(2, server.parse_log(expect_line(srv, record("error", "reload of " .. literal(h) .. " failed: .*")))))
      assert.equal("two:z", ask(connect(srv), "z"))
      finish(old)
    end)
  end)

  describe("luaecho.latest()", function()
    -- lua/examples/upgrade.lua, with its REPLY format changed to `reply`.
    local function upgrade_example(reply)
      local src = assert(server.read_file(server.REPO .. "/lua/examples/upgrade.lua"))
      if reply == nil then return src end
      local changed, n = src:gsub('\nlocal REPLY = "[^"\n]*"', '\nlocal REPLY = "' .. reply:gsub("%%", "%%%%") .. '"')
      assert.equal(1, n, "upgrade.lua has no REPLY line to change")
      return changed
    end

    it("moves a live connection to the new version with its state (lua/examples/upgrade.lua)", function()
      local srv = server.start{
        config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\n',
        handlers = { ["h.lua"] = upgrade_example() },
      }
      local h = srv:file("h.lua")
      local a = connect(srv)
      assert.equal("1 a", ask(a, "a"))
      assert.equal("2 b", ask(a, "b"))
      save(h, upgrade_example("v2 %d %s"), "rename")
      expect_line(srv, reloaded(h, 2))
      -- The first line after the save is answered by version 2 with the
      -- count carried over; a new connection starts counting at 1.
      assert.equal("v2 3 c", ask(a, "c"))
      local b = connect(srv)
      assert.equal("v2 1 x", ask(b, "x"))
      save(h, upgrade_example("v3 %d %s"), "inplace")
      expect_line(srv, reloaded(h, 3))
      assert.equal("v3 4 d", ask(a, "d"))
      assert.equal("v3 2 y", ask(b, "y"))
      -- Nobody upgrades to a version that failed to load.
      save(h, BROKEN.syntax.src, "inplace")
      expect_line(srv, reload_failed(h))
      assert.equal("v3 5 e", ask(a, "e"))
      assert.equal("v3 1 new", ask(connect(srv), "new"))
      finish(a)
      finish(b)
      assert(srv:wait_line("handler error", 0) == nil, srv:log_text())
    end)
  end)

  describe("memory", function()
    it("stays flat over 500 reloads", function()
      -- Each version holds 64 KiB, so keeping every old version would cost
      -- about 32 MiB: well past the bound.
      local srv = server.start{
        config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\n',
        handlers = {
          ["h.lua"] = 'local helper = require "helper"\n' ..
            'local BLOB = string.rep("v", 64 * 1024)\n' ..
            'local function answer(line) return #BLOB + #helper.blob .. " " .. line end\n' .. LINE_LOOP,
          ["helper.lua"] = 'return { blob = string.rep("m", 16 * 1024) }\n',
        },
      }
      local h, config = srv:file("h.lua"), srv:file("config.lua")
      local long = connect(srv) -- on version 1 throughout
      local rss = {}
      for version = 2, 501 do
        assert(srv:signal("HUP"))
        expect_line(srv, reloaded(h, version))
        expect_line(srv, record("info", "config reloaded from " .. literal(config)))
        if version % 10 == 0 then
          local sock = connect(srv)
          assert.equal("81920 v" .. version, ask(sock, "v" .. version))
          finish(sock)
          assert.equal("81920 long", ask(long, "long"))
        end
        if version == 6 or version == 501 then rss[version] = assert(proc.rss_kib(srv.pid)) end
      end
      -- Under AddressSanitizer freed memory waits in a quarantine of up to
      -- 256 MiB, so RSS says nothing there; LeakSanitizer checks at exit.
      if not server.SANITIZED then
        local growth = rss[501] - rss[6]
        assert(growth < 8 * 1024, ("RSS grew by %d KiB from 5 reloads (%d KiB) to 500 (%d KiB)"):format(
          growth, rss[6], rss[501]))
      end
      finish(long)
    end)
  end)

  describe("watch = false", function()
    it("saving does not reload, SIGHUP still does", function()
      local srv = server.start{
        config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\nwatch = false\n',
        handlers = { ["h.lua"] = good_handler("A", 0) },
      }
      local h = srv:file("h.lua")
      save(h, good_handler("B", 1), "rename")
      expect_quiet(srv, "reload")
      assert.equal("A0:x", ask(connect(srv), "x"))
      assert(srv:signal("HUP"))
      expect_line(srv, record("info", "reloading on SIGHUP"))
      expect_line(srv, reloaded(h, 2))
      expect_line(srv, record("info", "config reloaded from " .. literal(srv:file("config.lua"))))
      assert.equal("B1:x", ask(connect(srv), "x"))
      -- The reloaded configuration still says watch = false.
      save(h, good_handler("A", 2), "inplace")
      expect_quiet(srv, "reload")
      assert.equal("B1:x", ask(connect(srv), "x"))
    end)

    it("takes effect, and is undone, by a config reload", function()
      local srv = start_line_server("A")
      local h, config = srv:file("h.lua"), srv:file("config.lua")
      assert.equal("A0:x", ask(connect(srv), "x"))
      -- config.lua sits in the watched directory: saving it reloads h.lua.
      save(config, ('listen = "127.0.0.1:0"\nhandler = "%s"\nwatch = false\n'):format(h), "rename")
      expect_line(srv, reloaded(h, 2))
      assert(srv:signal("HUP"))
      expect_line(srv, reloaded(h, 3))
      expect_line(srv, record("info", "config reloaded from " .. literal(config)))
      save(h, good_handler("B", 1), "inplace")
      expect_quiet(srv, "reload")
      assert.equal("A0:x", ask(connect(srv), "x"))
      server.write_file(config, ('listen = "127.0.0.1:0"\nhandler = "%s"\n'):format(h))
      assert(srv:signal("HUP"))
      expect_line(srv, reloaded(h, 4))
      expect_line(srv, record("info", "config reloaded from " .. literal(config)))
      assert.equal("B1:x", ask(connect(srv), "x"))
      save(h, good_handler("A", 2), "rename")
      expect_line(srv, reloaded(h, 5))
      assert.equal("A2:x", ask(connect(srv), "x"))
    end)
  end)

  describe("SIGHUP", function()
    -- Answers each read with "<name>[" .. bytes .. "]".
    local function bracket_handler(name)
      return ([[
return function(conn)
  local data = conn:recv()
  while data and conn:send("%s[" .. data .. "]") do data = conn:recv() end
end
]]):format(name)
    end

    -- Sends SIGHUP and collects the log lines up to the config outcome
    -- ("config reloaded" or "config reload failed"), running step() between
    -- reads. Returns the lines after "reloading on SIGHUP" and the number
    -- of steps run.
    local function hup(srv, step)
      assert(srv:signal("HUP"))
      expect_line(srv, record("info", "reloading on SIGHUP"))
      local lines, steps = {}, 0
      local deadline = proc.now() + RELOAD_TIMEOUT
      while proc.now() < deadline do
        if step then
          step()
          steps = steps + 1
        end
        local line = srv:next_line(step and 0 or 0.1)
        if line then
          lines[#lines + 1] = line
          if line:find(record("%a+", "config reload.*")) then return lines, steps end
        end
      end
      error("no config outcome after SIGHUP; log:\n" .. srv:log_text())
    end

    -- Sends data and asserts that exactly `want` comes back.
    local function assert_answer(sock, data, want)
      assert.same({ want }, { server.exchange(sock, data, { expect = #want, timeout = 5 }) })
    end

    local function messages(lines)
      local out = {}
      for _, line in ipairs(lines) do out[#out + 1] = select(2, server.parse_log(line)) or line end
      return out
    end

    it("adds and removes listeners while a connection on a kept one keeps exchanging", function()
      local srv = server.start{
        config = [[
listen = { "127.0.0.1:0", { address = "127.0.0.2:0", handler = "@DIR@/r.lua" } }
handler = "@DIR@/k.lua"
]],
        handlers = { ["k.lua"] = bracket_handler("k"), ["r.lua"] = bracket_handler("r") },
        expect = 2,
      }
      local kept, removed = srv.addrs[1], srv.addrs[2]
      local on_kept, on_removed = connect(kept), connect(removed)
      assert_answer(on_kept, "0", "k[0]")
      assert_answer(on_removed, "0", "r[0]")
      server.write_file(srv:file("config.lua"), ([[
listen = { "127.0.0.1:0", { address = "127.0.0.3:0", handler = "%s" } }
handler = "%s"
]]):format(srv:file("r.lua"), srv:file("k.lua")))
      local n = 0
      local lines, steps = hup(srv, function()
        n = n + 1
        assert_answer(on_kept, tostring(n), "k[" .. n .. "]")
      end)
      assert(steps >= 1)
      local stopped, added = {}, {}
      for _, m in ipairs(messages(lines)) do
        stopped[#stopped + 1] = m:match("^stopped listening on (.+)$")
        added[#added + 1] = m:match("^listening on (.+)$")
      end
      assert.same({ removed.text }, stopped)
      assert.equal(1, #added)
      assert.matches("^127%.0%.0%.3:%d+$", added[1])
      assert.equal("config reloaded from " .. srv:file("config.lua"), messages(lines)[#lines])
      -- The kept listener kept its socket, the removed one refuses, the
      -- added one serves.
      assert_answer(connect(kept), "a", "k[a]")
      assert.same({ nil, "connection refused" }, { server.connect(removed.host, removed.port) })
      assert_answer(connect(server.parse_addr(added[1])), "b", "r[b]")
      -- Connections from before the reload finish normally.
      for i = 1, 3 do
        assert_answer(on_removed, tostring(i), "r[" .. i .. "]")
        assert_answer(on_kept, tostring(i), "k[" .. i .. "]")
      end
      finish(on_removed)
      finish(on_kept)
    end)

    -- Entries with the same address text ("127.0.0.1:0" twice) match the
    -- running listeners in order, oldest first: the newer one was matched
    -- first, so the original listener was closed.
    it("keeps the oldest of two listeners on the same port-0 address when one goes", function()
      local srv = server.start{
        config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/k.lua"\n',
        handlers = { ["k.lua"] = bracket_handler("k") },
      }
      local original = srv.addrs[1]
      local config = ('listen = { %s }\nhandler = "%s"\n')
      server.write_file(srv:file("config.lua"), config:format('"127.0.0.1:0", "127.0.0.1:0"', srv:file("k.lua")))
      local added
      for _, m in ipairs(messages(hup(srv))) do added = added or m:match("^listening on (.+)$") end
      assert.truthy(added, srv:log_text())
      server.write_file(srv:file("config.lua"), config:format('"127.0.0.1:0"', srv:file("k.lua")))
      local stopped
      for _, m in ipairs(messages(hup(srv))) do stopped = stopped or m:match("^stopped listening on (.+)$") end
      assert.equal(added, stopped)
      assert_answer(connect(original), "a", "k[a]")
    end)

    it("applies changed options and handler to new connections only", function()
      local srv = server.start{
        config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/one.lua"\n',
        handlers = { ["one.lua"] = bracket_handler("one"), ["two.lua"] = bracket_handler("two") },
      }
      local before = connect(srv)
      assert_answer(before, "x\ny\n", "one[x\ny\n]")
      server.write_file(srv:file("config.lua"), ('listen = { { address = "127.0.0.1:0", packet = "line" } }\nhandler = "%s"\n')
        :format(srv:file("two.lua")))
      local lines = hup(srv)
      assert.equal("config reloaded from " .. srv:file("config.lua"), messages(lines)[#lines])
      -- New: handler two, one line per recv. Old: handler one, raw bytes.
      assert_answer(connect(srv), "x\ny\n", "two[x\n]two[y\n]")
      assert_answer(before, "x\ny\n", "one[x\ny\n]")
      finish(before)
    end)

    -- Broken configurations, and the message naming the problem (dir: the
    -- server's temp dir).
    local BROKEN_CONFIGS = {
      { name = "an unknown key", config = 'lisen = "127.0.0.1:0"\n',
        message = "%s/config.lua: unknown key 'lisen'" },
      { name = "a syntax error", config = 'listen = {\n',
        message = "%s/config.lua:2: unexpected symbol near <eof>" },
      { name = "a wrong type", config = 'listen = "127.0.0.1:0"\nbacklog = "many"\n',
        message = "%s/config.lua: key 'backlog': expected integer, got string" },
      { name = "a bad address", config = 'listen = "nowhere:x"\n',
        message = "%s/config.lua: key 'listen': invalid address 'nowhere:x': the port must be a number from 0 to 65535" },
      { name = "a missing handler", config = 'listen = "127.0.0.1:0"\nhandler = "missing.lua"\n',
        message = "cannot open %s/missing.lua: No such file or directory" },
      { name = "a handler that does not load", config = 'listen = "127.0.0.1:0"\nhandler = "bad.lua"\n',
        message = "%s/bad.lua:2: unexpected symbol near ')'" },
    }

    for _, case in ipairs(BROKEN_CONFIGS) do
      it("rejects " .. case.name .. " with one error line and keeps everything running", function()
        local srv = server.start{
          config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\n',
          handlers = { ["h.lua"] = good_handler("A", 0) },
          files = { ["bad.txt"] = BROKEN.syntax.src },
        }
        local h, config = srv:file("h.lua"), srv:file("config.lua")
        local message = case.message:format(srv.dir)
        local open = connect(srv)
        assert.equal("A0:before", ask(open, "before"))
        -- bad.lua appears only now (a watched *.lua would reload h.lua).
        assert(os.rename(srv:file("bad.txt"), srv:file("bad.lua")))
        expect_line(srv, reloaded(h, 2))
        server.write_file(config, case.config)
        expect_line(srv, reloaded(h, 3))
        local lines = hup(srv)
        assert.same({
          "reloaded " .. h .. " (version 4)",
          "config reload failed: " .. message .. "; keeping the running configuration",
        }, messages(lines))
        assert.equal("error", server.parse_log(lines[#lines]))
        assert.equal("A0:after", ask(open, "after"))
        assert.equal("A0:new", ask(connect(srv), "new"))
        -- --check names the same problem, exits 1, and leaves the server be.
        local code, out = server.run_cmd({ "sh", "-c", 'exec "$0" "$@" 2>&1 >/dev/null', server.bin, "--check", config })
        assert.same({ 1, { "luaecho: " .. message } }, { code, out })
        local code_out, stdout = server.run_cmd({ "sh", "-c", 'exec "$0" "$@" 2>/dev/null', server.bin, "--check", config })
        assert.same({ 1, {} }, { code_out, stdout })
        expect_quiet(srv, "")
        assert.equal("A0:still", ask(open, "still"))
        assert.equal("A0:new", ask(connect(srv), "new"))
        finish(open)
      end)
    end

    it("rejects a config whose new listener cannot bind, all or nothing", function()
      local srv = server.start{
        config = 'listen = { "127.0.0.1:0", "127.0.0.2:0" }\nhandler = "@DIR@/h.lua"\n',
        handlers = { ["h.lua"] = good_handler("A", 0) },
        expect = 2,
      }
      local first, second = srv.addrs[1], srv.addrs[2]
      -- A port that binds (free: taken and released here) and one that
      -- does not (held by this process).
      local probe = assert(socket.bind("127.0.0.3", 0))
      local _, free_port = probe:getsockname()
      probe:close()
      local holder = assert(socket.bind("127.0.0.4", 0))
      server.defer(function() holder:close() end)
      local _, busy_port = holder:getsockname()
      local open = connect(second)
      assert.equal("A0:open", ask(open, "open"))
      -- The new config drops the second listener and adds two, the last of
      -- which cannot bind.
      server.write_file(srv:file("config.lua"), ([[
listen = { "127.0.0.1:0", "127.0.0.3:%d", "127.0.0.4:%d" }
handler = "%s"
]]):format(free_port, busy_port, srv:file("h.lua")))
      expect_line(srv, reloaded(srv:file("h.lua"), 2))
      local lines = hup(srv)
      assert.same({
        "reloaded " .. srv:file("h.lua") .. " (version 3)",
        "config reload failed: cannot listen on 127.0.0.4:" .. busy_port ..
          ": address already in use; keeping the running configuration",
      }, messages(lines))
      assert.same({ nil, "connection refused" }, { server.connect("127.0.0.3", free_port) })
      assert.equal("A0:one", ask(connect(first), "one"))
      assert.equal("A0:two", ask(connect(second), "two"))
      assert.equal("A0:open", ask(open, "open"))
      -- Once the port is free the same config applies in full.
      holder:close()
      lines = hup(srv)
      assert.equal("config reloaded from " .. srv:file("config.lua"), messages(lines)[#lines])
      assert.same({ nil, "connection refused" }, { server.connect(second.host, second.port) })
      assert.equal("A0:three", ask(connect{ host = "127.0.0.3", port = free_port }, "three"))
      assert.equal("A0:four", ask(connect{ host = "127.0.0.4", port = busy_port }, "four"))
      assert.equal("A0:open", ask(open, "open"))
      finish(open)
    end)
  end)
end)
