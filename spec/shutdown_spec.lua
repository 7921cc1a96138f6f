-- Orderly shutdown on SIGTERM and SIGINT (drain, then timeout), and SIGPIPE
-- never killing the server.
local server = require "server"
local proc = require "spec_proc"

-- Starts the built-in echo server with the given config lines.
local function start(config)
  return server.start{ config = 'listen = "127.0.0.1:0"\n' .. (config or "") }
end

local function connect(srv)
  return assert(server.connect(srv.host, srv.port))
end

local function assert_echoes(sock, msg)
  assert.same({ msg }, { server.exchange(sock, msg, 10) })
end

-- Waits (bounded) until a connect to the server's port is refused.  The
-- listener must close as shutdown starts; the short retry only absorbs the
-- gap between the log line and the close in the server's own callback.
local function assert_refused_soon(srv)
  local deadline = proc.now() + 1
  repeat
    local sock, err = server.connect(srv.host, srv.port, 1)
    if not sock then
      assert.equal("connection refused", err)
      return
    end
    sock:close()
    proc.sleep(0.01)
  until proc.now() > deadline
  error("the listener still accepts connections after shutdown began")
end

describe("shutdown", function()
  after_each(server.cleanup)

  for _, sig in ipairs({ "TERM", "INT" }) do
    describe("SIG" .. sig, function()
      it("closes the listener at once and lets open connections finish, then exits 0", function()
        local srv = start()
        local a, b = connect(srv), connect(srv)
        assert_echoes(a, "a before")
        assert_echoes(b, "b before")
        assert(srv:signal(sig))
        assert(srv:wait_line(server.record("info",
          "shutting down on SIG" .. sig .. ": 2 connections to drain %(up to 10s%)"), 10),
          "no shutdown line; log:\n" .. srv:log_text())
        assert_refused_soon(srv)
        assert_echoes(a, "a during shutdown")
        a:close()
        assert_echoes(b, "b during shutdown")
        assert.same({ nil, "timeout" }, { srv:wait_exit(0.2) })
        b:close()
        assert.equal(0, srv:wait_exit(10))
        assert.matches(server.record("info", "stopped"), srv:log()[#srv:log()])
      end)

      it("closes connections still open after shutdown_timeout and exits 0", function()
        local srv = start("shutdown_timeout = 0.5\n")
        local a, b = connect(srv), connect(srv)
        assert_echoes(a, "a")
        assert_echoes(b, "b")
        local t0 = proc.now()
        assert(srv:signal(sig))
        assert(srv:wait_line(server.record("info",
          "shutting down on SIG" .. sig .. ": 2 connections to drain %(up to 0%.5s%)"), 10),
          "no shutdown line; log:\n" .. srv:log_text())
        assert(srv:wait_line(server.record("warn", "shutdown timeout: closing 2 connections"), 10),
          "no shutdown timeout line; log:\n" .. srv:log_text())
        assert.same({ "", "closed" }, { server.read_all_until_close(a, 5) })
        assert.same({ "", "closed" }, { server.read_all_until_close(b, 5) })
        assert.equal(0, srv:wait_exit(10))
        local elapsed = proc.now() - t0
        assert.is_true(elapsed >= 0.45 and elapsed < 5, "exited " .. elapsed .. "s after the signal")
        assert.matches(server.record("info", "stopped"), srv:log()[#srv:log()])
      end)

      it("exits 0 at once with no connections open", function()
        local srv = start()
        local sock = connect(srv)
        assert_echoes(sock, "served") -- the loop runs: no start-up race here
        sock:close()
        assert(srv:signal(sig))
        assert.equal(0, srv:wait_exit(10))
        assert.matches(server.record("info", "stopped"), srv:log()[#srv:log()])
      end)

      it("is handled as soon as the last listening line is out", function()
        -- Ready means ready for signals too; repeated because a gap between
        -- the listening line and the signal handlers is only hit sometimes.
        for _ = 1, 10 do
          local srv = server.start{ args = { "--listen", "127.0.0.1:0" } }
          assert(srv:signal(sig))
          local code, signame = srv:wait_exit(10)
          srv:stop()
          assert.same({ 0 }, { code, signame })
        end
      end)
    end)
  end

  describe("SIGPIPE", function()
    it("does not kill the server when a client closes while the server writes", function()
      local srv = server.start{
        config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\n',
        handlers = { ["h.lua"] = server.SHOW .. server.REPORT .. [[
          return function(conn)
            if conn:recv(5) ~= "flood" then return end
            local chunk = string.rep("x", 65536)
            local ok, err
            repeat ok, err = conn:send(chunk) until not ok
            report("flood", ok, err)
          end]] },
      }
      local sock = assert(server.connect(srv.host, srv.port))
      assert(sock:send("flood"))
      assert.equal(65536, #assert(sock:receive(65536)))
      sock:close() -- unread data: the kernel answers further writes with RST
      local report = assert(srv:report("flood", 10), "the flooding handler never saw an error")
      assert.is_nil(report[1])
      assert.is_true(report[2] == "epipe" or report[2] == "econnreset", "send error " .. tostring(report[2]))
      assert.same({ nil, "timeout" }, { srv:wait_exit(0.1) })
      local again = assert(server.connect(srv.host, srv.port))
      assert(again:send("flood"))
      assert.equal(65536, #assert(again:receive(65536)))
      again:close()
      assert.equal(0, srv:stop())
    end)
  end)
end)
