/* Stopping Lua code that computes without end.
 *
 * Two mechanisms, one for each kind of Lua code:
 *
 * The watchdog (le_preempt) is for handler coroutines, which must cost
 * nothing extra while they behave. A thread wakes once per tick and looks
 * at what the loop's thread runs: when the same coroutine has been running
 * for a whole tick, it sends the loop's thread a signal (SIGURG), whose
 * handler installs a count hook on that coroutine (lua_sethook may be
 * called from a signal handler; lua.c stops a script on Ctrl-C this way).
 * coro.c's hook then suspends the coroutine or stops it. The data path pays
 * two relaxed atomic stores per resume (le_preempt_enter/leave).
 *
 * le_preempt_pcall is for code that runs once, outside any coroutine:
 * loading a handler file or a module, evaluating config.lua. It is a
 * lua_pcall with a count hook that checks a deadline; past it, the call
 * fails with "cpu_limit exceeded". The error is raised again at every
 * instruction from then on, so Lua code that catches it with pcall cannot
 * go on computing.
 */
#ifndef LUAECHO_PREEMPT_H
#define LUAECHO_PREEMPT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include <lua.h>

/* The signal the watchdog interrupts the loop's thread with. Its default
 * action is to ignore it, so a stray one is harmless. */
#define LE_PREEMPT_SIGNAL SIGURG

/* How long a coroutine may compute before it is suspended for the others. */
#define LE_PREEMPT_TICK_MS 10

typedef struct le_preempt {
  _Atomic(lua_State *) running; /* the coroutine running now, or NULL */
  atomic_uint gen;              /* bumped whenever `running` changes */
  atomic_uint signalled_gen;    /* the gen the last signal was for */
  _Atomic uint64_t since_ns;    /* when the watchdog first saw that gen */
  atomic_int stop;
  lua_Hook hook;    /* installed on an overrunning coroutine */
  pthread_t thread; /* the watchdog */
  pthread_t target; /* the loop's thread */
  unsigned tick_ms;
  int started;
} le_preempt;

/* Starts the watchdog for the calling thread (the loop's), which will get
 * `hook` installed on a coroutine that overruns a tick. Returns 0 or a
 * negative errno. */
int le_preempt_start(le_preempt *p, lua_Hook hook, unsigned tick_ms);

/* Stops and joins the watchdog. Safe on one never started. */
void le_preempt_stop(le_preempt *p);

/* Marks co as running now and returns what ran before (for nesting). */
static inline lua_State *le_preempt_enter(le_preempt *p, lua_State *co) {
  lua_State *prev =
      atomic_exchange_explicit(&p->running, co, memory_order_relaxed);
  atomic_fetch_add_explicit(&p->gen, 1, memory_order_relaxed);
  return prev;
}

/* Marks `prev` (from le_preempt_enter) as running again. */
static inline void le_preempt_leave(le_preempt *p, lua_State *prev) {
  atomic_store_explicit(&p->running, prev, memory_order_relaxed);
  atomic_fetch_add_explicit(&p->gen, 1, memory_order_relaxed);
}

/* Returns 1 when the signal that installed the hook was meant for the
 * coroutine running now (not one that ended meanwhile), and sets *since_ns
 * to when the watchdog first saw it run. */
int le_preempt_current(le_preempt *p, uint64_t *since_ns);

/* Monotonic time in nanoseconds. */
uint64_t le_preempt_now_ns(void);

/* lua_pcall(L, nargs, nres, 0) under a CPU limit of `seconds` (<= 0: none).
 * Past the limit the call fails with the message
 * "<file>:<line>: cpu_limit exceeded (<seconds> s)". Returns the status of
 * lua_pcall. */
int le_preempt_pcall(lua_State *L, int nargs, int nres, double seconds);

#endif
