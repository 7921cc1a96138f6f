-- The built-in echo handler over TCP (IPv4, IPv6) and unix sockets, with
-- our own clients and with socat and nc as real ones.
local server = require "server"
local socket = require "socket"
local unix = require "socket.unix"

local MiB = 1024 * 1024

-- Starts luaecho with the built-in echo handler.
local function start_echo(listen, expect)
  local args = {}
  for _, addr in ipairs(type(listen) == "table" and listen or { listen or "127.0.0.1:0" }) do
    args[#args + 1] = "--listen"
    args[#args + 1] = addr
  end
  return server.start{ args = args, expect = expect }
end

local assert_same_bytes = server.assert_same_bytes

describe("echo", function()
  after_each(server.cleanup)

  describe("over TCP", function()
    it("echoes small messages one after another on one connection", function()
      local srv = start_echo()
      local sock = assert(server.connect(srv.host, srv.port))
      for _, msg in ipairs({ "a", "hello\n", "two words", string.rep("z", 1000), "\0\1\2\255" }) do
        assert.same({ msg }, { server.exchange(sock, msg) })
      end
      sock:close()
    end)

    it("closes the connection after the client closes its side", function()
      local srv = start_echo()
      local sock = assert(server.connect(srv.host, srv.port))
      assert.same({ "", "closed" }, { server.exchange(sock, "", { half_close = true, until_close = true }) })
      sock:close()
    end)

    it("echoes a 16 MiB random payload byte-exact", function()
      local srv = start_echo()
      local payload = server.random_bytes(16 * MiB)
      local sock = assert(server.connect(srv.host, srv.port))
      local got, err = server.exchange(sock, payload, 60)
      assert.is_nil(err)
      assert_same_bytes(payload, got)
      sock:close()
    end)

    it("returns every byte and then EOF after the client half-closes", function()
      local srv = start_echo()
      local payload = server.random_bytes(MiB + 17)
      local sock = assert(server.connect(srv.host, srv.port))
      local got, err = server.exchange(sock, payload, { half_close = true, until_close = true, timeout = 30 })
      assert.equal("closed", err)
      assert_same_bytes(payload, got)
      sock:close()
    end)

    it("serves 200 concurrent clients interleaving their sends", function()
      local srv = start_echo()
      local clients = {}
      for i = 1, 200 do clients[i] = assert(server.connect(srv.host, srv.port)) end
      for round = 1, 5 do
        for i, c in ipairs(clients) do
          assert(c:send(("client %d round %d\n"):format(i, round)))
        end
        for i, c in ipairs(clients) do
          local want = ("client %d round %d\n"):format(i, round)
          assert.same({ want }, { server.recv_exactly(c, #want, 10) })
        end
      end
    end)
  end)

  describe("with real clients", function()
    it("echoes 16 MiB through socat byte-exact", function()
      local srv = start_echo()
      local input, output = srv:file("in.bin"), srv:file("out.bin")
      local payload = server.random_bytes(16 * MiB)
      server.write_file(input, payload)
      local code, lines = server.sh(("socat -t 30 - TCP:127.0.0.1:%d < %s > %s"):format(srv.port, input, output), 90)
      assert.same({ 0, {} }, { code, lines })
      assert_same_bytes(payload, assert(server.read_file(output)))
    end)

    it("answers nc -N with the line it sent", function()
      local srv = start_echo()
      local code, lines = server.sh(("printf 'hello\\n' | nc -N 127.0.0.1 %d"):format(srv.port), 30)
      assert.same({ 0, { "hello" } }, { code, lines })
    end)
  end)

  describe("over IPv6", function()
    it("listens on [::1]:0 and echoes", function()
      local probe = socket.tcp6()
      local bound = probe:bind("::1", 0)
      probe:close()
      if not bound then
        pending("::1 cannot be bound on this host")
        return
      end
      local srv = start_echo("[::1]:0")
      assert.equal("::1", srv.host)
      assert.matches("^%[::1%]:%d+$", srv.addrs[1].text)
      assert.is_true(srv.port > 0)
      local sock = assert(server.connect(srv.addrs[1]))
      assert.same({ "over six" }, { server.exchange(sock, "over six") })
      sock:close()
    end)
  end)

  describe("over a unix socket", function()
    it("listens on the path and echoes", function()
      local srv = start_echo("unix:@DIR@/echo.sock")
      assert.equal(srv:file("echo.sock"), srv.path)
      local sock = assert(server.connect_unix(srv.path))
      assert.same({ "over unix" }, { server.exchange(sock, "over unix") })
      sock:close()
    end)

    it("listens on TCP and unix at once", function()
      local srv = start_echo({ "127.0.0.1:0", "unix:@DIR@/both.sock" }, 2)
      for _, addr in ipairs(srv.addrs) do
        local sock = assert(server.connect(addr))
        assert.same({ addr.text }, { server.exchange(sock, addr.text) })
        sock:close()
      end
    end)

    it("removes its socket file when it stops", function()
      local srv = start_echo("unix:@DIR@/gone.sock")
      assert.is_true(server.exists(srv.path))
      local sock = assert(server.connect_unix(srv.path))
      assert.same({ "bye" }, { server.exchange(sock, "bye") })
      sock:close()
      srv:signal("TERM")
      assert.equal(0, srv:wait_exit(10))
      assert.is_false(server.exists(srv.path))
    end)

    it("replaces a stale socket file", function()
      local stale = unix.stream()
      local path = "/tmp/luaecho-stale-" .. os.time() .. "-" .. math.random(1e9) .. ".sock"
      server.defer(function() os.remove(path) end)
      assert(stale:bind(path))
      stale:close() -- leaves the file behind with no listener
      assert.is_true(server.exists(path))
      local srv = start_echo("unix:" .. path)
      local sock = assert(server.connect_unix(path))
      assert.same({ "fresh" }, { server.exchange(sock, "fresh") })
      sock:close()
    end)

    it("refuses a socket file a live server listens on, exit 1, and the live one keeps serving", function()
      local srv = start_echo("unix:@DIR@/live.sock")
      local code, lines = server.run{ args = { "--listen", "unix:" .. srv.path } }
      assert.same({ 1, { "luaecho: cannot listen on unix:" .. srv.path .. ": address already in use" } },
        { code, lines })
      local sock = assert(server.connect_unix(srv.path))
      assert.same({ "still here" }, { server.exchange(sock, "still here") })
      sock:close()
    end)
  end)
end)
