/* A real loop for unit tests of the modules that do I/O (conn, lmodule):
 * a uv loop, a Lua state prepared as the server prepares it, a connection
 * context, a listener on 127.0.0.1 port 0 that accepts with
 * le_conn_accept, and blocking-free client sockets driven between turns
 * of the loop. Include after test_support.h.
 *
 * Waiting is always on a condition (RUN_UNTIL), bounded in time, never a
 * fixed sleep.
 */
#ifndef LUAECHO_TEST_LOOP_H
#define LUAECHO_TEST_LOOP_H

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <uv.h>

#include "luaecho/conn.h"
#include "luaecho/lconn.h"
#include "luaecho/lmem.h"
#include "luaecho/lmodule.h"
#include "luaecho/script.h"

#define H_MAX_ACCEPTED 16

typedef struct harness {
  uv_loop_t loop;
  lua_State *L;
  le_mem mem;
  le_log log;
  FILE *log_file; /* an open_memstream behind log */
  char *log_text;
  size_t log_len;
  le_conn_ctx ctx;
  uv_tcp_t server; /* the listener, on 127.0.0.1 */
  int port;
  uv_timer_t tick;   /* bounds every turn of RUN_UNTIL */
  le_script *script; /* what accepted connections run */
  le_opts opts;      /* their options */
  le_conn *accepted[H_MAX_ACCEPTED];
  int naccepted;
  int accept_failed; /* le_conn_accept returned NULL */
  int freed;         /* on_freed calls */
  char dir[64];      /* a temporary directory for handler files */
} harness;

static inline harness *h_of_ctx(le_conn_ctx *ctx) {
  return (harness *)((char *)ctx - offsetof(harness, ctx));
}

static inline void h_on_freed(le_conn_ctx *ctx, void *owner, int status) {
  (void)owner, (void)status;
  h_of_ctx(ctx)->freed++;
}

static inline void h_free_handle(uv_handle_t *handle) { free(handle); }

static inline void h_on_connection(uv_stream_t *server, int status) {
  harness *h = server->data;
  assert_int_equal(status, 0);
  /* le_conn_accept takes a descriptor (the server accepts itself, to
   * count and pause): the harness accepts with libuv into a scratch handle
   * and hands over a duplicate of its descriptor. */
  uv_tcp_t *scratch = malloc(sizeof *scratch);
  assert_non_null(scratch);
  uv_tcp_init(server->loop, scratch);
  assert_int_equal(uv_accept(server, (uv_stream_t *)scratch), 0);
  uv_os_fd_t sfd;
  assert_int_equal(uv_fileno((uv_handle_t *)scratch, &sfd), 0);
  int fd = dup(sfd);
  assert_true(fd >= 0);
  uv_close((uv_handle_t *)scratch, h_free_handle);
  le_conn *c = le_conn_accept(&h->ctx, fd, UV_TCP, &h->opts, h->script, NULL);
  if (c == NULL) {
    h->accept_failed++;
    return;
  }
  assert_true(h->naccepted < H_MAX_ACCEPTED);
  h->accepted[h->naccepted++] = c;
}

static inline void h_on_tick(uv_timer_t *t) { (void)t; }

/* Runs the loop until `cond` holds, for at most 10 s. */
#define RUN_UNTIL(h, cond)                                                  \
  do {                                                                      \
    uint64_t give_up_ = uv_hrtime() + 10000000000u;                         \
    while (!(cond)) {                                                       \
      if (uv_hrtime() > give_up_) fail_msg("timed out waiting: %s", #cond); \
      uv_run(&(h)->loop, UV_RUN_ONCE);                                      \
    }                                                                       \
  } while (0)

/* Prepares h with a Lua state whose allocator is `alloc` (NULL: le_mem's,
 * uncapped). */
static inline void h_init_with(harness *h, lua_Alloc alloc, void *ud) {
  memset(h, 0, sizeof *h);
  assert_int_equal(uv_loop_init(&h->loop), 0);
  h->L = alloc ? lua_newstate(alloc, ud) : le_mem_newstate(&h->mem, 0);
  assert_non_null(h->L);
  luaL_openlibs(h->L);
  le_lconn_open(h->L);
  h->log_file = open_memstream(&h->log_text, &h->log_len);
  assert_non_null(h->log_file);
  le_log_init(&h->log, LE_LOG_DEBUG, h->log_file);
  assert_int_equal(le_conn_ctx_init(&h->ctx, &h->loop, h->L, &h->log), 0);
  h->ctx.on_freed = h_on_freed;
  le_lmodule_open(&h->ctx);
  le_opts_init(&h->opts);
  struct sockaddr_in sa;
  assert_int_equal(uv_ip4_addr("127.0.0.1", 0, &sa), 0);
  assert_int_equal(uv_tcp_init(&h->loop, &h->server), 0);
  h->server.data = h;
  assert_int_equal(uv_tcp_bind(&h->server, (struct sockaddr *)&sa, 0), 0);
  assert_int_equal(uv_listen((uv_stream_t *)&h->server, 16, h_on_connection),
                   0);
  int len = sizeof sa;
  assert_int_equal(uv_tcp_getsockname(&h->server, (struct sockaddr *)&sa, &len),
                   0);
  h->port = ntohs(sa.sin_port);
  uv_timer_init(&h->loop, &h->tick);
  uv_timer_start(&h->tick, h_on_tick, 5, 5);
  snprintf(h->dir, sizeof h->dir, "/tmp/luaecho-test-XXXXXX");
  assert_non_null(mkdtemp(h->dir));
}

static inline void h_init(harness *h) { h_init_with(h, NULL, NULL); }

/* Writes `code` as a handler file and makes it what new connections run. */
static inline void h_handler(harness *h, const char *code) {
  char path[128], err[512];
  snprintf(path, sizeof path, "%s/handler.lua", h->dir);
  write_file(path, code);
  le_script *s = le_script_new(h->L, path, err, sizeof err);
  if (s == NULL) fail_msg("%s", err);
  if (h->script) le_script_unref(h->script);
  h->script = s;
  unlink(path);
}

/* Returns what was logged so far. */
static inline const char *h_log(harness *h) {
  fflush(h->log_file);
  return h->log_text ? h->log_text : "";
}

/* Returns global `name` as a string ("nil" and so on for other values),
 * copied into a buffer the next call reuses. */
static inline const char *h_global(harness *h, const char *name) {
  static char out[4096];
  lua_getglobal(h->L, name);
  snprintf(out, sizeof out, "%s", luaL_tolstring(h->L, -1, NULL));
  lua_pop(h->L, 2);
  return out;
}

static inline int h_global_is_set(harness *h, const char *name) {
  int set = lua_getglobal(h->L, name) != LUA_TNIL;
  lua_pop(h->L, 1);
  return set;
}

/* Connects a client to the listener and waits until it is accepted;
 * returns its non-blocking descriptor. */
static inline int h_client(harness *h) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in sa;
  assert_int_equal(uv_ip4_addr("127.0.0.1", h->port, &sa), 0);
  assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  assert_int_equal(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
  int before = h->naccepted + h->accept_failed;
  RUN_UNTIL(h, h->naccepted + h->accept_failed > before);
  return fd;
}

/* Sends all of data from the client, running the loop while the socket is
 * full. */
static inline void h_client_send(harness *h, int fd, const char *data,
                                 size_t len) {
  uint64_t give_up = uv_hrtime() + 10000000000u;
  while (len > 0) {
    ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
    if (n > 0) {
      data += n;
      len -= (size_t)n;
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
      fail_msg("client send: %s", strerror(errno));
    if (uv_hrtime() > give_up) fail_msg("client send timed out");
    uv_run(&h->loop, UV_RUN_ONCE);
  }
}

/* Reads into buf until `want` bytes came, or the end of the stream.
 * Returns the bytes read; *end is 0 while the stream goes on, 1 after a
 * FIN, or -errno after an error such as ECONNRESET. */
static inline size_t h_client_recv(harness *h, int fd, char *buf, size_t want,
                                   int *end) {
  size_t got = 0;
  uint64_t give_up = uv_hrtime() + 10000000000u;
  *end = 0;
  while (got < want) {
    ssize_t n = recv(fd, buf + got, want - got, 0);
    if (n > 0) {
      got += (size_t)n;
      continue;
    }
    if (n == 0) {
      *end = 1;
      break;
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      *end = -errno;
      break;
    }
    if (uv_hrtime() > give_up) fail_msg("client recv timed out");
    uv_run(&h->loop, UV_RUN_ONCE);
  }
  return got;
}

/* Returns a port on 127.0.0.1 where nothing listens. */
static inline int h_closed_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa;
  socklen_t len = sizeof sa;
  uv_ip4_addr("127.0.0.1", 0, &sa);
  assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
  close(fd);
  return ntohs(sa.sin_port);
}

/* Returns a listener on 127.0.0.1 (*port) whose accept queue is full, with
 * the client that fills it in *filler: it drops new SYNs, so a connect to
 * it neither succeeds nor fails until the connector's deadline. */
static inline int h_full_listener(int *filler, int *port) {
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa;
  socklen_t len = sizeof sa;
  uv_ip4_addr("127.0.0.1", 0, &sa);
  assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof sa), 0);
  assert_int_equal(listen(lfd, 0), 0);
  assert_int_equal(getsockname(lfd, (struct sockaddr *)&sa, &len), 0);
  *filler = socket(AF_INET, SOCK_STREAM, 0);
  assert_int_equal(connect(*filler, (struct sockaddr *)&sa, sizeof sa), 0);
  *port = ntohs(sa.sin_port);
  return lfd;
}

/* Ends every connection, closes the loop (which must then close cleanly)
 * and the Lua state, and checks that every connection was freed. */
static inline void h_close(harness *h) {
  le_conn_ctx_abort_all(&h->ctx, LE_ESHUTDOWN);
  uv_close((uv_handle_t *)&h->server, NULL);
  uv_close((uv_handle_t *)&h->tick, NULL);
  le_conn_ctx_close(&h->ctx);
  uv_run(&h->loop, UV_RUN_DEFAULT);
  assert_int_equal(h->ctx.count, 0);
  assert_null(h->ctx.head);
  assert_int_equal(uv_loop_close(&h->loop), 0);
  if (h->script) le_script_unref(h->script);
  lua_close(h->L);
  le_conn_ctx_free(&h->ctx);
  fclose(h->log_file);
  free(h->log_text);
  rmdir(h->dir);
}

/* The harness of a test program, with cmocka setup and teardown. */
static harness H;

static inline int h_setup(void **state) {
  (void)state;
  h_init(&H);
  return 0;
}

static inline int h_teardown(void **state) {
  (void)state;
  h_close(&H);
  return 0;
}

#endif
