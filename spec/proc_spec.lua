-- The spec harness's own process module: the other specs rely on it to
-- start, read, signal and reap the server, so it is checked first.
require "socket" -- loads LuaSocket, which ignores SIGPIPE in this process
local proc = require "spec_proc"

local function sh(script, opts)
  return assert(proc.spawn({ "sh", "-c", script }, opts))
end

-- Returns true if pid is gone (or a zombie) within timeout seconds.
local function gone_within(pid, timeout)
  local deadline = proc.now() + timeout
  repeat
    if proc.rss_kib(pid) == nil then return true end
    proc.sleep(0.01)
  until proc.now() > deadline
  return false
end

describe("spec_proc", function()
  describe("spawn()", function()
    it("merges stdout and stderr into one stream of lines", function()
      local p = sh("echo one; echo two >&2; echo three")
      assert.equal("one", p:readline(5))
      assert.equal("two", p:readline(5))
      assert.equal("three", p:readline(5))
      assert.same({ nil, "eof" }, { p:readline(5) })
      assert.equal(0, p:wait(5))
    end)

    it("returns nil and a message when the program cannot run", function()
      local p, err = proc.spawn({ "/nonexistent/prog" })
      assert.is_nil(p)
      assert.equal("cannot run /nonexistent/prog: No such file or directory", err)
    end)

    it("runs the child in opts.cwd", function()
      local dir = assert(proc.mkdtemp("/tmp/proc_spec."))
      local p = sh("pwd", { cwd = dir })
      assert.equal(dir, p:readline(5))
      assert.equal(0, p:wait(5))
      assert(os.remove(dir))
    end)

    it("adds opts.env to the inherited environment", function()
      local p = sh('echo "$SPEC_A $SPEC_B $HOME"', { env = { SPEC_A = "a", SPEC_B = "b" } })
      assert.equal("a b " .. os.getenv("HOME"), p:readline(5))
      assert.equal(0, p:wait(5))
    end)

    it("lets opts.env replace an inherited variable", function()
      local p = sh('echo "$HOME"', { env = { HOME = "/elsewhere" } })
      assert.equal("/elsewhere", p:readline(5))
    end)

    it("gives the child /dev/null as stdin with opts.stdin_null", function()
      local p = assert(proc.spawn({ "cat" }, { stdin_null = true }))
      assert.same({ nil, "eof" }, { p:readline(5) })
      assert.equal(0, p:wait(5))
    end)

    it("starts the child with no ignored signals even though this process ignores SIGPIPE", function()
      local p = sh("grep '^SigIgn:' /proc/self/status")
      assert.equal("SigIgn:\t0000000000000000", p:readline(5))
    end)

    it("rejects an empty argv", function()
      assert.has_error(function() proc.spawn({}) end,
        "bad argument #1 to 'spawn' (argv must hold at least the program name)")
    end)
  end)

  describe("process:readline()", function()
    it("returns nil, 'timeout' after about the timeout when no line arrives", function()
      local p = sh("exec sleep 10")
      local t0 = proc.now()
      assert.same({ nil, "timeout" }, { p:readline(0.2) })
      local elapsed = proc.now() - t0
      assert.is_true(elapsed >= 0.19 and elapsed < 2, "elapsed " .. elapsed)
      p:close()
    end)

    it("returns a partial line only once the stream ends", function()
      local p = sh("printf 'a\\nb'; sleep 0.3; printf 'c'")
      assert.equal("a", p:readline(5))
      assert.same({ nil, "timeout" }, { p:readline(0.05) })
      assert.equal("bc", p:readline(5))
      assert.same({ nil, "eof" }, { p:readline(5) })
    end)

    it("keeps empty lines", function()
      local p = sh("printf 'x\\n\\ny\\n'")
      assert.equal("x", p:readline(5))
      assert.equal("", p:readline(5))
      assert.equal("y", p:readline(5))
    end)
  end)

  describe("process:lines_so_far()", function()
    it("returns every line handed out so far, as a copy", function()
      local p = sh("echo 1; echo 2; echo 3")
      p:readline(5)
      p:readline(5)
      local lines = p:lines_so_far()
      assert.same({ "1", "2" }, lines)
      lines[1] = "changed"
      assert.same({ "1", "2" }, p:lines_so_far())
    end)
  end)

  describe("process:wait()", function()
    it("returns the exit code", function()
      assert.equal(3, sh("exit 3"):wait(5))
    end)

    it("returns nil, 'timeout' while the child runs", function()
      local p = sh("exec sleep 10")
      assert.same({ nil, "timeout" }, { p:wait(0.1) })
      p:close()
    end)

    it("buffers output meanwhile, so a child filling the pipe still exits", function()
      local p = sh("head -c 3000000 /dev/zero | tr '\\0' x; echo; echo done")
      assert.equal(0, p:wait(10))
      assert.equal(3000000, #p:readline(5))
      assert.equal("done", p:readline(5))
    end)
  end)

  describe("process:kill()", function()
    for _, sig in ipairs({ { "TERM", 15 }, { "INT", 2 }, { "HUP", 1 }, { "KILL", 9 } }) do
      it("sends SIG" .. sig[1] .. " and wait reports 128+signo and the name", function()
        local p = assert(proc.spawn({ "sleep", "10" }))
        assert.is_true(p:kill(sig[1]))
        assert.same({ 128 + sig[2], sig[1] }, { p:wait(5) })
      end)
    end

    it("lets a child that handles the signal exit with its own code", function()
      local p = sh("trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done")
      assert.equal("ready", p:readline(5))
      p:kill("TERM")
      assert.equal("got TERM", p:readline(5))
      assert.equal(7, p:wait(5))
    end)

    it("returns nil and a message once the child has exited", function()
      local p = sh("exit 0")
      p:wait(5)
      assert.same({ nil, "process has exited" }, { p:kill("TERM") })
    end)

    it("raises on an unknown signal name", function()
      local p = sh("exit 0")
      assert.has_error(function() p:kill("NOPE") end,
        "bad argument #1 to 'kill' (unknown signal 'NOPE')")
    end)
  end)

  describe("garbage collection", function()
    it("kills and reaps a child that is still running", function()
      local p = assert(proc.spawn({ "sleep", "30" }))
      local pid = p.pid
      assert.is_number(proc.rss_kib(pid))
      p = nil -- luacheck: ignore
      collectgarbage()
      collectgarbage()
      assert.is_true(gone_within(pid, 5))
    end)

    it("also kills what the child started in its process group", function()
      local p = sh("sleep 30 & echo $!; wait")
      local grandchild = tonumber(p:readline(5))
      p = nil -- luacheck: ignore
      collectgarbage()
      collectgarbage()
      assert.is_true(gone_within(grandchild, 5))
    end)
  end)

  describe("rss_kib()", function()
    it("returns a positive VmRSS for a live process", function()
      local p = assert(proc.spawn({ "sleep", "10" }))
      local kib = proc.rss_kib(p.pid)
      assert.is_true(math.type(kib) == "integer" and kib > 0)
      p:close()
    end)

    it("returns nil and a message for a missing process", function()
      local kib, err = proc.rss_kib(999999999)
      assert.is_nil(kib)
      assert.equal("/proc/999999999/status: No such file or directory", err)
    end)
  end)

  describe("sleep()", function()
    it("sleeps about the given time", function()
      local t0 = proc.now()
      proc.sleep(0.05)
      local elapsed = proc.now() - t0
      assert.is_true(elapsed >= 0.049 and elapsed < 1, "elapsed " .. elapsed)
    end)
  end)
end)
