/* Unit tests for coroutines the core runs (include/luaecho/coro.h): the
 * state machine, the wait lifecycle and preemption, without sockets.
 *
 * A "waitable" stands for what a binding waits on (a socket, a timer): the
 * Lua function wait(i) waits on waitable i through le_coro_wait, and the
 * test plays the waker from C, or from Lua with wake(i). Each waitable
 * counts the calls of its arm, cancel and drop, so a test can tell that
 * exactly one of them ended a wait. Handlers append to trace(...), which
 * the tests read back in order.
 */
#include "test_support.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "luaecho/coro.h"
#include "luaecho/preempt.h"

#define NCORO 4

/* What a test coroutine waits on. */
typedef struct waitable {
  le_coro *waiter; /* set by arm, cleared by the waker or by cancel */
  int arms, cancels, drops;
  int arm_error;     /* < 0: arm fails with it */
  lua_Integer value; /* what the continuation returns after a wake */
} waitable;

typedef struct fixture {
  lua_State *L;
  le_coro_sched sched;
  le_preempt preempt;
  int kicks;
  uint64_t cpu_limit_ms;
  le_coro coros[NCORO];
  waitable w[NCORO];
  int done[NCORO];   /* done callbacks per coroutine */
  int killed[NCORO]; /* killed callbacks per coroutine */
  int nres[NCORO];
  char result[NCORO][128]; /* first result, when a string */
  char error[NCORO][2048];
} fixture;

static fixture F;

static int index_of(le_coro *c) { return (int)(c - F.coros); }

/* ---- the wait the tests use ---- */

static int arm_w(le_coro *c, void *obj, const void *arg) {
  waitable *w = obj;
  (void)arg;
  w->arms++;
  if (w->arm_error < 0) return w->arm_error;
  w->waiter = c;
  return 0;
}

static void cancel_w(le_coro *c, void *obj) {
  waitable *w = obj;
  assert_ptr_equal(w->waiter, c);
  w->waiter = NULL;
  w->cancels++;
}

static void drop_w(le_coro *c, void *obj) {
  (void)c;
  ((waitable *)obj)->drops++;
}

static int wait_k(lua_State *L, int status, lua_KContext kctx);

static const le_wait_ops test_ops = {"test.wait", arm_w, cancel_w, drop_w,
                                     wait_k};

static int wait_k(lua_State *L, int status, lua_KContext kctx) {
  waitable *w = (waitable *)kctx;
  if (status < 0) {
    lua_pushnil(L);
    lua_pushinteger(L, status);
    return 2;
  }
  lua_pushliteral(L, "woke");
  lua_pushinteger(L, w->value);
  return 2;
}

static waitable *check_waitable(lua_State *L) {
  lua_Integer i = luaL_checkinteger(L, 1);
  luaL_argcheck(L, i >= 1 && i <= NCORO, 1, "no such waitable");
  return &F.w[i - 1];
}

/* wait(i) -> "woke", value, or nil, status when arm failed */
static int l_wait(lua_State *L) {
  waitable *w = check_waitable(L);
  return le_coro_wait(L, &test_ops, w, NULL);
}

/* Wakes waitable w's waiter the way a binding's waker does: forget it,
 * then wake it. */
static void wake(waitable *w, lua_Integer value) {
  le_coro *c = w->waiter;
  assert_non_null(c);
  w->waiter = NULL;
  w->value = value;
  le_coro_wake(c);
}

/* wake(i, value): a waker running inside a coroutine. */
static int l_wake(lua_State *L) {
  waitable *w = check_waitable(L);
  wake(w, luaL_optinteger(L, 2, 0));
  return 0;
}

/* trace(s): appends s to the global list `traced`. */
static int l_trace(lua_State *L) {
  luaL_checkstring(L, 1);
  lua_getglobal(L, "traced");
  lua_pushvalue(L, 1);
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  return 0;
}

/* Returns the trace so far, joined with ",". */
static const char *traced(void) {
  static char out[512];
  lua_State *L = F.L;
  luaL_dostring(L, "return table.concat(traced, ',')");
  snprintf(out, sizeof out, "%s", lua_tostring(L, -1));
  lua_pop(L, 1);
  return out;
}

/* ---- the scheduler and the callbacks ---- */

static void kick(le_coro_sched *s) {
  assert_ptr_equal(s, &F.sched);
  F.kicks++;
}

static uint64_t cpu_limit(le_coro *c) {
  assert_ptr_equal(c->owner, &F);
  return F.cpu_limit_ms;
}

/* A le_coro_done_cb: records how the coroutine ended, allocating nothing
 * in Lua. */
static void on_done(le_coro *c, lua_State *co, int nres, const char *error) {
  int i = index_of(c);
  assert_int_equal(c->state, LE_CORO_DEAD);
  F.done[i]++;
  F.nres[i] = nres;
  if (error != NULL) snprintf(F.error[i], sizeof F.error[i], "%s", error);
  if (error == NULL && nres > 0 && lua_type(co, -nres) == LUA_TSTRING)
    snprintf(F.result[i], sizeof F.result[i], "%s", lua_tostring(co, -nres));
}

static void on_killed(le_coro *c) { F.killed[index_of(c)]++; }

/* Runs le_coro_start inside a protected call, as its contract asks.
 * Stack: the function, the coroutine as a light userdata. */
static int start_protected(lua_State *L) {
  le_coro *c = lua_touserdata(L, 2);
  lua_pop(L, 1);
  static const le_coro_class test_class = {on_done, on_killed};
  le_coro_start(c, L, 0, &test_class, NULL);
  return 0;
}

/* Starts coroutine i running `code` (chunk name `name`) up to its first
 * wait or its end. */
static le_coro *start_named(int i, const char *name, const char *code) {
  lua_State *L = F.L;
  le_coro *c = &F.coros[i];
  int top = lua_gettop(L);
  c->owner = &F;
  c->sched = &F.sched;
  lua_pushcfunction(L, start_protected);
  if (luaL_loadbuffer(L, code, strlen(code), name) != LUA_OK)
    fail_msg("%s", lua_tostring(L, -1));
  lua_pushlightuserdata(L, c);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) fail_msg("%s", lua_tostring(L, -1));
  assert_int_equal(lua_gettop(L), top);
  return c;
}

static le_coro *start(int i, const char *code) {
  return start_named(i, "=handler.lua", code);
}

/* Runs `code` on the main thread and returns its result as a boolean,
 * failing the test with the error it raised. */
static void run_main(const char *code) {
  lua_State *L = F.L;
  if (luaL_dostring(L, code) != LUA_OK) fail_msg("%s", lua_tostring(L, -1));
  lua_settop(L, 0);
}

static int setup(void **state) {
  (void)state;
  memset(&F, 0, sizeof F);
  lua_State *L = F.L = luaL_newstate();
  assert_non_null(L);
  luaL_openlibs(L);
  F.sched.kick = kick;
  F.sched.cpu_limit_ms = cpu_limit;
  le_coro_open(L, &F.sched);
  lua_register(L, "wait", l_wait);
  lua_register(L, "wake", l_wake);
  lua_register(L, "trace", l_trace);
  lua_newtable(L);
  lua_setglobal(L, "traced");
  return 0;
}

static int teardown(void **state) {
  (void)state;
  for (int i = 0; i < NCORO; i++) le_coro_release(&F.coros[i]);
  le_preempt_stop(&F.preempt);
  assert_int_equal(lua_gettop(F.L), 0);
  lua_close(F.L);
  return 0;
}

/* ---- start, wait, wake ---- */

static void test_start_wait_wake_continuation(void **state) {
  (void)state;
  le_coro *c = start(0,
                     "trace('a'); local r, v = wait(1); "
                     "trace('b:' .. r .. v); return 'ret', 2");
  assert_int_equal(c->state, LE_CORO_WAITING);
  assert_string_equal(le_coro_waits_on(c), "test.wait");
  assert_true(le_coro_alive(c));
  assert_ptr_equal(F.w[0].waiter, c);
  assert_int_equal(F.w[0].arms, 1);
  assert_int_equal(F.done[0], 0);
  assert_string_equal(traced(), "a");

  wake(&F.w[0], 7);
  assert_int_equal(F.done[0], 1);
  assert_int_equal(F.nres[0], 2);
  assert_string_equal(F.result[0], "ret");
  assert_string_equal(F.error[0], "");
  assert_string_equal(traced(), "a,b:woke7");
  assert_int_equal(c->state, LE_CORO_DEAD);
  assert_false(le_coro_alive(c));
  assert_string_equal(le_coro_waits_on(c), "ended");
  assert_int_equal(F.w[0].cancels + F.w[0].drops, 0);
  assert_int_equal(F.killed[0], 0);
  /* Woken from the loop (nothing ran): resumed on the spot, no kick. */
  assert_int_equal(F.kicks, 0);

  /* A second wake or a release of a dead coroutine does nothing. */
  le_coro_wake(c);
  le_coro_release(c);
  assert_int_equal(F.done[0], 1);
  assert_int_equal(F.killed[0], 0);
}

static void test_wait_many_times(void **state) {
  (void)state;
  le_coro *c = start(0,
                     "local s = 0; for i = 1, 3 do "
                     "local _, v = wait(1); s = s + v end; "
                     "return tostring(s)");
  for (int i = 1; i <= 3; i++) {
    assert_int_equal(c->state, LE_CORO_WAITING);
    wake(&F.w[0], i * 10);
  }
  assert_int_equal(F.done[0], 1);
  assert_string_equal(F.result[0], "60");
  assert_int_equal(F.w[0].arms, 3);
}

static void test_wake_while_running_is_fifo(void **state) {
  (void)state;
  for (int i = 0; i < 3; i++) {
    char code[128];
    snprintf(code, sizeof code, "wait(%d); trace('ran%d')", i + 1, i);
    start(i, code);
  }
  /* Coroutine 3 wakes 2, 0, 1 in that order while it runs. */
  le_coro *waker = start(3, "wake(3); wake(1); wake(2); trace('waker')");
  assert_int_equal(waker->state, LE_CORO_DEAD);
  assert_string_equal(traced(), "waker");
  for (int i = 0; i < 3; i++) {
    assert_int_equal(F.coros[i].state, LE_CORO_READY);
    assert_string_equal(le_coro_waits_on(&F.coros[i]), "ready");
  }
  assert_true(F.kicks >= 1);
  assert_ptr_equal(F.sched.ready, &F.coros[2]);
  assert_int_equal(F.sched.depth, 0);

  assert_int_equal(le_coro_sched_run(&F.sched), 0);
  assert_string_equal(traced(), "waker,ran2,ran0,ran1");
  for (int i = 0; i < 3; i++) assert_int_equal(F.done[i], 1);
  assert_null(F.sched.ready);
  assert_null(F.sched.ready_tail);
}

static void test_woken_during_sched_run_waits_for_next_call(void **state) {
  (void)state;
  start(0, "wait(1); trace('a'); wake(2); trace('a2')");
  start(1, "wait(2); trace('b')");
  start(2, "wait(3); trace('c')");
  start(3, "wake(1); wake(3)");
  /* 0 and 2 run; 0 wakes 1, which is ready only for the next run (so
   * coroutines that wake each other cannot keep the loop from I/O). */
  assert_int_equal(le_coro_sched_run(&F.sched), 1);
  assert_string_equal(traced(), "a,a2,c");
  assert_int_equal(F.coros[1].state, LE_CORO_READY);
  assert_int_equal(le_coro_sched_run(&F.sched), 0);
  assert_string_equal(traced(), "a,a2,c,b");
}

/* ---- ending a wait: cancel, drop, never both ---- */

static void test_release_waiting_runs_cancel_once(void **state) {
  (void)state;
  le_coro *c = start(0, "wait(1); trace('resumed')");
  le_coro_release(c);
  assert_int_equal(F.w[0].cancels, 1);
  assert_int_equal(F.w[0].drops, 0);
  assert_null(F.w[0].waiter);
  assert_int_equal(F.killed[0], 1);
  assert_int_equal(F.done[0], 0);
  assert_int_equal(c->state, LE_CORO_DEAD);
  assert_null(c->co);
  le_coro_release(c);
  assert_int_equal(F.w[0].cancels, 1);
  assert_int_equal(F.killed[0], 1);
  assert_string_equal(traced(), "");
}

static void test_release_ready_runs_drop_once(void **state) {
  (void)state;
  le_coro *c = start(0, "wait(1); trace('resumed')");
  start(1, "wake(1)");
  assert_int_equal(c->state, LE_CORO_READY);
  le_coro_release(c);
  assert_int_equal(F.w[0].drops, 1);
  assert_int_equal(F.w[0].cancels, 0);
  assert_int_equal(F.killed[0], 1);
  assert_int_equal(F.done[0], 0);
  /* It left the ready list: the scheduler has nothing to run. */
  assert_null(F.sched.ready);
  assert_int_equal(le_coro_sched_run(&F.sched), 0);
  assert_string_equal(traced(), "");
}

static void test_release_runs_to_be_closed(void **state) {
  (void)state;
  le_coro *c = start(0,
                     "local x <close> = setmetatable({}, {__close = "
                     "function() trace('closed') end}); wait(1)");
  assert_string_equal(traced(), "");
  le_coro_release(c);
  assert_string_equal(traced(), "closed");
  assert_int_equal(F.w[0].cancels, 1);
}

static void test_list_release_ends_all(void **state) {
  (void)state;
  le_coro_list list = {NULL};
  le_coro *a = start(0, "wait(1)");
  le_coro *b = start(1, "wait(2)");
  le_coro *d = start(2, "wait(3)");
  le_coro_list_add(&list, a);
  le_coro_list_add(&list, b);
  le_coro_list_add(&list, d);
  /* One that ends by itself leaves the list. */
  wake(&F.w[1], 0);
  assert_int_equal(F.done[1], 1);
  le_coro_list_release(&list);
  assert_null(list.head);
  assert_int_equal(F.killed[0] + F.killed[2], 2);
  assert_int_equal(F.w[0].cancels + F.w[2].cancels, 2);
  assert_int_equal(F.killed[1], 0);
}

/* ---- what Lua code may do to luaecho's coroutines ---- */

static void test_close_and_resume_refused_wait_intact(void **state) {
  (void)state;
  le_coro *c = start(0,
                     "me = coroutine.running(); local r, v = wait(1); "
                     "return r .. v");
  run_main(
      "local ok, err = pcall(coroutine.close, me)\n"
      "assert(not ok)\n"
      "close_err = err\n"
      "local ok2, err2 = coroutine.resume(me, 'x')\n"
      "assert(ok2 == false)\n"
      "resume_err = err2\n");
  lua_getglobal(F.L, "close_err");
  assert_contains(lua_tostring(F.L, -1),
                  "coroutine.close: cannot close a coroutine run by luaecho");
  lua_getglobal(F.L, "resume_err");
  assert_contains(lua_tostring(F.L, -1),
                  "cannot resume a coroutine run by luaecho");
  lua_settop(F.L, 0);
  /* The wait is untouched, and a real wake still ends it. */
  assert_int_equal(c->state, LE_CORO_WAITING);
  assert_ptr_equal(F.w[0].waiter, c);
  assert_int_equal(F.w[0].cancels + F.w[0].drops, 0);
  wake(&F.w[0], 5);
  assert_int_equal(F.done[0], 1);
  assert_string_equal(F.result[0], "woke5");
  assert_string_equal(F.error[0], "");
}

static void test_close_refused_from_another_luaecho_coroutine(void **state) {
  (void)state;
  le_coro *c = start(0, "me = coroutine.running(); wait(1)");
  start(1,
        "local ok, err = pcall(coroutine.close, me); "
        "trace(tostring(ok)); trace(err)");
  assert_contains(traced(), "false,");
  assert_contains(traced(), "cannot close a coroutine run by luaecho");
  assert_int_equal(c->state, LE_CORO_WAITING);
  wake(&F.w[0], 0);
  assert_int_equal(F.done[0], 1);
}

static void test_user_coroutines_still_work(void **state) {
  (void)state;
  start(
      0,
      "local gen = coroutine.wrap(function(a) local b = coroutine.yield(a + 1)"
      "  return b * 2 end)\n"
      "assert(gen(1) == 2 and gen(5) == 10)\n"
      "local co = coroutine.create(function(a)\n"
      "  local b = coroutine.yield(a, 'y'); error('bad ' .. b) end)\n"
      "local ok, x, y = coroutine.resume(co, 3)\n"
      "assert(ok and x == 3 and y == 'y', tostring(x))\n"
      "local ok2, e = coroutine.resume(co, 'b')\n"
      "assert(not ok2 and e:find('handler.lua:4: bad b', 1, true), e)\n"
      "assert(coroutine.status(co) == 'dead')\n"
      "assert(coroutine.close(co) == false)\n"
      "local closed = false\n"
      "local f = coroutine.wrap(function()\n"
      "  local x <close> = setmetatable({}, {__close = function()"
      "    closed = true end})\n"
      "  error('boom') end)\n"
      "local ok3, e3 = pcall(f)\n"
      "assert(not ok3 and e3:find('handler.lua:14: boom', 1, true), e3)\n"
      "assert(closed, 'wrap closes the coroutine on error')\n"
      "local w = coroutine.wrap(function() error({}) end)\n"
      "local ok4, e4 = pcall(w)\n"
      "assert(not ok4 and type(e4) == 'table')\n"
      "return 'ok'");
  assert_string_equal(F.error[0], "");
  assert_string_equal(F.result[0], "ok");
}

static void test_user_threads_are_not_luaecho(void **state) {
  (void)state;
  /* A coroutine Lua code creates is not luaecho's, even one created inside
   * a luaecho coroutine: le_coro_of says so (the bindings refuse those
   * through their owner checks). */
  run_main("co = coroutine.create(function() end)");
  lua_getglobal(F.L, "co");
  assert_null(le_coro_of(lua_tothread(F.L, -1)));
  lua_pop(F.L, 1);
  assert_null(le_coro_of(F.L));
  le_coro *c = start(0, "inner = coroutine.create(function() end); wait(1)");
  assert_ptr_equal(le_coro_of(c->co), c);
  lua_getglobal(F.L, "inner");
  assert_null(le_coro_of(lua_tothread(F.L, -1)));
  lua_pop(F.L, 1);
}

static void test_bare_yield_is_handler_error(void **state) {
  (void)state;
  le_coro *c = start(0, "coroutine.yield(1)");
  assert_int_equal(F.done[0], 1);
  assert_contains(F.error[0], "yielded without waiting on luaecho");
  assert_contains(F.error[0], "stack traceback");
  assert_int_equal(c->state, LE_CORO_DEAD);
}

static void test_error_has_position_and_traceback(void **state) {
  (void)state;
  start(0, "local function f() error('oops') end\nf()");
  assert_int_equal(F.done[0], 1);
  assert_contains(F.error[0], "handler.lua:1: oops");
  assert_contains(F.error[0], "stack traceback");
  start(1, "error(setmetatable({}, {}))");
  assert_contains(F.error[1], "(error object is a table value)");
}

/* starve(): from now on every allocation in the state fails, until the
 * test restores the allocator. */
static lua_Alloc real_alloc;
static void *real_ud;

static void *failing_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  if (nsize == 0) return real_alloc(ud, ptr, osize, 0);
  return NULL;
}

static int l_starve(lua_State *L) {
  lua_setallocf(L, failing_alloc, real_ud);
  return 0;
}

/* With no memory left for the report (message and traceback, built in
 * Lua), the message alone is logged, still escaped to one line. */
static void test_error_escaped_when_memory_is_out(void **state) {
  (void)state;
  real_alloc = lua_getallocf(F.L, &real_ud);
  lua_register(F.L, "starve", l_starve);
  start(0, "local m = 'one\\ntwo\\27' starve() error(m, 0)");
  lua_setallocf(F.L, real_alloc, real_ud);
  assert_int_equal(F.done[0], 1);
  assert_string_equal(F.error[0], "one\\ntwo\\x1b");
}

static void test_wait_in_sort_comparator_raises_and_drops(void **state) {
  (void)state;
  start(0, "table.sort({3, 1, 2}, function(a, b) wait(1) return a < b end)");
  assert_int_equal(F.done[0], 1);
  assert_contains(F.error[0], "test.wait cannot wait here");
  assert_contains(F.error[0], "C-call boundary");
  assert_int_equal(F.w[0].arms, 0);
  assert_int_equal(F.w[0].drops, 1);
  assert_int_equal(F.w[0].cancels, 0);
  assert_null(F.w[0].waiter);
}

static void test_arm_error_runs_continuation_at_once(void **state) {
  (void)state;
  F.w[0].arm_error = -12;
  le_coro *c = start(0,
                     "local r, st = wait(1); "
                     "return tostring(r) .. ':' .. st");
  assert_int_equal(F.done[0], 1);
  assert_string_equal(F.result[0], "nil:-12");
  assert_int_equal(F.w[0].arms, 1);
  assert_int_equal(F.w[0].cancels + F.w[0].drops, 0);
  assert_null(c->wait_ops);
}

/* ---- preemption ---- */

static int setup_preempt(void **state) {
  setup(state);
  F.cpu_limit_ms = 300;
  assert_int_equal(le_preempt_start(&F.preempt, le_coro_preempt_hook, 5), 0);
  F.sched.preempt = &F.preempt;
  return 0;
}

/* Runs the scheduler until coroutine i ends, for at most 20 s. */
static void run_until_done(int i) {
  uint64_t give_up = le_preempt_now_ns() + 20000000000u;
  while (F.done[i] == 0) {
    if (le_preempt_now_ns() > give_up) fail_msg("coroutine %d never ended", i);
    le_coro_sched_run(&F.sched);
  }
}

static void test_spin_is_preempted_then_stopped(void **state) {
  (void)state;
  le_coro *c = start_named(0, "=spin.lua",
                           "local n = 0\nwhile true do "
                           "n = n + 1 end");
  /* It computed for a tick and was put behind a turn of the loop. */
  assert_int_equal(c->state, LE_CORO_READY);
  assert_true(F.sched.preempted >= 1);
  assert_ptr_equal(F.sched.later, c);
  assert_true(F.kicks >= 1);
  /* Other coroutines still get their turn between its slices. */
  start(1, "wait(2); trace('other')");
  wake(&F.w[1], 0);
  assert_int_equal(F.done[1], 1);
  int more = le_coro_sched_run(&F.sched);
  assert_int_equal(more, c->state == LE_CORO_READY);
  run_until_done(0);
  assert_true(F.sched.preempted >= 2);
  assert_int_equal(F.sched.cpu_killed, 1);
  assert_contains(F.error[0], "spin.lua:2:");
  assert_contains(F.error[0], "cpu_limit exceeded");
  assert_contains(F.error[0], "cpu_limit = 0.3 s");
  assert_int_equal(c->state, LE_CORO_DEAD);
  assert_null(F.sched.later);
  assert_null(F.sched.current);
  assert_int_equal(F.sched.depth, 0);
}

static void test_spin_in_sort_comparator_is_stopped(void **state) {
  (void)state;
  start_named(0, "=sort.lua",
              "local t = {3, 2, 1}\n"
              "table.sort(t, function(a, b)\n  while true do end\nend)");
  run_until_done(0);
  assert_contains(F.error[0], "sort.lua:3:");
  assert_contains(F.error[0], "cpu_limit exceeded");
  assert_int_equal(F.sched.cpu_killed, 1);
}

static void test_spin_in_pcall_loop_is_stopped(void **state) {
  (void)state;
  start_named(0, "=pcall.lua",
              "while true do\n"
              "  pcall(function() while true do end end)\nend");
  run_until_done(0);
  assert_contains(F.error[0], "pcall.lua:");
  assert_contains(F.error[0], "cpu_limit exceeded");
  assert_int_equal(F.sched.cpu_killed, 1);
}

static void test_spin_in_wrap_is_stopped(void **state) {
  (void)state;
  start_named(0, "=wrap.lua",
              "local f = coroutine.wrap(function()\n"
              "  while true do end\nend)\nf()");
  run_until_done(0);
  assert_contains(F.error[0], "wrap.lua:2:");
  assert_contains(F.error[0], "cpu_limit exceeded");
}

static void test_waiting_resets_the_cpu_account(void **state) {
  (void)state;
  /* Computes for about 40 ms of CPU time between waits, twelve times:
   * 480 ms in all, more than the limit, but never 300 ms without waiting
   * (a margin that holds when other processes take most of the CPU). */
  le_coro *c = start_named(0, "=busy.lua",
                           "local now = os.clock\n"
                           "for i = 1, 12 do\n"
                           "  local t = now(); while now() - t < 0.04 do end\n"
                           "  wait(1)\nend\nreturn 'survived'");
  for (int i = 0; i < 12; i++) {
    uint64_t give_up = le_preempt_now_ns() + 20000000000u;
    while (c->state == LE_CORO_READY && le_preempt_now_ns() < give_up)
      le_coro_sched_run(&F.sched);
    assert_int_equal(c->state, LE_CORO_WAITING);
    wake(&F.w[0], 0);
  }
  run_until_done(0);
  assert_string_equal(F.error[0], "");
  assert_string_equal(F.result[0], "survived");
  assert_int_equal(F.sched.cpu_killed, 0);
}

static void test_release_preempted_coroutine(void **state) {
  (void)state;
  le_coro *c = start(0,
                     "local x <close> = setmetatable({}, {__close = "
                     "function() trace('closed') end})\n"
                     "while true do end");
  assert_int_equal(c->state, LE_CORO_READY);
  le_coro_release(c);
  assert_int_equal(F.killed[0], 1);
  assert_null(F.sched.later);
  assert_string_equal(traced(), "closed");
  assert_int_equal(le_coro_sched_run(&F.sched), 0);
}

/* Calls le_preempt_pcall on `code` with a limit of 0.2 s and returns the
 * error message (valid until the stack is cleared). */
static const char *preempt_pcall(const char *code) {
  lua_State *L = F.L;
  assert_int_equal(luaL_loadbuffer(L, code, strlen(code), "=main.lua"), LUA_OK);
  int status = le_preempt_pcall(L, 0, 0, 0, 0.2);
  assert_int_equal(status, LUA_ERRRUN);
  assert_int_equal(lua_gettop(L), 1);
  return lua_tostring(L, -1);
}

static void test_preempt_pcall_stops_main_thread(void **state) {
  (void)state;
  assert_contains(preempt_pcall("while true do end"),
                  "main.lua:1: cpu_limit exceeded");
  lua_settop(F.L, 0);
  assert_contains(preempt_pcall("while true do\n"
                                "  pcall(function() while true do end end)\n"
                                "end"),
                  "cpu_limit exceeded");
  lua_settop(F.L, 0);
  /* Code that finishes in time runs as under lua_pcall. */
  assert_int_equal(luaL_loadstring(F.L, "return 1 + 1"), LUA_OK);
  assert_int_equal(le_preempt_pcall(F.L, 0, 1, 0, 0.2), LUA_OK);
  assert_int_equal(lua_tointeger(F.L, -1), 2);
  lua_settop(F.L, 0);
  /* And the hook is gone afterwards: this loop runs for longer than the
   * limit without being stopped. */
  run_main("local t = os.clock(); while os.clock() - t < 0.3 do end");
}

int main(void) {
  const struct CMUnitTest tests[] = {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
#define P(name) cmocka_unit_test_setup_teardown(name, setup_preempt, teardown)
      T(test_start_wait_wake_continuation),
      T(test_wait_many_times),
      T(test_wake_while_running_is_fifo),
      T(test_woken_during_sched_run_waits_for_next_call),
      T(test_release_waiting_runs_cancel_once),
      T(test_release_ready_runs_drop_once),
      T(test_release_runs_to_be_closed),
      T(test_list_release_ends_all),
      T(test_close_and_resume_refused_wait_intact),
      T(test_close_refused_from_another_luaecho_coroutine),
      T(test_user_coroutines_still_work),
      T(test_user_threads_are_not_luaecho),
      T(test_bare_yield_is_handler_error),
      T(test_error_has_position_and_traceback),
      T(test_error_escaped_when_memory_is_out),
      T(test_wait_in_sort_comparator_raises_and_drops),
      T(test_arm_error_runs_continuation_at_once),
      P(test_spin_is_preempted_then_stopped),
      P(test_spin_in_sort_comparator_is_stopped),
      P(test_spin_in_pcall_loop_is_stopped),
      P(test_spin_in_wrap_is_stopped),
      P(test_waiting_resets_the_cpu_account),
      P(test_release_preempted_coroutine),
      P(test_preempt_pcall_stops_main_thread),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
