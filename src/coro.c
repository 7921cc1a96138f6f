/* Handler coroutines: see include/luaecho/coro.h. */
#include "luaecho/coro.h"

#include <lauxlib.h>
#include <stddef.h>

static void set_owner(lua_State *co, le_coro *c) {
  *(le_coro **)lua_getextraspace(co) = c;
}

le_coro *le_coro_of(lua_State *L) {
  return *(le_coro **)lua_getextraspace(L);
}

void le_coro_wait(lua_State *L, void (*cancel)(le_coro *c), void *wait) {
  le_coro *c = le_coro_of(L);
  c->cancel = cancel;
  c->wait = wait;
}

void le_coro_check_yieldable(lua_State *L, const char *what) {
  if (!lua_isyieldable(L))
    luaL_error(L,
               "%s cannot wait here: attempt to yield across a C-call "
               "boundary (inside a C function such as a table.sort "
               "comparator or a string.gsub callback)",
               what);
}

/* Continues a binding after its coroutine was resumed. le_coro_resume
 * clears `waiting` first; finding it still set means coroutine.resume did
 * it, and whatever the binding waited on must forget this coroutine. */
static int after_yield(lua_State *L, int status, lua_KContext base) {
  le_coro *c = le_coro_of(L);
  (void)status;
  if (c != NULL && c->waiting) {
    if (c->cancel != NULL) c->cancel(c);
    c->cancel = NULL;
    c->wait = NULL;
    c->waiting = 0;
    return luaL_error(L, "a luaecho coroutine was resumed by "
                         "coroutine.resume; only luaecho may resume it");
  }
  return lua_gettop(L) - (int)base;
}

int le_coro_yield(lua_State *L) {
  le_coro_of(L)->waiting = 1;
  return lua_yieldk(L, 0, (lua_KContext)lua_gettop(L), after_yield);
}

/* The list a coroutine is on is reachable through its neighbours only, so
 * le_coro_list keeps the head and unlinking goes through `prev`. */
static void unlink_coro(le_coro *c) {
  if (c->prev) c->prev->next = c->next;
  if (c->next) c->next->prev = c->prev;
  c->next = c->prev = NULL;
}

void le_coro_list_add(le_coro_list *list, le_coro *c) {
  c->prev = NULL;
  c->next = list->head;
  if (list->head) list->head->prev = c;
  list->head = c;
  /* The head's prev points at a sentinel made from the list itself, so
   * unlinking the head updates list->head. */
  c->prev = (le_coro *)((char *)list - offsetof(le_coro, next));
}

/* Takes c off its scheduler's ready list. The list is short and this is
 * rare (a coroutine ended between being woken and resumed), so a singly
 * linked list, walked here, keeps every coroutine a pointer smaller. */
static void unready(le_coro *c) {
  if (c->ready_nargs < 0) return;
  le_coro **p = &c->sched->ready;
  while (*p != NULL && *p != c) p = &(*p)->next_ready;
  if (*p == c) *p = c->next_ready;
  c->next_ready = NULL;
  c->ready_nargs = -1;
}

/* Detaches the thread from c (c->co becomes NULL) and returns it; the
 * caller keeps it alive on the main stack while it still needs it. */
static lua_State *detach(le_coro *c) {
  lua_State *co = c->co;
  c->co = NULL;
  c->cancel = NULL;
  set_owner(co, NULL);
  unlink_coro(c);
  unready(c);
  lua_rawgeti(c->L, LUA_REGISTRYINDEX, c->ref);
  luaL_unref(c->L, LUA_REGISTRYINDEX, c->ref);
  c->ref = LUA_NOREF;
  return co;
}

/* Closes pending to-be-closed variables of a thread that will never run
 * again and pops its anchor from the main stack. */
static void reset(lua_State *L, lua_State *co) {
#if LUA_VERSION_RELEASE_NUM >= 50406
  lua_closethread(co, L);
#else
  lua_resetthread(co);
#endif
  lua_pop(L, 1);
}

/* Reports how the coroutine ended and drops it. The error text is built
 * while the dead coroutine's stack is still there to walk. */
static void finish(le_coro *c, int status, int nres) {
  lua_State *L = c->L;
  const char *error = NULL;
  if (status != LUA_OK) {
    const char *msg = lua_tostring(c->co, -1);
    if (status == LUA_YIELD)
      msg = "the handler yielded without waiting on luaecho "
            "(a bare coroutine.yield() in a handler is not supported)";
    else if (msg == NULL)
      msg = lua_pushfstring(c->co, "(error object is a %s value)",
                            luaL_typename(c->co, -1));
    luaL_traceback(L, c->co, msg, 0);
    error = lua_tostring(L, -1);
    nres = 0;
  }
  le_coro_done_cb done = c->done;
  lua_State *co = detach(c); /* pushes the thread, above the message */
  done(c, co, nres, error);
  reset(L, co);
  if (error != NULL) lua_pop(L, 1);
}

void le_coro_resume(le_coro *c, int nargs) {
  le_coro_resume_from(c, nargs, c->L);
}

/* Runs c until it waits or ends. */
static void run(le_coro *c, int nargs, lua_State *from) {
  int nres = 0;
  c->waiting = 0;
  c->cancel = NULL;
  c->wait = NULL;
  if (c->sched) c->sched->depth++;
  int status = lua_resume(c->co, from ? from : c->L, nargs, &nres);
  if (c->sched) c->sched->depth--;
  if (status == LUA_YIELD && c->waiting) {
    lua_pop(c->co, nres);
    return;
  }
  finish(c, status, nres);
}

void le_coro_resume_from(le_coro *c, int nargs, lua_State *from) {
  if (c->co == NULL) return;
  if (!c->waiting || lua_status(c->co) != LUA_YIELD ||
      c->ready_nargs >= 0) {
    lua_pop(c->co, nargs);
    return;
  }
  le_coro_sched *s = c->sched;
  if (s != NULL && s->depth > 0) {
    /* Woken from inside another coroutine: the wait is over (whatever it
     * waited on has already forgotten it), the resume comes later. */
    c->cancel = NULL;
    c->wait = NULL;
    c->ready_nargs = nargs;
    c->next_ready = s->ready;
    s->ready = c;
    s->kick(s);
    return;
  }
  run(c, nargs, from);
}

void le_coro_sched_run(le_coro_sched *s) {
  while (s->ready != NULL) {
    le_coro *c = s->ready;
    int nargs = c->ready_nargs;
    unready(c);
    run(c, nargs, NULL);
  }
}

int le_coro_start(le_coro *c, lua_State *L, int nargs, le_coro_done_cb done,
                  lua_State *from) {
  if (!lua_checkstack(L, 2)) return -1;
  lua_State *co = lua_newthread(L);
  c->L = L;
  c->co = co;
  c->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  c->done = done;
  c->waiting = 0;
  c->cancel = NULL;
  c->ready_nargs = -1;
  c->next_ready = NULL;
  set_owner(co, c);
  lua_xmove(L, co, nargs + 1);
  run(c, nargs, from);
  return 0;
}

void le_coro_release(le_coro *c) {
  if (c->co == NULL) return;
  if (c->cancel != NULL) c->cancel(c);
  lua_State *co = detach(c);
  reset(c->L, co);
  if (c->killed != NULL) c->killed(c);
}

void le_coro_list_release(le_coro_list *list) {
  while (list->head != NULL) le_coro_release(list->head);
}
