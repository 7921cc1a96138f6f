-- The admin listener's live page in a real browser: Debian's chromium,
-- headless, driven over the DevTools protocol (a small WebSocket client
-- below, on LuaSocket). The page is opened on a connection, then the spec
-- makes connections and sends data, and reads the DOM for the table and
-- the timeline after each step. A screenshot goes to
-- $LUAECHO_BUILD_DIR/admin_page.png as a test artefact.
--
-- Why not --dump-dom: the page keeps an event stream open, and a headless
-- run with a virtual time budget waits for every request to finish first.
local server = require "server"
local proc = require "spec_proc"
local socket = require "socket"
local mime = require "mime"

local CHROMIUM = "/usr/bin/chromium"
local STEP_TIMEOUT = 20 -- seconds for the page to show one change (2 shared cores)

-- ---- a WebSocket client, just enough for DevTools ---------------------------

local WS = {}
WS.__index = WS

local function ws_connect(url)
  local host, port, path = url:match("^ws://([^:/]+):(%d+)(/.*)$")
  local sock = assert(server.connect(host, tonumber(port), STEP_TIMEOUT))
  assert(sock:send(("GET %s HTTP/1.1\r\nHost: %s:%s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    .. "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"):format(path, host, port)))
  local status = assert(sock:receive("*l"))
  assert(status:find(" 101 ", 1, true), status)
  repeat local l = assert(sock:receive("*l")) until l == ""
  return setmetatable({ sock = sock, next_id = 0 }, WS)
end

-- Sends one text frame (client frames are masked).
function WS:send(text)
  local n, head = #text, nil
  if n < 126 then
    head = string.pack(">BB", 0x81, 0x80 | n)
  elseif n < 65536 then
    head = string.pack(">BBI2", 0x81, 0x80 | 126, n)
  else
    head = string.pack(">BBI8", 0x81, 0x80 | 127, n)
  end
  local key = { 0x12, 0x34, 0x56, 0x78 }
  local masked = text:gsub("()(.)", function(i, ch)
    return string.char(ch:byte() ~ key[(i - 1) % 4 + 1])
  end)
  assert(self.sock:send(head .. string.char(table.unpack(key)) .. masked))
end

-- Returns the next whole message (continuation frames joined).
function WS:receive()
  local parts = {}
  while true do
    local b = assert(self.sock:receive(2))
    local b1, b2 = b:byte(1, 2)
    local n = b2 & 0x7f
    if n == 126 then n = string.unpack(">I2", assert(self.sock:receive(2)))
    elseif n == 127 then n = string.unpack(">I8", assert(self.sock:receive(8))) end
    parts[#parts + 1] = n > 0 and assert(self.sock:receive(n)) or ""
    if b1 & 0x80 ~= 0 then return table.concat(parts) end
  end
end

-- Calls a DevTools method (params: JSON text) and returns the reply's text.
function WS:call(method, params)
  self.next_id = self.next_id + 1
  local id = self.next_id
  self:send(('{"id":%d,"method":"%s","params":%s}'):format(id, method, params or "{}"))
  while true do
    local msg = self:receive()
    if msg:find('^{"id":' .. id .. ',') then
      assert(not msg:find('^{"id":%d+,"error"'), msg)
      return msg
    end
  end
end

local function js_string(s)
  return '"' .. s:gsub('[\\"]', "\\%0"):gsub("\n", "\\n") .. '"'
end

local function uri_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- Evaluates a JavaScript expression giving a string in the page; returns
-- that string. (It travels percent-encoded, so no JSON decoder is needed.)
function WS:eval(expr)
  local reply = self:call("Runtime.evaluate",
    ('{"expression":%s,"returnByValue":true}'):format(js_string("encodeURIComponent(String(" .. expr .. "))")))
  local value = reply:match('"value":"([^"]*)"')
  assert(value, reply)
  return uri_decode(value)
end

-- Waits (bounded) until the expression's value satisfies check; returns it.
function WS:wait_for(expr, check, what)
  local deadline = proc.now() + STEP_TIMEOUT
  local value
  repeat
    value = self:eval(expr)
    if check(value) then return value end
    proc.sleep(0.1)
  until proc.now() > deadline
  error(("the page did not show %s; it shows:\n%s"):format(what, value), 2)
end

-- ---- chromium -------------------------------------------------------------------

-- Starts headless chromium with remote debugging, stopped by the next
-- cleanup. Returns the DevTools address (host:port).
local function start_chromium(dir)
  local p = assert(proc.spawn({ CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
    "--no-first-run", "--disable-extensions", "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0", "--user-data-dir=" .. dir .. "/chromium",
    "--window-size=1200,900", "about:blank" }, { stdin_null = true }))
  server.defer(function()
    p:kill("TERM")
    if not p:wait(10) then p:kill("KILL"); p:wait(5) end
  end)
  local deadline = proc.now() + 30
  while proc.now() < deadline do
    local line = p:readline(math.max(0, deadline - proc.now()))
    if not line then break end
    local addr = line:match("DevTools listening on ws://([%d.]+:%d+)/")
    if addr then return addr end
  end
  error("chromium did not start its DevTools listener")
end

-- Opens url in a new tab; returns its DevTools WebSocket.
local function open_tab(devtools, url)
  local host, port = devtools:match("^(.+):(%d+)$")
  local s = assert(server.connect(host, tonumber(port), STEP_TIMEOUT))
  -- A blank tab, then a navigation once the spec is attached to it.
  assert(s:send(("PUT /json/new HTTP/1.1\r\nHost: %s\r\n\r\n"):format(devtools)))
  local status = assert(s:receive("*l"))
  assert(status:find(" 200 ", 1, true), status)
  local length
  repeat
    local l = assert(s:receive("*l"))
    length = length or tonumber(l:lower():match("^content%-length:%s*(%d+)"))
  until l == ""
  assert(length, "no Content-Length")
  local body = assert(s:receive(length))
  s:close()
  local ws = body:match('"webSocketDebuggerUrl":%s*"([^"]+)"')
  assert(ws, body)
  local tab = ws_connect(ws)
  tab:call("Page.navigate", ('{"url":%s}'):format(js_string(url)))
  return tab
end

-- ---- the page -------------------------------------------------------------------

-- The text of the table row of connection id ("" when absent).
local function row(id)
  return ('(document.getElementById("conn-%d") || {}).textContent || ""'):format(id)
end

-- The timeline's events, one "class|label" line each.
local TIMELINE = [[Array.from(document.querySelectorAll("#timeline g.ev")).map(
  g => g.getAttribute("class") + "|" + Array.from(g.querySelectorAll("text.label")).map(t => t.textContent).join(" ")).join("\n")]]

-- Returns the admin's id of the connection of client c.
local function conn_id(admin_addr, c)
  local host, port = c:getsockname()
  local a = assert(server.connect(admin_addr))
  assert(a:send("list\n"))
  while true do
    local l = assert(a:receive("*l"))
    local id, peer = l:match("^(%d+)%s+(%S+)")
    if peer == ("%s:%d"):format(host, port) then
      a:close()
      return tonumber(id)
    end
  end
end

describe("admin page", function()
  after_each(server.cleanup)

  it("shows the connection table and a live timeline in a real browser", function()
    local srv = server.start{
      config = 'listen = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n',
    }
    -- A start-up line: server.start has read it already.
    local line = assert(srv:log_text():match("admin interface on [^\n]+"), srv:log_text())
    local admin = server.parse_addr(line:match("admin interface on (.+)$"))
    local c = assert(server.connect(srv.host, srv.port))
    assert.equal("hello\n", (server.exchange(c, "hello\n")))
    local id = conn_id(admin, c)
    local host, port = c:getsockname()

    local tab = open_tab(start_chromium(srv.dir),
      ("http://%s:%d/?conn=%d"):format(admin.host, admin.port, id))

    -- The table shows the connection, and the page follows it.
    local text = tab:wait_for(row(id), function(v) return v:find("conn:recv", 1, true) end, "conn " .. id .. " in the table")
    assert.truthy(text:find(("%s:%d"):format(host, port), 1, true), text)
    assert.truthy(text:find(("%s:%d"):format(srv.host, srv.port), 1, true), text)
    tab:wait_for('document.getElementById("status").textContent',
      function(v) return v:find("since you chose it", 1, true) end, "the subscription")
    assert.equal("Timeline of conn " .. id, tab:eval('document.getElementById("timeline-title").textContent'))

    -- Data both ways appears as arrows with their sizes.
    server.exchange(c, "ping\n")
    local events = tab:wait_for(TIMELINE, function(v) return v:find("ev out|5 B", 1, true) end, "the echo of ping")
    assert.truthy(events:find('ev in|5 B  "ping\\n"', 1, true), events)

    -- A second connection shows up in the table (the page polls).
    local c2 = assert(server.connect(srv.host, srv.port))
    server.exchange(c2, "second\n")
    local id2 = conn_id(admin, c2)
    tab:wait_for(row(id2), function(v) return v:find("7 B", 1, true) end, "conn " .. id2 .. " in the table")

    -- The client's FIN and the end of the connection.
    c:shutdown("send")
    events = tab:wait_for(TIMELINE, function(v) return v:find("closed (peer FIN)", 1, true) end, "the close")
    assert.truthy(events:find("ev in fin|FIN", 1, true), events)
    tab:wait_for('document.getElementById("status").textContent',
      function(v) return v:find("has ended", 1, true) end, "the end of the stream")
    tab:wait_for(row(id), function(v) return v == "" end, "conn " .. id .. " gone from the table")

    -- The screenshot, a test artefact.
    local reply = tab:call("Page.captureScreenshot", '{"format":"png"}')
    local png = mime.unb64(assert(reply:match('"data":"([^"]+)"')))
    assert.equal("\137PNG", png:sub(1, 4))
    local out = (os.getenv("LUAECHO_BUILD_DIR") or "build") .. "/admin_page.png"
    server.write_file(out, png)
  end)
end)
