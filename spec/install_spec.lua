-- `cmake --install` puts luaecho, the bundled Lua scripts, the docs, a
-- sample config, the man page and the systemd unit under a prefix, and
-- nothing outside it. The installed binary serves the default echo handler
-- with no handler path given and no file of the project around it.
-- spec/package_spec.lua covers the .deb, installed under /usr.
local server = require "server"
local proc = require "spec_proc"

-- Every file a source install must put under its prefix.
local INSTALLED = {
  "bin/luaecho",
  "share/luaecho/echo.lua",
  "share/man/man1/luaecho.1.gz",
  "share/doc/luaecho/README.md",
  "share/doc/luaecho/api.md",
  "share/doc/luaecho/config.md",
  "share/doc/luaecho/tutorial.md",
  "share/doc/luaecho/examples/config.lua",
  "lib/systemd/system/luaecho.service",
}

describe("cmake --install", function()
  local prefix -- one install shared by the tests, removed by teardown

  setup(function()
    local build = os.getenv("LUAECHO_BUILD_DIR") or "./build"
    prefix = assert(proc.mkdtemp("/tmp/luaecho-spec."))
    local code, lines = server.sh(("cmake --install '%s' --prefix '%s'"):format(build, prefix), 120)
    assert(code == 0, table.concat(lines, "\n"))
  end)

  teardown(function()
    if prefix then os.execute("rm -rf '" .. prefix .. "'") end
  end)

  after_each(server.cleanup)

  it("installs the binary, docs, sample config, man page and systemd unit", function()
    for _, file in ipairs(INSTALLED) do
      assert.is_true(server.exists(prefix .. "/" .. file), file .. " is not installed")
    end
    local code = server.sh(("gzip -t '%s/share/man/man1/luaecho.1.gz'"):format(prefix))
    assert.equal(0, code, "the man page is not gzip-compressed")
  end)

  it("installs every example in lua/examples", function()
    local code, names = server.sh(("ls '%s/lua/examples'"):format(server.REPO))
    assert.equal(0, code)
    assert.is_true(#names > 0)
    for _, name in ipairs(names) do
      local file = "share/luaecho/examples/" .. name
      assert.is_true(server.exists(prefix .. "/" .. file), file .. " is not installed")
    end
  end)

  it("writes no live config: only a package build installs etc/luaecho/config.lua", function()
    assert.is_false(server.exists(prefix .. "/etc"))
  end)

  it("installs a luaecho that finds its default handler by itself", function()
    local srv = server.start{ bin = prefix .. "/bin/luaecho", args = { "--listen", "127.0.0.1:0" } }
    local sock = assert(server.connect(srv.host, srv.port))
    assert.same({ "installed" }, { server.exchange(sock, "installed") })
  end)

  it("installs a sample config that luaecho runs as it is", function()
    local config = prefix .. "/share/doc/luaecho/examples/config.lua"
    local code, lines = server.run_cmd({ prefix .. "/bin/luaecho", "--check", config })
    assert.same({ 0, { "would listen on 127.0.0.1:7000 with handler echo.lua (built-in)" } }, { code, lines })
    local srv = server.start{ bin = prefix .. "/bin/luaecho", args = { "--listen", "127.0.0.1:0", config } }
    local sock = assert(server.connect(srv.host, srv.port))
    assert.same({ "sample" }, { server.exchange(sock, "sample") })
  end)
end)
