/* The luaecho.inspect module: see include/luaecho/linspect.h.
 *
 * It reads the loop's live connections (le_conn_ctx_each) and their Lua faces;
 * the only state of its own is the taps: for each connection somebody
 * subscribed to, a ring of its last trace events, filled from the trace's
 * tap hook. The ring is plain C memory because the hook runs inside socket
 * callbacks, where a Lua allocation error could not be caught.
 */
#include "luaecho/linspect.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "luaecho/addr.h"
#include "luaecho/lmem.h"

#define SUB_METATABLE "luaecho.inspect.sub"

/* The trace events of one subscribed connection. */
typedef struct tap {
  uint64_t id;    /* the connection */
  int subs;       /* subscriptions open on it */
  int was_traced; /* its trace option before the first one */
  uint64_t seq;   /* events recorded; event k is in slot k % RING */
  uint64_t us[LE_INSPECT_RING];
  char *event[LE_INSPECT_RING];
  struct tap *next;
} tap;

/* The module's state: a userdata, upvalue 1 of every function. */
typedef struct inspect {
  le_conn_ctx *ctx;
  tap *taps;
  int closed; /* the Lua state is closing: taps are gone */
} inspect;

/* A subscription: a userdata whose user value is the inspect userdata, so
 * the module state outlives it. */
typedef struct sub {
  const void *cookie; /* &sub_cookie: tells a subscription from a forgery */
  inspect *in;
  tap *t; /* NULL once closed */
} sub;

static const char sub_cookie = 0;

static inspect *state_of(lua_State *L) {
  return lua_touserdata(L, lua_upvalueindex(1));
}

static le_conn *check_conn(lua_State *L, int arg) {
  return le_conn_ctx_find(state_of(L)->ctx,
                          (uint64_t)luaL_checkinteger(L, arg));
}

static int no_such_conn(lua_State *L) {
  luaL_pushfail(L);
  lua_pushliteral(L, "no such connection");
  return 2;
}

/* ---- connection info ---- */

static void set_int(lua_State *L, const char *key, uint64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, key);
}

static void set_str(lua_State *L, const char *key, const char *v) {
  lua_pushstring(L, v);
  lua_setfield(L, -2, key);
}

static void set_local(lua_State *L, le_lconn *lc) {
  char host[LE_ADDR_HOST_MAX], text[LE_ADDR_TEXT_MAX];
  int port;
  if (lc->io->sockname(lc, host, sizeof host, &port) == 0)
    set_str(L, "local",
            le_addr_format_host_port(host, port, text, sizeof text));
  else
    set_str(L, "local", "?");
}

/* Pushes the table of inspect.conns() for c. */
static void push_info(lua_State *L, le_conn *c) {
  static const char *const states[] = {"connecting", "open", "draining",
                                       "closing", "closed"};
  le_lconn *lc = &c->lc;
  char peer[LE_ADDR_TEXT_MAX];
  lua_createtable(L, 0, 20);
  set_int(L, "id", lc->id);
  set_str(L, "peer", le_lconn_format_peer(lc, peer, sizeof peer));
  set_local(L, lc);
  lua_pushnumber(L, (double)(uv_now(c->ctx->loop) - lc->opened_at) / 1000.0);
  lua_setfield(L, -2, "age");
  if (c->origin != NULL) set_str(L, "listener", c->origin->name);
  lua_pushboolean(L, c->origin != NULL && c->origin->admin);
  lua_setfield(L, -2, "admin");
  set_str(L, "handler", le_script_name(lc->script->path));
  set_int(L, "version", lc->version);
  set_int(L, "latest", lc->script->version);
  set_str(L, "waits_on", le_coro_waits_on(&lc->coro));
  set_int(L, "bytes_in", lc->bytes_in);
  set_int(L, "bytes_out", lc->bytes_out);
  set_int(L, "msgs_in", lc->msgs_in);
  set_int(L, "msgs_out", lc->msgs_out);
  set_int(L, "queued", lc->queued);
  set_int(L, "buffered", le_buf_size(&lc->in));
  set_str(L, "state", states[c->state]);
  lua_pushboolean(L, lc->opts.trace);
  lua_setfield(L, -2, "trace");
}

/* inspect.conns() -> the accepted connections, oldest first. */
/* Appends one connection's table to the list on top of L. */
static void append_info(le_conn *c, void *arg) {
  lua_State *L = arg;
  push_info(L, c);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
}

static int l_conns(lua_State *L) {
  le_conn_ctx *ctx = state_of(L)->ctx;
  lua_createtable(L, (int)ctx->count, 0);
  le_conn_ctx_each(ctx, append_info, L);
  return 1;
}

/* Sets field `traceback` to where the handler coroutine of lc stands:
 * only a suspended coroutine (or the caller's own) can be walked. */
static void set_traceback(lua_State *L, le_lconn *lc) {
  le_coro *co = &lc->coro;
  if (co->co == L)
    luaL_traceback(L, L, NULL, 1);
  else if (co->co != NULL &&
           (co->state == LE_CORO_WAITING || co->state == LE_CORO_READY))
    luaL_traceback(L, co->co, NULL, 0);
  else
    return;
  lua_setfield(L, -2, "traceback");
}

/* inspect.conn(id) -> the conn info with traceback and kernel, or nil. */
static int l_conn(lua_State *L) {
  le_conn *c = check_conn(L, 1);
  if (c == NULL) return no_such_conn(L);
  push_info(L, c);
  set_traceback(L, &c->lc);
  le_lconn_push_kernel(L, &c->lc);
  return 1;
}

/* inspect.trace(id, on) -> true, or nil, "no such connection". */
static int l_trace(lua_State *L) {
  le_conn *c = check_conn(L, 1);
  luaL_checkany(L, 2);
  if (c == NULL) return no_such_conn(L);
  c->lc.opts.trace = (uint8_t)lua_toboolean(L, 2);
  lua_pushboolean(L, 1);
  return 1;
}

/* A kill waiting for the next loop turn; owns its timer. */
typedef struct kill_req {
  uv_timer_t timer;
  le_conn_ctx *ctx;
  uint64_t id;
} kill_req;

static void free_kill(uv_handle_t *h) { free(h->data); }

static void on_kill(uv_timer_t *t) {
  kill_req *k = t->data;
  le_conn *c = le_conn_ctx_find(k->ctx, k->id);
  if (c != NULL && le_conn_is_open(c)) le_conn_abort(c, LE_EKILLED);
  uv_close((uv_handle_t *)&k->timer, free_kill);
}

/* inspect.kill(id) -> true, or nil, "no such connection" | "closing".
 * The connection is ended on the next loop turn, from the loop, as the
 * server's shutdown ends one: a handler woken from its recv there runs at
 * once and sees "killed", where from inside this coroutine it would only
 * be queued, and ended before it ran. */
static int l_kill(lua_State *L) {
  le_conn *c = check_conn(L, 1);
  if (c == NULL) return no_such_conn(L);
  le_coro *self = le_coro_of(L);
  if ((self != NULL && le_lconn_of_coro(self) == &c->lc) ||
      c->lc.coro.state == LE_CORO_RUNNING)
    return luaL_error(L, "inspect.kill: connection %I is running this code",
                      (lua_Integer)c->lc.id);
  if (!le_conn_is_open(c)) {
    luaL_pushfail(L);
    lua_pushliteral(L, "closing");
    return 2;
  }
  kill_req *k = malloc(sizeof *k);
  if (k == NULL) return luaL_error(L, "not enough memory");
  k->ctx = c->ctx;
  k->id = c->lc.id;
  uv_timer_init(c->ctx->loop, &k->timer);
  k->timer.data = k;
  uv_timer_start(&k->timer, on_kill, 0, 0);
  lua_pushboolean(L, 1);
  return 1;
}

/* inspect.listeners() -> every address listened on since the start. */
static int l_listeners(lua_State *L) {
  lua_newtable(L);
  lua_Integer n = 0;
  for (le_conn_origin *o = state_of(L)->ctx->origins; o; o = o->next) {
    lua_createtable(L, 0, 4);
    set_str(L, "name", o->name);
    set_int(L, "accepted", o->accepted);
    set_int(L, "open", o->open);
    lua_pushboolean(L, o->admin);
    lua_setfield(L, -2, "admin");
    lua_rawseti(L, -2, ++n);
  }
  return 1;
}

/* inspect.reload() -> true: the server reloads on the next loop turn. */
static int l_reload(lua_State *L) {
  le_conn_ctx *ctx = state_of(L)->ctx;
  if (ctx->reload == NULL) return luaL_error(L, "inspect.reload: no server");
  ctx->reload(ctx);
  lua_pushboolean(L, 1);
  return 1;
}

/* ---- taps ---- */

/* The trace's tap hook: records the event if its connection is tapped. */
static void on_trace(void *arg, uint64_t id, uint64_t us, const char *event) {
  inspect *in = arg;
  for (tap *t = in->taps; t != NULL; t = t->next) {
    if (t->id != id) continue;
    size_t slot = t->seq % LE_INSPECT_RING, n = strlen(event) + 1;
    char *copy = malloc(n);
    if (copy == NULL) return; /* the event is lost, never the connection */
    free(t->event[slot]);
    t->event[slot] = memcpy(copy, event, n);
    t->us[slot] = us;
    t->seq++;
    return;
  }
}

static void free_tap(tap *t) {
  for (size_t i = 0; i < LE_INSPECT_RING; i++) free(t->event[i]);
  free(t);
}

/* Drops one subscription to t; the last one puts the connection's trace
 * option back and frees the ring. */
static void unsubscribe(inspect *in, tap *t) {
  if (in->closed || --t->subs > 0) return;
  le_conn *c = le_conn_ctx_find(in->ctx, t->id);
  if (c != NULL) c->lc.opts.trace = (uint8_t)t->was_traced;
  for (tap **p = &in->taps; *p != NULL; p = &(*p)->next)
    if (*p == t) {
      *p = t->next;
      break;
    }
  free_tap(t);
  if (in->taps == NULL && in->ctx->trace != NULL) in->ctx->trace->tap = NULL;
}

/* Returns the tap of c, made (and tracing turned on) when it is new, or
 * NULL when out of memory. */
static tap *tap_of(inspect *in, le_conn *c) {
  for (tap *t = in->taps; t != NULL; t = t->next)
    if (t->id == c->lc.id) return t;
  tap *t = calloc(1, sizeof *t);
  if (t == NULL) return NULL;
  t->id = c->lc.id;
  t->was_traced = c->lc.opts.trace;
  c->lc.opts.trace = 1;
  t->next = in->taps;
  in->taps = t;
  in->ctx->trace->tap = on_trace;
  in->ctx->trace->tap_arg = in;
  return t;
}

/* inspect.subscribe(id) -> sub, or nil, "no such connection". */
static int l_subscribe(lua_State *L) {
  inspect *in = state_of(L);
  le_conn *c = check_conn(L, 1);
  if (c == NULL) return no_such_conn(L);
  if (in->ctx->trace == NULL)
    return luaL_error(L, "inspect.subscribe: this server has no trace");
  sub *s = lua_newuserdatauv(L, sizeof *s, 1);
  s->cookie = &sub_cookie;
  s->in = in;
  s->t = NULL;
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_setiuservalue(L, -2, 1);
  luaL_setmetatable(L, SUB_METATABLE);
  s->t = tap_of(in, c);
  if (s->t == NULL) return luaL_error(L, "not enough memory");
  s->t->subs++;
  return 1;
}

/* Returns the subscription at argument 1, or NULL for a userdata that the
 * debug library gave its metatable: the cookie, which only this file
 * writes, cannot be copied that way. */
static sub *to_sub(lua_State *L) {
  sub *s = luaL_testudata(L, 1, SUB_METATABLE);
  return s != NULL && lua_rawlen(L, 1) == sizeof *s && s->cookie == &sub_cookie
             ? s
             : NULL;
}

/* Returns the subscription at argument 1, or raises a type error. */
static sub *check_sub(lua_State *L) {
  sub *s = to_sub(L);
  if (s == NULL && luaL_testudata(L, 1, SUB_METATABLE) != NULL)
    luaL_argerror(L, 1,
                  SUB_METATABLE
                  " expected, got another userdata with its "
                  "metatable");
  if (s == NULL) luaL_typeerror(L, 1, SUB_METATABLE);
  return s;
}

/* sub:events(since) -> the events after number `since` still kept, as
 * { seq, us, event } oldest first; the number of the last event; whether
 * the connection still lives. */
static int sub_events(lua_State *L) {
  sub *s = check_sub(L);
  lua_Integer since = luaL_optinteger(L, 2, 0);
  if (s->t == NULL || s->in->closed)
    return luaL_error(L, "attempt to use a closed subscription");
  tap *t = s->t;
  uint64_t from = since < 0 ? 0 : (uint64_t)since;
  if (t->seq > LE_INSPECT_RING && from < t->seq - LE_INSPECT_RING)
    from = t->seq - LE_INSPECT_RING;
  lua_createtable(L, from < t->seq ? (int)(t->seq - from) : 0, 0);
  for (uint64_t k = from; k < t->seq; k++) {
    size_t slot = k % LE_INSPECT_RING;
    lua_createtable(L, 0, 3);
    set_int(L, "seq", k + 1);
    set_int(L, "us", t->us[slot]);
    set_str(L, "event", t->event[slot]);
    lua_rawseti(L, -2, (lua_Integer)(k - from + 1));
  }
  lua_pushinteger(L, (lua_Integer)t->seq);
  lua_pushboolean(L, le_conn_ctx_find(s->in->ctx, t->id) != NULL);
  return 3;
}

/* Ends subscription s, once. */
static void end_sub(sub *s) {
  if (s->t != NULL) unsubscribe(s->in, s->t);
  s->t = NULL;
}

/* sub:close(). */
static int sub_close(lua_State *L) {
  end_sub(check_sub(L));
  return 0;
}

/* __close and __gc: a forgery is left alone, since an error here would
 * only be a warning. */
static int sub_release(lua_State *L) {
  sub *s = to_sub(L);
  if (s != NULL) end_sub(s);
  return 0;
}

/* The module state's __gc: the Lua state is closing. */
static int inspect_gc(lua_State *L) {
  inspect *in = lua_touserdata(L, 1);
  if (in->ctx->trace != NULL && in->ctx->trace->tap_arg == in)
    in->ctx->trace->tap = NULL;
  while (in->taps != NULL) {
    tap *t = in->taps;
    in->taps = t->next;
    free_tap(t);
  }
  in->closed = 1;
  return 0;
}

static const luaL_Reg sub_methods[] = {
    {"events", sub_events}, {"close", sub_close}, {NULL, NULL}};

static const luaL_Reg module_fns[] = {
    {"conns", l_conns},         {"conn", l_conn},
    {"trace", l_trace},         {"kill", l_kill},
    {"listeners", l_listeners}, {"reload", l_reload},
    {"subscribe", l_subscribe}, {NULL, NULL}};

static int open_module(lua_State *L) {
  luaL_newlibtable(L, module_fns);
  lua_pushvalue(L, lua_upvalueindex(1));
  luaL_setfuncs(L, module_fns, 1);
  return 1;
}

static void open_sub_metatable(lua_State *L) {
  luaL_newmetatable(L, SUB_METATABLE);
  luaL_newlib(L, sub_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, sub_release);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, sub_release);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
}

void le_linspect_open(le_conn_ctx *ctx) {
  lua_State *L = ctx->L;
  open_sub_metatable(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  inspect *in = lua_newuserdatauv(L, sizeof *in, 0);
  memset(in, 0, sizeof *in);
  in->ctx = ctx;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, inspect_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_pushcclosure(L, open_module, 1);
  lua_setfield(L, -2, "luaecho.inspect");
  lua_pop(L, 1);
}
