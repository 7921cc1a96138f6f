/* luaecho.connect: see include/luaecho/lmodule.h.
 *
 * One request (connect_req) carries a connect from name resolution to the
 * connected socket. It has one owner at a time and one place that frees it:
 * the wait owns it from luaecho.connect until the continuation (connect_k)
 * or a cancel; while a name is being resolved, libuv holds it too, and a
 * cancelled request is freed by on_resolved, which libuv always calls.
 */
#include <stdlib.h>
#include <string.h>

#include "lmodule_internal.h"
#include "luaecho/addr.h"

#define DEFAULT_CONNECT_TIMEOUT 10.0

typedef struct connect_req {
  uv_getaddrinfo_t gai; /* name resolution, for host names */
  le_conn_ctx *ctx;
  le_coro *c;    /* the waiting coroutine, NULL once it is gone */
  le_conn *conn; /* the connection, once connecting */
  le_opts opts;
  uint64_t timeout_ms;
  int port;
  int status;    /* the outcome, for the continuation */
  int resolving; /* libuv holds gai until on_resolved */
} connect_req;

/* What luaecho.connect asks for, handed to arm_connect. */
typedef struct connect_args {
  const char *host; /* NULL for a unix socket */
  const char *path; /* the unix socket's path */
  int port;
} connect_args;

/* Ends the wait with `status` (0: r->conn is connected). */
static void finish(connect_req *r, int status) {
  r->status = status;
  le_coro_wake(r->c);
}

static void on_connected(le_conn *conn, int status, void *arg) {
  connect_req *r = arg;
  r->conn = status < 0 ? NULL : conn; /* a failed one is closing already */
  finish(r, status);
}

/* Starts the socket connect. Returns 0 or a libuv error. */
static int start_connect(connect_req *r, const struct sockaddr *sa,
                         const char *path) {
  int err = 0;
  r->conn = le_conn_connect(r->ctx, sa, path, &r->opts, r->timeout_ms,
                            on_connected, r, &err);
  return r->conn ? 0 : err;
}

static void on_resolved(uv_getaddrinfo_t *gai, int status,
                        struct addrinfo *res) {
  connect_req *r = gai->data;
  r->resolving = 0;
  if (r->c == NULL) { /* the coroutine went away meanwhile */
    uv_freeaddrinfo(res);
    free(r);
    return;
  }
  if (status < 0) {
    finish(r, status);
    return;
  }
  struct sockaddr_storage ss;
  memcpy(&ss, res->ai_addr, res->ai_addrlen);
  uv_freeaddrinfo(res);
  le_addr_set_port((struct sockaddr *)&ss, r->port);
  int err = start_connect(r, (struct sockaddr *)&ss, NULL);
  if (err < 0) finish(r, err);
}

/* Starts resolving a host name; returns 0 or a libuv error. */
static int start_resolve(connect_req *r, const char *host) {
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  r->gai.data = r;
  int err =
      uv_getaddrinfo(r->ctx->loop, &r->gai, on_resolved, host, NULL, &hints);
  r->resolving = err == 0;
  return err;
}

static int arm_connect(le_coro *c, void *obj, const void *arg) {
  connect_req *r = obj;
  const connect_args *a = arg;
  struct sockaddr_storage ss;
  r->c = c;
  r->port = a->port;
  if (a->host == NULL) return start_connect(r, NULL, a->path);
  if (uv_ip4_addr(a->host, a->port, (struct sockaddr_in *)&ss) == 0 ||
      uv_ip6_addr(a->host, a->port, (struct sockaddr_in6 *)&ss) == 0)
    return start_connect(r, (struct sockaddr *)&ss, NULL);
  return start_resolve(r, a->host);
}

/* The coroutine ended while waiting: undo the step under way. */
static void cancel_connect(le_coro *c, void *obj) {
  connect_req *r = obj;
  (void)c;
  r->c = NULL;
  if (r->resolving) {
    uv_cancel((uv_req_t *)&r->gai); /* on_resolved frees r */
    return;
  }
  if (r->conn != NULL) le_conn_cancel_connect(r->conn);
  free(r);
}

/* The result never reached the coroutine: a connected socket nobody will
 * adopt is closed. */
static void drop_connect(le_coro *c, void *obj) {
  connect_req *r = obj;
  (void)c;
  if (r->conn != NULL) le_conn_close(r->conn);
  free(r);
}

static int connect_k(lua_State *L, int status, lua_KContext kctx);

static const le_wait_ops connect_ops = {"luaecho.connect", arm_connect,
                                        cancel_connect, drop_connect,
                                        connect_k};

static int connect_k(lua_State *L, int status, lua_KContext kctx) {
  connect_req *r = (connect_req *)kctx;
  int err = status < 0 ? status : r->status;
  le_conn *conn = r->conn;
  free(r); /* before anything that may raise */
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
  connect_args a = {is_unix ? NULL : host, host + 5, (int)port};
  return le_coro_wait(L, &connect_ops, r, &a);
}
