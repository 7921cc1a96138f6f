-- The command line: startup errors (message and exit code), the options,
-- and where the config and handlers are looked up.
local server = require "server"
local socket = require "socket"

-- Runs luaecho expecting it to exit; returns exit code, stderr lines, dir.
local function run_stderr(opts)
  opts.stream = "stderr"
  return server.run(opts)
end

-- Runs luaecho expecting it to exit; returns exit code, stdout lines, dir.
local function run_stdout(opts)
  opts.stream = "stdout"
  return server.run(opts)
end

-- Checks that luaecho refuses to start with exactly one stderr line,
-- message(dir), and exit status 1; also with --check.
local function assert_startup_error(opts, message)
  for _, check in ipairs({ false, true }) do
    local run = {}
    for k, v in pairs(opts) do run[k] = v end
    run.args = check and { "--check", table.unpack(opts.args or {}) } or opts.args
    local code, lines, dir = run_stderr(run)
    assert.same({ 1, { message(dir) } }, { code, lines })
  end
end

-- Returns Lua's own message for loading source as the file at path.
local function lua_load_error(source, path)
  local chunk, err = load(source, "@" .. path)
  if chunk then
    local ok, rerr = pcall(chunk)
    assert(not ok, "source loads and runs without error")
    return rerr
  end
  return err
end

-- Connects to addr and returns everything the handler sends before closing.
local function reply_from(addr)
  local sock = assert(server.connect(addr))
  local data, err = server.read_all_until_close(sock, 10)
  sock:close()
  assert.equal("closed", err)
  return data
end

-- A handler that sends name and closes.
local function says(name)
  return ("return function(conn) conn:send(%q) end\n"):format(name)
end

describe("command line", function()
  after_each(server.cleanup)

  describe("config errors", function()
    it("reports a syntax error with Lua's message", function()
      local source = 'listen = "127.0.0.1:0"\nbacklog = = 3\n'
      assert_startup_error({ config = source }, function(dir)
        return "luaecho: " .. lua_load_error(source, dir .. "/config.lua")
      end)
    end)

    it("reports a runtime error with Lua's message", function()
      local source = 'listen = "127.0.0.1:0"\nerror("no config today")\n'
      assert_startup_error({ config = source }, function(dir)
        return "luaecho: " .. dir .. "/config.lua:2: no config today"
      end)
    end)

    it("reports a missing config file", function()
      assert_startup_error({ args = { "@DIR@/nope.lua" } }, function(dir)
        return "luaecho: cannot open " .. dir .. "/nope.lua: No such file or directory"
      end)
    end)

    it("reports an unknown key", function()
      assert_startup_error({ config = 'lisen = "127.0.0.1:0"\n' }, function(dir)
        return "luaecho: " .. dir .. "/config.lua: unknown key 'lisen'"
      end)
    end)

    it("reports a value of the wrong type", function()
      assert_startup_error({ config = 'listen = "127.0.0.1:0"\nbacklog = "lots"\n' }, function(dir)
        return "luaecho: " .. dir .. "/config.lua: key 'backlog': expected integer, got string"
      end)
    end)

    it("names a nested listener key", function()
      local source = 'listen = { "127.0.0.1:0", { address = "127.0.0.1:0", backlog = true } }\n'
      assert_startup_error({ config = source }, function(dir)
        return "luaecho: " .. dir .. "/config.lua: key 'listen[2].backlog': expected integer, got boolean"
      end)
    end)

    for _, value in ipairs({ "0", "65536" }) do
      it("reports backlog = " .. value .. " out of range", function()
        assert_startup_error({ config = 'listen = "127.0.0.1:0"\nbacklog = ' .. value .. "\n" }, function(dir)
          return "luaecho: " .. dir .. "/config.lua: key 'backlog': expected integer in 1..65535, got " .. value
        end)
      end)
    end

    it("reports a sandbox key that is not a boolean", function()
      assert_startup_error({ config = 'listen = "127.0.0.1:0"\nsandbox = "no"\n' }, function(dir)
        return "luaecho: " .. dir .. "/config.lua: key 'sandbox': expected boolean, got string"
      end)
    end)

    it("puts a multi-line error on one line naming the file", function()
      assert_startup_error({ config = 'error("first\\n\\tsecond", 0)\n' }, function(dir)
        return "luaecho: " .. dir .. "/config.lua: first second"
      end)
    end)

    it("escapes the other control bytes of an error, which could rewrite the line on a terminal", function()
      assert_startup_error({ config = 'error("a\\27[2Jb\\bc\\0d", 0)\n' }, function(dir)
        return "luaecho: " .. dir .. "/config.lua: a\\x1b[2Jb\\x08c"
      end)
    end)

    it("reports an invalid address", function()
      assert_startup_error({ config = 'listen = { "foo" }\n' }, function(dir)
        return "luaecho: " .. dir
          .. "/config.lua: key 'listen[1]': invalid address 'foo': expected host:port, [ipv6]:port or unix:/path"
      end)
    end)
  end)

  describe("handler errors", function()
    local function with_handler(source)
      return {
        config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\n',
        handlers = { ["h.lua"] = source },
      }
    end

    it("reports a syntax error with Lua's message", function()
      local source = "return function(conn)\n  local x = + 1\nend\n"
      assert_startup_error(with_handler(source), function(dir)
        return "luaecho: " .. lua_load_error(source, dir .. "/h.lua")
      end)
    end)

    it("reports an error raised while loading", function()
      assert_startup_error(with_handler('error("oops")\n'), function(dir)
        return "luaecho: " .. dir .. "/h.lua:1: oops"
      end)
    end)

    it("reports a handler file that returns nothing", function()
      assert_startup_error(with_handler("local x = 1\n"), function(dir)
        return "luaecho: " .. dir .. "/h.lua: handler must return a function, got nil"
      end)
    end)

    it("reports a handler file that returns a number", function()
      assert_startup_error(with_handler("return 42\n"), function(dir)
        return "luaecho: " .. dir .. "/h.lua: handler must return a function, got number"
      end)
    end)

    it("reports a missing handler file", function()
      local opts = { config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/nope.lua"\n' }
      assert_startup_error(opts, function(dir)
        return "luaecho: cannot open " .. dir .. "/nope.lua: No such file or directory"
      end)
    end)

    it("names the file of an error raised without a position", function()
      assert_startup_error(with_handler('error("oops", 0)\n'), function(dir)
        return "luaecho: " .. dir .. "/h.lua: oops"
      end)
    end)

    describe("in a module it requires", function()
      local function with_module(source)
        local opts = with_handler('local helper = require "helper"\nreturn function() end\n')
        opts.handlers["helper.lua"] = source
        return opts
      end

      it("reports a syntax error on one line, naming the require and the module's line", function()
        local source = "local x = = 1\n"
        assert_startup_error(with_module(source), function(dir)
          return ("luaecho: %s/h.lua:1: error loading module 'helper': %s"):format(dir,
            lua_load_error(source, dir .. "/helper.lua"))
        end)
      end)

      it("reports an error the module raises, naming both files", function()
        assert_startup_error(with_module('error("broken helper")\n'), function(dir)
          return ("luaecho: %s/h.lua: %s/helper.lua:1: broken helper"):format(dir, dir)
        end)
      end)

      it("reports a missing module on one line", function()
        assert_startup_error(with_handler('require "nosuch"\n'), function(dir)
          return "luaecho: " .. dir
            .. "/h.lua:1: module 'nosuch' not found (searched package.preload, package.path and package.cpath)"
        end)
      end)
    end)

    it("reports an error in a listener's own handler", function()
      local opts = {
        config = 'listen = { { address = "127.0.0.1:0", handler = "@DIR@/h.lua" } }\n',
        handlers = { ["h.lua"] = "return 'not a function'\n" },
      }
      assert_startup_error(opts, function(dir)
        return "luaecho: " .. dir .. "/h.lua: handler must return a function, got string"
      end)
    end)
  end)

  describe("bind errors", function()
    it("reports a unix socket in a directory that does not exist", function()
      assert_startup_error({ args = { "--listen", "unix:@DIR@/nodir/s.sock" } }, function(dir)
        return ("luaecho: cannot listen on unix:%s/nodir/s.sock: directory %s/nodir does not exist"):format(dir, dir)
      end)
    end)

    it("reports a host name that does not resolve, also with --check", function()
      for _, args in ipairs({ { "--listen", "nosuch.invalid:7000" }, { "--check", "--listen", "nosuch.invalid:7000" } }) do
        local code, lines = run_stderr{ args = args }
        assert.equal(1, code)
        assert.equal(1, #lines, table.concat(lines, "\n"))
        -- The resolver's own reason (no such name, or no DNS at all) ends it.
        assert.matches("^luaecho: cannot listen on nosuch%.invalid:7000: cannot resolve host 'nosuch%.invalid': .+$",
          lines[1])
      end
    end)

    it("reports an address in use with exit status 1", function()
      local srv = server.start{ args = { "--listen", "127.0.0.1:0" } }
      local code, lines = run_stderr{ args = { "--listen", "127.0.0.1:" .. srv.port } }
      assert.same({ 1, { ("luaecho: cannot listen on 127.0.0.1:%d: address already in use"):format(srv.port) } },
        { code, lines })
    end)
  end)

  describe("usage errors", function()
    it("reports an unknown option on stderr with exit status 2", function()
      local code, lines = run_stderr{ args = { "--bogus" } }
      assert.same({ 2, { "luaecho: unknown option '--bogus'", "Try 'luaecho --help'." } }, { code, lines })
    end)

    it("reports an unknown log level with the valid ones and exit status 2", function()
      for _, args in ipairs({ { "--log-level", "loud" }, { "--check", "--log-level=loud" } }) do
        local code, lines = run_stderr{ args = args }
        assert.same({ 2, { "luaecho: --log-level: expected debug, info, warn or error, got 'loud'",
          "Try 'luaecho --help'." } }, { code, lines })
      end
    end)
  end)

  describe("--version", function()
    it("prints the versions on stdout and exits 0", function()
      local code, lines = run_stdout{ args = { "--version" } }
      assert.equal(0, code)
      assert.equal(1, #lines)
      assert.matches("^luaecho %d+%.%d+%.%d+ %(Lua 5%.4%.%d+, libuv %d+%.%d+%.%d+%)$", lines[1])
    end)

    it("prints nothing on stderr", function()
      local code, lines = run_stderr{ args = { "--version" } }
      assert.same({ 0, {} }, { code, lines })
    end)
  end)

  describe("--help", function()
    it("prints usage naming every option on stdout and exits 0", function()
      local code, lines = run_stdout{ args = { "--help" } }
      assert.equal(0, code)
      local text = table.concat(lines, "\n")
      for _, option in ipairs({ "--listen", "--handler", "--check", "--version", "--help", "--log-level" }) do
        assert.matches(server.literal(option), text)
      end
    end)

    it("prints nothing on stderr", function()
      local code, lines = run_stderr{ args = { "--help" } }
      assert.same({ 0, {} }, { code, lines })
    end)
  end)

  describe("--check", function()
    it("prints one line per listener with its handler and exits 0", function()
      local code, lines, dir = run_stdout{
        config = [[
          listen = {
            "127.0.0.1:7000",
            { address = "[::1]:7001", handler = "@DIR@/h.lua" },
            "unix:@DIR@/c.sock",
          }
        ]],
        handlers = { ["h.lua"] = says("h") },
        args = { "--check" },
      }
      assert.same({ 0, {
        "would listen on 127.0.0.1:7000 with handler echo.lua (built-in)",
        "would listen on [::1]:7001 with handler " .. dir .. "/h.lua",
        "would listen on unix:" .. dir .. "/c.sock with handler echo.lua (built-in)",
      } }, { code, lines })
    end)

    it("does not listen: it succeeds on a port another socket holds", function()
      local holder = assert(socket.bind("127.0.0.1", 0))
      server.defer(function() holder:close() end)
      local _, port = holder:getsockname()
      local code, lines = server.run{ args = { "--check", "--listen", "127.0.0.1:" .. port }, timeout = 5 }
      assert.same({ 0, { ("would listen on 127.0.0.1:%s with handler echo.lua (built-in)"):format(port) } },
        { code, lines })
    end)

    it("shows the built-in defaults when there is no ./config.lua", function()
      local code, lines = run_stdout{ args = { "--check" } }
      assert.same({ 0, { "would listen on 127.0.0.1:7000 with handler echo.lua (built-in)" } }, { code, lines })
    end)
  end)

  describe("shutdown log lines", function()
    local function start_one(config)
      local srv = server.start{ config = 'listen = "127.0.0.1:0"\n' .. config }
      local sock = assert(server.connect(srv.host, srv.port))
      assert.equal("hi", server.exchange(sock, "hi"))
      return srv
    end

    local function expect(srv, level, msg)
      assert(srv:wait_line(server.record(level, server.literal(msg)), 10), "no line '" .. msg .. "'; log:\n" .. srv:log_text())
    end

    it("count one connection in the singular at the drain timeout", function()
      local srv = start_one("shutdown_timeout = 0.2\n")
      assert(srv:signal("TERM"))
      expect(srv, "info", "shutting down on SIGTERM: 1 connection to drain (up to 0.2s)")
      expect(srv, "warn", "shutdown timeout: closing 1 connection")
      assert.equal(0, srv:wait_exit(10))
    end)

    it("count one connection in the singular at a second signal", function()
      local srv = start_one("")
      assert(srv:signal("TERM"))
      expect(srv, "info", "shutting down on SIGTERM: 1 connection to drain (up to 10s)")
      assert(srv:signal("TERM"))
      expect(srv, "warn", "SIGTERM again: closing 1 connection now")
      assert.equal(0, srv:wait_exit(10))
    end)
  end)

  describe("--listen", function()
    it("replaces the config's listen list", function()
      local srv = server.start{
        config = 'listen = { "unix:@DIR@/never.sock" }\n',
        args = { "--listen", "127.0.0.1:0" },
      }
      assert.equal("127.0.0.1", srv.host)
      local sock = assert(server.connect(srv.addrs[1]))
      assert.equal("ok", server.exchange(sock, "ok"))
      sock:close()
      assert.same({ nil, "timeout" }, { srv:wait_line("listening on", 0.3) })
      assert.is_false(server.exists(srv:file("never.sock")))
    end)

    it("can be given more than once", function()
      local srv = server.start{ args = { "--listen", "127.0.0.1:0", "--listen", "unix:@DIR@/two.sock" }, expect = 2 }
      for _, addr in ipairs(srv.addrs) do
        local sock = assert(server.connect(addr))
        assert.equal(addr.text, server.exchange(sock, addr.text))
        sock:close()
      end
    end)
  end)

  describe("--handler", function()
    it("replaces the top-level handler, relative to the current directory", function()
      local srv = server.start{
        config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/a.lua"\n',
        handlers = { ["a.lua"] = says("A"), ["b.lua"] = says("B") },
        args = { "--handler", "b.lua" }, -- the cwd is the temp dir
      }
      assert.equal("B", reply_from(srv.addrs[1]))
    end)

    it("leaves a listener's own handler in place", function()
      local srv = server.start{
        config = [[
          handler = "@DIR@/a.lua"
          listen = { "127.0.0.1:0", { address = "unix:@DIR@/c.sock", handler = "@DIR@/c.lua" } }
        ]],
        handlers = { ["a.lua"] = says("A"), ["b.lua"] = says("B"), ["c.lua"] = says("C") },
        args = { "--handler", "@DIR@/b.lua" },
        expect = 2,
      }
      for _, addr in ipairs(srv.addrs) do
        assert.equal(addr.path and "C" or "B", reply_from(addr))
      end
    end)
  end)

  describe("config lookup", function()
    it("uses ./config.lua when no config is given", function()
      local srv = server.start{
        files = { ["config.lua"] = 'listen = "127.0.0.1:0"\nhandler = "h.lua"\n' },
        handlers = { ["h.lua"] = says("from ./config.lua") },
        cwd = "@DIR@",
      }
      assert.equal("from ./config.lua", reply_from(srv.addrs[1]))
    end)

    it("resolves the handler relative to the config file's directory", function()
      local srv = server.start{
        config = 'listen = "127.0.0.1:0"\nhandler = "h.lua"\n',
        handlers = { ["h.lua"] = says("next to the config") },
        cwd = "/",
      }
      assert.equal("next to the config", reply_from(srv.addrs[1]))
    end)
  end)
end)
