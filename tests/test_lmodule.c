/* Unit tests for the luaecho module (include/luaecho/lmodule.h): sleep,
 * spawn and join, and connect, on a real loop with real sockets on
 * 127.0.0.1 (and a unix socket in a temporary directory). What each wait
 * owns (a timer, a task, a connect request) must be freed however the
 * coroutine ends; running these tests under valgrind checks that.
 */
#include "test_support.h"

#include <stdarg.h>

#include "test_loop.h"

/* h_handler with printf-style formatting (for port numbers). */
static void handler_fmt(const char *fmt, ...) {
  char code[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(code, sizeof code, fmt, ap);
  va_end(ap);
  h_handler(&H, code);
}

/* Runs code on the main thread; returns the error it raised, or "". */
static const char *main_error(const char *code) {
  static char out[512];
  out[0] = '\0';
  if (luaL_dostring(H.L, code) != LUA_OK)
    snprintf(out, sizeof out, "%s", lua_tostring(H.L, -1));
  lua_settop(H.L, 0);
  return out;
}

/* ---- sleep ---- */

static void test_sleep_wakes_after_the_time(void **state) {
  (void)state;
  h_handler(&H,
            "local L = require 'luaecho'\n"
            "return function(conn)\n"
            "  -- Computing first (where it cannot be preempted) leaves\n"
            "  -- the loop's cached clock behind; the sleep must still\n"
            "  -- last its whole time.\n"
            "  table.sort({1, 2}, function(a, b)\n"
            "    local c = os.clock()\n"
            "    while os.clock() - c < 0.1 do end\n"
            "    return a < b\n"
            "  end)\n"
            "  local t0 = L.now()\n"
            "  L.sleep(0.05)\n"
            "  slept = L.now() - t0\n"
            "  L.sleep(0)\n"
            "  conn:send('ok')\n"
            "end\n");
  int fd = h_client(&H);
  char buf[4];
  int end;
  assert_int_equal(h_client_recv(&H, fd, buf, 3, &end), 2);
  assert_memory_equal(buf, "ok", 2);
  assert_int_equal(end, 1);
  lua_getglobal(H.L, "slept");
  assert_true(lua_tonumber(H.L, -1) >= 0.045);
  lua_pop(H.L, 1);
  close(fd);
}

static void test_sleep_misuse_raises(void **state) {
  (void)state;
  assert_contains(main_error("require('luaecho').sleep(1)"),
                  "luaecho.sleep must be called from a connection's handler");
  h_handler(&H,
            "return function(conn)\n"
            "  local ok, err = pcall(require('luaecho').sleep, -1)\n"
            "  bad = err\n"
            "end\n");
  int fd = h_client(&H);
  assert_contains(h_global(&H, "bad"), "seconds must be >= 0");
  close(fd);
}

/* A connection aborted while its handler sleeps: the timer is closed and
 * freed, and the loop can close (h_close checks it). */
static void test_sleep_ended_by_abort(void **state) {
  (void)state;
  h_handler(&H, "return function(conn) require('luaecho').sleep(60) end\n");
  int fd = h_client(&H);
  le_conn_abort(H.accepted[0], LE_ESHUTDOWN);
  RUN_UNTIL(&H, H.freed == 1);
  close(fd);
}

/* A spawned task sleeping when its handler returns is ended with it
 * (le_coro_release cancels the sleep). */
static void test_sleeping_task_ended_with_handler(void **state) {
  (void)state;
  h_handler(&H,
            "local L = require 'luaecho'\n"
            "return function(conn)\n"
            "  task = L.spawn(function() L.sleep(60) woke = true end)\n"
            "  conn:recv()\n"
            "end\n");
  int fd = h_client(&H);
  assert_string_equal(h_global(&H, "task"), "luaecho.task (running)");
  shutdown(fd, SHUT_WR);
  RUN_UNTIL(&H, H.freed == 1);
  assert_string_equal(h_global(&H, "task"), "luaecho.task (closed)");
  assert_false(h_global_is_set(&H, "woke"));
  close(fd);
}

/* ---- spawn and join ---- */

static void test_spawn_join_results(void **state) {
  (void)state;
  h_handler(&H,
            "local L = require 'luaecho'\n"
            "return function(conn)\n"
            "  local t = L.spawn(function(a, b)\n"
            "    L.sleep(0.01) return a + b, nil, 'x' end, 1, 2)\n"
            "  before = tostring(t)\n"
            "  local r = table.pack(t:join())\n"
            "  results = r.n .. ':' .. r[1] .. ',' .. tostring(r[2])"
            "    .. ',' .. r[3]\n"
            "  after = tostring(t)\n"
            "  local quick = L.spawn(function() return 'now' end)\n"
            "  again = quick:join() .. quick:join()\n"
            "end\n");
  int fd = h_client(&H);
  RUN_UNTIL(&H, h_global_is_set(&H, "again"));
  assert_string_equal(h_global(&H, "before"), "luaecho.task (running)");
  assert_string_equal(h_global(&H, "results"), "3:3,nil,x");
  assert_string_equal(h_global(&H, "after"), "luaecho.task (done)");
  assert_string_equal(h_global(&H, "again"), "nownow");
  close(fd);
}

static void test_join_of_failed_task(void **state) {
  (void)state;
  h_handler(&H,
            "local L = require 'luaecho'\n"
            "return function(conn)\n"
            "  local t = L.spawn(function() L.sleep(0.01) error('boom') end)\n"
            "  local r, err = t:join()\n"
            "  joined = tostring(r) .. ' ' .. err\n"
            "  state = tostring(t)\n"
            "end\n");
  int fd = h_client(&H);
  RUN_UNTIL(&H, h_global_is_set(&H, "state"));
  assert_contains(h_global(&H, "joined"), "nil ");
  assert_contains(h_global(&H, "joined"), "handler.lua:3: boom");
  assert_string_equal(h_global(&H, "state"), "luaecho.task (failed)");
  assert_contains(h_log(&H), "conn 1: spawned coroutine error: ");
  assert_contains(h_log(&H), "boom");
  assert_true(strstr(h_log(&H), "handler error") == NULL);
  close(fd);
}

static void test_join_busy_and_self(void **state) {
  (void)state;
  h_handler(
      &H,
      "local L = require 'luaecho'\n"
      "return function(conn)\n"
      "  local t = L.spawn(function() L.sleep(0.02) return 1 end)\n"
      "  local j = L.spawn(function() return t:join() end)\n"
      "  local r, err = t:join()\n"
      "  busy = tostring(r) .. ',' .. err\n"
      "  joined = j:join()\n"
      "  local me\n"
      "  me = L.spawn(function() L.sleep(0) return pcall(me.join, me) end)\n"
      "  local _, e = me:join()\n"
      "  self_err = e\n"
      "end\n");
  int fd = h_client(&H);
  RUN_UNTIL(&H, h_global_is_set(&H, "self_err"));
  assert_string_equal(h_global(&H, "busy"), "nil,busy");
  assert_string_equal(h_global(&H, "joined"), "1");
  assert_contains(h_global(&H, "self_err"), "a task cannot join itself");
  close(fd);
}

static void test_join_from_another_connection_raises(void **state) {
  (void)state;
  h_handler(&H,
            "local L = require 'luaecho'\n"
            "return function(conn)\n"
            "  if not shared then\n"
            "    shared = L.spawn(function() L.sleep(60) end)\n"
            "    conn:recv()\n"
            "  else\n"
            "    local ok, err = pcall(shared.join, shared)\n"
            "    other = err\n"
            "  end\n"
            "end\n");
  int a = h_client(&H);
  int b = h_client(&H);
  shutdown(b, SHUT_WR);
  RUN_UNTIL(&H, H.freed == 1);
  assert_contains(h_global(&H, "other"),
                  "task:join: the task belongs to another connection");
  /* The task dies with its connection; the handle says so. */
  shutdown(a, SHUT_WR);
  RUN_UNTIL(&H, H.freed == 2);
  assert_string_equal(h_global(&H, "shared"), "luaecho.task (closed)");
  assert_contains(main_error("shared:join()"),
                  "task:join must be called from a connection's handler");
  close(a);
  close(b);
}

/* ---- log, now, latest, version ---- */

static void test_log_now_latest_version(void **state) {
  (void)state;
  assert_contains(main_error("require('luaecho').version()"),
                  "luaecho.version must be called from a connection's handler");
  assert_contains(main_error("require('luaecho').latest()"),
                  "luaecho.latest must be called from a connection's handler");
  assert_string_equal(main_error("local L = require('luaecho')\n"
                                 "assert(L.now() <= L.now())\n"
                                 "L.log('warn', 'from main', 1, nil)\n"),
                      "");
  assert_contains(h_log(&H), "[warn] from main 1 nil\n");
  h_handler(&H,
            "local L = require 'luaecho'\n"
            "return function(conn)\n"
            "  L.log('info', 'hello', 42)\n"
            "  local ok, err = pcall(L.log, 'loud', 'x')\n"
            "  bad_level = err\n"
            "  local v, newest = L.version()\n"
            "  local fn, n = L.latest()\n"
            "  versions = v .. ',' .. newest .. ',' .. n .. ',' .. type(fn)\n"
            "end\n");
  int fd = h_client(&H);
  assert_contains(h_log(&H), "[info] conn 1: hello 42\n");
  assert_contains(h_global(&H, "bad_level"), "invalid option 'loud'");
  assert_string_equal(h_global(&H, "versions"), "1,1,1,function");
  close(fd);
}

/* ---- connect ---- */

/* The resolver, as the core sees it (linked with --wrap=uv_getaddrinfo).
 * Names ending in ".test" are this file's: "two.test" resolves to
 * 127.0.0.2 then 127.0.0.1, "rev.test" to 127.0.0.1 then 127.0.0.2,
 * "unreach.test" to 224.0.0.1 then 224.0.0.2 (a multicast address, which
 * a TCP connect refuses at once, before any callback), "unreach1.test" to
 * 224.0.0.1 then 127.0.0.1, "slow.test" to 127.0.0.1 after SLOW_MS, and
 * "slowrev.test" to what "rev.test" does after SLOW_MS; any other name
 * goes to libuv's resolver. The fake answers are libuv's own
 * answer for 127.0.0.1, so they come on the loop as a real one does and
 * uv_freeaddrinfo frees them. */
int __real_uv_getaddrinfo(uv_loop_t *loop, uv_getaddrinfo_t *req,
                          uv_getaddrinfo_cb cb, const char *node,
                          const char *service, const struct addrinfo *hints);
int __wrap_uv_getaddrinfo(uv_loop_t *loop, uv_getaddrinfo_t *req,
                          uv_getaddrinfo_cb cb, const char *node,
                          const char *service, const struct addrinfo *hints);

#define SLOW_MS 300

static struct {
  uv_getaddrinfo_cb cb; /* the core's callback */
  char name[32];        /* which name was asked for */
  int slow;             /* its answer is held back SLOW_MS */
  uv_timer_t delay;     /* holds the slow answer */
  uv_getaddrinfo_t *req;
  int status;
  struct addrinfo *res;
} fake;

/* Returns a one-element addrinfo list for the IPv4 address ip, allocated
 * as glibc allocates its own (one block), so that freeaddrinfo frees it. */
static struct addrinfo *fake_addr(const char *ip) {
  struct block {
    struct addrinfo ai;
    struct sockaddr_in sin;
  } *b = calloc(1, sizeof *b);
  assert_non_null(b);
  uv_ip4_addr(ip, 0, &b->sin);
  b->ai.ai_family = AF_INET;
  b->ai.ai_socktype = SOCK_STREAM;
  b->ai.ai_addrlen = sizeof b->sin;
  b->ai.ai_addr = (struct sockaddr *)&b->sin;
  return &b->ai;
}

static void on_delay_closed(uv_handle_t *h) { (void)h; }

static void on_delay(uv_timer_t *t) {
  uv_close((uv_handle_t *)t, on_delay_closed);
  fake.cb(fake.req, fake.status, fake.res);
}

static void on_fake_resolved(uv_getaddrinfo_t *req, int status,
                             struct addrinfo *res) {
  if (status == 0 && strcmp(fake.name, "two.test") == 0) {
    struct addrinfo *first = fake_addr("127.0.0.2");
    first->ai_next = res;
    res = first;
  } else if (status == 0 && (strcmp(fake.name, "rev.test") == 0 ||
                             strcmp(fake.name, "slowrev.test") == 0)) {
    assert_null(res->ai_next);
    res->ai_next = fake_addr("127.0.0.2");
  } else if (status == 0 && strcmp(fake.name, "unreach.test") == 0) {
    uv_freeaddrinfo(res);
    res = fake_addr("224.0.0.1");
    res->ai_next = fake_addr("224.0.0.2");
  } else if (status == 0 && strcmp(fake.name, "unreach1.test") == 0) {
    struct addrinfo *first = fake_addr("224.0.0.1");
    first->ai_next = res;
    res = first;
  }
  if (fake.slow) {
    fake.req = req;
    fake.status = status;
    fake.res = res;
    uv_timer_init(req->loop, &fake.delay);
    uv_timer_start(&fake.delay, on_delay, SLOW_MS, 0);
    return;
  }
  fake.cb(req, status, res);
}

int __wrap_uv_getaddrinfo(uv_loop_t *loop, uv_getaddrinfo_t *req,
                          uv_getaddrinfo_cb cb, const char *node,
                          const char *service, const struct addrinfo *hints) {
  size_t n = node ? strlen(node) : 0;
  if (n < 5 || strcmp(node + n - 5, ".test") != 0)
    return __real_uv_getaddrinfo(loop, req, cb, node, service, hints);
  fake.cb = cb;
  snprintf(fake.name, sizeof fake.name, "%s", node);
  fake.slow = strncmp(node, "slow", 4) == 0;
  return __real_uv_getaddrinfo(loop, req, on_fake_resolved, "127.0.0.1",
                               service, hints);
}

/* The first connection connects back to the listener; the second, made by
 * that connect, echoes one message. */
static const char *connect_handler =
    "local L = require 'luaecho'\n"
    "return function(conn)\n"
    "  n = (n or 0) + 1\n"
    "  if n > 1 then\n"
    "    local d = conn:recv()\n"
    "    if d then conn:send(d) end\n"
    "    return\n"
    "  end\n"
    "  local c2, err = L.connect(%s)\n"
    "  if not c2 then result = 'nil,' .. err return end\n"
    "  c2:send('ping')\n"
    "  result = c2:recv()\n"
    "  c2:close()\n"
    "end\n";

/* Has the next client's handler call L.connect(<target>), where target is
 * formatted from fmt, and runs the loop until it has a result. Returns the
 * client's socket. */
static int connect_from_handler(const char *fmt, ...) {
  char target[128];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(target, sizeof target, fmt, ap);
  va_end(ap);
  handler_fmt(connect_handler, target);
  int fd = h_client(&H);
  RUN_UNTIL(&H, h_global_is_set(&H, "result"));
  return fd;
}

/* The connect worked and the message came back; once the client closes,
 * every connection goes, `freed` in all (-1: any number). */
static void assert_echoed_then_freed(int fd, int freed) {
  assert_string_equal(h_global(&H, "result"), "ping");
  shutdown(fd, SHUT_WR);
  RUN_UNTIL(&H, H.ctx.count == 0);
  if (freed >= 0) assert_int_equal(H.freed, freed);
  close(fd);
}

static void test_connect_to_listener(void **state) {
  (void)state;
  int fd = connect_from_handler("'127.0.0.1', %d", H.port);
  assert_int_equal(H.naccepted, 2);
  assert_echoed_then_freed(fd, 3);
}

static void test_connect_by_name(void **state) {
  (void)state;
  /* localhost may resolve to ::1 first, where nothing listens: then
   * 127.0.0.1 is tried next. */
  int fd = connect_from_handler("'localhost', %d, {timeout = 5}", H.port);
  assert_int_equal(H.naccepted, 2);
  assert_echoed_then_freed(fd, -1);
}

static void test_connect_refused(void **state) {
  (void)state;
  int fd = connect_from_handler("'127.0.0.1', %d", h_closed_port());
  assert_string_equal(h_global(&H, "result"), "nil,econnrefused");
  /* The failed outbound connection is freed by itself. */
  RUN_UNTIL(&H, H.ctx.count == 1);
  assert_int_equal(H.freed, 1);
  close(fd);
}

static void test_connect_misuse_raises(void **state) {
  (void)state;
  assert_contains(main_error("require('luaecho').connect('127.0.0.1', 1)"),
                  "luaecho.connect must be called from a connection's handler");
  h_handler(&H,
            "local L = require 'luaecho'\n"
            "return function(conn)\n"
            "  local _, e1 = pcall(L.connect, '127.0.0.1', 0)\n"
            "  local _, e2 = pcall(L.connect, '127.0.0.1', 1, {bogus = 1})\n"
            "  local _, e3 = pcall(L.connect, '127.0.0.1', 1, {timeout = 0})\n"
            "  errs = e1 .. '|' .. e2 .. '|' .. e3\n"
            "end\n");
  int fd = h_client(&H);
  RUN_UNTIL(&H, h_global_is_set(&H, "errs"));
  const char *errs = h_global(&H, "errs");
  assert_contains(errs, "port must be 1..65535");
  assert_contains(errs, "luaecho.connect: unknown option 'bogus'");
  assert_contains(errs, "option 'timeout': expected a number of seconds > 0");
  close(fd);
}

static void test_connect_unix(void **state) {
  (void)state;
  static uv_pipe_t unix_server; /* outlives the test until h_close */
  char path[128], target[192];
  snprintf(path, sizeof path, "%s/s.sock", H.dir);
  assert_int_equal(uv_pipe_init(&H.loop, &unix_server, 0), 0);
  unix_server.data = &H;
  assert_int_equal(uv_pipe_bind(&unix_server, path), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&unix_server, 4, h_on_connection),
                   0);
  snprintf(target, sizeof target, "'unix:%s'", path);
  handler_fmt(connect_handler, target);
  int fd = h_client(&H);
  RUN_UNTIL(&H, h_global_is_set(&H, "result"));
  assert_string_equal(h_global(&H, "result"), "ping");
  shutdown(fd, SHUT_WR);
  RUN_UNTIL(&H, H.freed == 3);
  uv_close((uv_handle_t *)&unix_server, NULL);
  unlink(path);
  close(fd);
}

static void test_connect_timeout(void **state) {
  (void)state;
  int filler, port;
  int lfd = h_full_listener(&filler, &port);
  int fd = connect_from_handler("'127.0.0.1', %d, {timeout = 0.05}", port);
  assert_string_equal(h_global(&H, "result"), "nil,timeout");
  RUN_UNTIL(&H, H.ctx.count == 1);
  close(fd);
  close(filler);
  close(lfd);
}

/* A name with two addresses, the first refusing (nothing listens on
 * 127.0.0.2): the second is tried and connects. */
static void test_connect_tries_every_address(void **state) {
  (void)state;
  int fd = connect_from_handler("'two.test', %d", H.port);
  assert_int_equal(H.naccepted, 2);
  /* The handler's connection, the refused attempt, the outbound one and
   * the listener's end of it. */
  assert_echoed_then_freed(fd, 4);
}

/* Every address refuses: the error is the last attempt's. */
static void test_connect_every_address_refused(void **state) {
  (void)state;
  int fd = connect_from_handler("'two.test', %d", h_closed_port());
  assert_string_equal(h_global(&H, "result"), "nil,econnrefused");
  RUN_UNTIL(&H, H.ctx.count == 1);
  close(fd);
}

/* The timeout covers name resolution: a resolver slower than it ends the
 * connect with "timeout", and its late answer is freed (valgrind and ASan
 * check) without touching the handler, which has gone on. */
static void test_connect_timeout_covers_resolution(void **state) {
  (void)state;
  int fd = connect_from_handler("'slow.test', %d, {timeout = 0.05}", H.port);
  assert_string_equal(h_global(&H, "result"), "nil,timeout");
  /* The answer is still held back: the timeout, not the resolver, ended
   * the wait. */
  assert_true(fake.slow && uv_is_active((uv_handle_t *)&fake.delay));
  assert_int_equal(H.naccepted, 1); /* nothing connected to the listener */
  close(fd);
}

/* The same slow resolver with time to spare: the connect waits for it. */
static void test_connect_waits_for_slow_resolution(void **state) {
  (void)state;
  int fd = connect_from_handler("'slow.test', %d, {timeout = 5}", H.port);
  assert_echoed_then_freed(fd, 3);
}

/* Where a coroutine cannot wait, each function that would wait raises
 * and frees what it prepared (connect's request: valgrind checks). */
static void test_waits_refused_in_sort_comparator(void **state) {
  (void)state;
  h_handler(&H,
            "local L = require 'luaecho'\n"
            "local function in_sort(f)\n"
            "  local ok, err = pcall(table.sort, {1, 2}, function(a, b)\n"
            "    f() return a < b end)\n"
            "  return err\n"
            "end\n"
            "return function(conn)\n"
            "  local t = L.spawn(function() L.sleep(0.01) end)\n"
            "  errs = in_sort(function() L.sleep(0.01) end) .. '|' ..\n"
            "    in_sort(function() L.connect('127.0.0.1', 1) end) .. '|' ..\n"
            "    in_sort(function() t:join() end) .. '|' ..\n"
            "    in_sort(function() conn:recv() end)\n"
            "  joined = t:join() == nil\n"
            "end\n");
  int fd = h_client(&H);
  RUN_UNTIL(&H, h_global_is_set(&H, "joined"));
  const char *errs = h_global(&H, "errs");
  assert_contains(errs, "luaecho.sleep cannot wait here");
  assert_contains(errs, "luaecho.connect cannot wait here");
  assert_contains(errs, "task:join cannot wait here");
  assert_contains(errs, "conn:recv cannot wait here");
  assert_int_equal(H.ctx.count, 1); /* no outbound connection was made */
  close(fd);
}

/* Has the handler connect to `host` at a listener whose backlog is full,
 * and ends its connection while the connect to the first address is in
 * flight: that attempt is abandoned (closed and freed), no other is
 * made, and the request is freed. */
static void end_while_connecting(const char *host) {
  int filler, port;
  int lfd = h_full_listener(&filler, &port);
  char target[64];
  snprintf(target, sizeof target, "'%s', %d", host, port);
  handler_fmt(connect_handler, target);
  int fd = h_client(&H);
  le_conn *c = H.accepted[0];
  RUN_UNTIL(&H, H.ctx.count == 2); /* resolved (a name), connecting */
  assert_string_equal(le_coro_waits_on(&c->lc.coro), "luaecho.connect");
  le_conn_abort(c, LE_ESHUTDOWN);
  RUN_UNTIL(&H, H.freed == 2);
  uv_run(&H.loop, UV_RUN_NOWAIT);
  assert_int_equal(H.ctx.count, 0);
  assert_false(h_global_is_set(&H, "result"));
  close(fd);
  close(filler);
  close(lfd);
}

static void test_ended_while_connecting(void **state) {
  (void)state;
  end_while_connecting("127.0.0.1");
}

/* The same with two addresses, 127.0.0.1 first: 127.0.0.2 is never
 * tried. */
static void test_ended_while_connecting_to_first_of_two(void **state) {
  (void)state;
  end_while_connecting("rev.test");
}

static void test_ended_while_resolving(void **state) {
  (void)state;
  char target[64];
  snprintf(target, sizeof target, "'localhost', %d", H.port);
  handler_fmt(connect_handler, target);
  int fd = h_client(&H);
  le_conn *c = H.accepted[0];
  assert_string_equal(le_coro_waits_on(&c->lc.coro), "luaecho.connect");
  le_conn_abort(c, LE_ESHUTDOWN);
  RUN_UNTIL(&H, H.freed >= 1);
  /* The resolver's answer, when it comes, finds nobody and frees the
   * request; h_close runs the loop until it has. */
  assert_false(h_global_is_set(&H, "result"));
  close(fd);
}

/* The connect succeeds while another coroutine runs (simulated by the
 * scheduler's depth), so the wake only makes the handler READY; it is
 * ended before its continuation runs, and the connected socket nobody will
 * adopt is closed by the wait's drop. */
static void test_connected_result_dropped(void **state) {
  (void)state;
  char target[64];
  snprintf(target, sizeof target, "'127.0.0.1', %d", H.port);
  handler_fmt(connect_handler, target);
  int fd = h_client(&H);
  le_conn *c = H.accepted[0];
  assert_string_equal(le_coro_waits_on(&c->lc.coro), "luaecho.connect");
  H.ctx.sched.depth++;
  RUN_UNTIL(&H, c->lc.coro.state == LE_CORO_READY);
  H.ctx.sched.depth--;
  assert_true(H.ctx.count >= 2); /* and the listener may have accepted it */
  le_conn_abort(c, LE_ESHUTDOWN);
  assert_false(h_global_is_set(&H, "result"));
  /* The handler, the outbound connection, and the connection it made to
   * the listener (which sees EOF) all go. */
  RUN_UNTIL(&H, H.freed == 3 && H.ctx.count == 0);
  assert_false(h_global_is_set(&H, "result"));
  close(fd);
}

/* Every address of the name fails in le_conn_connect itself, before any
 * callback (a TCP connect to a multicast address): the wait ends with the
 * last error, and the sockets made for the attempts are freed. */
static void test_connect_every_address_fails_at_once(void **state) {
  (void)state;
  int fd = connect_from_handler("'unreach.test', %d", H.port);
  assert_string_equal(h_global(&H, "result"), "nil,enetunreach");
  RUN_UNTIL(&H, H.ctx.count == 1);
  assert_int_equal(H.naccepted, 1);
  close(fd);
}

/* The first address fails at once, the second connects. */
static void test_connect_after_an_address_failing_at_once(void **state) {
  (void)state;
  int fd = connect_from_handler("'unreach1.test', %d", H.port);
  assert_int_equal(H.naccepted, 2);
  assert_echoed_then_freed(fd, -1);
}

/* The connect cannot even start (arm fails): a literal address that
 * le_conn_connect refuses at once, and a name libuv's resolver refuses
 * (not UTF-8). The error comes back at once; nothing is left behind. */
static void test_connect_cannot_start(void **state) {
  (void)state;
  int fd = connect_from_handler("'224.0.0.1', %d", H.port);
  assert_string_equal(h_global(&H, "result"), "nil,enetunreach");
  RUN_UNTIL(&H, H.ctx.count == 1);
  close(fd);
  assert_int_equal(luaL_dostring(H.L, "result, n = nil, nil"), LUA_OK);
  fd = connect_from_handler("'\\255.example', %d", H.port);
  assert_string_equal(h_global(&H, "result"), "nil,einval");
  RUN_UNTIL(&H, H.ctx.count == 1);
  assert_int_equal(H.naccepted, 2); /* the two handlers' connections */
  close(fd);
}

/* The handler's connection is gone (or going) while the resolver still
 * holds its answer: once the answer came, nothing connected (it found
 * nobody waiting) and nothing is left. Closes fd. */
static void assert_late_answer_ignored(int fd) {
  RUN_UNTIL(&H, H.freed == 1 && !uv_is_active((uv_handle_t *)&fake.delay));
  uv_run(&H.loop, UV_RUN_NOWAIT); /* one more turn */
  assert_int_equal(H.ctx.count, 0);
  assert_false(h_global_is_set(&H, "result"));
  close(fd);
}

/* The handler sits in connect while the resolver holds its answer back:
 * the request has all three holders (the wait, the resolver, the timer).
 * The connection is ended; the late answer finds nobody, connects nowhere,
 * and is freed with the request (valgrind and ASan check). */
static void test_ended_while_resolving_slowly(void **state) {
  (void)state;
  handler_fmt(connect_handler, "'slow.test', 1, {timeout = 5}");
  int fd = h_client(&H);
  le_conn *c = H.accepted[0];
  assert_string_equal(le_coro_waits_on(&c->lc.coro), "luaecho.connect");
  RUN_UNTIL(&H, uv_is_active((uv_handle_t *)&fake.delay));
  le_conn_abort(c, LE_ESHUTDOWN);
  assert_late_answer_ignored(fd);
}

/* A task waits in connect for a slow answer when its handler returns: the
 * task is ended with its connection, and the late answer is thrown away. */
static void test_task_in_connect_ended_with_handler(void **state) {
  (void)state;
  h_handler(&H, "local L = require 'luaecho'\n"
                "return function(conn)\n"
                "  L.spawn(function()\n"
                "    result = L.connect('slow.test', 1, {timeout = 5}) end)\n"
                "end\n");
  int fd = h_client(&H);
  RUN_UNTIL(&H, uv_is_active((uv_handle_t *)&fake.delay));
  shutdown(fd, SHUT_WR); /* the connection need not linger */
  RUN_UNTIL(&H, H.freed == 1);
  assert_true(uv_is_active((uv_handle_t *)&fake.delay)); /* not answered */
  assert_late_answer_ignored(fd);
}

/* Stands in for the scheduler's kick: the woken coroutine stays on the
 * ready list until the test ends it. */
static void kick_nothing(le_coro_sched *s) { (void)s; }

/* The timeout ends resolution while another coroutine runs (simulated by
 * the scheduler's depth, with the kick held back), so the handler is only
 * made READY; it is ended before its continuation runs (the wait's drop),
 * and the resolver's late answer still frees the request. */
static void test_timed_out_resolution_dropped(void **state) {
  (void)state;
  handler_fmt(connect_handler, "'slow.test', 1, {timeout = 0.05}");
  int fd = h_client(&H);
  le_conn *c = H.accepted[0];
  assert_string_equal(le_coro_waits_on(&c->lc.coro), "luaecho.connect");
  void (*kick)(le_coro_sched *) = H.ctx.sched.kick;
  H.ctx.sched.kick = kick_nothing;
  H.ctx.sched.depth++;
  RUN_UNTIL(&H, c->lc.coro.state == LE_CORO_READY);
  H.ctx.sched.depth--;
  H.ctx.sched.kick = kick;
  assert_true(uv_is_active((uv_handle_t *)&fake.delay)); /* not answered */
  le_conn_abort(c, LE_ESHUTDOWN);
  assert_late_answer_ignored(fd);
}

/* Server shutdown (h_close: every connection aborted, then the loop run
 * until every handle closed) while the resolver holds the answer of a
 * name that resolves to two addresses. */
static void test_shutdown_while_resolving(void **state) {
  (void)state;
  handler_fmt(connect_handler, "'slowrev.test', 1");
  int fd = h_client(&H);
  assert_string_equal(le_coro_waits_on(&H.accepted[0]->lc.coro),
                      "luaecho.connect");
  RUN_UNTIL(&H, uv_is_active((uv_handle_t *)&fake.delay));
  close(fd);
  /* h_teardown closes the loop, which must close cleanly. */
}

int main(void) {
#define T(name) cmocka_unit_test_setup_teardown(name, h_setup, h_teardown)
  const struct CMUnitTest tests[] = {
      T(test_sleep_wakes_after_the_time),
      T(test_sleep_misuse_raises),
      T(test_sleep_ended_by_abort),
      T(test_sleeping_task_ended_with_handler),
      T(test_spawn_join_results),
      T(test_join_of_failed_task),
      T(test_join_busy_and_self),
      T(test_join_from_another_connection_raises),
      T(test_log_now_latest_version),
      T(test_connect_to_listener),
      T(test_connect_by_name),
      T(test_connect_refused),
      T(test_connect_misuse_raises),
      T(test_connect_unix),
      T(test_connect_timeout),
      T(test_connect_tries_every_address),
      T(test_connect_every_address_refused),
      T(test_connect_timeout_covers_resolution),
      T(test_connect_waits_for_slow_resolution),
      T(test_waits_refused_in_sort_comparator),
      T(test_ended_while_connecting),
      T(test_ended_while_resolving),
      T(test_connected_result_dropped),
      T(test_connect_every_address_fails_at_once),
      T(test_connect_after_an_address_failing_at_once),
      T(test_connect_cannot_start),
      T(test_ended_while_resolving_slowly),
      T(test_task_in_connect_ended_with_handler),
      T(test_timed_out_resolution_dropped),
      T(test_ended_while_connecting_to_first_of_two),
      T(test_shutdown_while_resolving),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
