/* Unit tests for connections (include/luaecho/conn.h) on a real loop with
 * real sockets on 127.0.0.1: accepting, the state transitions of a
 * graceful close, an abort and a shutdown, the lingering close, freeing
 * exactly once, and outbound connects. Handlers are small Lua files that
 * leave what they saw in globals.
 */
#include "test_support.h"

#include "test_loop.h"

static const char *echo_handler =
    "return function(conn)\n"
    "  while true do\n"
    "    local d, err = conn:recv()\n"
    "    if not d then ended = err return end\n"
    "    conn:send(d)\n"
    "  end\n"
    "end\n";

/* ---- accepting ---- */

static void test_accept_runs_handler_and_frees_once(void **state) {
  (void)state;
  h_handler(&H, echo_handler);
  int fd = h_client(&H);
  assert_int_equal(H.naccepted, 1);
  le_conn *c = H.accepted[0];
  assert_int_equal(c->state, LE_CONN_OPEN);
  assert_int_equal(c->lc.id, 1);
  assert_int_equal(H.ctx.count, 1);
  assert_ptr_equal(H.ctx.head, c);
  assert_string_equal(le_coro_waits_on(&c->lc.coro), "conn:recv");

  h_client_send(&H, fd, "hello", 5);
  char buf[16];
  int end;
  assert_int_equal(h_client_recv(&H, fd, buf, 5, &end), 5);
  assert_memory_equal(buf, "hello", 5);

  /* The peer's FIN ends the handler (recv gets "closed"); the connection,
   * its output flushed, closes and is freed, once. */
  shutdown(fd, SHUT_WR);
  RUN_UNTIL(&H, H.freed == 1);
  assert_string_equal(h_global(&H, "ended"), "closed");
  assert_int_equal(H.ctx.count, 0);
  assert_null(H.ctx.head);
  assert_int_equal(h_client_recv(&H, fd, buf, 1, &end), 0);
  assert_int_equal(end, 1);
  for (int i = 0; i < 5; i++) uv_run(&H.loop, UV_RUN_ONCE);
  assert_int_equal(H.freed, 1);
  close(fd);
}

static void test_handler_error_is_logged_and_aborts(void **state) {
  (void)state;
  h_handler(&H,
            "return function(conn)\n  conn:recv()\n"
            "  error('bad input')\nend\n");
  int fd = h_client(&H);
  h_client_send(&H, fd, "x", 1);
  RUN_UNTIL(&H, H.freed == 1);
  assert_contains(h_log(&H), "conn 1 127.0.0.1:");
  assert_contains(h_log(&H), "handler error: ");
  assert_contains(h_log(&H), "handler.lua:3: bad input");
  char buf[4];
  int end;
  assert_int_equal(h_client_recv(&H, fd, buf, 1, &end), 0);
  assert_true(end != 0);
  close(fd);
}

/* ---- closing ---- */

/* Output larger than the socket buffers stays queued: close flushes it,
 * sends FIN, and lingers for the peer's FIN before the socket closes. */
static void test_graceful_close_flushes_then_lingers(void **state) {
  (void)state;
  enum { SIZE = 8 << 20 };
  H.opts.send_buffer = 64u << 20; /* send queues without waiting */
  h_handler(&H,
            "return function(conn)\n"
            "  conn:send(string.rep('x', 8 << 20))\n"
            "  conn:close()\n"
            "  closed_it = true\n"
            "end\n");
  int fd = h_client(&H);
  le_conn *c = H.accepted[0];
  RUN_UNTIL(&H, c->handler_done);
  assert_string_equal(h_global(&H, "closed_it"), "true");
  assert_int_equal(c->state, LE_CONN_DRAINING);
  assert_true(c->lc.queued > 0);
  assert_int_equal(c->fin, LE_FIN_PENDING);
  assert_int_equal(H.freed, 0);

  char *buf = malloc(SIZE + 1);
  assert_non_null(buf);
  int end;
  assert_int_equal(h_client_recv(&H, fd, buf, SIZE + 1, &end), SIZE);
  assert_int_equal(end, 1);
  assert_int_equal(buf[0], 'x');
  assert_int_equal(buf[SIZE - 1], 'x');
  free(buf);
  /* Our FIN went out; the connection waits for the peer's. */
  RUN_UNTIL(&H, c->fin == LE_FIN_SENT);
  assert_int_equal(c->state, LE_CONN_DRAINING);
  assert_int_equal(H.freed, 0);
  shutdown(fd, SHUT_WR);
  RUN_UNTIL(&H, H.freed == 1);
  assert_int_equal(H.ctx.count, 0);
  close(fd);
}

/* Unread input at close must not turn into an RST that destroys the
 * reply: input is read and discarded until the peer's FIN. */
static void test_lingering_close_discards_input(void **state) {
  (void)state;
  enum { FLOOD = 1 << 20 };
  h_handler(&H,
            "return function(conn)\n"
            "  conn:recv(1)\n"
            "  conn:send('bye')\n"
            "  conn:close()\n"
            "end\n");
  int fd = h_client(&H);
  char *flood = malloc(FLOOD);
  assert_non_null(flood);
  memset(flood, 'f', FLOOD);
  h_client_send(&H, fd, flood, FLOOD);
  char buf[8];
  int end;
  assert_int_equal(h_client_recv(&H, fd, buf, 4, &end), 3);
  assert_memory_equal(buf, "bye", 3);
  assert_int_equal(end, 1); /* a FIN, not a reset */
  le_conn *c = H.accepted[0];
  assert_int_equal(c->state, LE_CONN_DRAINING);
  /* More input after our FIN is discarded, still without a reset. */
  h_client_send(&H, fd, flood, FLOOD);
  assert_int_equal(c->state, LE_CONN_DRAINING);
  assert_int_equal(H.freed, 0);
  shutdown(fd, SHUT_WR);
  RUN_UNTIL(&H, H.freed == 1);
  assert_int_equal(h_client_recv(&H, fd, buf, 1, &end), 0);
  assert_int_equal(end, 1);
  free(flood);
  close(fd);
}

static void test_linger_ends_at_its_deadline(void **state) {
  (void)state;
  h_handler(&H, "return function(conn) conn:send('bye') conn:close() end\n");
  int fd = h_client(&H);
  le_conn *c = H.accepted[0];
  RUN_UNTIL(&H, c->fin == LE_FIN_SENT);
  assert_int_equal(c->state, LE_CONN_DRAINING);
  /* The peer never sends FIN: LE_LINGER_MS later the socket closes. */
  uint64_t t0 = uv_now(&H.loop);
  RUN_UNTIL(&H, H.freed == 1);
  assert_true(uv_now(&H.loop) - t0 >= LE_LINGER_MS - 50);
  close(fd);
}

/* A peer that never reads cannot hold a closing connection: the flush
 * has send_timeout as its deadline. */
static void test_flush_deadline_when_peer_never_reads(void **state) {
  (void)state;
  H.opts.send_timeout = 0.1;
  H.opts.send_buffer = 64u << 20;
  h_handler(&H,
            "return function(conn)\n"
            "  conn:send(string.rep('z', 8 << 20))\n"
            "end\n");
  int fd = h_client(&H);
  le_conn *c = H.accepted[0];
  RUN_UNTIL(&H, c->handler_done);
  assert_int_equal(c->state, LE_CONN_DRAINING);
  assert_int_equal(c->fin, LE_FIN_PENDING);
  RUN_UNTIL(&H, H.freed == 1);
  close(fd);
}

/* After conn:shutdown("write") the peer sees EOF and may still send; when
 * the handler ends, no second FIN is needed. */
static void test_half_close(void **state) {
  (void)state;
  h_handler(&H,
            "return function(conn)\n"
            "  conn:send('half')\n"
            "  conn:shutdown('write')\n"
            "  local ok, err = conn:send('more')\n"
            "  send_after = tostring(ok) .. ',' .. tostring(err)\n"
            "  got = conn:recv(5)\n"
            "end\n");
  int fd = h_client(&H);
  char buf[16];
  int end;
  assert_int_equal(h_client_recv(&H, fd, buf, sizeof buf, &end), 4);
  assert_memory_equal(buf, "half", 4);
  assert_int_equal(end, 1);
  assert_string_equal(h_global(&H, "send_after"), "nil,closed");
  le_conn *c = H.accepted[0];
  assert_int_equal(c->state, LE_CONN_OPEN);
  assert_int_equal(c->fin, LE_FIN_SENT);
  h_client_send(&H, fd, "after", 5);
  RUN_UNTIL(&H, h_global_is_set(&H, "got"));
  assert_string_equal(h_global(&H, "got"), "after");
  /* Handler done, our FIN already out: lingering for the peer's. */
  assert_int_equal(c->state, LE_CONN_DRAINING);
  shutdown(fd, SHUT_WR);
  RUN_UNTIL(&H, H.freed == 1);
  close(fd);
}

static void test_peer_reset(void **state) {
  (void)state;
  h_handler(&H, echo_handler);
  int fd = h_client(&H);
  struct linger lg = {1, 0}; /* close sends RST */
  assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
  close(fd);
  RUN_UNTIL(&H, H.freed == 1);
  assert_string_equal(h_global(&H, "ended"), "econnreset");
}

/* A deadline counts from when it is set, even after computing where the
 * handler could not be preempted (the loop's cached clock is behind). */
static void test_recv_timeout_counts_from_now(void **state) {
  (void)state;
  h_handler(&H,
            "local L = require 'luaecho'\n"
            "return function(conn)\n"
            "  table.sort({1, 2}, function(a, b)\n"
            "    local c = os.clock() while os.clock() - c < 0.2 do end\n"
            "    return a < b end)\n"
            "  local t0 = L.now()\n"
            "  local d, err = conn:recv(0, 0.1)\n"
            "  waited = L.now() - t0\n"
            "  ended = err\n"
            "end\n");
  int fd = h_client(&H);
  RUN_UNTIL(&H, h_global_is_set(&H, "ended"));
  assert_string_equal(h_global(&H, "ended"), "timeout");
  lua_getglobal(H.L, "waited");
  double waited = lua_tonumber(H.L, -1);
  lua_pop(H.L, 1);
  if (waited < 0.095) fail_msg("recv(0, 0.1) timed out after %.3f s", waited);
  close(fd);
}

static void test_abort_ends_waiting_handler(void **state) {
  (void)state;
  h_handler(&H, echo_handler);
  int fd = h_client(&H);
  le_conn *c = H.accepted[0];
  le_conn_abort(c, LE_ESHUTDOWN);
  /* The reader was woken with the reason, the socket is closing. */
  assert_string_equal(h_global(&H, "ended"), "shutdown");
  assert_int_equal(c->state, LE_CONN_CLOSING);
  assert_true(c->handler_done);
  assert_int_equal(H.freed, 0);
  le_conn_abort(c, LE_ESHUTDOWN); /* idempotent */
  le_conn_close(c);
  RUN_UNTIL(&H, H.freed == 1);
  char buf[4];
  int end;
  assert_int_equal(h_client_recv(&H, fd, buf, 1, &end), 0);
  assert_true(end != 0);
  close(fd);
}

static void test_abort_all_shutdown(void **state) {
  (void)state;
  h_handler(&H,
            "return function(conn)\n"
            "  local d, err = conn:recv()\n"
            "  results = (results or '') .. tostring(d) .. ',' .. err .. ';'\n"
            "end\n");
  int a = h_client(&H);
  int b = h_client(&H);
  assert_int_equal(H.ctx.count, 2);
  le_conn_ctx_abort_all(&H.ctx, LE_ESHUTDOWN);
  assert_string_equal(h_global(&H, "results"), "nil,shutdown;nil,shutdown;");
  RUN_UNTIL(&H, H.freed == 2);
  assert_int_equal(H.ctx.count, 0);
  close(a);
  close(b);
}

static void test_abort_ends_handler_waiting_elsewhere(void **state) {
  (void)state;
  h_handler(&H,
            "return function(conn)\n"
            "  local x <close> = setmetatable({}, {__close = function()"
            "    tbc_ran = true end})\n"
            "  require('luaecho').sleep(60)\n"
            "  woke = true\n"
            "end\n");
  int fd = h_client(&H);
  le_conn *c = H.accepted[0];
  assert_string_equal(le_coro_waits_on(&c->lc.coro), "luaecho.sleep");
  le_conn_abort(c, LE_ESHUTDOWN);
  assert_true(c->handler_done);
  assert_string_equal(h_global(&H, "tbc_ran"), "true");
  RUN_UNTIL(&H, H.freed == 1);
  assert_false(h_global_is_set(&H, "woke"));
  close(fd);
}

static void test_idle_timeout_ends_connection(void **state) {
  (void)state;
  H.opts.idle_timeout = 0.05;
  h_handler(&H, echo_handler);
  int fd = h_client(&H);
  RUN_UNTIL(&H, H.freed == 1);
  assert_string_equal(h_global(&H, "ended"), "idle");
  assert_contains(h_log(&H), "conn 1: idle timeout");
  close(fd);
}

/* ---- outbound connects ---- */

typedef struct connect_result {
  int calls;
  int status;
  le_conn *conn;
  int state_at_cb;
} connect_result;

static void on_connect(le_conn *c, int status, void *arg) {
  connect_result *r = arg;
  r->calls++;
  r->status = status;
  r->conn = c;
  r->state_at_cb = c->state;
}

static le_conn *connect_to(int port, uint64_t timeout_ms, connect_result *r) {
  struct sockaddr_in sa;
  int err = 0;
  assert_int_equal(uv_ip4_addr("127.0.0.1", port, &sa), 0);
  le_conn *c = le_conn_connect(&H.ctx, (struct sockaddr *)&sa, NULL, &H.opts,
                               timeout_ms, on_connect, r, &err);
  assert_non_null(c);
  assert_int_equal(err, 0);
  assert_int_equal(c->state, LE_CONN_CONNECTING);
  return c;
}

static void test_connect_succeeds(void **state) {
  (void)state;
  h_handler(&H, echo_handler);
  connect_result r = {0};
  le_conn *c = connect_to(H.port, 1000, &r);
  assert_int_equal(H.ctx.count, 1);
  RUN_UNTIL(&H, r.calls == 1 && H.naccepted == 1);
  assert_int_equal(r.status, 0);
  assert_ptr_equal(r.conn, c);
  assert_int_equal(r.state_at_cb, LE_CONN_OPEN);
  assert_int_equal(H.ctx.count, 2);
  le_conn_close(c);
  assert_int_equal(c->state, LE_CONN_CLOSING);
  RUN_UNTIL(&H, H.freed == 2); /* and the accepted side sees the FIN */
  assert_int_equal(r.calls, 1);
}

static void test_connect_refused(void **state) {
  (void)state;
  connect_result r = {0};
  connect_to(h_closed_port(), 1000, &r);
  RUN_UNTIL(&H, r.calls == 1);
  assert_int_equal(r.status, UV_ECONNREFUSED);
  assert_int_equal(r.state_at_cb, LE_CONN_CLOSING);
  RUN_UNTIL(&H, H.freed == 1);
  assert_int_equal(r.calls, 1);
}

static void test_connect_times_out(void **state) {
  (void)state;
  int filler, port;
  int lfd = h_full_listener(&filler, &port);
  connect_result r = {0};
  connect_to(port, 100, &r);
  RUN_UNTIL(&H, r.calls == 1);
  assert_int_equal(r.status, LE_TIMEOUT);
  assert_int_equal(r.state_at_cb, LE_CONN_CLOSING);
  RUN_UNTIL(&H, H.freed == 1);
  assert_int_equal(r.calls, 1);
  close(filler);
  close(lfd);
}

static void test_cancel_connect_never_calls_back(void **state) {
  (void)state;
  h_handler(&H, echo_handler);
  connect_result r = {0};
  le_conn *c = connect_to(H.port, 1000, &r);
  le_conn_cancel_connect(c);
  assert_int_equal(c->state, LE_CONN_CLOSING);
  RUN_UNTIL(&H, H.freed == 1);
  /* A few more turns: the callback still does not come. */
  for (int i = 0; i < 5; i++) uv_run(&H.loop, UV_RUN_ONCE);
  assert_int_equal(r.calls, 0);
}

static void test_connect_unix_missing_path(void **state) {
  (void)state;
  connect_result r = {0};
  int err = 0;
  char path[128];
  snprintf(path, sizeof path, "%s/nobody.sock", H.dir);
  le_conn *c =
      le_conn_connect(&H.ctx, NULL, path, &H.opts, 1000, on_connect, &r, &err);
  assert_non_null(c);
  RUN_UNTIL(&H, r.calls == 1);
  assert_int_equal(r.status, UV_ENOENT);
  RUN_UNTIL(&H, H.freed == 1);
}

int main(void) {
#define T(name) cmocka_unit_test_setup_teardown(name, h_setup, h_teardown)
  const struct CMUnitTest tests[] = {
      T(test_accept_runs_handler_and_frees_once),
      T(test_handler_error_is_logged_and_aborts),
      T(test_graceful_close_flushes_then_lingers),
      T(test_lingering_close_discards_input),
      T(test_linger_ends_at_its_deadline),
      T(test_flush_deadline_when_peer_never_reads),
      T(test_half_close),
      T(test_peer_reset),
      T(test_recv_timeout_counts_from_now),
      T(test_abort_ends_waiting_handler),
      T(test_abort_all_shutdown),
      T(test_abort_ends_handler_waiting_elsewhere),
      T(test_idle_timeout_ends_connection),
      T(test_connect_succeeds),
      T(test_connect_refused),
      T(test_connect_times_out),
      T(test_cancel_connect_never_calls_back),
      T(test_connect_unix_missing_path),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
