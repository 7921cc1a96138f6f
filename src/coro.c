/* Handler coroutines: see include/luaecho/coro.h. */
#include "luaecho/coro.h"

#include <lauxlib.h>

static void set_owner(lua_State *co, le_coro *c) {
  *(le_coro **)lua_getextraspace(co) = c;
}

le_coro *le_coro_of(lua_State *L) {
  return *(le_coro **)lua_getextraspace(L);
}

int le_coro_yield(lua_State *L) {
  le_coro_of(L)->waiting = 1;
  return lua_yield(L, 0);
}

/* Closes pending to-be-closed variables of a coroutine that will never run
 * again, then lets the collector have it. */
static void forget(le_coro *c) {
  lua_State *co = c->co;
  c->co = NULL;
#if LUA_VERSION_RELEASE_NUM >= 50406
  lua_closethread(co, c->L);
#else
  lua_resetthread(co);
#endif
  set_owner(co, NULL);
  luaL_unref(c->L, LUA_REGISTRYINDEX, c->ref);
  c->ref = LUA_NOREF;
}

/* Reports how the coroutine ended and drops it. The error text is built
 * while the dead coroutine's stack is still there to walk. */
static void finish(le_coro *c, int status) {
  const char *error = NULL;
  if (status != LUA_OK) {
    const char *msg = lua_tostring(c->co, -1);
    if (status == LUA_YIELD)
      msg = "the handler yielded without waiting on luaecho "
            "(a bare coroutine.yield() in a handler is not supported)";
    else if (msg == NULL)
      msg = lua_pushfstring(c->co, "(error object is a %s value)",
                            luaL_typename(c->co, -1));
    luaL_traceback(c->L, c->co, msg, 0);
    error = lua_tostring(c->L, -1);
  }
  forget(c);
  c->done(c, error);
  if (error != NULL) lua_pop(c->L, 1);
}

void le_coro_resume(le_coro *c, int nargs) {
  int nres = 0;
  c->waiting = 0;
  int status = lua_resume(c->co, c->L, nargs, &nres);
  if (status == LUA_YIELD && c->waiting) {
    lua_pop(c->co, nres);
    return;
  }
  finish(c, status);
}

int le_coro_start(le_coro *c, lua_State *L, int nargs, le_coro_done_cb done) {
  if (!lua_checkstack(L, 2)) return -1;
  lua_State *co = lua_newthread(L);
  c->L = L;
  c->co = co;
  c->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  c->done = done;
  c->waiting = 0;
  set_owner(co, c);
  lua_xmove(L, co, nargs + 1);
  le_coro_resume(c, nargs);
  return 0;
}

void le_coro_release(le_coro *c) {
  if (c->co != NULL) forget(c);
}
