/* Stopping Lua code that computes without end: see
 * include/luaecho/preempt.h. */
#define _GNU_SOURCE /* SIGEV_THREAD_ID and gettid: a timer for one thread */
#include "luaecho/preempt.h"

#include <errno.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>

uint64_t le_preempt_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- the watchdog ---- */

/* The watchdog of the thread the signal arrives on. Each loop has its own
 * thread and timer, so a thread-local pointer finds the right one. */
static _Thread_local le_preempt *this_thread_preempt;

/* Runs on the loop's thread once per tick, between two instructions of
 * whatever it was doing: only lock-free atomics, clock_gettime and
 * lua_sethook here, all safe in a signal handler. */
static void on_tick(int signum) {
  (void)signum;
  le_preempt *p = this_thread_preempt;
  if (p == NULL) return;
  int saved = errno;
  unsigned gen = atomic_load_explicit(&p->gen, memory_order_relaxed);
  lua_State *co = atomic_load_explicit(&p->running, memory_order_relaxed);
  if (co == NULL || gen != atomic_load(&p->seen_gen)) {
    /* Something new runs, or nothing: it has had less than a tick. */
    atomic_store(&p->seen_gen, gen);
    atomic_store(&p->since_ns, le_preempt_now_ns());
  } else {
    atomic_store(&p->signalled_gen, gen);
    lua_sethook(co, p->hook, LUA_MASKCOUNT, 1);
  }
  errno = saved;
}

static int install_handler(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_tick;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  return sigaction(LE_PREEMPT_SIGNAL, &sa, NULL) == 0 ? 0 : -errno;
}

int le_preempt_start(le_preempt *p, lua_Hook hook, unsigned tick_ms) {
  memset(p, 0, sizeof *p);
  atomic_init(&p->running, NULL);
  p->hook = hook;
  p->tick_ms = tick_ms ? tick_ms : LE_PREEMPT_TICK_MS;
  int r = install_handler();
  if (r != 0) return r;
  struct sigevent sev;
  memset(&sev, 0, sizeof sev);
  sev.sigev_notify = SIGEV_THREAD_ID; /* this thread, not any of the process */
  sev.sigev_signo = LE_PREEMPT_SIGNAL;
  sev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
  if (timer_create(CLOCK_MONOTONIC, &sev, &p->timer) != 0) return -errno;
  this_thread_preempt = p;
  long ns = (long)p->tick_ms * 1000000L;
  struct itimerspec its = {{ns / 1000000000L, ns % 1000000000L},
                           {ns / 1000000000L, ns % 1000000000L}};
  if (timer_settime(p->timer, 0, &its, NULL) != 0) {
    r = -errno;
    timer_delete(p->timer);
    this_thread_preempt = NULL;
    return r;
  }
  p->started = 1;
  return 0;
}

void le_preempt_stop(le_preempt *p) {
  if (!p->started) return;
  timer_delete(p->timer);
  p->started = 0;
  if (this_thread_preempt == p) this_thread_preempt = NULL;
}

int le_preempt_current(le_preempt *p, uint64_t *since_ns) {
  *since_ns = atomic_load(&p->since_ns);
  return atomic_load(&p->signalled_gen) ==
         atomic_load_explicit(&p->gen, memory_order_relaxed);
}

/* ---- a protected call with a deadline ---- */

/* How often the deadline is checked, in VM instructions: often enough to
 * stop within milliseconds, rarely enough to cost nothing measurable. */
#define CHECK_EVERY 10000

typedef struct deadline {
  uint64_t at_ns;
  double seconds;
  int expired;
} deadline;

/* The registry key of the deadline in force (a light userdata). */
static const char deadline_key = 0;

static void deadline_hook(lua_State *L, lua_Debug *ar) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &deadline_key);
  deadline *d = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (d == NULL) { /* a thread left over from a finished call */
    lua_sethook(L, NULL, 0, 0);
    return;
  }
  if (!d->expired && le_preempt_now_ns() < d->at_ns) return;
  if (!d->expired) {
    /* From now on every instruction raises, so a pcall that catches the
     * error cannot be followed by more computing. */
    d->expired = 1;
    lua_sethook(L, deadline_hook, LUA_MASKCOUNT, 1);
  }
  /* "%g" writes the limit as the config does and as a handler's stop
   * says it ("5 s"); lua_pushfstring's "%f" would write "5.0 s". */
  char seconds[32];
  snprintf(seconds, sizeof seconds, "%g", d->seconds);
  if (lua_getinfo(L, "Sl", ar) && ar->currentline > 0)
    lua_pushfstring(L, "%s:%d: cpu_limit exceeded (%s s)", ar->short_src,
                    ar->currentline, seconds);
  else
    lua_pushfstring(L, "cpu_limit exceeded (%s s)", seconds);
  lua_error(L);
}

/* Runs inside the protected call: records the deadline (the registry key
 * may be new, and so allocate) and calls the function with its arguments.
 * Stack: deadline, nres, function, arguments. */
static int call_with_deadline(lua_State *L) {
  int nres = (int)lua_tointeger(L, 2);
  lua_pushvalue(L, 1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &deadline_key);
  lua_rotate(L, 1, -2);
  lua_pop(L, 2);
  lua_call(L, lua_gettop(L) - 1, nres);
  return nres == LUA_MULTRET ? lua_gettop(L) : nres;
}

int le_preempt_pcall(lua_State *L, int nargs, int nres, int msgh,
                     double seconds) {
  if (!(seconds > 0)) return lua_pcall(L, nargs, nres, msgh);
  if (!lua_checkstack(L, 4)) {
    lua_pop(L, nargs + 1);
    lua_pushliteral(L, "not enough memory");
    return LUA_ERRMEM;
  }
  deadline d = {le_preempt_now_ns() + (uint64_t)(seconds * 1e9), seconds, 0};
  lua_rawgetp(L, LUA_REGISTRYINDEX, &deadline_key);
  void *outer = lua_touserdata(L, -1);
  lua_pop(L, 1);
  lua_pushcfunction(L, call_with_deadline);
  lua_pushlightuserdata(L, &d);
  lua_pushinteger(L, nres);
  lua_rotate(L, -(nargs + 4), 3);
  lua_Hook old = lua_gethook(L);
  int oldmask = lua_gethookmask(L), oldcount = lua_gethookcount(L);
  lua_sethook(L, deadline_hook, LUA_MASKCOUNT, CHECK_EVERY);
  int status = lua_pcall(L, nargs + 3, nres, msgh);
  lua_sethook(L, old, oldmask, oldcount);
  /* Once call_with_deadline has set the key, assigning it again allocates
   * nothing and cannot fail; if it never got that far, nothing is set. */
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &deadline_key) != LUA_TNIL) {
    lua_pushlightuserdata(L, outer);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &deadline_key);
  }
  lua_pop(L, 1);
  return status;
}
