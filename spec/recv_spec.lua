-- The handler's connection API: conn:recv, conn:send, conn:close,
-- conn:peername, conn.id and the misuse errors.  Each handler shows what it
-- saw by sending it back (show(...)) or, when the connection is no longer
-- usable, by report(name, ...) into a file the spec reads.
local server = require "server"
local proc = require "spec_proc"

-- Starts luaecho with the given handler source (prefixed with show and
-- report) on 127.0.0.1:0.
local function start_handler(source)
  return server.start{
    config = 'listen = "127.0.0.1:0"\nhandler = "@DIR@/h.lua"\n',
    handlers = { ["h.lua"] = server.SHOW .. server.REPORT .. source },
  }
end

local function connect(srv)
  return assert(server.connect(srv.host, srv.port))
end

local receive_line = server.receive_line

describe("conn", function()
  after_each(server.cleanup)

  describe("recv(n)", function()
    it("waits for all n bytes sent one at a time and returns them in one piece", function()
      local srv = start_handler([[
        return function(conn)
          local data = conn:recv(10)
          conn:send(#data .. ":" .. data)
        end]])
      local sock = connect(srv)
      sock:setoption("tcp-nodelay", true)
      for i = 0, 9 do
        assert(sock:send(tostring(i)))
        proc.sleep(0.02) -- pacing only: lets each byte arrive on its own
      end
      assert.same({ "10:0123456789", "closed" }, { server.read_all_until_close(sock, 10) })
    end)

    it("returns exactly n bytes when more have arrived", function()
      local srv = start_handler([[
        return function(conn)
          local a = conn:recv(3)
          local b = conn:recv(5)
          conn:send(show(a, b))
        end]])
      local sock = connect(srv)
      assert(sock:send("abcdefgh"))
      assert.same({ '"abc","defgh"', "closed" }, { server.read_all_until_close(sock, 10) })
    end)

    it("returns nil, 'closed' and the partial bytes when the peer sends FIN first", function()
      local srv = start_handler([[
        return function(conn)
          conn:send(show(conn:recv(5)))
        end]])
      local sock = connect(srv)
      assert(sock:send("abc"))
      assert(sock:shutdown("send"))
      assert.same({ 'nil,"closed","abc"', "closed" }, { server.read_all_until_close(sock, 10) })
    end)
  end)

  describe("recv()", function()
    it("returns what is available, at least one byte", function()
      local srv = start_handler([[
        return function(conn)
          conn:send(show(conn:recv()) .. "\n")
          conn:send(show(conn:recv(0)) .. "\n")
        end]])
      local sock = connect(srv)
      assert(sock:send("first"))
      assert.equal('"first"', receive_line(sock))
      assert(sock:send("second"))
      assert.equal('"second"', receive_line(sock))
    end)

    it("returns nil, 'closed', '' after the peer's FIN", function()
      local srv = start_handler([[
        return function(conn)
          local a = conn:recv(2)
          conn:send(show(a, conn:recv()))
        end]])
      local sock = connect(srv)
      assert(sock:send("xy"))
      assert(sock:shutdown("send"))
      assert.same({ '"xy",nil,"closed",""', "closed" }, { server.read_all_until_close(sock, 10) })
    end)

    it("returns nil, 'econnreset' when the peer resets the connection", function()
      local srv = start_handler([[
        return function(conn)
          conn:send("ready")
          report("reset", conn:recv())
        end]])
      local sock = assert(server.connect(srv.host, srv.port))
      assert.same({ "ready" }, { server.recv_exactly(sock, 5, 10) })
      assert(sock:setoption("linger", { on = true, timeout = 0 }))
      sock:close() -- sends RST
      assert.same({ n = 3, nil, "econnreset", "" }, srv:report("reset", 10))
    end)
  end)

  describe("recv(n, timeout)", function()
    it("returns nil, 'timeout' and the partial bytes, which are consumed", function()
      local srv = start_handler([[
        return function(conn)
          conn:send(show(conn:recv(10, 0.3)) .. "\n")
          conn:send(show(conn:recv(2)) .. "\n")
        end]])
      local sock = connect(srv)
      local t0 = proc.now()
      assert(sock:send("abc"))
      assert.equal('nil,"timeout","abc"', receive_line(sock))
      local elapsed = proc.now() - t0
      assert.is_true(elapsed >= 0.25 and elapsed < 5, "timed out after " .. elapsed .. "s")
      assert(sock:send("de"))
      assert.equal('"de"', receive_line(sock))
    end)

    it("returns nil, 'timeout', '' when nothing arrives", function()
      local srv = start_handler([[
        return function(conn)
          conn:send(show(conn:recv(0, 0.1)) .. "\n")
        end]])
      local sock = connect(srv)
      assert.equal('nil,"timeout",""', receive_line(sock))
    end)

    it("returns the data when it arrives before the timeout", function()
      local srv = start_handler([[
        return function(conn)
          conn:send("go\n")
          conn:send(show(conn:recv(4, 10)) .. "\n")
        end]])
      local sock = connect(srv)
      assert.equal("go", receive_line(sock))
      assert(sock:send("data"))
      assert.equal('"data"', receive_line(sock))
    end)
  end)

  describe("send()", function()
    it("returns true", function()
      local srv = start_handler([[
        return function(conn)
          local ok = conn:send("sent:")
          conn:send(show(ok))
        end]])
      local sock = connect(srv)
      assert.same({ "sent:true", "closed" }, { server.read_all_until_close(sock, 10) })
    end)
  end)

  describe("id", function()
    it("is an integer distinct for every connection, open or closed", function()
      local srv = start_handler([[
        return function(conn)
          conn:send(math.type(conn.id) .. " " .. tostring(conn.id) .. "\n")
          conn:recv()
        end]])
      local seen = {}
      local function next_id(sock)
        local kind, id = receive_line(sock):match("^(%S+) (%S+)$")
        assert.equal("integer", kind)
        assert.is_nil(seen[id], "id " .. id .. " given twice")
        seen[id] = true
      end
      local open = {}
      for i = 1, 3 do
        open[i] = connect(srv)
        next_id(open[i])
      end
      for _ = 1, 3 do
        local sock = assert(server.connect(srv.host, srv.port))
        next_id(sock)
        sock:close()
      end
    end)
  end)

  describe("peername()", function()
    it("returns the client's own address and integer port", function()
      local srv = start_handler([[
        return function(conn)
          local host, port = conn:peername()
          conn:send(show(host, math.type(port), port) .. "\n")
        end]])
      local sock = connect(srv)
      local host, port = sock:getsockname()
      assert.equal(('"%s","integer",%s'):format(host, port), receive_line(sock))
    end)
  end)

  describe("close()", function()
    it("closes the connection; using it afterwards raises 'attempt to use a closed connection'", function()
      -- Raised like liolib's "attempt to use a closed file": luaL_error
      -- prefixes the calling line's position.
      local srv = start_handler([[
        return function(conn)
          conn:close()
          local ok1, err1 = pcall(function() return conn:recv() end)
          local ok2, err2 = pcall(function() return conn:send("x") end)
          report("closed", ok1, err1, ok2, err2)
        end]])
      local sock = connect(srv)
      assert.same({ "", "closed" }, { server.read_all_until_close(sock, 10) })
      local report = assert(srv:report("closed", 10))
      local message = "^" .. server.literal(srv:file("h.lua")) .. ":%d+: attempt to use a closed connection$"
      assert.equal(4, report.n)
      assert.is_false(report[1])
      assert.matches(message, report[2])
      assert.is_false(report[3])
      assert.matches(message, report[4])
    end)
  end)

  describe("from another coroutine", function()
    it("raises an error mentioning 'coroutine' for recv and send, and the connection keeps working", function()
      local srv = start_handler([[
        return function(conn)
          local r = coroutine.create(function() return conn:recv() end)
          local s = coroutine.create(function() return conn:send("x") end)
          local ok_r, err_r = coroutine.resume(r)
          local ok_s, err_s = coroutine.resume(s)
          conn:send(show(ok_r, ok_s) .. "\n" .. tostring(err_r) .. "\n" .. tostring(err_s) .. "\n")
          conn:send(conn:recv())
        end]])
      local sock = connect(srv)
      assert.equal("false,false", receive_line(sock))
      assert.matches("coroutine", receive_line(sock))
      assert.matches("coroutine", receive_line(sock))
      assert.same({ "after", "closed" }, { server.exchange(sock, "after", { until_close = true }) })
    end)
  end)
end)
