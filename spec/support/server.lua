-- Helpers for luaecho's behaviour specs: start the server in a fresh temp
-- dir, read its log, stop it, and talk to it as a client.
--
--   local server = require "server"
--   describe("topic", function()
--     after_each(server.cleanup)
--     it("echoes", function()
--       local srv = server.start{ config = 'listen = "127.0.0.1:0"' }
--       local sock = assert(server.connect(srv.host, srv.port))
--       assert.equal("hi", server.exchange(sock, "hi"))
--     end)
--   end)
--
-- Servers and client sockets are stopped and closed by server.cleanup(),
-- which every spec file runs after each test: busted keeps only one
-- finally() per test, so it cannot collect several.
--
-- Every file written for a run (config, handlers, arguments) may contain
-- @DIR@, replaced by the run's temp dir.  Nothing here waits without a
-- deadline, and nothing sleeps to wait for readiness: start() waits for the
-- "listening on" lines, wait_line() for a log line, clients for replies.
local lfs = require "lfs"
local proc = require "spec_proc"
local socket = require "socket"
local unix = require "socket.unix"

local M = {}

-- The repository root: two levels above this file, else the cwd.
local function repo_root()
  local cwd = assert(proc.getcwd())
  local here = debug.getinfo(1, "S").source:match("^@(.*)/spec/support/[^/]+$")
  if here == nil or here == "." or here == "" then return cwd end
  return here:sub(1, 1) == "/" and here or cwd .. "/" .. here:gsub("^%./", "")
end

M.REPO = repo_root()

-- Every deadline these helpers wait on, given or default, is multiplied by
-- LUAECHO_TIMEOUT_SCALE (default 1): ctest sets it for the sanitizer build,
-- whose server runs several times slower. Specs use scaled() for deadlines
-- of their own.
M.TIMEOUT_SCALE = tonumber(os.getenv("LUAECHO_TIMEOUT_SCALE")) or 1
function M.scaled(seconds)
  return seconds * M.TIMEOUT_SCALE
end

M.START_TIMEOUT = M.scaled(10) -- seconds for the listening lines to appear
M.STOP_TIMEOUT = M.scaled(10)  -- seconds for an exit after SIGTERM
M.IO_TIMEOUT = M.scaled(10)    -- default seconds for one client exchange

-- A sanitizer build (LUAECHO_SANITIZE) reports a memory error, a leak or
-- undefined behaviour on stderr and exits non-zero. Whatever a spec expects
-- of the exit status, such a report fails it: stop(), run() and run_cmd()
-- raise with the report when one shows in the output. ctest sets
-- LUAECHO_SANITIZED=1 for that build's tests.
M.SANITIZED = os.getenv("LUAECHO_SANITIZED") == "1"
local SANITIZER_REPORTS = {
  "ERROR: AddressSanitizer",
  "ERROR: LeakSanitizer",
  "SUMMARY: %a*Sanitizer",
  "%S+:%d+:%d+: runtime error: ",
}

-- Returns the lines from the first sanitizer report on, or nil if none.
local function sanitizer_report(lines)
  for i, line in ipairs(lines) do
    for _, pattern in ipairs(SANITIZER_REPORTS) do
      if line:find(pattern) then return table.concat(lines, "\n", i) end
    end
  end
  return nil
end

local function check_sanitizer(what, lines)
  local report = sanitizer_report(lines)
  if report then error(what .. " reported a sanitizer error:\n" .. report, 0) end
end

local function abspath(path)
  if path:sub(1, 1) == "/" then return path end
  return M.REPO .. "/" .. path
end

M.bin = abspath(os.getenv("LUAECHO_BIN") or "build/luaecho")

-- Returns the number of the first line of source that contains text (a
-- plain string), for messages that name a handler's line; raises when none.
function M.line_of(source, text)
  local n = 1
  for line in source:gmatch("([^\n]*)\n?") do
    if line:find(text, 1, true) then return n end
    n = n + 1
  end
  error("no line contains " .. text)
end

-- ---- cleanup ------------------------------------------------------------

local deferred = {} -- functions for cleanup(), in registration order

-- Registers fn to run at the next cleanup().
function M.defer(fn)
  deferred[#deferred + 1] = fn
end

-- Runs every deferred function, last registered first, even if some raise;
-- then raises with their messages, if any.
function M.cleanup()
  local errors = {}
  while #deferred > 0 do
    local ok, err = pcall(table.remove(deferred))
    if not ok then errors[#errors + 1] = tostring(err) end
  end
  if #errors > 0 then error(table.concat(errors, "\n"), 0) end
end

-- ---- files and temp dirs ------------------------------------------------

function M.write_file(path, data)
  local f = assert(io.open(path, "wb"))
  assert(f:write(data))
  assert(f:close())
end

-- Returns the contents of path, or nil and a message.
function M.read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local data = f:read("a")
  f:close()
  return data
end

-- Returns true if path names anything (a unix socket included; io.open
-- cannot open those).
function M.exists(path)
  return lfs.symlinkattributes(path, "mode") ~= nil
end

-- Returns n pseudo-random bytes from math.random, so a spec that seeds it
-- (math.randomseed(seed)) gets the same bytes again and can replay a
-- failure.  Eight bytes per call of math.random keep 16 MiB quick.
function M.random_bytes(n)
  local parts, words, whole = {}, {}, n // 8
  for i = 1, whole, 512 do
    local k = math.min(512, whole - i + 1)
    for j = 1, k do words[j] = math.random(0) end
    parts[#parts + 1] = ("<" .. ("i8"):rep(k)):pack(table.unpack(words, 1, k))
  end
  local tail = {}
  for j = 1, n % 8 do tail[j] = math.random(0, 255) end
  parts[#parts + 1] = string.char(table.unpack(tail))
  return table.concat(parts)
end

local function subst(s, dir)
  return (s:gsub("@DIR@", function() return dir end))
end

local function make_dir()
  return assert(proc.mkdtemp("/tmp/luaecho-spec."))
end

local function remove_dir(dir)
  assert(dir:match("^/tmp/luaecho%-spec%.[%w]+$"), "refusing to remove " .. dir)
  os.execute("rm -rf '" .. dir .. "'")
end

-- Writes opts.handlers, opts.files and opts.config into a new temp dir.
-- Returns dir, argv, spawn options.
local function prepare(opts)
  local dir = make_dir()
  for name, src in pairs(opts.handlers or {}) do M.write_file(dir .. "/" .. name, subst(src, dir)) end
  for name, src in pairs(opts.files or {}) do M.write_file(dir .. "/" .. name, subst(src, dir)) end
  local argv = { opts.bin or M.bin }
  for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = subst(a, dir) end
  if opts.config then
    local name = opts.config_name or "config.lua"
    M.write_file(dir .. "/" .. name, subst(opts.config, dir))
    if opts.config_arg ~= false then argv[#argv + 1] = dir .. "/" .. name end
  end
  -- The default cwd is the temp dir, so a ./config.lua in the repository
  -- never leaks into a run.
  local cwd = opts.cwd and subst(opts.cwd, dir) or dir
  local env
  for k, v in pairs(opts.env or {}) do
    env = env or {}
    env[k] = subst(v, dir)
  end
  return dir, argv, { cwd = cwd, env = env, stdin_null = true }
end

-- An environment (start's and run's `env`) in which luaecho's resolver
-- also reads the hosts file `hosts` of the run's dir (give it in `files`):
-- Debian's libnss-wrapper, preloaded. For names with several addresses,
-- without touching /etc/hosts.
function M.hosts_env()
  local env = { LD_PRELOAD = "libnss_wrapper.so", NSS_WRAPPER_HOSTS = "@DIR@/hosts" }
  if M.SANITIZED then
    -- ASan wants its runtime first among the libraries; the wrapper only
    -- stands in for libc's resolver, so the order does not matter here.
    local old = os.getenv("ASAN_OPTIONS")
    env.ASAN_OPTIONS = (old and old ~= "" and old .. ":" or "") .. "verify_asan_link_order=0"
  end
  return env
end

-- ---- addresses ----------------------------------------------------------

-- Parses a listening address as the log prints it: "127.0.0.1:80",
-- "[::1]:80", "unix:/p.sock".  Returns { host=, port= } or { path= }.
function M.parse_addr(text)
  local path = text:match("^unix:(.+)$")
  if path then return { path = path, text = text } end
  local host, port = text:match("^%[(.+)%]:(%d+)$")
  if not host then host, port = text:match("^([^:]+):(%d+)$") end
  assert(host, "cannot parse address '" .. text .. "'")
  return { host = host, port = math.tointeger(tonumber(port)), text = text }
end

-- The timestamp that starts every log record: "2026-11-21 06:12:00.123 ".
M.LOG_TIME = "^%d%d%d%d%-%d%d%-%d%d %d%d:%d%d:%d%d%.%d%d%d "

-- Returns a Lua pattern matching a whole log record of the given level whose
-- message matches msg (a pattern, anchored at both ends).
function M.record(level, msg)
  return M.LOG_TIME .. "%[" .. level .. "%] " .. msg .. "$"
end

-- Returns the level and message of a log record, or nil if line is not one.
function M.parse_log(line)
  return line:match(M.LOG_TIME .. "%[(%a+)%] (.*)$")
end

-- Escapes s for use as a literal inside a Lua pattern.
function M.literal(s)
  return (s:gsub("[%^%$%(%)%%%.%[%]%*%+%-%?]", "%%%0"))
end

-- ---- a running server ---------------------------------------------------

local Server = {}
Server.__index = Server

-- Starts luaecho.  opts:
--   config   = Lua source of config.lua (passed as the last argument unless
--              config_arg = false), handlers / files = { [name] = source },
--   args     = extra arguments before the config path,
--   expect   = number of "listening on" lines to wait for (default 1),
--   cwd, env = for the process (cwd defaults to the temp dir),
--   bin      = the luaecho to run (default M.bin, the build's).
-- Returns a Server, stopped by the next cleanup(); raises with the whole log
-- if the server does not report its listeners within START_TIMEOUT seconds.
function M.start(opts)
  opts = opts or {}
  local dir, argv, spawn_opts = prepare(opts)
  local p = assert(proc.spawn(argv, spawn_opts))
  local srv = setmetatable({ proc = p, dir = dir, addrs = {}, lines = {}, cursor = 0 }, Server)
  M.defer(function() srv:stop() end)
  local expect = opts.expect or 1
  local deadline = proc.now() + (opts.timeout and M.scaled(opts.timeout) or M.START_TIMEOUT)
  -- "running as pid" comes last, after every "listening on" line: the
  -- server is ready then, and the lines before it are all consumed.
  local running = false
  while #srv.addrs < expect or not running do
    local line, err = srv:_readline(deadline)
    if not line then
      p:close()
      remove_dir(dir)
      srv.code, srv.removed = -1, true -- nothing left for stop()
      error(("luaecho did not report %d listener(s) (%s)\nargv: %s\nlog:\n%s"):format(
        expect, err, table.concat(argv, " "), table.concat(srv.lines, "\n")), 2)
    end
    local addr = line:match(M.record("info", "listening on (.+)"))
    if addr then srv.addrs[#srv.addrs + 1] = M.parse_addr(addr) end
    running = running or line:find(M.record("info", "luaecho [%d.]+ running as pid .+")) ~= nil
  end
  srv.cursor = #srv.lines
  srv.host, srv.port, srv.path = srv.addrs[1].host, srv.addrs[1].port, srv.addrs[1].path
  srv.pid = p.pid
  return srv
end

-- Reads one log line before deadline, keeping it in self.lines.
function Server:_readline(deadline)
  local line, err = self.proc:readline(math.max(0, deadline - proc.now()))
  if line then self.lines[#self.lines + 1] = line end
  return line, err
end

-- Returns the first log line after the last one returned (or after the
-- listening lines) that matches the Lua pattern; or nil, "timeout" | "eof".
-- Lines passed over are consumed.
function Server:wait_line(pattern, timeout)
  local deadline = proc.now() + M.scaled(timeout or 5)
  while true do
    while self.cursor < #self.lines do
      self.cursor = self.cursor + 1
      local line = self.lines[self.cursor]
      if line:find(pattern) then return line end
    end
    local line, err = self:_readline(deadline)
    if not line then return nil, err end
  end
end

-- Returns the next log line, or nil, "timeout" | "eof".
function Server:next_line(timeout)
  return self:wait_line("", timeout)
end

-- Returns every log line read so far (a copy).
function Server:log()
  return table.move(self.lines, 1, #self.lines, 1, {})
end

-- Returns the whole log read so far as one string, for failure messages.
function Server:log_text()
  return table.concat(self.lines, "\n")
end

function Server:file(name)
  return self.dir .. "/" .. name
end

-- Sends a signal ("TERM", "INT", ...).
function Server:signal(name)
  return self.proc:kill(name)
end

-- Stops the server process (SIGSTOP) and waits, bounded, until the kernel
-- shows it stopped: what a client does next happens before the server can
-- react, while the kernel still completes connections and buffers their
-- bytes.  resume(), or else the next cleanup(), continues it.
function Server:pause(timeout)
  self.proc:kill("STOP")
  M.defer(function() self:resume() end)
  local deadline = proc.now() + (timeout or 5)
  repeat
    local stat = M.read_file("/proc/" .. self.pid .. "/stat")
    if stat and stat:match("^%d+ %b() (%a)") == "T" then return end
    proc.sleep(0.005)
  until proc.now() > deadline
  error(("luaecho did not stop within %gs"):format(timeout or 5), 2)
end

-- Continues a server stopped by pause().
function Server:resume()
  if not self.code then self.proc:kill("CONT") end
end

-- Waits up to timeout seconds for the server to exit, then reads the rest of
-- its log.  Returns the exit code (128+signo and the signal name if killed),
-- or nil, "timeout".
function Server:wait_exit(timeout)
  if self.code then return self.code, self.signame end
  local code, signame = self.proc:wait(timeout and M.scaled(timeout) or M.STOP_TIMEOUT)
  if not code then return nil, signame end
  self.code, self.signame = code, signame
  local deadline = proc.now() + 2
  while self:_readline(deadline) do end
  return code, signame
end

-- Sends SIGTERM unless the server has exited, waits for the exit and removes
-- the temp dir.  Idempotent, so a spec may stop() a server that cleanup()
-- stops again.  Returns as wait_exit; raises (after killing it) if the server
-- does not exit within timeout, and (once) if its log holds a sanitizer
-- report.
function Server:stop(timeout)
  if not self.code then
    self.proc:kill("TERM")
    local code = self:wait_exit(timeout)
    if not code then
      self.proc:kill("KILL")
      self.proc:wait(5)
      local deadline = proc.now() + 2
      while self:_readline(deadline) do end
      self.proc:close()
      if not self.removed then remove_dir(self.dir) end
      self.removed = true
      error("luaecho did not exit after SIGTERM; log:\n" .. self:log_text(), 2)
    end
  end
  if not self.removed then
    remove_dir(self.dir)
    self.removed = true
  end
  if not self.sanitizer_checked then
    self.sanitizer_checked = true
    check_sanitizer("luaecho (pid " .. tostring(self.pid) .. ")", self.lines)
  end
  return self.code, self.signame
end

-- ---- commands that exit -------------------------------------------------

-- Runs argv and collects its output.  opts: cwd, env, timeout (default 10).
-- Returns exit code, lines, signal name.  Raises if it does not exit in time
-- or its output holds a sanitizer report.
function M.run_cmd(argv, opts)
  opts = opts or {}
  local p = assert(proc.spawn(argv, { cwd = opts.cwd, env = opts.env, stdin_null = true }))
  local deadline = proc.now() + M.scaled(opts.timeout or 10)
  local lines = {}
  while true do
    local line, err = p:readline(math.max(0, deadline - proc.now()))
    if not line then
      if err == "eof" then break end
      p:close()
      error(("%s did not exit within %gs; output:\n%s"):format(
        table.concat(argv, " "), opts.timeout or 10, table.concat(lines, "\n")), 2)
    end
    lines[#lines + 1] = line
  end
  local code, signame = p:wait(math.max(0, deadline - proc.now()))
  if not code then
    p:close()
    error(table.concat(argv, " ") .. " closed its output but did not exit", 2)
  end
  check_sanitizer(table.concat(argv, " "), lines)
  return code, lines, signame
end

-- Reads the sanitizer logs a run left at prefix.<pid> (see run()) as lines.
local function read_sanitizer_logs(dir, prefix)
  local lines = {}
  for name in lfs.dir(dir) do
    if name:sub(1, #prefix + 1) == prefix .. "." then
      for line in assert(M.read_file(dir .. "/" .. name)):gmatch("[^\n]+") do
        lines[#lines + 1] = line
      end
    end
  end
  return lines
end

-- Runs luaecho as a command expected to exit; takes start()'s options, plus
-- stream = "stdout" | "stderr" to keep only that stream, and timeout.
-- Returns exit code, output lines, the temp dir's path (already removed, but
-- messages name it), signal name.
function M.run(opts)
  opts = opts or {}
  local dir, argv, spawn_opts = prepare(opts)
  if opts.stream then
    local drop = assert(({ stdout = "2>/dev/null", stderr = ">/dev/null" })[opts.stream])
    table.insert(argv, 1, "sh")
    table.insert(argv, 2, "-c")
    table.insert(argv, 3, 'exec "$0" "$@" ' .. drop)
    -- argv[4] is the binary: sh passes it as $0
    if M.SANITIZED then
      -- stderr is dropped: sanitizer reports go to files in the temp dir.
      local env = {}
      for k, v in pairs(spawn_opts.env or {}) do env[k] = v end
      for _, name in ipairs{ "ASAN_OPTIONS", "UBSAN_OPTIONS" } do
        local old = env[name] or os.getenv(name)
        env[name] = (old and old ~= "" and old .. ":" or "") .. "log_path=" .. dir .. "/sanitizer"
      end
      spawn_opts.env = env
    end
  end
  spawn_opts.timeout = opts.timeout
  local ok, code, lines, signame = pcall(M.run_cmd, argv, spawn_opts)
  local logged = ok and opts.stream and M.SANITIZED and read_sanitizer_logs(dir, "sanitizer")
  remove_dir(dir)
  if not ok then error(code, 2) end
  if logged then check_sanitizer(table.concat(argv, " "), logged) end
  return code, lines, dir, signame
end

-- Runs a shell script with a deadline.  Returns exit code, output lines.
function M.sh(script, timeout)
  return M.run_cmd({ "sh", "-c", script }, { timeout = timeout })
end

-- ---- clients ------------------------------------------------------------

-- Connects sock (to the address given as LuaSocket's connect takes it)
-- with a timeout.  Returns it, closed by the next cleanup(), or nil and
-- LuaSocket's message ("connection refused").
local function connected(sock, timeout, ...)
  sock:settimeout(timeout and M.scaled(timeout) or M.IO_TIMEOUT)
  local ok, err = sock:connect(...)
  if not ok then
    sock:close()
    return nil, err
  end
  M.defer(function() sock:close() end)
  return sock
end

-- Returns a loopback TCP port nobody listens on: one the kernel just gave a
-- socket that is closed again.
function M.closed_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return math.tointeger(tonumber(port))
end

-- Connects to host:port (or an address table from srv.addrs, unix ones
-- included).  Returns a LuaSocket client with a timeout, closed by the next
-- cleanup(), or nil and LuaSocket's message ("connection refused").
function M.connect(host, port, timeout)
  if type(host) == "table" then
    if host.path then return M.connect_unix(host.path, timeout) end
    host, port = host.host, host.port
  end
  local sock = host:find(":", 1, true) and socket.tcp6() or socket.tcp()
  return connected(sock, timeout, host, port)
end

function M.connect_unix(path, timeout)
  return connected(unix.stream(), timeout, path)
end

local SEND_CHUNK = 256 * 1024
local RECV_CHUNK = 64 * 1024

-- Sends data and receives at the same time (non-blocking, socket.select), so
-- a large payload cannot deadlock against the server's bounded buffers.
-- opts (or a number, the timeout):
--   timeout     seconds for the whole exchange (default IO_TIMEOUT)
--   expect      bytes to receive before returning (default #data)
--   until_close receive until the peer closes instead
--   half_close  shutdown("send") once everything is sent
--   piece       function returning how many bytes the next send may take
--               (default 256 KiB)
--   after_send  function called after each send (to pace the sender)
-- Returns the bytes received, and nil when `expect` bytes arrived, or
-- "closed" | "timeout" | LuaSocket's error message otherwise.
function M.exchange(sock, data, opts)
  if type(opts) ~= "table" then opts = { timeout = opts } end
  local deadline = proc.now() + (opts.timeout and M.scaled(opts.timeout) or M.IO_TIMEOUT)
  local expect = opts.until_close and math.huge or (opts.expect or #data)
  local sent, got, chunks, err = 0, 0, {}, nil
  local shut = false
  sock:settimeout(0)
  while got < expect do
    if sent == #data and opts.half_close and not shut then
      sock:shutdown("send")
      shut = true
    end
    local left = deadline - proc.now()
    if left <= 0 then err = "timeout"; break end
    local readable, writable = socket.select({ sock }, sent < #data and { sock } or {}, left)
    if readable[sock] then
      local piece, rerr, partial = sock:receive(math.min(RECV_CHUNK, expect - got))
      piece = piece or partial
      if piece and #piece > 0 then
        chunks[#chunks + 1] = piece
        got = got + #piece
      end
      if rerr and rerr ~= "timeout" then err = rerr; break end
    end
    if writable[sock] then
      local size = opts.piece and opts.piece() or SEND_CHUNK
      local last, serr, partial_last = sock:send(data, sent + 1, math.min(#data, sent + size))
      sent = last or partial_last
      if serr and serr ~= "timeout" then err = serr; break end
      if opts.after_send then opts.after_send() end
    end
  end
  sock:settimeout(M.IO_TIMEOUT)
  return table.concat(chunks), err
end

-- Receives until the peer closes.  Returns the bytes and "closed", or the
-- bytes so far and "timeout" | an error message.
function M.read_all_until_close(sock, timeout)
  return M.exchange(sock, "", { timeout = timeout, until_close = true })
end

-- Receives exactly n bytes.  Returns them, or the bytes so far and an error.
function M.recv_exactly(sock, n, timeout)
  return M.exchange(sock, "", { timeout = timeout, expect = n })
end

-- Receives one "\n"-terminated line (without it) within timeout seconds
-- (default IO_TIMEOUT); raises if none arrives.
function M.receive_line(sock, timeout)
  sock:settimeout(timeout or M.IO_TIMEOUT)
  local line, err = sock:receive("*l")
  sock:settimeout(M.IO_TIMEOUT)
  return assert(line, err)
end

-- Compares two byte strings without printing megabytes on failure.  Returns
-- true, or false and a short description of the first difference.
function M.same_bytes(expected, actual)
  if expected == actual then return true end
  local n = math.min(#expected, #actual)
  local i = 1
  while i <= n and expected:byte(i) == actual:byte(i) do i = i + 1 end
  return false, ("expected %d bytes, got %d; first difference at byte %d"):format(#expected, #actual, i)
end

-- Fails, with same_bytes' description, unless actual equals expected.
function M.assert_same_bytes(expected, actual)
  assert(M.same_bytes(expected, actual))
end

-- ---- observing handlers -------------------------------------------------

-- Lua source defining show(...) for handler files: it formats its values as
-- a comma-separated line, strings quoted with %q (nil,"timeout","ab").
M.SHOW = [[
local function show(...)
  local vals, out = table.pack(...), {}
  for i = 1, vals.n do
    local v = vals[i]
    out[i] = type(v) == "string" and string.format("%q", v) or tostring(v)
  end
  return table.concat(out, ",")
end
]]

-- Lua source defining report(name, ...) for handler files: it serialises its
-- values into @DIR@/report.<name> (atomically, via rename), so a spec can
-- see what a handler saw on a connection it can no longer talk over.
M.REPORT = [[
local function report(name, ...)
  local vals = table.pack(...)
  local out = { "return { n = " .. vals.n }
  for i = 1, vals.n do
    local v = vals[i]
    out[#out + 1] = ", [" .. i .. "] = " ..
      (type(v) == "string" and string.format("%q", v) or tostring(v))
  end
  out[#out + 1] = " }"
  local path = "@DIR@/report." .. name
  local f = assert(io.open(path .. ".tmp", "w"))
  f:write(table.concat(out))
  f:close()
  assert(os.rename(path .. ".tmp", path))
end
]]

-- Waits (bounded) for a handler's report(name, ...) and returns its values
-- packed ({ n = ..., ... }), or nil, "timeout".
function Server:report(name, timeout)
  local path = self:file("report." .. name)
  local deadline = proc.now() + M.scaled(timeout or 5)
  repeat
    local src = M.read_file(path)
    if src then return assert(load(src, "=" .. path))() end
    proc.sleep(0.01)
  until proc.now() > deadline
  return nil, "timeout"
end

return M
