/* Unit tests for the Lua face of a connection (include/luaecho/lconn.h).
 *
 * lconn does no I/O: it calls a table of operations (le_lconn_io) and is
 * told about socket events through le_lconn_on_*. Here that table is a fake
 * transport that records every call and lets each test decide how much
 * try_write takes. Handlers are small Lua functions that leave what they saw
 * in globals; the tests read them back with show().
 */
#include "test_support.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <uv.h>

#include "luaecho/lconn.h"
#include "luaecho/script.h"

#define MAX_WRITES 16

/* One io->queue_write call. */
typedef struct queued_write {
  char hdr[4]; /* the header bytes, which queue_write must copy */
  size_t hlen;
  const char *data; /* points into a Lua string kept alive by ref */
  size_t len;
  int ref;
} queued_write;

/* The connection under test and everything its fake transport recorded. */
typedef struct fake {
  le_lconn lc;
  lua_State *L;
  le_log log;
  FILE *log_file; /* an open_memstream behind `log` */
  char *log_text;
  size_t log_len;
  char shown[2048]; /* show()'s result */
  uint64_t now;     /* the loop clock io->now reports, in ms */
  /* try_write */
  ssize_t accept;  /* bytes each try_write takes; -1: all */
  int write_error; /* < 0: try_write fails with it */
  int try_writes;  /* try_write calls */
  le_buf written;  /* bytes try_write took */
  /* queue_write */
  int queue_error; /* < 0: queue_write fails with it */
  queued_write writes[MAX_WRITES];
  size_t nwrites;    /* queue_write calls that succeeded */
  size_t ncompleted; /* of those, reported back with on_written */
  /* set_reading, set_timer */
  int reading;          /* last set_reading */
  char reading_log[64]; /* '1' or '0' per set_reading call */
  int64_t timer_ms;     /* last set_timer; -1: disarmed */
  uint64_t timer_at;    /* clock time the armed timer fires */
  int timer_sets;       /* set_timer calls */
  /* the rest */
  int shutdowns; /* shutdown_write calls */
  int sockopts;  /* apply_sockopts calls */
  int closes;    /* close calls (more than one is allowed) */
  int aborts;    /* close calls with abort set */
  int done;      /* handler_done calls */
} fake;

/* Gives lc a TCP peer address, as the server does at accept. */
static void set_peer(le_lconn *lc, const char *host, int port) {
  struct sockaddr_storage ss;
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0)
    assert_int_equal(uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss), 0);
  le_lconn_set_peer(lc, (struct sockaddr *)&ss);
}

static fake *fake_of(le_lconn *lc) {
  return (fake *)((char *)lc - offsetof(fake, lc));
}

/* ---- the fake transport ---- */

static ssize_t io_try_write(le_lconn *lc, const uv_buf_t *bufs,
                            unsigned nbufs) {
  fake *f = fake_of(lc);
  f->try_writes++;
  if (f->write_error < 0) return f->write_error;
  size_t room = f->accept < 0 ? SIZE_MAX : (size_t)f->accept, total = 0;
  for (unsigned i = 0; i < nbufs && total < room; i++) {
    size_t n = bufs[i].len < room - total ? bufs[i].len : room - total;
    assert_int_equal(le_buf_append(&f->written, bufs[i].base, n), 0);
    total += n;
  }
  return (ssize_t)total;
}

static int io_queue_write(le_lconn *lc, const char *hdr, size_t hlen,
                          const char *data, size_t len, int ref) {
  fake *f = fake_of(lc);
  if (f->queue_error < 0) return f->queue_error;
  assert_true(f->nwrites < MAX_WRITES);
  assert_true(hlen <= 4);
  queued_write *w = &f->writes[f->nwrites++];
  memcpy(w->hdr, hdr, hlen);
  w->hlen = hlen;
  w->data = data;
  w->len = len;
  w->ref = ref;
  return 0;
}

static void io_set_reading(le_lconn *lc, int on) {
  fake *f = fake_of(lc);
  size_t n = strlen(f->reading_log);
  assert_true(n + 1 < sizeof f->reading_log);
  f->reading_log[n] = on ? '1' : '0';
  f->reading = on;
}

static void io_set_timer(le_lconn *lc, int64_t ms) {
  fake *f = fake_of(lc);
  f->timer_ms = ms < 0 ? -1 : ms;
  f->timer_at = ms < 0 ? 0 : f->now + (uint64_t)ms;
  f->timer_sets++;
}

static uint64_t io_now(le_lconn *lc) { return fake_of(lc)->now; }

static void io_shutdown_write(le_lconn *lc) { fake_of(lc)->shutdowns++; }

static void io_apply_sockopts(le_lconn *lc) { fake_of(lc)->sockopts++; }

static int io_sockname(le_lconn *lc, char *host, size_t hostlen, int *port) {
  (void)lc;
  snprintf(host, hostlen, "127.0.0.1");
  *port = 7000;
  return 0;
}

static void io_close(le_lconn *lc, int abort) {
  fake *f = fake_of(lc);
  f->closes++;
  f->aborts += abort != 0;
}

static void io_handler_done(le_lconn *lc) { fake_of(lc)->done++; }

static const le_lconn_io fake_io = {
    .try_write = io_try_write,
    .queue_write = io_queue_write,
    .set_reading = io_set_reading,
    .set_timer = io_set_timer,
    .now = io_now,
    .shutdown_write = io_shutdown_write,
    .apply_sockopts = io_apply_sockopts,
    .sockname = io_sockname,
    .close = io_close,
    .handler_done = io_handler_done,
};

/* ---- fixture ---- */

/* A Lua state made the way the server makes it, and an lconn on the fake
 * transport as connection 7 from 127.0.0.1:5555. The idle and send
 * deadlines are off so that each test arms only the timers it is about;
 * the deadline tests turn them back on. */
static int setup(void **state) {
  fake *f = calloc(1, sizeof *f);
  if (f == NULL) return -1;
  f->L = luaL_newstate();
  f->log_file = open_memstream(&f->log_text, &f->log_len);
  if (f->L == NULL || f->log_file == NULL) return -1;
  luaL_openlibs(f->L);
  le_coro_open(f->L, NULL);
  le_lconn_open(f->L);
  le_log_init(&f->log, LE_LOG_DEBUG, f->log_file);
  le_lconn_init(&f->lc, &fake_io, &f->log, f->L);
  f->lc.id = 7;
  set_peer(&f->lc, "127.0.0.1", 5555);
  f->lc.opts.idle_timeout = -1;
  f->lc.opts.send_timeout = -1;
  f->now = 1000000;
  f->accept = -1;
  f->timer_ms = -1;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fake *f = *state;
  le_lconn_release(&f->lc);
  int balanced = lua_gettop(f->L) == 0;
  lua_close(f->L);
  fclose(f->log_file);
  free(f->log_text);
  le_buf_free(&f->written);
  free(f);
  return balanced ? 0 : -1; /* every call must leave the main stack empty */
}

/* ---- driving the connection ---- */

/* Starts `function(conn) <body> end` as the handler. The body's first line
 * is line 1 of the chunk "handler". */
static void start(fake *f, const char *body) {
  char src[4096];
  snprintf(src, sizeof src, "return function(conn) %s\nend", body);
  if (luaL_loadbufferx(f->L, src, strlen(src), "=handler", "t") != LUA_OK)
    fail_msg("%s", lua_tostring(f->L, -1));
  lua_call(f->L, 0, 1);
  assert_int_equal(le_lconn_start(&f->lc, NULL, 0), 0);
  assert_int_equal(lua_gettop(f->L), 0);
}

/* Delivers n bytes from a buffer that is overwritten right after the call:
 * `data` is only valid during le_lconn_on_data. */
static void deliver_bytes(fake *f, const char *data, size_t n) {
  char copy[1024];
  assert_true(n <= sizeof copy);
  memcpy(copy, data, n);
  le_lconn_on_data(&f->lc, copy, n);
  memset(copy, '#', n);
}

static void deliver(fake *f, const char *s) { deliver_bytes(f, s, strlen(s)); }

/* Runs the clock to the armed timer and fires it, as libuv would. */
static void fire_timer(fake *f) {
  assert_true(f->timer_ms >= 0);
  f->now = f->timer_at;
  f->timer_ms = -1; /* a one-shot timer is no longer armed once it ran */
  le_lconn_on_timeout(&f->lc);
}

/* Lets `ms` pass and runs the loop's idle sweep over the connection. */
static void sweep_idle(fake *f, uint64_t ms) {
  f->now += ms;
  le_lconn_check_idle(&f->lc, f->now);
}

/* Reports the oldest queued write as done with `status`. */
static void complete_write(fake *f, int status) {
  assert_true(f->ncompleted < f->nwrites);
  queued_write *w = &f->writes[f->ncompleted++];
  le_lconn_on_written(&f->lc, w->hlen + w->len, w->ref, status);
}

/* Makes every send wait: the kernel takes nothing, and any queued byte is
 * above the send buffer. (send_buffer is at least 1 through setopts; 0 is
 * set directly here.) */
static void block_sends(fake *f) {
  f->accept = 0;
  f->lc.opts.send_buffer = 0;
}

/* Runs Lua code in the main state, as other connections' code would. */
static void run(fake *f, const char *code) {
  if (luaL_dostring(f->L, code) != LUA_OK)
    fail_msg("%s", lua_tostring(f->L, -1));
  lua_settop(f->L, 0);
}

static void append_value(lua_State *L, int i, char *out, size_t len) {
  size_t used = strlen(out);
  if (lua_type(L, i) == LUA_TSTRING)
    snprintf(out + used, len - used, "'%s'", lua_tostring(L, i));
  else if (lua_isinteger(L, i))
    snprintf(out + used, len - used, "%lld", (long long)lua_tointeger(L, i));
  else if (lua_type(L, i) == LUA_TNUMBER)
    snprintf(out + used, len - used, "%g", (double)lua_tonumber(L, i));
  else if (lua_isboolean(L, i))
    snprintf(out + used, len - used, "%s",
             lua_toboolean(L, i) ? "true" : "false");
  else
    snprintf(out + used, len - used, "%s", luaL_typename(L, i));
}

/* Evaluates a Lua expression list in the main state and returns the values
 * as one line: "nil, 'timeout', 'ab'" (strings quoted, numbers as is). */
static const char *show(fake *f, const char *exprs) {
  lua_State *L = f->L;
  char src[512];
  snprintf(src, sizeof src, "return %s", exprs);
  if (luaL_loadstring(L, src) != LUA_OK ||
      lua_pcall(L, 0, LUA_MULTRET, 0) != LUA_OK)
    fail_msg("%s: %s", exprs, lua_tostring(L, -1));
  f->shown[0] = '\0';
  for (int i = 1; i <= lua_gettop(L); i++) {
    if (i > 1) strcat(f->shown, ", ");
    append_value(L, i, f->shown, sizeof f->shown);
  }
  lua_settop(L, 0);
  return f->shown;
}

#define assert_lua(f, exprs, expected) \
  assert_string_equal(show((f), (exprs)), (expected))

/* The handler is suspended, waiting on the connection. */
#define assert_waiting(f) assert_int_equal((f)->done, 0)

/* The handler ended and the connection was closed: gracefully (abort 0:
 * no close call asked for an abort) or at once (abort 1: one did; io->close
 * may be called again, and an abort cuts a flush short). */
#define assert_ended(f, abort)                  \
  do {                                          \
    assert_int_equal((f)->done, 1);             \
    assert_true((f)->closes >= 1);              \
    assert_int_equal((f)->aborts > 0, (abort)); \
  } while (0)

static void assert_written_bytes(const fake *f, const char *expected,
                                 size_t n) {
  assert_int_equal(le_buf_size(&f->written), n);
  if (n) assert_memory_equal(le_buf_peek(&f->written), expected, n);
}

static void assert_written(const fake *f, const char *expected) {
  assert_written_bytes(f, expected, strlen(expected));
}

static void assert_queued(const fake *f, size_t i, const char *expected) {
  assert_true(i < f->nwrites);
  assert_int_equal(f->writes[i].hlen, 0);
  assert_int_equal(f->writes[i].len, strlen(expected));
  assert_memory_equal(f->writes[i].data, expected, strlen(expected));
}

/* ---- recv ---- */

static void test_recv_returns_what_arrives(void **state) {
  fake *f = *state;
  start(f, "data = conn:recv()");
  assert_waiting(f);
  assert_int_equal(f->reading, 1);
  assert_lua(f, "data", "nil");
  deliver(f, "hello");
  assert_lua(f, "data", "'hello'");
  assert_ended(f, 0);
}

static void test_recv_n_waits_for_exactly_n(void **state) {
  fake *f = *state;
  start(f,
        "a = conn:recv(5)\n"
        "b = conn:recv(3)\n"
        "c = conn:recv()\n"
        "conn:recv()");
  deliver(f, "ab");
  deliver(f, "cd");
  assert_lua(f, "a", "nil");
  deliver(f, "efghij");
  assert_lua(f, "a, b, c", "'abcde', 'fgh', 'ij'");
  assert_waiting(f);
  assert_int_equal(le_buf_size(&f->lc.in), 0);
}

static void test_recv_n_leaves_the_rest_buffered(void **state) {
  fake *f = *state;
  start(f,
        "a = conn:recv(2)\n"
        "conn:send('x')\n" /* waits, so the rest stays buffered */
        "b = conn:recv()");
  block_sends(f);
  deliver(f, "abcdef");
  assert_lua(f, "a, b", "'ab', nil");
  assert_int_equal(le_buf_size(&f->lc.in), 4);
  complete_write(f, 0);
  assert_lua(f, "b", "'cdef'");
}

/* One read can answer several recv calls in a row. */
static void test_one_delivery_answers_successive_recvs(void **state) {
  fake *f = *state;
  start(f,
        "a = conn:recv(2)\n"
        "b = conn:recv(2)\n"
        "c = conn:recv(2)\n"
        "conn:recv()");
  deliver(f, "abcdef");
  assert_lua(f, "a, b, c", "'ab', 'cd', 'ef'");
  assert_int_equal(le_buf_size(&f->lc.in), 0);
  assert_waiting(f);
}

static void test_recv_timeout_gives_partial(void **state) {
  fake *f = *state;
  start(f, "data, err, partial = conn:recv(10, 1.5)");
  assert_int_equal(f->timer_ms, 1500);
  deliver(f, "abc");
  assert_waiting(f);
  fire_timer(f);
  assert_lua(f, "data, err, partial", "nil, 'timeout', 'abc'");
  assert_int_equal(le_buf_size(&f->lc.in), 0);
}

static void test_recv_any_timeout_gives_empty_partial(void **state) {
  fake *f = *state;
  start(f, "data, err, partial = conn:recv(nil, 0.0001)");
  assert_int_equal(f->timer_ms, 1); /* rounded up, never 0 */
  fire_timer(f);
  assert_lua(f, "data, err, partial", "nil, 'timeout', ''");
}

/* A timer that fires before the reader's deadline (it was armed for
 * something else, or early) does not time the reader out. */
static void test_early_timer_does_not_time_out_recv(void **state) {
  fake *f = *state;
  start(f, "data, err = conn:recv(nil, 2)");
  le_lconn_on_timeout(&f->lc); /* at the time recv was called */
  assert_waiting(f);
  assert_int_equal(f->timer_ms, 2000);
  fire_timer(f);
  assert_lua(f, "data, err", "nil, 'timeout'");
}

static void test_recv_in_time_disarms_timer(void **state) {
  fake *f = *state;
  start(f,
        "data = conn:recv(3, 5)\n"
        "conn:recv()");
  assert_int_equal(f->timer_ms, 5000);
  deliver(f, "abc");
  assert_lua(f, "data", "'abc'");
  /* The timer may stay armed (re-arming per message costs more than an
   * early wake-up); when it fires, nothing is due and nobody is woken. */
  fire_timer(f);
  assert_waiting(f);
}

static void test_recv_without_timeout_arms_no_timer(void **state) {
  fake *f = *state;
  start(f, "data = conn:recv(3)");
  deliver(f, "abc");
  assert_lua(f, "data", "'abc'");
  assert_int_equal(f->timer_sets, 0);
}

static void test_recv_timeout_option_is_the_default(void **state) {
  fake *f = *state;
  start(f,
        "conn:setopts{recv_timeout = 2}\n"
        "a, ae = conn:recv()\n"
        "b, be = conn:recv(nil, 0.5)");
  assert_int_equal(f->timer_ms, 2000);
  fire_timer(f);
  assert_int_equal(f->timer_ms, 500);
  fire_timer(f);
  assert_lua(f, "a, ae, b, be", "nil, 'timeout', nil, 'timeout'");
}

static void test_recv_poll_with_nothing_buffered(void **state) {
  fake *f = *state;
  start(f,
        "a, ae, ap = conn:recv(0, 0)\n"
        "b, be, bp = conn:recv(4, 0)");
  assert_lua(f, "a, ae, ap", "nil, 'timeout', ''");
  assert_lua(f, "b, be, bp", "nil, 'timeout', ''");
  assert_ended(f, 0); /* it never waited */
  assert_int_equal(f->timer_sets, 0);
}

static void test_recv_poll_with_bytes_buffered(void **state) {
  fake *f = *state;
  block_sends(f);
  start(f,
        "conn:send('1')\n"
        "a = conn:recv(1)\n"
        "any = conn:recv(0, 0)\n"
        "conn:send('2')\n"
        "d, e, p = conn:recv(5, 0)");
  deliver(f, "xyz");
  complete_write(f, 0);
  assert_lua(f, "a, any", "'x', 'yz'");
  deliver(f, "ab");
  complete_write(f, 0);
  assert_lua(f, "d, e, p", "nil, 'timeout', 'ab'");
  assert_int_equal(f->timer_sets, 0);
}

/* Bytes of one read that the resumed handler's recv did not take have
 * been received: a poll right after sees them. */
static void test_poll_sees_rest_of_same_read(void **state) {
  fake *f = *state;
  start(f,
        "first = conn:recv(1)\n"
        "rest, e = conn:recv(0, 0)\n"
        "conn:recv()");
  deliver(f, "xyz");
  assert_lua(f, "first, rest, e", "'x', 'yz', nil");
}

static void test_eof_wakes_recv_with_partial(void **state) {
  fake *f = *state;
  start(f,
        "d, e, p = conn:recv(10)\n"
        "d2, e2, p2 = conn:recv()");
  deliver(f, "abc");
  le_lconn_on_eof(&f->lc);
  assert_lua(f, "d, e, p", "nil, 'closed', 'abc'");
  assert_lua(f, "d2, e2, p2", "nil, 'closed', ''");
  assert_ended(f, 0);
}

/* Bytes that arrived before the FIN are still returned, then "closed". */
static void test_eof_after_buffered_bytes(void **state) {
  fake *f = *state;
  block_sends(f);
  start(f,
        "conn:send('x')\n"
        "a = conn:recv(2)\n"
        "b, e, p = conn:recv(5)");
  deliver(f, "abcd");
  le_lconn_on_eof(&f->lc);
  complete_write(f, 0);
  assert_lua(f, "a, b, e, p", "'ab', nil, 'closed', 'cd'");
}

static void test_reset_wakes_recv(void **state) {
  fake *f = *state;
  start(f,
        "d, e, p = conn:recv()\n"
        "s, se = conn:send('x')");
  le_lconn_on_error(&f->lc, UV_ECONNRESET);
  assert_lua(f, "d, e, p", "nil, 'econnreset', ''");
  assert_lua(f, "s, se", "nil, 'econnreset'");
  assert_int_equal(f->reading, 0);
  assert_written(f, "");
}

static void test_recv_inside_pcall(void **state) {
  fake *f = *state;
  start(f, "ok, data = pcall(conn.recv, conn)");
  assert_waiting(f);
  deliver(f, "x");
  assert_lua(f, "ok, data", "true, 'x'");
}

static void test_recv_bad_arguments_raise(void **state) {
  fake *f = *state;
  start(f,
        "_, e1 = pcall(function() return conn:recv(-1) end)\n"
        "_, e2 = pcall(function() return conn:recv(1, -1) end)\n"
        "_, e3 = pcall(function() return conn:send({}) end)");
  assert_contains(
      show(f, "e1"),
      "bad argument #1 to 'recv' (byte count must be 0..1073741824)");
  assert_contains(show(f, "e2"),
                  "bad argument #2 to 'recv' (timeout must be >= 0 seconds)");
  assert_contains(show(f, "e3"), "bad argument #1 to 'send'");
  assert_ended(f, 0);
}

/* ---- send ---- */

static void test_send_written_at_once(void **state) {
  fake *f = *state;
  start(f,
        "ok = conn:send('hello')\n"
        "empty = conn:send('')");
  assert_lua(f, "ok, empty", "true, true");
  assert_written(f, "hello");
  assert_int_equal(f->nwrites, 0);
}

/* What the kernel did not take is queued; later sends queue behind it
 * without trying to write first, so bytes keep their order. */
static void test_partial_write_queues_the_rest(void **state) {
  fake *f = *state;
  f->accept = 2;
  start(f,
        "a = conn:send('hello')\n"
        "b = conn:send('!')\n"
        "conn:recv()");
  assert_lua(f, "a, b", "true, true");
  assert_written(f, "he");
  assert_int_equal(f->try_writes, 1);
  assert_int_equal(f->nwrites, 2);
  assert_queued(f, 0, "llo");
  assert_queued(f, 1, "!");
  assert_int_equal(f->lc.queued, 4);
  complete_write(f, 0);
  complete_write(f, 0);
  assert_int_equal(f->lc.queued, 0);
}

static void test_send_waits_only_above_send_buffer(void **state) {
  fake *f = *state;
  f->accept = 0;
  /* Each queued write also counts 320 bytes of bookkeeping, so this buffer
   * holds two queued writes of 4 bytes in all. */
  f->lc.opts.send_buffer = 4 + 2 * 320;
  start(f,
        "a = conn:send('abcd')\n" /* 4 + 320 queued: no wait */
        "b = conn:send('e')\n"    /* 5 + 640 queued: above, waits */
        "c = conn:send('f')");    /* 2 + 640 after 'abcd': no wait */
  assert_lua(f, "a, b", "true, nil");
  assert_waiting(f);
  complete_write(f, 0); /* 'abcd' written, 1 byte (+320) left */
  assert_lua(f, "b, c", "true, true");
  assert_ended(f, 0);
}

static void test_write_error_fails_send(void **state) {
  fake *f = *state;
  f->write_error = UV_EPIPE;
  start(f,
        "a, e = conn:send('x')\n"
        "b, e2 = conn:send('y')");
  assert_lua(f, "a, e, b, e2", "nil, 'epipe', nil, 'epipe'");
  assert_int_equal(f->try_writes, 1);
}

static void test_queue_error_fails_send(void **state) {
  fake *f = *state;
  f->accept = 0;
  f->queue_error = UV_ENOMEM;
  start(f, "a, e = conn:send('x')");
  assert_lua(f, "a, e", "nil, 'enomem'");
  assert_int_equal(f->lc.queued, 0);
}

static void test_failed_write_wakes_sender(void **state) {
  fake *f = *state;
  block_sends(f);
  start(f,
        "a, e = conn:send('x')\n"
        "b, e2 = conn:send('y')");
  assert_waiting(f);
  complete_write(f, UV_ECONNRESET);
  assert_lua(f, "a, e, b, e2", "nil, 'econnreset', nil, 'econnreset'");
}

static void test_reset_wakes_sender(void **state) {
  fake *f = *state;
  block_sends(f);
  start(f, "a, e = conn:send('x')");
  le_lconn_on_error(&f->lc, UV_EPIPE);
  assert_lua(f, "a, e", "nil, 'epipe'");
}

/* queue_write gets a pointer into the Lua string itself; the ref keeps the
 * string alive until on_written, which releases it. */
static void test_queued_string_kept_until_written(void **state) {
  fake *f = *state;
  f->accept = 4;
  start(f,
        "conn:send(string.rep('x', 100) .. 'tail')\n"
        "conn:recv()");
  lua_gc(f->L, LUA_GCCOLLECT);
  queued_write w = f->writes[0];
  assert_int_equal(w.len, 100);
  assert_int_equal(lua_rawgeti(f->L, LUA_REGISTRYINDEX, w.ref), LUA_TSTRING);
  assert_ptr_equal(lua_tostring(f->L, -1) + 4, w.data);
  lua_pop(f->L, 1);
  complete_write(f, 0);
  assert_int_not_equal(lua_rawgeti(f->L, LUA_REGISTRYINDEX, w.ref),
                       LUA_TSTRING);
  lua_pop(f->L, 1);
}

static void test_send_after_peer_fin(void **state) {
  fake *f = *state;
  start(f,
        "d, e = conn:recv()\n"
        "ok = conn:send('bye')");
  le_lconn_on_eof(&f->lc);
  assert_lua(f, "d, e, ok", "nil, 'closed', true");
  assert_written(f, "bye");
}

/* ---- flow control of input ---- */

static void test_reading_pauses_when_recv_buffer_full(void **state) {
  fake *f = *state;
  block_sends(f);
  f->lc.opts.recv_buffer = 8;
  start(f,
        "conn:send('x')\n"
        "data = conn:recv()\n"
        "conn:recv()");
  assert_string_equal(f->reading_log, "1");
  deliver(f, "1234");
  assert_int_equal(f->reading, 1);
  deliver(f, "5678");
  assert_string_equal(f->reading_log, "10");
  complete_write(f, 0);
  assert_lua(f, "data", "'12345678'");
  assert_string_equal(f->reading_log, "101");
}

static void test_recv_n_above_recv_buffer_keeps_reading(void **state) {
  fake *f = *state;
  f->lc.opts.recv_buffer = 4;
  start(f, "data = conn:recv(10)");
  deliver(f, "123456");
  assert_int_equal(f->reading, 1);
  deliver(f, "7890");
  assert_lua(f, "data", "'1234567890'");
}

/* A poll that empties a full buffer must restart reading like any other
 * recv that drains it; else no byte is ever read again. */
static void test_poll_that_drains_buffer_resumes_reading(void **state) {
  fake *f = *state;
  block_sends(f);
  f->lc.opts.recv_buffer = 4;
  start(f,
        "conn:send('x')\n"
        "d, e, p = conn:recv(10, 0)\n"
        "conn:send('y')");
  deliver(f, "123456");
  assert_int_equal(f->reading, 0);
  complete_write(f, 0);
  assert_lua(f, "d, e, p", "nil, 'timeout', '123456'");
  assert_waiting(f); /* in the second send */
  assert_int_equal(le_buf_size(&f->lc.in), 0);
  assert_int_equal(f->reading, 1);
}

/* ---- send and idle deadlines ---- */

static void test_send_timeout_closes_connection(void **state) {
  fake *f = *state;
  block_sends(f);
  f->lc.opts.send_timeout = 2;
  start(f, "a, e = conn:send('x')");
  assert_int_equal(f->timer_ms, 2000);
  fire_timer(f);
  assert_lua(f, "a, e", "nil, 'timeout'");
  assert_ended(f, 1);
}

static void test_send_timeout_without_close(void **state) {
  fake *f = *state;
  block_sends(f);
  f->lc.opts.send_timeout = 2;
  f->lc.opts.send_timeout_close = 0;
  start(f,
        "a, e = conn:send('x')\n"
        "b = conn:send('y')");
  fire_timer(f);
  assert_lua(f, "a, e", "nil, 'timeout'");
  assert_int_equal(f->closes, 0);
  assert_waiting(f); /* the second send queued behind the first */
  assert_int_equal(f->nwrites, 2);
}

static void test_idle_timeout_ends_connection(void **state) {
  fake *f = *state;
  f->lc.opts.idle_timeout = 10;
  start(f,
        "d, e = conn:recv()\n"
        "d2, e2 = conn:recv(); s, e3 = conn:send('x')");
  assert_int_equal(f->timer_ms, -1); /* the loop's sweep handles idleness */
  sweep_idle(f, 9999);
  assert_waiting(f);
  sweep_idle(f, 1);
  assert_ended(f, 1);
  /* Not the retryable "timeout": the connection is gone, and says why,
   * to this call and every later one. */
  assert_lua(f, "d, e", "nil, 'idle'");
  assert_lua(f, "d2, e2, s, e3", "nil, 'idle', nil, 'idle'");
  assert_contains(f->log_text, "[debug] conn 7: idle timeout");
}

/* The idle deadline counts from the last byte moved either way. */
static void test_traffic_postpones_idle_timeout(void **state) {
  fake *f = *state;
  f->lc.opts.idle_timeout = 10;
  start(f, "while conn:recv() do end");
  sweep_idle(f, 6000);
  deliver(f, "x");
  sweep_idle(f, 9999);
  assert_int_equal(f->closes, 0);
  sweep_idle(f, 1);
  assert_ended(f, 1);
}

/* "timeout" is what a handler may wait out and retry (a recv or send
 * deadline passed). A connection ended for good must not answer every
 * retry with "timeout" again at once: a handler written as
 *   repeat d, e = conn:recv(nil, 5) until e ~= "timeout"
 * would then spin without ever yielding, and freeze the whole server.
 * RETRY runs `call` up to 1000 times while it fails with "timeout". */
#define RETRY(call)                               \
  "for i = 1, 1000 do\n"                          \
  "  local ok, e = " call                         \
  "\n"                                            \
  "  if e ~= 'timeout' then last = e break end\n" \
  "  timeouts = i\n"                              \
  "end"

static void assert_no_timeout_spin(fake *f) {
  int n = atoi(show(f, "timeouts or 0"));
  if (n > 1)
    fail_msg(
        "the handler got \"timeout\" %d times in a row without "
        "waiting (last error: %s)",
        n, show(f, "last"));
  assert_int_equal(f->done, 1);
}

static void test_retry_after_idle_timeout(void **state) {
  fake *f = *state;
  f->lc.opts.idle_timeout = 10;
  start(f, RETRY("conn:recv()"));
  sweep_idle(f, 10000);
  assert_no_timeout_spin(f);
}

static void test_retry_after_socket_etimedout(void **state) {
  fake *f = *state;
  start(f, RETRY("conn:recv()"));
  le_lconn_on_error(&f->lc, UV_ETIMEDOUT);
  assert_no_timeout_spin(f);
}

static void test_retry_after_send_timeout_close(void **state) {
  fake *f = *state;
  block_sends(f);
  f->lc.opts.send_timeout = 2;
  start(f, RETRY("conn:send('x')"));
  fire_timer(f);
  assert_no_timeout_spin(f);
}

/* ---- framing ---- */

static void test_packet_2_recv_and_send(void **state) {
  fake *f = *state;
  start(f,
        "conn:setopts{packet = 2}\n"
        "a = conn:recv()\n"
        "b = conn:recv(100)\n" /* n is ignored when framed */
        "conn:send('hi')");
  deliver_bytes(f, "\0\3a", 3);
  assert_lua(f, "a", "nil");
  deliver_bytes(f, "bc\0\2de", 6);
  assert_lua(f, "a, b", "'abc', 'de'");
  assert_written_bytes(f, "\0\2hi", 4);
}

static void test_packet_header_queued_with_partial_write(void **state) {
  fake *f = *state;
  f->accept = 1;
  start(f,
        "conn:setopts{packet = 4}\n"
        "ok = conn:send('hi')\n"
        "conn:recv()");
  assert_lua(f, "ok", "true");
  assert_written_bytes(f, "\0", 1);
  assert_int_equal(f->nwrites, 1);
  assert_int_equal(f->writes[0].hlen, 3);
  assert_memory_equal(f->writes[0].hdr, "\0\0\2", 3);
  assert_int_equal(f->writes[0].len, 2);
  assert_memory_equal(f->writes[0].data, "hi", 2);
  assert_int_equal(f->lc.queued, 5);
  complete_write(f, 0);
  assert_int_equal(f->lc.queued, 0);
}

static void test_line_mode(void **state) {
  fake *f = *state;
  start(f,
        "conn:setopts{packet = 'line'}\n"
        "a = conn:recv()\n"
        "b = conn:recv()\n"
        "c, e, p = conn:recv()");
  deliver(f, "ab");
  deliver(f, "c\nde\nf");
  assert_lua(f, "a, b", "'abc\n', 'de\n'");
  le_lconn_on_eof(&f->lc);
  assert_lua(f, "c, e, p", "nil, 'closed', ''");
}

/* A framed recv that times out keeps the unfinished message buffered, so
 * the stream stays in step. */
static void test_framed_timeout_keeps_partial_message(void **state) {
  fake *f = *state;
  start(f,
        "conn:setopts{packet = 2}\n"
        "a, e, p = conn:recv(nil, 1)\n"
        "b = conn:recv()");
  deliver_bytes(f, "\0\5ab", 4);
  fire_timer(f);
  assert_lua(f, "a, e, p", "nil, 'timeout', ''");
  assert_int_equal(le_buf_size(&f->lc.in), 4);
  deliver(f, "cde");
  assert_lua(f, "b", "'abcde'");
}

static void test_framed_message_too_big(void **state) {
  fake *f = *state;
  start(f,
        "conn:setopts{packet = 'line', packet_size = 4}\n"
        "a, e, p = conn:recv()\n"
        "b, e2 = conn:recv()");
  deliver(f, "abcdef");
  assert_lua(f, "a, e, p, b, e2", "nil, 'emsgsize', '', nil, 'emsgsize'");
  assert_int_equal(f->reading, 0);
}

static void test_send_too_big_for_header(void **state) {
  fake *f = *state;
  start(f,
        "conn:setopts{packet = 1}\n"
        "a, e = conn:send(string.rep('x', 256))\n"
        "b = conn:send(string.rep('y', 255))");
  assert_lua(f, "a, e, b", "nil, 'emsgsize', true");
  assert_int_equal(le_buf_size(&f->written), 256);
}

/* ---- how the handler ends ---- */

static void test_handler_return_closes_gracefully(void **state) {
  fake *f = *state;
  start(f, "return");
  assert_ended(f, 0);
  assert_string_equal(f->reading_log, "");
}

static void test_handler_error_is_logged_and_aborts(void **state) {
  fake *f = *state;
  start(f,
        "conn:recv()\n"
        "error('boom')");
  deliver(f, "x");
  assert_ended(f, 1);
  assert_int_equal(f->reading, 0);
  assert_contains(f->log_text,
                  "[error] conn 7 127.0.0.1:5555: handler error: "
                  "handler:2: boom\n");
  assert_contains(f->log_text, "stack traceback:");
  assert_contains(f->log_text, "in function 'error'");
}

static void test_handler_error_object_not_a_string(void **state) {
  fake *f = *state;
  start(f, "error({})");
  assert_ended(f, 1);
  assert_contains(f->log_text,
                  "handler error: handler:1: (error object is a table value)");
}

static void test_bare_yield_is_a_handler_error(void **state) {
  fake *f = *state;
  start(f, "coroutine.yield()");
  assert_ended(f, 1);
  assert_contains(f->log_text, "conn 7 127.0.0.1:5555: handler error: ");
  assert_contains(f->log_text, "coroutine.yield()");
}

static void test_builtin_echo_handler(void **state) {
  fake *f = *state;
  char err[256];
  assert_int_equal(le_script_load(f->L, NULL, err, sizeof err), 0);
  assert_int_equal(le_lconn_start(&f->lc, NULL, 0), 0);
  deliver(f, "ping");
  deliver(f, "pong");
  assert_written(f, "pingpong");
  assert_waiting(f);
  le_lconn_on_eof(&f->lc);
  assert_ended(f, 0);
}

/* ---- the conn object ---- */

static void test_conn_id_and_addresses(void **state) {
  fake *f = *state;
  start(f,
        "id = conn.id\n"
        "host, port = conn:peername()\n"
        "lhost, lport = conn:sockname()\n"
        "name = tostring(conn)\n"
        "other = conn.nosuchfield");
  assert_lua(f, "id, host, port, lhost, lport, other",
             "7, '127.0.0.1', 5555, '127.0.0.1', 7000, nil");
  assert_lua(f, "name", "'conn 7 (127.0.0.1:5555 -> 127.0.0.1:7000)'");
}

static void test_tostring_of_ipv6_peer(void **state) {
  fake *f = *state;
  set_peer(&f->lc, "::1", 4000);
  start(f, "name = tostring(conn)");
  assert_lua(f, "name", "'conn 7 ([::1]:4000 -> 127.0.0.1:7000)'");
}

static void test_peername_of_unix_peer(void **state) {
  fake *f = *state;
  le_lconn_set_peer(&f->lc, NULL);
  start(f,
        "host, port = conn:peername()\n"
        "name = tostring(conn)");
  assert_lua(f, "host, port, name",
             "'', nil, 'conn 7 (unix -> 127.0.0.1:7000)'");
}

static void test_use_after_close_raises(void **state) {
  fake *f = *state;
  start(f,
        "first = conn:close()\n"
        "second = conn:close()\n"
        "errors = {}\n"
        "for _, call in ipairs{\n"
        "    function() return conn:recv() end,\n"
        "    function() return conn:send('x') end,\n"
        "    function() return conn:peername() end,\n"
        "    function() return conn:sockname() end,\n"
        "    function() return conn:shutdown('write') end,\n"
        "    function() return conn:setopts{} end,\n"
        "    function() return conn:getopts() end } do\n"
        "  errors[#errors + 1] = select(2, pcall(call))\n"
        "end\n"
        "name = tostring(conn)");
  assert_lua(f, "first, second, #errors", "true, true, 7");
  for (int i = 1; i <= 7; i++) {
    char expr[32];
    snprintf(expr, sizeof expr, "errors[%d]", i);
    assert_contains(show(f, expr), "attempt to use a closed connection");
  }
  assert_lua(f, "name", "'conn 7 (127.0.0.1:5555 -> ?) closed'");
  assert_ended(f, 0);
  assert_written(f, "");
}

static void test_close_with_output_queued_is_graceful(void **state) {
  fake *f = *state;
  f->accept = 0;
  start(f,
        "conn:send('bye')\n"
        "conn:close()\n"
        "after = true");
  assert_lua(f, "after", "true");
  assert_ended(f, 0);
  assert_int_equal(f->lc.queued, 3);
}

static void test_to_be_closed_conn(void **state) {
  fake *f = *state;
  start(f,
        "do local c <close> = conn end\n"
        "ok, err = pcall(conn.recv, conn)");
  assert_lua(f, "ok", "false");
  assert_contains(show(f, "err"), "attempt to use a closed connection");
  assert_ended(f, 0);
}

/* conn:close() from other Lua code (another handler holding this conn)
 * wakes the handler waiting in recv with nil, "closed". */
static void test_close_from_elsewhere_wakes_recv(void **state) {
  fake *f = *state;
  start(f,
        "saved = conn\n"
        "d, e, p = conn:recv(5)");
  deliver(f, "ab");
  run(f, "saved:close()");
  assert_lua(f, "d, e, p", "nil, 'closed', 'ab'");
  assert_ended(f, 0);
  assert_int_equal(f->reading, 0);
}

static void test_recv_from_foreign_coroutine_raises(void **state) {
  fake *f = *state;
  start(f,
        "local co = coroutine.create(function() return conn:recv() end)\n"
        "rok, rerr = coroutine.resume(co)\n"
        "co = coroutine.create(function() return conn:send('x') end)\n"
        "sok, serr = coroutine.resume(co)\n"
        "saved = conn\n"
        "data = conn:recv()");
  assert_lua(f, "rok, sok", "false, false");
  assert_contains(show(f, "rerr"),
                  "conn:recv() called from a coroutine that does not own "
                  "connection 7; call it from the connection's handler");
  assert_contains(show(f, "serr"),
                  "conn:send() called from a coroutine that does not own "
                  "connection 7");
  assert_contains(show(f, "select(2, pcall(saved.recv, saved))"),
                  "does not own");
  deliver(f, "x"); /* the handler's own recv still works */
  assert_lua(f, "data", "'x'");
  assert_written(f, "");
}

/* Lua cannot yield from a table.sort comparator; recv there raises
 * "attempt to yield across a C-call boundary" (docs/api.md). The handler
 * may catch that, and the connection must still work afterwards. */
static void test_recv_after_yield_across_c_boundary(void **state) {
  fake *f = *state;
  start(f,
        "ok, err = pcall(table.sort, {3, 1, 2},\n"
        "  function(a, b) conn:recv() return a < b end)\n"
        "data, e = conn:recv()");
  assert_lua(f, "ok", "false");
  assert_contains(show(f, "err"), "attempt to yield across a C-call boundary");
  assert_waiting(f);
  deliver(f, "x");
  assert_lua(f, "data, e", "'x', nil");
}

/* Where Lua cannot yield, send queues its bytes and returns true without
 * waiting: raising after the bytes went out would invite a resend. */
static void test_send_after_yield_across_c_boundary(void **state) {
  fake *f = *state;
  block_sends(f);
  start(f,
        "ok, err = pcall(table.sort, {3, 1, 2},\n"
        "  function(a, b) assert(conn:send('x')) return a < b end)\n"
        "sent, e = conn:send('y')");
  assert_lua(f, "ok, err", "true, nil");
  assert_true(f->nwrites >= 2);
  assert_waiting(f); /* in send('y'), behind what is queued */
  while (f->ncompleted < f->nwrites) complete_write(f, 0);
  assert_lua(f, "sent, e", "true, nil");
}

/* Whatever happened before, a handler that has ended leaves nobody
 * registered as waiting: a later read, write completion or timer must not
 * resume (or touch) its finished, possibly collected coroutine. */
static void test_handler_end_leaves_no_waiter(void **state) {
  fake *f = *state;
  block_sends(f);
  start(
      f,
      "local function sort_with(call)\n"
      "  pcall(table.sort, {3, 1, 2}, function(a, b) call() return a < b end)\n"
      "end\n"
      "sort_with(function() conn:recv(1, 5) end)\n"
      "sort_with(function() conn:send('x') end)");
  assert_int_equal(f->done, 1);
  assert_null(f->lc.reader);
  assert_null(f->lc.writer);
  assert_int_equal(f->lc.read_deadline, 0);
}

/* ---- shutdown ---- */

static void test_shutdown_write(void **state) {
  fake *f = *state;
  start(f,
        "conn:shutdown('write')\n"
        "a, e = conn:send('x')\n"
        "d = conn:recv()");
  assert_int_equal(f->shutdowns, 1);
  assert_lua(f, "a, e", "nil, 'closed'");
  deliver(f, "still reading");
  assert_lua(f, "d", "'still reading'");
  assert_written(f, "");
}

static void test_shutdown_read(void **state) {
  fake *f = *state;
  start(f,
        "first = conn:recv(1)\n"
        "conn:shutdown('read')\n"
        "d, e, p = conn:recv()\n"
        "ok = conn:send('reply')");
  deliver(f, "abc");
  assert_lua(f, "first, d, e, p, ok", "'a', nil, 'closed', '', true");
  assert_int_equal(f->shutdowns, 0);
  assert_written(f, "reply");
  assert_string_equal(f->reading_log, "10");
}

static void test_shutdown_both_and_bad_option(void **state) {
  fake *f = *state;
  start(f,
        "_, bad = pcall(function() return conn:shutdown('sideways') end)\n"
        "conn:shutdown('both')\n"
        "d, e = conn:recv()\n"
        "s, se = conn:send('x')");
  assert_contains(show(f, "bad"), "invalid option 'sideways'");
  assert_lua(f, "d, e, s, se", "nil, 'closed', nil, 'closed'");
  assert_int_equal(f->shutdowns, 1);
}

/* ---- options ---- */

static void test_getopts(void **state) {
  fake *f = *state;
  start(f,
        "a, b, c, d = conn:getopts('packet', 'recv_buffer', "
        "'recv_timeout', 'nodelay')\n"
        "all = conn:getopts()\n"
        "_, bad = pcall(conn.getopts, conn, 'colour')");
  assert_lua(f, "a, b, c, d", "'raw', 262144, false, true");
  assert_lua(f, "all.packet_size, all.send_buffer, all.keepalive",
             "1048576, 262144, false");
  assert_contains(show(f, "bad"), "conn:getopts: unknown option 'colour'");
}

static void test_setopts_applies(void **state) {
  fake *f = *state;
  start(f,
        "ok = conn:setopts{packet = 'line', recv_buffer = 1024,\n"
        "                  recv_timeout = 1.5, keepalive = true}\n"
        "a, b, c, d = conn:getopts('packet', 'recv_buffer', "
        "'recv_timeout', 'keepalive')");
  assert_lua(f, "ok, a, b, c, d", "true, 'line', 1024, 1.5, 60");
  assert_int_equal(f->lc.opts.packet, LE_PACKET_LINE);
  assert_int_equal(f->lc.opts.recv_buffer, 1024);
  assert_int_equal(f->sockopts, 1);
}

/* All options are checked before any is applied. */
static void test_setopts_all_or_nothing(void **state) {
  fake *f = *state;
  start(f,
        "_, err = pcall(conn.setopts, conn,\n"
        "                 {recv_buffer = 2048, send_buffer = 0})\n"
        "_, unknown = pcall(conn.setopts, conn, {colour = 'red'})");
  assert_contains(show(f, "err"),
                  "conn:setopts: option 'send_buffer': expected an integer "
                  "byte count in 1..1073741824, got 0");
  assert_contains(show(f, "unknown"), "conn:setopts: unknown option 'colour'");
  assert_int_equal(f->lc.opts.recv_buffer, 262144);
}

/* Only nodelay and keepalive reach the socket, and only when they change. */
static void test_setopts_socket_options(void **state) {
  fake *f = *state;
  start(f,
        "conn:setopts{recv_buffer = 10}\n"
        "conn:setopts{nodelay = false}\n"
        "conn:setopts{nodelay = false}");
  assert_int_equal(f->sockopts, 1);
  assert_int_equal(f->lc.opts.nodelay, 0);
}

/* ---- the server's side: abort and release ---- */

static void test_abort_wakes_waiting_recv(void **state) {
  fake *f = *state;
  start(f,
        "d, e, p = conn:recv(10, 5)\n"
        "s, se = conn:send('x')");
  deliver(f, "ab");
  le_lconn_abort(&f->lc, UV_ECANCELED);
  assert_lua(f, "d, e, p, s, se", "nil, 'closed', 'ab', nil, 'closed'");
  assert_int_equal(f->done, 1);
  assert_written(f, "");
}

static void test_abort_wakes_waiting_send(void **state) {
  fake *f = *state;
  block_sends(f);
  start(f, "a, e = conn:send('x')");
  le_lconn_abort(&f->lc, UV_ECANCELED);
  assert_lua(f, "a, e", "nil, 'closed'");
  assert_int_equal(f->done, 1);
}

/* Whatever the woken handler does, the last word is an immediate close. */
static void test_abort_closes_at_once(void **state) {
  fake *f = *state;
  start(f, "conn:recv()");
  le_lconn_abort(&f->lc, UV_ECANCELED);
  assert_ended(f, 1);
}

static void test_release_ends_suspended_handler(void **state) {
  fake *f = *state;
  start(f,
        "saved = conn\n"
        "local guard <close> = setmetatable({}, {\n"
        "  __close = function() guard_closed = true end })\n"
        "conn:recv(10)");
  deliver(f, "abc");
  assert_non_null(f->lc.in.data);
  le_lconn_release(&f->lc);
  assert_lua(f, "guard_closed", "true");
  assert_int_equal(f->done, 0); /* release does not report the end */
  assert_null(f->lc.in.data);
  assert_false(le_coro_alive(&f->lc.coro));
  assert_contains(show(f, "select(2, pcall(saved.recv, saved))"),
                  "attempt to use a closed connection");
  assert_lua(f, "pcall(saved.close, saved)", "true, true");
  assert_lua(f, "tostring(saved), saved.id", "'conn (closed)', nil");
}

/* ---- error names ---- */

static void test_errname(void **state) {
  (void)state;
  char name[32];
  assert_string_equal(le_lconn_errname(UV_EOF, name, sizeof name), "closed");
  assert_string_equal(le_lconn_errname(UV_ECANCELED, name, sizeof name),
                      "closed");
  assert_string_equal(le_lconn_errname(LE_TIMEOUT, name, sizeof name),
                      "timeout");
  assert_string_equal(le_lconn_errname(UV_ETIMEDOUT, name, sizeof name),
                      "etimedout");
  assert_string_equal(le_lconn_errname(UV_ECONNRESET, name, sizeof name),
                      "econnreset");
  assert_string_equal(le_lconn_errname(UV_EPIPE, name, sizeof name), "epipe");
  assert_string_equal(le_lconn_errname(UV_ECONNRESET, name, 4), "eco");
}

#define TEST(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      TEST(test_recv_returns_what_arrives),
      TEST(test_recv_n_waits_for_exactly_n),
      TEST(test_recv_n_leaves_the_rest_buffered),
      TEST(test_one_delivery_answers_successive_recvs),
      TEST(test_recv_timeout_gives_partial),
      TEST(test_recv_any_timeout_gives_empty_partial),
      TEST(test_early_timer_does_not_time_out_recv),
      TEST(test_recv_in_time_disarms_timer),
      TEST(test_recv_without_timeout_arms_no_timer),
      TEST(test_recv_timeout_option_is_the_default),
      TEST(test_recv_poll_with_nothing_buffered),
      TEST(test_recv_poll_with_bytes_buffered),
      TEST(test_poll_sees_rest_of_same_read),
      TEST(test_eof_wakes_recv_with_partial),
      TEST(test_eof_after_buffered_bytes),
      TEST(test_reset_wakes_recv),
      TEST(test_recv_inside_pcall),
      TEST(test_recv_bad_arguments_raise),
      TEST(test_send_written_at_once),
      TEST(test_partial_write_queues_the_rest),
      TEST(test_send_waits_only_above_send_buffer),
      TEST(test_write_error_fails_send),
      TEST(test_queue_error_fails_send),
      TEST(test_failed_write_wakes_sender),
      TEST(test_reset_wakes_sender),
      TEST(test_queued_string_kept_until_written),
      TEST(test_send_after_peer_fin),
      TEST(test_reading_pauses_when_recv_buffer_full),
      TEST(test_recv_n_above_recv_buffer_keeps_reading),
      TEST(test_poll_that_drains_buffer_resumes_reading),
      TEST(test_send_timeout_closes_connection),
      TEST(test_send_timeout_without_close),
      TEST(test_idle_timeout_ends_connection),
      TEST(test_traffic_postpones_idle_timeout),
      TEST(test_retry_after_idle_timeout),
      TEST(test_retry_after_socket_etimedout),
      TEST(test_retry_after_send_timeout_close),
      TEST(test_packet_2_recv_and_send),
      TEST(test_packet_header_queued_with_partial_write),
      TEST(test_line_mode),
      TEST(test_framed_timeout_keeps_partial_message),
      TEST(test_framed_message_too_big),
      TEST(test_send_too_big_for_header),
      TEST(test_handler_return_closes_gracefully),
      TEST(test_handler_error_is_logged_and_aborts),
      TEST(test_handler_error_object_not_a_string),
      TEST(test_bare_yield_is_a_handler_error),
      TEST(test_builtin_echo_handler),
      TEST(test_conn_id_and_addresses),
      TEST(test_tostring_of_ipv6_peer),
      TEST(test_peername_of_unix_peer),
      TEST(test_use_after_close_raises),
      TEST(test_close_with_output_queued_is_graceful),
      TEST(test_to_be_closed_conn),
      TEST(test_close_from_elsewhere_wakes_recv),
      TEST(test_recv_from_foreign_coroutine_raises),
      TEST(test_recv_after_yield_across_c_boundary),
      TEST(test_send_after_yield_across_c_boundary),
      TEST(test_handler_end_leaves_no_waiter),
      TEST(test_shutdown_write),
      TEST(test_shutdown_read),
      TEST(test_shutdown_both_and_bad_option),
      TEST(test_getopts),
      TEST(test_setopts_applies),
      TEST(test_setopts_all_or_nothing),
      TEST(test_setopts_socket_options),
      TEST(test_abort_wakes_waiting_recv),
      TEST(test_abort_wakes_waiting_send),
      TEST(test_abort_closes_at_once),
      TEST(test_release_ends_suspended_handler),
      TEST(test_errname),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
