-- `cmake --install` puts luaecho and the bundled Lua scripts under a prefix,
-- and the installed binary serves the default echo handler with no handler
-- path given and no file of the project around it.
local server = require "server"
local proc = require "spec_proc"

describe("cmake --install", function()
  after_each(server.cleanup)

  it("installs a luaecho that finds its default handler by itself", function()
    local build = os.getenv("LUAECHO_BUILD_DIR") or "./build"
    local prefix = assert(proc.mkdtemp("/tmp/luaecho-spec."))
    server.defer(function() os.execute("rm -rf '" .. prefix .. "'") end)
    local code, lines = server.sh(("cmake --install '%s' --prefix '%s'"):format(build, prefix), 120)
    assert.equal(0, code, table.concat(lines, "\n"))
    for _, file in ipairs({ "bin/luaecho", "share/luaecho/echo.lua", "share/luaecho/examples/proxy.lua" }) do
      assert.is_true(server.exists(prefix .. "/" .. file), file .. " is not installed")
    end

    local saved = server.bin
    server.bin = prefix .. "/bin/luaecho"
    local ok, srv = pcall(server.start, { args = { "--listen", "127.0.0.1:0" } })
    server.bin = saved
    assert(ok, srv)
    local sock = assert(server.connect(srv.host, srv.port))
    assert.same({ "installed" }, { server.exchange(sock, "installed") })
    sock:close()
  end)
end)
