-- `cpack -G DEB` builds a .deb that declares its libraries, installs with
-- dpkg, runs, serves echo, reloads on SIGHUP and removes cleanly.
--
-- The package is built as a packager builds it: in a build tree of its own,
-- configured for /usr. It is installed with `dpkg --root` into a scratch
-- root, not into the machine: a real `dpkg -i` would take dpkg's lock (two
-- test runs at once would fail), replace any luaecho already installed, and
-- leave it behind if the run died before `dpkg -r`. The scratch root's dpkg
-- database holds the machine's own entries for the packages the .deb
-- depends on, so dpkg checks the Depends field, versions included, against
-- what is really installed. --force-script-chrootless runs the maintainer
-- scripts here with DPKG_ROOT set to the scratch root (the root has no
-- shell to chroot into); the scripts see DPKG_ROOT and leave this machine's
-- systemd alone. The installed binary runs with this machine's libraries,
-- the ones Depends names.
local server = require "server"
local proc = require "spec_proc"

-- Runs a shell script; raises with its output unless it exits 0. Returns
-- its output lines.
local function sh_ok(script, timeout)
  local code, lines = server.sh(script, timeout or 60)
  assert(code == 0, ("exit %s from: %s\n%s"):format(code, script, table.concat(lines, "\n")))
  return lines
end

local function remove_tree(dir)
  assert(dir:match("^/tmp/luaecho%-spec%.[%w]+$"), "refusing to remove " .. dir)
  os.execute("rm -rf '" .. dir .. "'")
end

-- Configures a build tree for prefix under work and runs cpack -G DEB
-- there; returns the exit code and cpack's output lines.
local function cpack(work, name, prefix)
  local tree = work .. "/" .. name
  sh_ok(("cmake -S '%s' -B '%s' -DCMAKE_INSTALL_PREFIX=%s -DBUILD_TESTING=OFF -DLUAECHO_BENCH=OFF")
    :format(server.REPO, tree, prefix), 120)
  return server.sh(("cd '%s' && cpack -G DEB"):format(tree), 600)
end

-- Seeds the scratch root's dpkg database with this machine's entries for
-- the packages named in depends (a Depends field).
local function seed_dpkg_root(root, depends)
  local names = {}
  for name in depends:gmatch("([%w][%w.+-]*)[^,|]*") do names[#names + 1] = name end
  local list = table.concat(names, " ")
  sh_ok(("mkdir -p '%s/var/lib/dpkg/info' '%s/var/lib/dpkg/updates' && touch '%s/var/lib/dpkg/available'")
    :format(root, root, root))
  sh_ok(("dpkg-query -s %s > '%s/var/lib/dpkg/status'"):format(list, root))
  -- Empty file lists: these packages own no file in the scratch root.
  sh_ok(("for p in $(dpkg-query -W -f='${binary:Package}\\n' %s); do : > '%s/var/lib/dpkg/info/'$p.list; done")
    :format(list, root))
end

describe("cpack -G DEB", function()
  local work, deb, root -- temp dir, the .deb, the scratch root
  local depends         -- the package's Depends field

  setup(function()
    work = assert(proc.mkdtemp("/tmp/luaecho-spec."))
    local code, lines = cpack(work, "build-deb", "/usr")
    assert(code == 0, table.concat(lines, "\n"))
    deb = sh_ok(("ls '%s'/build-deb/luaecho_*.deb"):format(work))[1]
    depends = sh_ok(("dpkg-deb -f '%s' Depends"):format(deb))[1]
    root = work .. "/root"
    seed_dpkg_root(root, depends)
  end)

  teardown(function()
    if work then remove_tree(work) end
  end)

  after_each(server.cleanup)

  -- Runs dpkg on the scratch root. --path-include undoes any path-exclude
  -- in this machine's dpkg.cfg.d (minimal images drop man pages and docs):
  -- the test is about what the package ships.
  local function dpkg(args)
    return server.sh(("dpkg --root='%s' --force-script-chrootless --path-include='/*' %s")
      :format(root, args), 120)
  end

  it("refuses a build configured for a prefix other than /usr", function()
    local code, lines = cpack(work, "build-local", "/usr/local")
    assert.is_not.equal(0, code)
    -- CMake wraps the message over several indented lines.
    assert.matches("a .deb installs under /usr, but this build is configured for /usr/local",
      table.concat(lines, " "):gsub("%s+", " "), 1, true)
  end)

  it("depends on the Lua and libuv runtime libraries", function()
    assert.matches("liblua5.4-0 (>= 5.4", depends, 1, true)
    assert.matches("libuv1 (>= ", depends, 1, true)
    assert.matches("libc6 (>= ", depends, 1, true)
  end)

  it("installs with dpkg, /etc/luaecho/config.lua as a conffile", function()
    local code, lines = dpkg("-i '" .. deb .. "'")
    assert(code == 0, table.concat(lines, "\n"))
    local status = table.concat(sh_ok(("dpkg --root='%s' -s luaecho"):format(root)), "\n")
    assert.matches("\nStatus: install ok installed\n", status, 1, true)
    assert.matches("\nConffiles:\n /etc/luaecho/config.lua %x+", status)
  end)

  it("runs the installed luaecho --version", function()
    local lines = sh_ok(("'%s/usr/bin/luaecho' --version"):format(root))
    assert.equal(1, #lines)
    assert.matches("^luaecho %d+%.%d+%.%d+ %(Lua 5%.4%.%d+, libuv %d+%.%d+%.%d+%)$", lines[1])
  end)

  it("serves echo with its /etc/luaecho/config.lua and reloads it on SIGHUP", function()
    local srv = server.start{ bin = root .. "/usr/bin/luaecho",
                              args = { "--listen", "127.0.0.1:0", root .. "/etc/luaecho/config.lua" } }
    local sock = assert(server.connect(srv.host, srv.port))
    assert.same({ "from the package" }, { server.exchange(sock, "from the package") })
    -- What `systemctl reload luaecho` does, through the unit's ExecReload.
    assert(srv:signal("HUP"))
    assert(srv:wait_line(server.record("info", "config reloaded from " ..
      server.literal(root .. "/etc/luaecho/config.lua")), 10), srv:log_text())
    assert.same({ "after reload" }, { server.exchange(sock, "after reload") })
  end)

  it("installs a systemd unit that runs the conffile and reloads with SIGHUP", function()
    local unit = assert(server.read_file(root .. "/lib/systemd/system/luaecho.service"))
    for _, line in ipairs({
      "ExecStart=/usr/bin/luaecho /etc/luaecho/config.lua",
      "ExecReload=/bin/kill -HUP $MAINPID",
      "Restart=on-failure",
      "DynamicUser=yes",
      "WantedBy=multi-user.target",
    }) do
      assert.matches("\n" .. server.literal(line) .. "\n", unit)
    end
  end)

  it("installs a luaecho(1) man page that man -l renders", function()
    local page = root .. "/usr/share/man/man1/luaecho.1.gz"
    local text = table.concat(sh_ok(("MANPAGER=cat MANWIDTH=80 man -l '%s'"):format(page)), "\n")
    for _, want in ipairs({ "luaecho - a scriptable TCP server", "--listen ADDR", "SIGHUP",
                            "EXIT STATUS", "/etc/luaecho/config.lua", "/usr/share/doc/luaecho/" }) do
      assert.matches(want, text, 1, true)
    end
  end)

  it("names in --help the examples and docs it installed", function()
    local text = table.concat(sh_ok(("'%s/usr/bin/luaecho' --help"):format(root)), "\n")
    local examples = text:match("Example handlers: (%S+)")
    local docs = text:match("Documentation: man luaecho, (%S+)")
    assert.same({ "/usr/share/luaecho/examples", "/usr/share/doc/luaecho" }, { examples, docs })
    assert.is_true(server.exists(root .. examples .. "/line_upper.lua"))
    assert.is_true(server.exists(root .. docs .. "/api.md"))
  end)

  it("installs examples whose headers say how to run them installed and from a checkout", function()
    local dir = "/usr/share/luaecho/examples"
    -- Every .lua file, those of subdirectories (clients/) included.
    local names = sh_ok(("cd '%s%s' && find . -name '*.lua' | sed 's|^\\./||' | sort"):format(root, dir))
    assert.is_true(#names >= 9)
    for _, name in ipairs(names) do
      local src = assert(server.read_file(root .. dir .. "/" .. name))
      local header = src:match("^(.-)\n[^-]")
      assert.matches("\n%-%-   luaecho %-%-listen ", header)
      assert.matches("\n%-%-   [^\n]*" .. server.literal(dir .. "/" .. name), header)
      assert.matches("\n%-%-   [^\n]*" .. server.literal("lua/examples/" .. name), header)
      for path in header:gmatch("/usr/share/luaecho/[%w_/]+%.lua") do
        assert.is_true(server.exists(root .. path), name .. ": " .. path .. " is not installed")
      end
    end
  end)

  -- Runs last: it removes what the tests above use.
  it("removes everything with dpkg --purge", function()
    local code, lines = dpkg("--purge luaecho")
    assert(code == 0, table.concat(lines, "\n"))
    for _, file in ipairs({ "/usr/bin/luaecho", "/etc/luaecho/config.lua",
                            "/lib/systemd/system/luaecho.service", "/usr/share/luaecho" }) do
      assert.is_false(server.exists(root .. file), file .. " is left after purge")
    end
  end)
end)
