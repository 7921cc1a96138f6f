/* Stopping Lua code that computes without end.
 *
 * Two mechanisms, one for each kind of Lua code:
 *
 * The watchdog (le_preempt) is for handler coroutines, which must cost
 * nothing extra while they behave. A timer of the loop's thread sends that
 * thread a signal (SIGURG) once per tick, whose handler looks at what the
 * thread runs: when the same coroutine has been running for a whole tick,
 * it installs a count hook on that coroutine (lua_sethook may be called
 * from a signal handler; lua.c stops a script on Ctrl-C this way). coro.c's
 * hook then suspends the coroutine or stops it. The data path pays a few
 * plain stores per resume (le_preempt_enter/leave). There is no thread:
 * a process with a second thread pays for it on every system call and
 * allocation (glibc's single-thread fast paths end), which bench/run
 * measured at several per cent of the round-trip rate.
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

#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include <lua.h>

/* The signal the watchdog interrupts the loop's thread with. Its default
 * action is to ignore it, so a stray one is harmless. */
#define LE_PREEMPT_SIGNAL SIGURG

/* How long a coroutine may compute before it is suspended for the others. */
#define LE_PREEMPT_TICK_MS 10

/* The fields the signal handler reads and writes are atomics: it runs on
 * the loop's thread, between any two instructions of it. */
typedef struct le_preempt {
  _Atomic(lua_State *) running; /* the coroutine running now, or NULL */
  atomic_uint gen;              /* bumped whenever `running` changes */
  atomic_uint seen_gen;         /* the gen the last tick saw */
  atomic_uint signalled_gen;    /* the gen the hook was installed for */
  _Atomic uint64_t since_ns;    /* when a tick first saw that gen */
  lua_Hook hook;                /* installed on an overrunning coroutine */
  timer_t timer;                /* signals the loop's thread every tick */
  unsigned tick_ms;
  int started;
} le_preempt;

/* Starts the watchdog for the calling thread (the loop's), which will get
 * `hook` installed on a coroutine that overruns a tick. Returns 0 or a
 * negative errno. One watchdog per thread. */
int le_preempt_start(le_preempt *p, lua_Hook hook, unsigned tick_ms);

/* Stops the watchdog. Safe on one never started. */
void le_preempt_stop(le_preempt *p);

/* Marks co as running now and returns what ran before (for nesting). */
/* Only the loop's thread writes `running` and `gen`, so plain relaxed
 * loads and stores do (no locked read-modify-write instructions on the
 * path every resume takes); the watchdog only reads them. */
static inline void le_preempt_bump(le_preempt *p) {
  unsigned gen = atomic_load_explicit(&p->gen, memory_order_relaxed);
  atomic_store_explicit(&p->gen, gen + 1, memory_order_relaxed);
}

static inline lua_State *le_preempt_enter(le_preempt *p, lua_State *co) {
  lua_State *prev = atomic_load_explicit(&p->running, memory_order_relaxed);
  atomic_store_explicit(&p->running, co, memory_order_relaxed);
  le_preempt_bump(p);
  return prev;
}

/* Marks `prev` (from le_preempt_enter) as running again. */
static inline void le_preempt_leave(le_preempt *p, lua_State *prev) {
  atomic_store_explicit(&p->running, prev, memory_order_relaxed);
  le_preempt_bump(p);
}

/* Returns 1 when the signal that installed the hook was meant for the
 * coroutine running now (not one that ended meanwhile), and sets *since_ns
 * to when the watchdog first saw it run. */
int le_preempt_current(le_preempt *p, uint64_t *since_ns);

/* Monotonic time in nanoseconds. */
uint64_t le_preempt_now_ns(void);

/* lua_pcall(L, nargs, nres, msgh) under a CPU limit of `seconds` (<= 0:
 * none); msgh is 0 or the absolute index of a message handler below the
 * function. Past the limit the call fails with the message
 * "<file>:<line>: cpu_limit exceeded (<seconds> s)". Returns the status of
 * lua_pcall. */
int le_preempt_pcall(lua_State *L, int nargs, int nres, int msgh,
                     double seconds);

#endif
