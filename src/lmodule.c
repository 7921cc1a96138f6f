/* The `luaecho` module: see include/luaecho/lmodule.h. This file holds the
 * module table and the functions that do not wait (now, log, latest,
 * version); sleep, spawn/join and connect have a file each. */
#include "luaecho/lmodule.h"

#include <string.h>

#include "lmodule_internal.h"
#include "luaecho/bundled.h"
#include "luaecho/lmem.h"
#include "luaecho/log.h"

le_conn_ctx *le__lmodule_ctx(lua_State *L) {
  return lua_touserdata(L, lua_upvalueindex(1));
}

le_coro *le__lmodule_current(lua_State *L, const char *fn) {
  le_coro *c = le_coro_of(L);
  if (c == NULL)
    luaL_error(L,
               "%s must be called from a connection's handler or a "
               "coroutine it spawned",
               fn);
  return c;
}

/* luaecho.now(): monotonic seconds, with sub-millisecond precision. */
static int l_now(lua_State *L) {
  lua_pushnumber(L, (lua_Number)uv_hrtime() / 1e9);
  return 1;
}

/* luaecho.log(level, ...): one log record; the arguments are joined with
 * spaces, and a connection's coroutine gets "conn ID: " in front. Control
 * bytes are escaped: a handler often logs what a client sent, and a newline
 * there must not split the record (nor forge the next one). */
static int l_log(lua_State *L) {
  static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
  int level = luaL_checkoption(L, 1, NULL, levels);
  int n = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  le_coro *c = le_coro_of(L);
  if (c != NULL) {
    lua_pushfstring(L, "conn %I: ", (lua_Integer)le_lconn_of_coro(c)->id);
    luaL_addvalue(&b);
  }
  for (int i = 2; i <= n; i++) {
    if (i > 2) luaL_addchar(&b, ' ');
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  size_t len;
  const char *text = lua_tolstring(L, -1, &len);
  le_coro_push_one_line(L, text, len);
  le_logf(le__lmodule_ctx(L)->log, (le_log_level)level, "%s",
          lua_tostring(L, -1));
  return 0;
}

/* Returns the accepted connection the calling coroutine works for. */
static le_lconn *owner_conn(lua_State *L, const char *fn) {
  le_lconn *lc = le_lconn_of_coro(le__lmodule_current(L, fn));
  if (lc->script == NULL)
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

static void set_count(lua_State *L, const char *key, uint64_t v) {
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, key);
}

/* luaecho.stats() -> the loop's counters (docs/api.md lists them). */
static int l_stats(lua_State *L) {
  le_conn_ctx *ctx = le__lmodule_ctx(L);
  le_conn_stats st;
  le_conn_ctx_stats(ctx, &st);
  lua_createtable(L, 0, 20);
  set_count(L, "connections", ctx->count);
  set_count(L, "accepted", st.accepted);
  set_count(L, "connected", st.connected);
  set_count(L, "accept_errors", st.accept_errors);
  set_count(L, "closed", st.closed);
  set_count(L, "bytes_in", st.bytes_in);
  set_count(L, "bytes_out", st.bytes_out);
  set_count(L, "msgs_in", st.msgs_in);
  set_count(L, "msgs_out", st.msgs_out);
  set_count(L, "handler_errors", st.ended[LE_END_HANDLER_ERROR]);
  set_count(L, "preempted", ctx->sched.preempted);
  set_count(L, "cpu_limit_stopped", ctx->sched.cpu_killed);
  set_count(L, "reloads", st.reloads);
  set_count(L, "reloads_rejected", st.reloads_rejected);
  le_mem *mem = le_mem_of(L);
  set_count(L, "lua_memory",
            mem ? mem->used : (uint64_t)lua_gc(L, LUA_GCCOUNT) * 1024);
  set_count(L, "lua_memory_limit", mem ? mem->limit : 0);
  set_count(L, "trace_dropped", ctx->trace ? le_trace_dropped(ctx->trace) : 0);
  lua_createtable(L, 0, LE_END_CONNECT_FAILED);
  for (int r = LE_END_PEER_FIN; r <= LE_END_CONNECT_FAILED; r++)
    set_count(L, le_end_reason_key((le_end_reason)r), st.ended[r]);
  lua_setfield(L, -2, "ended");
  return 1;
}

static const luaL_Reg module_fns[] = {{"stats", l_stats},
                                      {"connect", le__lmodule_connect},
                                      {"spawn", le__lmodule_spawn},
                                      {"sleep", le__lmodule_sleep},
                                      {"now", l_now},
                                      {"log", l_log},
                                      {"latest", l_latest},
                                      {"version", l_version},
                                      {NULL, NULL}};

static int open_module(lua_State *L) {
  luaL_newlibtable(L, module_fns);
  lua_pushvalue(L, lua_upvalueindex(1));
  luaL_setfuncs(L, module_fns, 1);
  le_bundled_extend_luaecho(L); /* the functions written in Lua */
  return 1;
}

/* ---- Lua's warnings ---- */

/* What the warning function keeps: Lua sends one warning in pieces. */
typedef struct warnings {
  const le_log *log;
  int off;       /* silenced by "@off" */
  size_t n;      /* bytes gathered in buf */
  char buf[512]; /* the warning so far, cut at this size */
} warnings;

/* Lua's warnings (warn() from Lua code, an error in a __gc metamethod,
 * one in a __close handler of a finished coroutine: errors nobody can
 * catch) become one warn record each, escaped like luaecho.log. It runs
 * inside Lua's allocator and collector, so it neither allocates from Lua
 * nor raises. "@off" and "@on", Lua's control messages, silence and
 * restore them; they are on from the start. */
static void on_warning(void *ud, const char *msg, int tocont) {
  warnings *w = ud;
  if (w->n == 0 && !tocont && msg[0] == '@') {
    if (strcmp(msg, "@off") == 0) w->off = 1;
    if (strcmp(msg, "@on") == 0) w->off = 0;
    return;
  }
  size_t len = strlen(msg), room = sizeof w->buf - 1 - w->n;
  memcpy(w->buf + w->n, msg, len < room ? len : room);
  w->n += len < room ? len : room;
  if (tocont) return;
  w->buf[w->n] = '\0';
  w->n = 0;
  if (w->off) return;
  char line[sizeof w->buf * 4];
  le_log_escape_into(line, sizeof line, w->buf, strlen(w->buf));
  le_logf(w->log, LE_LOG_WARN, "Lua warning: %s", line);
}

/* The warning state lives in a userdata anchored in the registry, so it
 * goes with the Lua state. */
static void open_warnings(le_conn_ctx *ctx) {
  static const char key = 0;
  warnings *w = lua_newuserdatauv(ctx->L, sizeof *w, 0);
  memset(w, 0, sizeof *w);
  w->log = ctx->log;
  lua_rawsetp(ctx->L, LUA_REGISTRYINDEX, &key);
  lua_setwarnf(ctx->L, on_warning, w);
}

void le_lmodule_open(le_conn_ctx *ctx) {
  lua_State *L = ctx->L;
  open_warnings(ctx);
  le__lmodule_open_tasks(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushlightuserdata(L, ctx);
  lua_pushcclosure(L, open_module, 1);
  lua_setfield(L, -2, "luaecho");
  lua_pop(L, 1);
}
