/* luaecho.spawn and task:join: see include/luaecho/lmodule.h.
 *
 * A spawned coroutine lives in its Lua handle (a userdata), which a
 * registry ref keeps alive while the coroutine runs. Its outcome (a table
 * of results, or the error message) is kept by another ref for join.
 */
#include <stdlib.h>
#include <string.h>

#include "lmodule_internal.h"

#define TASK_METATABLE "luaecho.task"

typedef enum { TASK_RUNNING, TASK_DONE, TASK_FAILED, TASK_KILLED } task_state;

typedef struct task {
  le_coro coro;
  const void *cookie; /* &task_cookie: tells a task from a forged handle */
  task_state state;
  int self_ref;    /* keeps the handle alive while running */
  int results_ref; /* results table, or the error message, or none
                    * when there was no memory to keep them */
  le_coro *joiner; /* coroutine waiting in join, or NULL */
} task;

static const char task_cookie = 0;

static task *task_of(le_coro *c) {
  return (task *)((char *)c - offsetof(task, coro));
}

/* Returns the task handle at argument 1, or raises a type error. The
 * metatable can be copied onto another userdata with the debug library;
 * the cookie, which only this file writes, cannot. */
static task *check_task(lua_State *L) {
  task *t = luaL_checkudata(L, 1, TASK_METATABLE);
  if (lua_rawlen(L, 1) != sizeof *t || t->cookie != &task_cookie)
    luaL_argerror(L, 1,
                  TASK_METATABLE
                  " expected, got another userdata "
                  "with its metatable");
  return t;
}

/* Pushes what join returns: the task's results, or nil and why it failed
 * ("closed" when it was ended with its connection). */
static int push_outcome(lua_State *L, task *t) {
  if (t->state == TASK_KILLED) return le_lconn_push_error(L, UV_ECANCELED);
  if (t->state == TASK_FAILED) {
    lua_pushnil(L);
    if (t->results_ref == LUA_NOREF)
      lua_pushliteral(L, "not enough memory");
    else
      lua_rawgeti(L, LUA_REGISTRYINDEX, t->results_ref);
    return 2;
  }
  if (t->results_ref == LUA_NOREF) {
    lua_pushnil(L);
    lua_pushliteral(L, "not enough memory to keep the results");
    return 2;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->results_ref);
  lua_Integer n = (lua_getfield(L, -1, "n"), lua_tointeger(L, -1));
  lua_pop(L, 1);
  luaL_checkstack(L, (int)n, "too many results to return");
  for (lua_Integer i = 1; i <= n; i++) lua_rawgeti(L, -1 - (int)(i - 1), i);
  lua_remove(L, -1 - (int)n);
  return (int)n;
}

/* Runs protected: keeps the outcome of a finished task in a registry ref.
 * Stack: the task, the error (or NULL), the finished thread, nres. */
static int keep_outcome(lua_State *L) {
  task *t = lua_touserdata(L, 1);
  const char *error = lua_touserdata(L, 2);
  lua_State *co = lua_touserdata(L, 3);
  int nres = (int)lua_tointeger(L, 4);
  if (error != NULL) {
    lua_pushstring(L, error);
  } else {
    lua_createtable(L, nres, 1);
    for (int i = nres; i >= 1; i--) { /* the last result is on top */
      lua_xmove(co, L, 1);
      lua_rawseti(L, -2, i);
    }
    lua_pushinteger(L, nres);
    lua_setfield(L, -2, "n");
  }
  t->results_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

/* The task returned or raised (a le_coro_done_cb: Lua allocations only
 * inside the protected call). */
static void task_done(le_coro *c, lua_State *co, int nres, const char *error) {
  task *t = task_of(c);
  lua_State *L = c->L;
  if (error != NULL) {
    /* Logged even if nobody joins, so a failure is never silent. */
    const le_lconn *owner = le_lconn_of_coro(c);
    le_logf(owner->log, LE_LOG_ERROR, "conn %llu: spawned coroutine error: %s",
            (unsigned long long)owner->id, error);
  }
  t->state = error != NULL ? TASK_FAILED : TASK_DONE;
  lua_pushcfunction(L, keep_outcome);
  lua_pushlightuserdata(L, t);
  lua_pushlightuserdata(L, (void *)error);
  lua_pushlightuserdata(L, co);
  lua_pushinteger(L, nres);
  if (lua_pcall(L, 4, 0, 0) != LUA_OK) lua_pop(L, 1);
  le_coro *joiner = t->joiner;
  int self = t->self_ref;
  t->joiner = NULL;
  t->self_ref = LUA_NOREF;
  if (joiner != NULL) le_coro_wake(joiner);
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

static int arm_join(le_coro *c, void *obj, const void *arg) {
  (void)arg;
  ((task *)obj)->joiner = c;
  return 0;
}

static void cancel_join(le_coro *c, void *obj) {
  task *t = obj;
  if (t->joiner == c) t->joiner = NULL;
}

static int join_k(lua_State *L, int status, lua_KContext kctx);

static const le_wait_ops join_ops = {"task:join", arm_join, cancel_join, NULL,
                                     join_k};

static int join_k(lua_State *L, int status, lua_KContext kctx) {
  (void)status;
  (void)kctx;
  return push_outcome(L, lua_touserdata(L, 1));
}

/* task:join() -> the function's results, or nil, err */
static int task_join(lua_State *L) {
  task *t = check_task(L);
  le_coro *me = le__lmodule_current(L, "task:join");
  if (me == &t->coro) return luaL_error(L, "a task cannot join itself");
  /* Tasks end with their connection; a joiner of another connection could
   * otherwise wait for a wake that never comes. */
  if (me->owner != t->coro.owner)
    return luaL_error(L, "task:join: the task belongs to another connection");
  if (t->state != TASK_RUNNING) return push_outcome(L, t);
  if (t->joiner != NULL) {
    lua_pushnil(L);
    lua_pushliteral(L, "busy");
    return 2;
  }
  lua_settop(L, 1);
  return le_coro_wait(L, &join_ops, t, NULL);
}

static int task_gc(lua_State *L) {
  /* A userdata the debug library gave this metatable is not a task: there
   * is nothing to release, and an error here would only be a warning. */
  task *t = lua_touserdata(L, 1);
  if (lua_type(L, 1) != LUA_TUSERDATA || lua_rawlen(L, 1) != sizeof *t ||
      t->cookie != &task_cookie)
    return 0;
  luaL_unref(L, LUA_REGISTRYINDEX, t->results_ref);
  t->results_ref = LUA_NOREF;
  return 0;
}

static int task_tostring(lua_State *L) {
  static const char *const states[] = {"running", "done", "failed", "closed"};
  task *t = check_task(L);
  lua_pushfstring(L, "luaecho.task (%s)", states[t->state]);
  return 1;
}

/* Starts the task (a light userdata at 1) running the function above it
 * with its arguments. The thread is made from the calling coroutine, which
 * is also `from`, so nested spawns count against Lua's C-stack limit. */
static int start_task(lua_State *L) {
  task *t = lua_touserdata(L, 1);
  lua_remove(L, 1);
  static const le_coro_class task_class = {task_done, task_killed};
  le_coro_start(&t->coro, L, lua_gettop(L) - 1, &task_class, L);
  return 0;
}

/* luaecho.spawn(fn, ...): runs fn(...) in a new coroutine of the current
 * connection, at once, until it first waits; returns its handle. */
int le__lmodule_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  le_coro *parent = le__lmodule_current(L, "luaecho.spawn");
  int nargs = lua_gettop(L) - 1;
  task *t = lua_newuserdatauv(L, sizeof *t, 0);
  memset(t, 0, sizeof *t);
  t->cookie = &task_cookie;
  t->results_ref = LUA_NOREF;
  t->self_ref = LUA_NOREF;
  luaL_setmetatable(L, TASK_METATABLE);
  lua_pushvalue(L, -1);
  t->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_insert(L, 1); /* the handle stays below for the return */
  t->coro.owner = parent->owner;
  t->coro.sched = parent->sched;
  /* Starting allocates (the thread, its ref): a failure raises in the
   * calling coroutine, an ordinary error, but only after self_ref has been
   * released, or the handle would stay in the registry for good (found by
   * tests/test_alloc.c). */
  lua_pushcfunction(L, start_task);
  lua_pushlightuserdata(L, t);
  lua_rotate(L, 2, 2); /* handle, start_task, t, fn, args */
  if (lua_pcall(L, nargs + 2, 0, 0) != LUA_OK) {
    luaL_unref(L, LUA_REGISTRYINDEX, t->self_ref);
    t->self_ref = LUA_NOREF;
    return lua_error(L);
  }
  if (le_coro_alive(&t->coro))
    le_coro_list_add(&le_lconn_of_coro(parent)->tasks, &t->coro);
  return 1;
}

void le__lmodule_open_tasks(lua_State *L) {
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
}
