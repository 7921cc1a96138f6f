/* The `luaecho` module: see include/luaecho/lmodule.h. */
#include "luaecho/lmodule.h"

#include <lauxlib.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "luaecho/addr.h"

#define TASK_METATABLE "luaecho.task"
#define DEFAULT_CONNECT_TIMEOUT 10.0

static le_conn_ctx *ctx_of(lua_State *L) {
  return lua_touserdata(L, lua_upvalueindex(1));
}

/* Returns the coroutine L runs in; raises when it is not a handler's.
 * `fn` names the function in the message ("luaecho.sleep"). */
static le_coro *current(lua_State *L, const char *fn) {
  le_coro *c = le_coro_of(L);
  if (c == NULL)
    luaL_error(L, "%s must be called from a connection's handler or a "
                  "coroutine it spawned", fn);
  return c;
}

static uint64_t to_ms(double seconds) {
  double ms = ceil(seconds * 1000.0);
  return ms > 1e15 ? (uint64_t)1e15 : (uint64_t)ms;
}

/* ---- sleep and now ---- */

typedef struct sleep_req {
  uv_timer_t timer;
  le_coro *c;
} sleep_req;

static void free_handle(uv_handle_t *h) { free(h->data); }

static void on_wake(uv_timer_t *timer) {
  sleep_req *r = timer->data;
  le_coro *c = r->c;
  uv_close((uv_handle_t *)timer, free_handle);
  le_coro_resume(c, 0);
}

static void cancel_sleep(le_coro *c) {
  sleep_req *r = c->wait;
  uv_close((uv_handle_t *)&r->timer, free_handle);
}

/* luaecho.sleep(seconds): suspends only the calling coroutine. */
static int l_sleep(lua_State *L) {
  double seconds = (double)luaL_checknumber(L, 1);
  luaL_argcheck(L, seconds >= 0 && !isnan(seconds), 1,
                "seconds must be >= 0");
  le_coro *c = current(L, "luaecho.sleep");
  le_coro_check_yieldable(L, "luaecho.sleep");
  sleep_req *r = malloc(sizeof *r);
  if (r == NULL) return luaL_error(L, "luaecho.sleep: out of memory");
  uv_timer_init(ctx_of(L)->loop, &r->timer);
  r->timer.data = r;
  r->c = c;
  uv_timer_start(&r->timer, on_wake, to_ms(seconds), 0);
  le_coro_wait(L, cancel_sleep, r);
  return le_coro_yield(L);
}

/* luaecho.now(): monotonic seconds, with sub-millisecond precision. */
static int l_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)uv_hrtime() / 1e9);
  return 1;
}

/* luaecho.log(level, ...): one log record; the arguments are joined with
 * spaces, and a connection's coroutine gets "conn ID: " in front. */
static int l_log(lua_State *L) {
  static const char *const levels[] = {"debug", "info", "warn", "error",
                                       NULL};
  int level = luaL_checkoption(L, 1, NULL, levels);
  int n = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  le_coro *c = le_coro_of(L);
  if (c != NULL && c->owner != NULL)
    lua_pushfstring(L, "conn %I: ",
                    (lua_Integer)((le_lconn *)c->owner)->id),
        luaL_addvalue(&b);
  for (int i = 2; i <= n; i++) {
    if (i > 2) luaL_addchar(&b, ' ');
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  le_logf(ctx_of(L)->log, (le_log_level)level, "%s", lua_tostring(L, -1));
  return 0;
}

/* ---- spawn and join ---- */

typedef enum { TASK_RUNNING, TASK_DONE, TASK_FAILED, TASK_KILLED } task_state;

/* A spawned coroutine. It lives in its Lua handle (a userdata), which a
 * registry ref keeps alive while the coroutine runs. */
typedef struct task {
  le_coro coro;
  task_state state;
  int self_ref;        /* keeps the handle alive while running */
  int results_ref;     /* results table, or the error message */
  lua_State *joiner;   /* coroutine waiting in join, or NULL */
} task;

static task *task_of(le_coro *c) {
  return (task *)((char *)c - offsetof(task, coro));
}

/* Pushes what join returns: the task's results, or nil and why it failed
 * ("closed" when it was ended with its connection). */
static int push_outcome(lua_State *L, task *t) {
  if (t->state == TASK_KILLED) {
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  if (t->state == TASK_FAILED) {
    lua_pushnil(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, t->results_ref);
    return 2;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->results_ref);
  lua_Integer n = (lua_getfield(L, -1, "n"), lua_tointeger(L, -1));
  lua_pop(L, 1);
  if (n > 0 && !lua_checkstack(L, (int)n)) { /* never raise on a joiner */
    lua_pop(L, 1);
    lua_pushnil(L);
    lua_pushliteral(L, "too many results to return");
    return 2;
  }
  for (lua_Integer i = 1; i <= n; i++) lua_rawgeti(L, -1 - (int)(i - 1), i);
  lua_remove(L, -1 - (int)n);
  return (int)n;
}

static void task_done(le_coro *c, lua_State *co, int nres,
                      const char *error) {
  task *t = task_of(c);
  lua_State *L = c->L;
  if (error != NULL) {
    /* Logged even if nobody joins, so a failure is never silent. */
    const le_lconn *owner = c->owner;
    le_logf(owner->log, LE_LOG_ERROR, "conn %llu: spawned coroutine error: %s",
            (unsigned long long)owner->id, error);
    t->state = TASK_FAILED;
    lua_pushstring(L, error);
  } else {
    t->state = TASK_DONE;
    lua_createtable(L, nres, 1);
    for (int i = nres; i >= 1; i--) { /* the last result is on top */
      lua_xmove(co, L, 1);
      lua_rawseti(L, -2, i);
    }
    lua_pushinteger(L, nres);
    lua_setfield(L, -2, "n");
  }
  t->results_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_State *joiner = t->joiner;
  int self = t->self_ref;
  t->joiner = NULL;
  t->self_ref = LUA_NOREF;
  if (joiner != NULL)
    le_coro_resume_from(le_coro_of(joiner), push_outcome(joiner, t), co);
  /* Last: the handle may be collected from here on. */
  luaL_unref(L, LUA_REGISTRYINDEX, self);
}

/* The task was ended with its connection. */
static void task_killed(le_coro *c) {
  task *t = task_of(c);
  t->state = TASK_KILLED;
  t->joiner = NULL;
  luaL_unref(c->L, LUA_REGISTRYINDEX, t->self_ref);
  t->self_ref = LUA_NOREF;
}

static void cancel_join(le_coro *c) {
  task *t = c->wait;
  t->joiner = NULL;
}

/* task:join() -> the function's results, or nil, err */
static int task_join(lua_State *L) {
  task *t = luaL_checkudata(L, 1, TASK_METATABLE);
  le_coro *me = current(L, "task:join");
  if (me == &t->coro) return luaL_error(L, "a task cannot join itself");
  /* Tasks end with their connection; a joiner of another connection could
   * otherwise wait for a resume that never comes. */
  if (me->owner != t->coro.owner)
    return luaL_error(L, "task:join: the task belongs to another connection");
  if (t->state != TASK_RUNNING) return push_outcome(L, t);
  if (t->joiner != NULL) {
    lua_pushnil(L);
    lua_pushliteral(L, "busy");
    return 2;
  }
  le_coro_check_yieldable(L, "task:join");
  t->joiner = L;
  le_coro_wait(L, cancel_join, t);
  return le_coro_yield(L);
}

static int task_gc(lua_State *L) {
  task *t = luaL_checkudata(L, 1, TASK_METATABLE);
  luaL_unref(L, LUA_REGISTRYINDEX, t->results_ref);
  t->results_ref = LUA_NOREF;
  return 0;
}

static int task_tostring(lua_State *L) {
  static const char *const states[] = {"running", "done", "failed", "closed"};
  task *t = luaL_checkudata(L, 1, TASK_METATABLE);
  lua_pushfstring(L, "luaecho.task (%s)", states[t->state]);
  return 1;
}

/* luaecho.spawn(fn, ...): runs fn(...) in a new coroutine of the current
 * connection, at once, until it first waits; returns its handle. */
static int l_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  le_coro *parent = current(L, "luaecho.spawn");
  lua_State *M = ctx_of(L)->L;
  int nargs = lua_gettop(L) - 1;
  task *t = lua_newuserdatauv(L, sizeof *t, 0);
  memset(t, 0, sizeof *t);
  t->results_ref = LUA_NOREF;
  luaL_setmetatable(L, TASK_METATABLE);
  lua_pushvalue(L, -1);
  t->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_insert(L, 1); /* the handle stays below for the return */
  t->coro.owner = parent->owner;
  t->coro.killed = task_killed;
  t->coro.sched = parent->sched;
  /* The new coroutine lives in the main state; the parent is only `from`,
   * so nested spawns count against Lua's C-stack limit. */
  luaL_checkstack(M, nargs + 3, "too many arguments");
  lua_xmove(L, M, nargs + 1);
  if (le_coro_start(&t->coro, M, nargs, task_done, L) != 0)
    return luaL_error(L, "luaecho.spawn: out of memory");
  if (le_coro_alive(&t->coro))
    le_coro_list_add(&((le_lconn *)parent->owner)->tasks, &t->coro);
  return 1;
}

/* ---- connect ---- */

/* One luaecho.connect in progress, from name resolution to the connected
 * socket. The waiting coroutine can be ended at any step; `cancel` then
 * undoes the step in progress. */
typedef struct connect_req {
  uv_getaddrinfo_t gai;  /* name resolution, for host names */
  le_conn_ctx *ctx;
  le_coro *c;            /* the waiting coroutine, NULL once it is gone */
  le_conn *conn;         /* the connection once connecting */
  le_opts opts;
  uint64_t timeout_ms;
  int port;
} connect_req;

static int push_error(lua_State *L, int err);

static void resume_with_error(le_coro *c, int err) {
  le_coro_resume(c, push_error(c->co, err));
}

static void on_connect_done(le_conn *conn, int status, void *arg) {
  connect_req *r = arg;
  le_coro *c = r->c;
  free(r);
  if (status < 0) {
    resume_with_error(c, status);
    return;
  }
  le_lconn_adopt(&conn->lc, c->co);
  le_coro_resume(c, 1);
}

static void cancel_connect(le_coro *c) {
  connect_req *r = c->wait;
  if (r->conn != NULL) {
    le_conn_cancel_connect(r->conn);
    free(r);
  } else {
    r->c = NULL; /* on_resolved frees it */
    uv_cancel((uv_req_t *)&r->gai);
  }
}

/* Starts the socket connect. Returns 0, or a libuv error with r freed. */
static int start_connect(connect_req *r, const struct sockaddr *sa,
                         const char *path) {
  int err = 0;
  le_conn *conn = le_conn_connect(r->ctx, sa, path, &r->opts, r->timeout_ms,
                                  on_connect_done, r, &err);
  if (conn == NULL) {
    free(r);
    return err;
  }
  r->conn = conn;
  return 0;
}

static void on_resolved(uv_getaddrinfo_t *gai, int status,
                        struct addrinfo *res) {
  connect_req *r = gai->data;
  if (r->c == NULL) { /* the coroutine went away meanwhile */
    uv_freeaddrinfo(res);
    free(r);
    return;
  }
  if (status < 0) {
    le_coro *c = r->c;
    free(r);
    resume_with_error(c, status);
    return;
  }
  struct sockaddr_storage ss;
  memcpy(&ss, res->ai_addr, res->ai_addrlen);
  uv_freeaddrinfo(res);
  if (ss.ss_family == AF_INET)
    ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)r->port);
  else
    ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)r->port);
  le_coro *c = r->c;
  int err = start_connect(r, (struct sockaddr *)&ss, NULL);
  if (err < 0) resume_with_error(c, err);
}

/* Reads connect's options table at idx into r: `timeout` and any
 * connection option. Raises on an unknown name or a bad value. */
static void read_connect_opts(lua_State *L, int idx, connect_req *r) {
  double timeout = DEFAULT_CONNECT_TIMEOUT;
  le_opts_init(&r->opts);
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
          luaL_error(L, "luaecho.connect: option 'timeout': expected a "
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
  r->timeout_ms = to_ms(timeout);
}

static int push_error(lua_State *L, int err) {
  char name[32];
  lua_pushnil(L);
  lua_pushstring(L, le_lconn_errname(err, name, sizeof name));
  return 2;
}

/* Starts resolving a host name; returns 0 or a libuv error. */
static int start_resolve(connect_req *r, const char *host) {
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  r->gai.data = r;
  return uv_getaddrinfo(r->ctx->loop, &r->gai, on_resolved, host, NULL,
                        &hints);
}

/* luaecho.connect(host, port [, opts]) or luaecho.connect("unix:/path"
 * [, opts]) -> conn, or nil, err. */
static int l_connect(lua_State *L) {
  const char *host = luaL_checkstring(L, 1);
  int is_unix = strncmp(host, "unix:", 5) == 0;
  lua_Integer port = is_unix ? 0 : luaL_checkinteger(L, 2);
  luaL_argcheck(L, is_unix || (port >= 1 && port <= 65535), 2,
                "port must be 1..65535");
  luaL_argcheck(L, !is_unix || (host[5] && strlen(host + 5) < LE_ADDR_PATH_MAX),
                1, "bad unix socket path");
  le_coro *c = current(L, "luaecho.connect");
  le_coro_check_yieldable(L, "luaecho.connect");
  connect_req req = {0};
  read_connect_opts(L, is_unix ? 2 : 3, &req);
  connect_req *r = malloc(sizeof *r);
  if (r == NULL) return luaL_error(L, "luaecho.connect: out of memory");
  *r = req;
  r->ctx = ctx_of(L);
  r->c = c;
  r->port = (int)port;
  struct sockaddr_storage ss;
  int err;
  if (is_unix)
    err = start_connect(r, NULL, host + 5);
  else if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&ss) == 0 ||
           uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&ss) == 0)
    err = start_connect(r, (struct sockaddr *)&ss, NULL);
  else if ((err = start_resolve(r, host)) < 0)
    free(r);
  if (err < 0) return push_error(L, err);
  le_coro_wait(L, cancel_connect, r);
  return le_coro_yield(L);
}

/* ---- versions ---- */

/* Returns the accepted connection the calling coroutine works for. */
static le_lconn *owner_conn(lua_State *L, const char *fn) {
  le_lconn *lc = current(L, fn)->owner;
  if (lc == NULL || lc->script == NULL)
    luaL_error(L, "%s: this coroutine has no handler", fn);
  return lc;
}

/* luaecho.latest() -> the newest version of the connection's handler
 * function, and its version number. `return luaecho.latest()(conn, state)`
 * moves a live connection to new code with its state, as Erlang's
 * ?MODULE:loop(State) does; from then on the connection counts as running
 * that version, so luaecho.version() reports it. */
static int l_latest(lua_State *L) {
  le_lconn *lc = owner_conn(L, "luaecho.latest");
  le_script_push(lc->script, L);
  lc->version = lc->script->version;
  lua_pushinteger(L, (lua_Integer)lc->version);
  return 2;
}

/* luaecho.version() -> the handler version this connection runs (the one
 * it started with, or the last one luaecho.latest() handed it), and the
 * newest one. */
static int l_version(lua_State *L) {
  le_lconn *lc = owner_conn(L, "luaecho.version");
  lua_pushinteger(L, (lua_Integer)lc->version);
  lua_pushinteger(L, (lua_Integer)lc->script->version);
  return 2;
}

/* ---- the module ---- */

static const luaL_Reg module_fns[] = {
    {"connect", l_connect}, {"spawn", l_spawn}, {"sleep", l_sleep},
    {"now", l_now},         {"log", l_log},     {"latest", l_latest},
    {"version", l_version}, {NULL, NULL}};

static int open_module(lua_State *L) {
  luaL_newlibtable(L, module_fns);
  lua_pushvalue(L, lua_upvalueindex(1));
  luaL_setfuncs(L, module_fns, 1);
  return 1;
}

void le_lmodule_open(le_conn_ctx *ctx) {
  lua_State *L = ctx->L;
  luaL_newmetatable(L, TASK_METATABLE);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, task_join);
  lua_setfield(L, -2, "join");
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, task_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, task_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushlightuserdata(L, ctx);
  lua_pushcclosure(L, open_module, 1);
  lua_setfield(L, -2, "luaecho");
  lua_pop(L, 1);
}
