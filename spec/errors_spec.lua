-- A handler that raises: its connection is closed, the error and a traceback
-- are logged, and every other connection carries on.
local server = require "server"

-- Echoes, after announcing its conn.id, until it receives "boom" (line 5).
local BOOM_HANDLER = [[
return function(conn)
  conn:send("id " .. conn.id .. "\n")
  local data = conn:recv()
  while data do
    if data:find("boom", 1, true) then error("boom") end
    conn:send(data)
    data = conn:recv()
  end
end
]]

local function start_boom()
  return server.start{
    config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\n',
    handlers = { ["h.lua"] = BOOM_HANDLER },
  }
end

-- Connects and reads the handler's "id N" line.  Returns the socket and N.
local function connect(srv)
  local sock = assert(server.connect(srv.host, srv.port))
  local line = assert(sock:receive("*l"))
  return sock, assert(line:match("^id (%d+)$"), line)
end

local function assert_echoes(sock, msg)
  assert.same({ msg }, { server.exchange(sock, msg, 10) })
end

describe("handler errors", function()
  after_each(server.cleanup)

  describe("a handler that raises", function()
    it("gets its connection closed", function()
      local srv = start_boom()
      local sock = connect(srv)
      assert_echoes(sock, "fine")
      assert.same({ "", "closed" }, { server.exchange(sock, "boom", { until_close = true }) })
    end)

    it("logs the error with the conn id and peer, then Lua's traceback", function()
      local srv = start_boom()
      local sock, id = connect(srv)
      local host, port = sock:getsockname()
      server.exchange(sock, "boom", { until_close = true })
      local message = ("conn %s %s:%s: handler error: %s: boom"):format(id, host, port, srv:file("h.lua:5"))
      assert(srv:wait_line(server.record("error", server.literal(message)), 10),
        "no handler error line; log:\n" .. srv:log_text())
      assert.equal("stack traceback:", srv:next_line(5))
      -- Lua's traceback lines each start with a tab; one is the raising line.
      local traceback = {}
      repeat
        local line = srv:next_line(5)
        assert.matches("^\t", line)
        traceback[#traceback + 1] = line
      until line:find(srv:file("h.lua:5:"), 1, true) or #traceback == 20
      assert.matches(server.literal(srv:file("h.lua:5:")) .. " in ", traceback[#traceback])
    end)

    it("leaves other open connections echoing", function()
      local srv = start_boom()
      local a = connect(srv)
      local b = connect(srv)
      assert_echoes(b, "before")
      server.exchange(a, "boom", { until_close = true })
      assert_echoes(b, "after")
    end)

    it("leaves the server accepting and serving new connections", function()
      local srv = start_boom()
      local a = connect(srv)
      server.exchange(a, "boom", { until_close = true })
      local c = connect(srv)
      assert_echoes(c, "new connection")
    end)

    it("does not wear the server down when many handlers raise", function()
      local srv = start_boom()
      for _ = 1, 50 do
        local sock = connect(srv)
        assert.same({ "", "closed" }, { server.exchange(sock, "boom", { until_close = true }) })
        sock:close()
      end
      assert_echoes(connect(srv), "still serving")
      local errors = 0
      while srv:wait_line(server.record("error", "conn %d+ .-: handler error: .*: boom"), 5) do
        errors = errors + 1
        if errors == 50 then break end
      end
      assert.equal(50, errors)
    end)
  end)

  describe("an error message with newlines and control bytes", function()
    it("is logged on one line, its control bytes escaped, before the traceback", function()
      local srv = server.start{
        config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\n',
        handlers = { ["h.lua"] = 'return function(conn) error("one\\ntwo\\r\\27[31m") end\n' },
      }
      local sock = assert(server.connect(srv.host, srv.port))
      server.read_all_until_close(sock, 10)
      local message = ("handler error: %s: one\\ntwo\\r\\x1b[31m"):format(srv:file("h.lua:1"))
      assert(srv:wait_line(server.record("error", ".*" .. server.literal(message)), 10),
        "no one-line handler error; log:\n" .. srv:log_text())
      assert.equal("stack traceback:", srv:next_line(5))
    end)
  end)

  describe("an error object that is not a string", function()
    for _, case in ipairs{
      { "nil", "error(nil)" },
      { "table", "error(setmetatable({}, { __tostring = function() error('inner') end }))" },
    } do
      it("is logged as its type, on one line naming the file and line (" .. case[1] .. ")", function()
        local srv = server.start{
          config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\n',
          handlers = { ["h.lua"] = "return function(conn)\n  " .. case[2] .. "\nend\n" },
        }
        local sock = assert(server.connect(srv.host, srv.port))
        server.read_all_until_close(sock, 10)
        local message = ("handler error: %s: (error object is a %s value)"):format(srv:file("h.lua:2"), case[1])
        assert(srv:wait_line(server.record("error", ".*" .. server.literal(message)), 10),
          "no handler error line naming h.lua:2; log:\n" .. srv:log_text())
        assert.equal("stack traceback:", srv:next_line(5))
      end)
    end
  end)

  -- Errors nobody can catch (in a __gc metamethod, in a __close handler
  -- run after the handler failed) and warn() go out as Lua warnings: one
  -- warn record each, escaped. They were silently dropped.
  describe("Lua warnings", function()
    local WARNER = [[
return function(conn)
  local what = conn:recv()
  if what == "warn" then warn("two ", "pieces\nand a newline") end
  if what == "off" then warn("@off") warn("not shown") warn("@on") end
  if what == "gc" then
    setmetatable({}, { __gc = function() error("gc boom") end })
    collectgarbage() collectgarbage()
  end
  if what == "close" then
    local guard <close> = setmetatable({}, { __close = function() error("close boom") end })
    error("handler boom")
  end
  if what == "close ok" then
    local guard <close> = setmetatable({}, { __close = function() end })
    error("plain boom")
  end
  conn:send("done")
end
]]

    local function start_warner()
      return server.start{
        config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\n',
        handlers = { ["h.lua"] = WARNER },
      }
    end

    local function ask(srv, what)
      local sock = assert(server.connect(srv.host, srv.port))
      return server.exchange(sock, what, { until_close = true })
    end

    -- Asserts that the next warn record is text.
    local function expect_warning(srv, text)
      local line = srv:wait_line(server.record("warn", "Lua warning: .*"), 10)
      assert(line, "no Lua warning; log:\n" .. srv:log_text())
      assert.equal(text, select(2, server.parse_log(line)))
    end

    it("logs warn() as one record, its pieces joined and escaped", function()
      local srv = start_warner()
      assert.equal("done", ask(srv, "warn"))
      expect_warning(srv, "Lua warning: two pieces\\nand a newline")
    end)

    it("honours @off and @on", function()
      local srv = start_warner()
      assert.equal("done", ask(srv, "off"))
      assert.equal("done", ask(srv, "warn"))
      -- The first warning logged is the one after @on.
      expect_warning(srv, "Lua warning: two pieces\\nand a newline")
    end)

    it("logs an error in a __gc metamethod", function()
      local srv = start_warner()
      assert.equal("done", ask(srv, "gc"))
      expect_warning(srv, ("Lua warning: error in __gc (%s: gc boom)"):format(srv:file("h.lua:6")))
    end)

    it("logs an error in a __close handler run after the handler failed, and only then", function()
      local srv = start_warner()
      ask(srv, "close ok")
      assert(srv:wait_line(server.record("error", ".*plain boom"), 10), srv:log_text())
      ask(srv, "close")
      assert(srv:wait_line(server.record("error", ".*handler boom"), 10), srv:log_text())
      -- "close ok" left no warning: the first is close's.
      expect_warning(srv, ("Lua warning: error in __close (%s: close boom)"):format(srv:file("h.lua:10")))
    end)
  end)
end)
