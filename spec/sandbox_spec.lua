-- The sandbox: what ends the process or blocks the event loop raises a named
-- error in handlers, their modules, reloaded handlers and config files;
-- sandbox = false gives handlers the full standard library back.
local server = require "server"

local literal, record = server.literal, server.record

local HANDLER_HINT = "(set sandbox = false in the config to allow it)"
local CONFIG_HINT = "(a config file always runs in the sandbox)"

-- Every removed call: its name in the message, a call, and what the call
-- gives with sandbox = false (its results, tostring'd and joined by ",").
-- The specs run luaecho with standard input on /dev/null, so reading it
-- gives nil at once instead of blocking.
local CASES = {
  { "os.exit", "os.exit(3)" }, -- with sandbox = false: its own spec below
  { "os.execute", 'os.execute("true")', "true,exit,0" },
  { "io.popen", 'io.popen("echo hi"):read("l")', "hi" },
  { "package.loadlib", 'select(3, package.loadlib("/nonexistent/x.so", "f"))', "open" },
  { "debug.getinfo", 'debug.getinfo(1, "S").what', "Lua" },
  { "debug.sethook", "debug.sethook()", "" },
  { "debug.getregistry", "type(debug.getregistry())", "table" },
  { "debug.getmetatable", 'type(debug.getmetatable(""))', "table" },
  { "debug.setmetatable", 'type(debug.setmetatable(io.stdout, getmetatable(io.stdout)))', "userdata" },
  { "debug.getlocal", "debug.getlocal(function(a) end, 1)", "a" },
  { "debug.getupvalue", "(debug.getupvalue(function() return calls end, 1))", "calls" },
  { "io.read", "io.read()", "nil" },
  { "io.lines", "io.lines()()", "" },
  { "io.stdin:read", "io.stdin:read()", "nil" },
  { "io.stdin:lines", "io.input():lines()()", "" },
  { "loadfile", "type(loadfile())", "function" },
  { "dofile", 'select("#", dofile())', "0" },
}

-- The message raised for CASES[i] at file:line.
local function message(case, where, hint)
  local name = case[1]
  local what = (name:find("^io%.") and name ~= "io.popen" or name == "loadfile" or name == "dofile")
    and name .. ": reading standard input is disabled by the sandbox "
    or name .. " is disabled by the sandbox "
  return where .. ": " .. what .. (hint or HANDLER_HINT)
end

-- A handler that runs CASES[n] for each line "n" it receives and replies
-- "ok <results>" or "error <message>"; "m n" requires module m<n> instead.
-- Case n's call is on line n + 1.
local function case_handler()
  local lines = { "local calls = {}" }
  for i, case in ipairs(CASES) do
    lines[#lines + 1] = ("calls[%d] = function() local r = table.pack(%s) return r end"):format(i, case[2])
  end
  lines[#lines + 1] = [[
local function run(fn)
  local ok, r = pcall(fn)
  if not ok then return "error " .. tostring(r) end
  local out = {}
  for i = 1, r.n do out[i] = tostring(r[i]) end
  return "ok " .. table.concat(out, ",")
end
return function(conn)
  conn:setopts{ packet = "line" }
  local line = conn:recv()
  while line do
    line = line:gsub("\n$", "")
    local m = line:match("^m (%d+)$")
    local n = tonumber(line)
    local reply
    if m then
      reply = run(function() return { n = 1, require("m" .. m) } end)
    elseif n then
      reply = run(calls[n])
    else
      reply = "echo " .. line
    end
    conn:send(reply .. "\n")
    line = conn:recv()
  end
end
]]
  return table.concat(lines, "\n")
end

-- Modules m1.. mN, each making its case's call on line 1.
local function case_modules(files)
  for i, case in ipairs(CASES) do files["m" .. i .. ".lua"] = "return { " .. case[2] .. " }\n" end
  return files
end

-- Starts luaecho running @DIR@/h.lua, given in files, with extra config.
local function start_handler(files, config)
  return server.start{
    config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\n' .. (config or ""),
    files = files,
  }
end

local function start_cases(config)
  return start_handler(case_modules{ ["h.lua"] = case_handler() }, config)
end

-- Saves source as the running server's config.lua, sends SIGHUP and waits
-- for the rejection of the reload with the message want(config path).
local function assert_config_rejected(srv, source, want)
  local config = srv:file("config.lua")
  server.write_file(config, source)
  assert(srv:signal("HUP"))
  local line = ("config reload failed: %s; keeping the running configuration"):format(want(config))
  assert(srv:wait_line(record("error", literal(line)), 5), "no line '" .. line .. "'; log:\n" .. srv:log_text())
end

local function ask(sock, line)
  assert(sock:send(line .. "\n"))
  return assert(sock:receive("*l"))
end

describe("sandbox", function()
  after_each(server.cleanup)

  describe("in a handler (sandbox = true by default)", function()
    it("makes every removed call raise an error naming it and the way out", function()
      local srv = start_cases()
      local sock = assert(server.connect(srv.host, srv.port))
      for i, case in ipairs(CASES) do
        assert.equal("error " .. message(case, srv:file("h.lua:" .. (i + 1))), ask(sock, tostring(i)))
      end
    end)

    it("raises in a module the handler requires, naming the module's line", function()
      local srv = start_cases()
      local sock = assert(server.connect(srv.host, srv.port))
      for i, case in ipairs(CASES) do
        assert.equal("error " .. message(case, srv:file("m" .. i .. ".lua:1")), ask(sock, "m " .. i))
      end
    end)

    it("keeps the server serving other clients, and the caller's own connection", function()
      local srv = start_cases()
      local other = assert(server.connect(srv.host, srv.port))
      assert.equal("echo before", ask(other, "before"))
      local sock = assert(server.connect(srv.host, srv.port))
      assert.matches("^error ", ask(sock, "1")) -- os.exit
      assert.equal("echo after", ask(sock, "after"))
      assert.equal("echo still here", ask(other, "still here"))
      assert.same({ nil, "timeout" }, { srv:wait_exit(0.1) })
    end)

    it("raises out of a handler that does not catch it: the log names the call, the server lives", function()
      local srv = start_handler{ ["h.lua"] = 'return function(conn)\n  os.exit(3)\nend\n' }
      local sock = assert(server.connect(srv.host, srv.port))
      assert.same({ "", "closed" }, { server.read_all_until_close(sock, 5) })
      assert(srv:wait_line(record("error", "conn %d+ .-: handler error: "
        .. literal(message(CASES[1], srv:file("h.lua:2")))), 5), srv:log_text())
      local again = assert(server.connect(srv.host, srv.port))
      assert.same({ "", "closed" }, { server.read_all_until_close(again, 5) })
      assert.same({ nil, "timeout" }, { srv:wait_exit(0.1) })
    end)
  end)

  describe("in a reloaded handler", function()
    it("rejects each version that makes a removed call; version 1 keeps serving", function()
      local srv = start_handler({ ["h.lua"] = 'return function(conn) conn:send("v1") end\n' }, "watch = false\n")
      local h = srv:file("h.lua")
      for _, case in ipairs(CASES) do
        server.write_file(h, "local r = " .. case[2] .. '\nreturn function(conn) conn:send("v2") end\n')
        assert(srv:signal("HUP"))
        local want = ("reload of %s failed: %s; version 1 keeps serving"):format(h, message(case, h .. ":1"))
        assert(srv:wait_line(record("error", literal(want)), 5), "no line '" .. want .. "'; log:\n" .. srv:log_text())
        local sock = assert(server.connect(srv.host, srv.port))
        assert.same({ "v1", "closed" }, { server.read_all_until_close(sock, 5) })
      end
    end)
  end)

  describe("in config.lua", function()
    it("makes every removed call raise, even with sandbox = false", function()
      for _, case in ipairs(CASES) do
        local code, lines, dir = server.run{
          config = "sandbox = false\nlocal r = " .. case[2] .. "\n",
          args = { "--check" }, stream = "stderr",
        }
        assert.same({ 1, { "luaecho: " .. message(case, dir .. "/config.lua:2", CONFIG_HINT) } }, { code, lines })
      end
    end)

    it("rejects a config reload on SIGHUP that calls os.exit, and keeps serving", function()
      local srv = server.start{ config = 'listen = "127.0.0.1:0"\n' }
      assert_config_rejected(srv, 'listen = "127.0.0.1:0"\nos.exit(3)\n', function(config)
        return message(CASES[1], config .. ":2", CONFIG_HINT)
      end)
      local sock = assert(server.connect(srv.host, srv.port))
      assert.equal("still echoing", server.exchange(sock, "still echoing"))
    end)
  end)

  describe("sandbox = false", function()
    it("gives handlers each removed call back", function()
      local srv = start_cases("sandbox = false\n")
      local sock = assert(server.connect(srv.host, srv.port))
      for i = 2, #CASES do
        assert.equal("ok " .. CASES[i][3], ask(sock, tostring(i)), CASES[i][1])
      end
    end)

    it("lets os.exit end the server with its status", function()
      local srv = start_cases("sandbox = false\n")
      local sock = assert(server.connect(srv.host, srv.port))
      assert(sock:send("1\n"))
      assert.equal(3, srv:wait_exit(5))
    end)

    it("cannot be changed by a config reload", function()
      local srv = server.start{ config = 'listen = "127.0.0.1:0"\n' }
      assert_config_rejected(srv, 'listen = "127.0.0.1:0"\nsandbox = false\n', function(config)
        return config .. ": key 'sandbox': changing it needs a restart (the server runs with sandbox = true)"
      end)
      local sock = assert(server.connect(srv.host, srv.port))
      assert.equal("still echoing", server.exchange(sock, "still echoing"))
    end)
  end)

  describe("binary chunks", function()
    local BINARY = string.dump(load('return function(conn) conn:send("binary") end', "=bin"))
    local function refused(path, hint)
      return path .. ": binary (precompiled) chunks are disabled by the sandbox " .. (hint or HANDLER_HINT)
    end

    it("refuses a binary handler file, naming it", function()
      local code, lines, dir = server.run{
        config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\n',
        files = { ["h.lua"] = BINARY }, stream = "stderr",
      }
      assert.same({ 1, { "luaecho: " .. refused(dir .. "/h.lua") } }, { code, lines })
    end)

    it("runs a binary handler file with sandbox = false", function()
      local srv = start_handler({ ["h.lua"] = BINARY }, "sandbox = false\n")
      local sock = assert(server.connect(srv.host, srv.port))
      assert.same({ "binary", "closed" }, { server.read_all_until_close(sock, 5) })
    end)

    it("refuses a binary module, load() and loadfile() of binary code, naming the file", function()
      local srv = start_handler{
        ["b.lua"] = BINARY,
        ["h.lua"] = [[
return function(conn)
  local _, err = pcall(require, "b")
  conn:send(err .. "\n")
  conn:send(select(2, load(string.dump(function() end))) .. "\n")
  conn:send(select(2, loadfile("@DIR@/b.lua")) .. "\n")
  conn:send(select(2, pcall(dofile, "@DIR@/b.lua")) .. "\n")
end
]],
      }
      local sock = assert(server.connect(srv.host, srv.port))
      local b = srv:file("b.lua")
      assert.same({ table.concat({
        "error loading module 'b': " .. refused(b),
        refused("load"),
        refused(b),
        refused(b),
        "" }, "\n"), "closed" }, { server.read_all_until_close(sock, 5) })
    end)

    it("refuses a binary config file, naming it", function()
      local code, lines, dir = server.run{ config = string.dump(load("listen = '127.0.0.1:0'")), stream = "stderr" }
      assert.same({ 1, { "luaecho: " .. refused(dir .. "/config.lua", CONFIG_HINT) } }, { code, lines })
    end)
  end)

  describe("C modules", function()
    it("are refused by require, naming the library file", function()
      local srv = start_handler{
        ["cmod.so"] = "not really a library",
        ["h.lua"] = [[
package.cpath = "@DIR@/?.so"
return function(conn)
  conn:send(select(2, pcall(require, "cmod")) .. "\n")
  conn:send(select(2, pcall(require, "cmod.sub")) .. "\n")
end
]],
      }
      local sock = assert(server.connect(srv.host, srv.port))
      local lib = srv:file("cmod.so")
      assert.same({ ("module 'cmod' is a C library (%s): loading binary code is disabled by the sandbox %s\n"
        .. "module 'cmod.sub' is a C library (%s): loading binary code is disabled by the sandbox %s\n")
        :format(lib, HANDLER_HINT, lib, HANDLER_HINT), "closed" }, { server.read_all_until_close(sock, 5) })
    end)
  end)
end)
