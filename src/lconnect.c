/* luaecho.connect: see include/luaecho/lmodule.h.
 *
 * One request (connect_req) carries a connect from name resolution to the
 * connected socket. Up to three parties hold it, and the last to let go
 * frees it (release): the wait, from luaecho.connect until the
 * continuation (connect_k), a cancel or a drop; libuv's resolver, from
 * uv_getaddrinfo until on_resolved, which libuv always calls, even when
 * cancelled; and the timer that bounds resolution, until its close
 * callback.
 *
 * A name may resolve to several addresses ("localhost" to ::1 and
 * 127.0.0.1): they are tried in the resolver's order until one connects,
 * as getaddrinfo(3) advises and as curl and Go do. The `timeout` bounds
 * the whole: resolution and every attempt. Each attempt gets an equal
 * share of what is left, but at least ATTEMPT_FLOOR_MS (Go's rule), so
 * one address that drops SYNs does not eat the time of the others.
 */
#include <stdlib.h>
#include <string.h>

#include "lmodule_internal.h"
#include "luaecho/addr.h"

#define DEFAULT_CONNECT_TIMEOUT 10.0
#define ATTEMPT_FLOOR_MS 2000

/* Who holds a request (connect_req.holds). */
enum { HOLD_WAIT = 1, HOLD_RESOLVER = 2, HOLD_TIMER = 4 };

typedef struct connect_req {
  uv_getaddrinfo_t gai; /* name resolution, for host names */
  uv_timer_t timer;     /* bounds resolution; open while HOLD_TIMER */
  le_conn_ctx *ctx;
  le_coro *c;             /* the waiting coroutine, NULL once it is gone */
  le_conn *conn;          /* the connection, once connecting */
  struct addrinfo *addrs; /* what the name resolved to, or NULL */
  struct addrinfo *next;  /* the next of addrs to try */
  le_opts opts;
  uint64_t timeout_ms;
  uint64_t deadline; /* loop time by which it all must end */
  int port;
  int status;   /* the outcome, for the continuation */
  int last_err; /* the error of the last attempt that failed */
  unsigned holds;
  unsigned finished : 1; /* the outcome is known (status) */
} connect_req;

/* What luaecho.connect asks for, handed to arm_connect. */
typedef struct connect_args {
  const char *host; /* NULL for a unix socket */
  const char *path; /* the unix socket's path */
  int port;
} connect_args;

/* `who` lets go of r; the last one frees it. */
static void release(connect_req *r, unsigned who) {
  r->holds &= ~who;
  if (r->holds != 0) return;
  if (r->addrs != NULL) uv_freeaddrinfo(r->addrs);
  free(r);
}

static void on_timer_closed(uv_handle_t *h) { release(h->data, HOLD_TIMER); }

/* Closes the resolution timer if it is open. Idempotent. */
static void close_timer(connect_req *r) {
  if ((r->holds & HOLD_TIMER) && !uv_is_closing((uv_handle_t *)&r->timer))
    uv_close((uv_handle_t *)&r->timer, on_timer_closed);
}

/* Ends the wait with `status` (0: r->conn is connected), once. */
static void finish(connect_req *r, int status) {
  if (r->finished) return;
  r->finished = 1;
  r->status = status;
  close_timer(r);
  le_coro_wake(r->c);
}

static void try_next(connect_req *r);

static void on_connected(le_conn *conn, int status, void *arg) {
  connect_req *r = arg;
  r->conn = status < 0 ? NULL : conn; /* a failed one is closing already */
  if (status < 0 && r->next != NULL) {
    r->last_err = status;
    try_next(r);
    return;
  }
  finish(r, status);
}

/* Starts the socket connect, allowed timeout_ms. Returns 0 or a libuv
 * error. */
static int start_connect(connect_req *r, const struct sockaddr *sa,
                         const char *path, uint64_t timeout_ms) {
  int err = 0;
  r->conn = le_conn_connect(r->ctx, sa, path, &r->opts, timeout_ms,
                            on_connected, r, &err);
  return r->conn ? 0 : err;
}

/* The time the next attempt gets: an equal share of what is left among the
 * addresses still to try, at least ATTEMPT_FLOOR_MS; 0 once the deadline
 * has passed. */
static uint64_t attempt_ms(const connect_req *r) {
  uint64_t now = uv_now(r->ctx->loop);
  if (now >= r->deadline) return 0;
  uint64_t left = r->deadline - now, n = 0;
  for (const struct addrinfo *ai = r->next; ai != NULL; ai = ai->ai_next) n++;
  uint64_t share = left / (n ? n : 1);
  if (share < ATTEMPT_FLOOR_MS) share = ATTEMPT_FLOOR_MS;
  return share < left ? share : left;
}

/* Connects to the next resolved address that takes a connect; ends the
 * wait with the last error when none is left, or with LE_TIMEOUT when the
 * time is up. */
static void try_next(connect_req *r) {
  while (r->next != NULL) {
    uint64_t ms = attempt_ms(r);
    if (ms == 0) {
      finish(r, LE_TIMEOUT);
      return;
    }
    struct addrinfo *ai = r->next;
    r->next = ai->ai_next;
    struct sockaddr_storage ss;
    if (ai->ai_addrlen > sizeof ss) continue;
    memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
    le_addr_set_port((struct sockaddr *)&ss, r->port);
    int err = start_connect(r, (struct sockaddr *)&ss, NULL, ms);
    if (err == 0) return;
    r->last_err = err;
  }
  finish(r, r->last_err < 0 ? r->last_err : UV_EAI_NONAME);
}

static void on_resolved(uv_getaddrinfo_t *gai, int status,
                        struct addrinfo *res) {
  connect_req *r = gai->data;
  close_timer(r);
  if (r->c == NULL || r->finished) { /* cancelled, or timed out */
    uv_freeaddrinfo(res);
  } else if (status < 0) {
    finish(r, status);
  } else {
    r->addrs = r->next = res;
    try_next(r);
  }
  release(r, HOLD_RESOLVER);
}

/* Resolution took the whole timeout: the wait ends, and the resolver's
 * answer, when it comes, is thrown away. */
static void on_resolve_timeout(uv_timer_t *t) {
  connect_req *r = t->data;
  uv_cancel((uv_req_t *)&r->gai); /* in vain once the lookup has started */
  finish(r, LE_TIMEOUT);
}

/* Starts resolving a host name, bounded by the timeout; returns 0 or a
 * libuv error. */
static int start_resolve(connect_req *r, const char *host) {
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  r->gai.data = r;
  int err =
      uv_getaddrinfo(r->ctx->loop, &r->gai, on_resolved, host, NULL, &hints);
  if (err < 0) return err;
  r->holds |= HOLD_RESOLVER;
  if (r->timeout_ms > 0 && uv_timer_init(r->ctx->loop, &r->timer) == 0) {
    r->timer.data = r;
    r->holds |= HOLD_TIMER;
    uv_timer_start(&r->timer, on_resolve_timeout, r->timeout_ms, 0);
  }
  return 0;
}

static int arm_connect(le_coro *c, void *obj, const void *arg) {
  connect_req *r = obj;
  const connect_args *a = arg;
  struct sockaddr_storage ss;
  r->c = c;
  r->port = a->port;
  r->deadline = uv_now(r->ctx->loop) + r->timeout_ms;
  if (a->host == NULL) return start_connect(r, NULL, a->path, r->timeout_ms);
  if (uv_ip4_addr(a->host, a->port, (struct sockaddr_in *)&ss) == 0 ||
      uv_ip6_addr(a->host, a->port, (struct sockaddr_in6 *)&ss) == 0)
    return start_connect(r, (struct sockaddr *)&ss, NULL, r->timeout_ms);
  return start_resolve(r, a->host);
}

/* The coroutine ended while waiting: undo the step under way. */
static void cancel_connect(le_coro *c, void *obj) {
  connect_req *r = obj;
  (void)c;
  r->c = NULL;
  if (r->holds & HOLD_RESOLVER) /* on_resolved lets go of r */
    uv_cancel((uv_req_t *)&r->gai);
  close_timer(r);
  if (r->conn != NULL) le_conn_cancel_connect(r->conn);
  release(r, HOLD_WAIT);
}

/* The result never reached the coroutine: a connected socket nobody will
 * adopt is closed. */
static void drop_connect(le_coro *c, void *obj) {
  connect_req *r = obj;
  (void)c;
  if (r->conn != NULL) le_conn_close(r->conn);
  r->c = NULL;
  release(r, HOLD_WAIT);
}

static int connect_k(lua_State *L, int status, lua_KContext kctx);

static const le_wait_ops connect_ops = {
    "luaecho.connect", arm_connect, cancel_connect, drop_connect, connect_k};

static int connect_k(lua_State *L, int status, lua_KContext kctx) {
  connect_req *r = (connect_req *)kctx;
  int err = status < 0 ? status : r->status;
  le_conn *conn = r->conn;
  r->c = NULL;
  release(r, HOLD_WAIT); /* before anything that may raise */
  if (err < 0) return le_lconn_push_error(L, err);
  le_lconn_adopt(&conn->lc, L);
  return 1;
}

/* Reads connect's options table at idx into r: `timeout` and any
 * connection option. Raises on an unknown name or a bad value. The trace
 * settings default to those of the calling connection, so a traced
 * handler's outbound connections show up in the trace too. */
static void read_connect_opts(lua_State *L, int idx, connect_req *r,
                              const le_lconn *caller) {
  double timeout = DEFAULT_CONNECT_TIMEOUT;
  le_opts_init(&r->opts);
  r->opts.trace = caller->opts.trace;
  r->opts.trace_bytes = caller->opts.trace_bytes;
  r->opts.trace_hex = caller->opts.trace_hex;
  if (!lua_isnoneornil(L, idx)) {
    luaL_checktype(L, idx, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
      char why[256];
      if (lua_type(L, -2) != LUA_TSTRING)
        luaL_error(L, "luaecho.connect: option names must be strings");
      const char *name = lua_tostring(L, -2);
      if (strcmp(name, "timeout") == 0) {
        timeout = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : -1;
        if (!(timeout > 0))
          luaL_error(L,
                     "luaecho.connect: option 'timeout': expected a "
                     "number of seconds > 0");
      } else {
        le_opt_status st = le_opts_set(&r->opts, name, L, -1, why, sizeof why);
        if (st == LE_OPT_UNKNOWN)
          luaL_error(L, "luaecho.connect: unknown option '%s'", name);
        if (st == LE_OPT_INVALID)
          luaL_error(L, "luaecho.connect: option '%s': %s", name, why);
      }
      lua_pop(L, 1);
    }
  }
  r->timeout_ms = le_opts_ms(timeout);
}

/* luaecho.connect(host, port [, opts]) or luaecho.connect("unix:/path"
 * [, opts]) -> conn, or nil, err. */
int le__lmodule_connect(lua_State *L) {
  const char *host = luaL_checkstring(L, 1);
  int is_unix = strncmp(host, "unix:", 5) == 0;
  lua_Integer port = is_unix ? 0 : luaL_checkinteger(L, 2);
  luaL_argcheck(L, is_unix || (port >= 1 && port <= 65535), 2,
                "port must be 1..65535");
  luaL_argcheck(L, !is_unix || (host[5] && strlen(host + 5) < LE_ADDR_PATH_MAX),
                1, "bad unix socket path");
  le_coro *c = le__lmodule_current(L, "luaecho.connect");
  connect_req req = {0};
  read_connect_opts(L, is_unix ? 2 : 3, &req, le_lconn_of_coro(c));
  connect_req *r = malloc(sizeof *r);
  if (r == NULL) return luaL_error(L, "luaecho.connect: not enough memory");
  *r = req;
  r->ctx = le__lmodule_ctx(L);
  r->holds = HOLD_WAIT;
  connect_args a = {is_unix ? NULL : host, host + 5, (int)port};
  return le_coro_wait(L, &connect_ops, r, &a);
}
