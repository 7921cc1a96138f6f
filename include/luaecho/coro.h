/* Coroutines the core runs (a connection's handler, the tasks it spawns):
 * start, wait, wake, preempt and finish them, and report how they ended.
 * Nothing here knows about sockets.
 *
 * A le_coro lives in its owner (a connection, or a task). Every Lua thread
 * started here points back to its le_coro through the thread's extra space,
 * so a binding called from Lua finds the coroutine it runs in with
 * le_coro_of(); threads that Lua code makes itself point nowhere.
 *
 * States (c->state), and the only transitions allowed (asserted):
 *
 *   RUNNING  --le_coro_wait-->       WAITING   (suspended in a binding)
 *   RUNNING  --preempted-->          READY     (resumed on a later turn)
 *   RUNNING  --returns or raises-->  DEAD      (`done` runs)
 *   WAITING  --le_coro_wake-->       RUNNING, or READY when another
 *                                    coroutine runs now (resumed later)
 *   WAITING  --le_coro_release-->    DEAD      (the wait's cancel runs)
 *   READY    --its turn-->           RUNNING
 *   READY    --le_coro_release-->    DEAD
 *
 * The wait lifecycle. A binding that must wait ends with
 *
 *     return le_coro_wait(L, &ops, obj, arg);
 *
 * which raises, with nothing recorded, when L cannot yield (inside a C
 * function such as a table.sort comparator); otherwise it records the wait
 * (ops, obj), calls ops->arm so the awaited object learns who waits, and
 * yields. The record stays until one of these ends it, exactly once:
 *  - le_coro_wake(c), then the continuation: what it waited for happened.
 *    The waker has already updated its own state (cleared its waiter slot,
 *    stored a result); the coroutine resumes in ops->k(L, LUA_YIELD, obj),
 *    which builds the binding's results from that state. Results are made
 *    inside the coroutine, so a failed allocation there is an ordinary Lua
 *    error in that coroutine and never an unprotected one in a libuv
 *    callback.
 *  - le_coro_release while WAITING (at shutdown, or when its connection
 *    goes): ops->cancel(c, obj) makes obj forget c and frees what the wait
 *    owns (a timer, a request).
 *  - le_coro_release after the wake but before the continuation ran:
 *    ops->drop(c, obj) frees the result the waker handed over.
 * Lua code cannot end a wait any other way: coroutine.close and
 * coroutine.resume refuse luaecho's coroutines (le_coro_open).
 *
 * Preemption. A coroutine that computes for a whole preemption tick without
 * waiting is suspended at a count hook and put at the back of the ready
 * list, so every other coroutine gets its turn first. When the time goes to
 * a coroutine Lua code made and resumes (coroutine.wrap, coroutine.resume),
 * that one is suspended, then every resumer up to luaecho's coroutine,
 * and they resume it again in the same order on its next turn. One that
 * computes for more than its CPU limit in total without waiting is ended as an
 * error
 * ("cpu_limit exceeded"), even inside a C function that cannot yield.
 */
#ifndef LUAECHO_CORO_H
#define LUAECHO_CORO_H

#include <stdint.h>

#include <lua.h>

#include "luaecho/preempt.h"

typedef struct le_coro le_coro;
typedef struct le_coro_sched le_coro_sched;

typedef enum le_coro_state {
  LE_CORO_DEAD,    /* not started, ended, or released; co is NULL */
  LE_CORO_RUNNING, /* executing, or inside a nested start (spawn) */
  LE_CORO_WAITING, /* suspended in a luaecho wait; wait_ops is set */
  LE_CORO_READY    /* woken or preempted, on the scheduler's ready list */
} le_coro_state;

/* What a coroutine waits on. `what` names the wait for people ("recv",
 * "sleep"). Any of the functions may be NULL when there is nothing to do. */
typedef struct le_wait_ops {
  const char *what;
  /* Makes obj know c as its waiter; `arg` is the binding's, valid only
   * during this call. May replace c->wait_obj. Returns 0, or a negative
   * error when it cannot start the wait: then nothing waits, and the
   * continuation runs at once with that error as its status. */
  int (*arm)(le_coro *c, void *obj, const void *arg);
  /* The coroutine ended while WAITING: obj must forget c, and what the
   * wait owns is freed. */
  void (*cancel)(le_coro *c, void *obj);
  /* obj will never reach the continuation: the coroutine ended after
   * le_coro_wake but before its continuation ran, or le_coro_wait raised
   * before arming. Whatever obj holds is freed. */
  void (*drop)(le_coro *c, void *obj);
  /* The binding's continuation: builds its results once the wait ended,
   * called as k(L, LUA_YIELD, obj) with the wait's (final) obj, or with a
   * negative error as the status when arm failed. */
  lua_KFunction k;
} le_wait_ops;

/* Called once when the coroutine ends by returning or raising. `co` is the
 * finished thread with its `nres` results on top (when error is NULL);
 * `error` is the message followed by a stack traceback (only the message
 * when memory is short). The le_coro is already DEAD, so the callback may
 * release the memory that holds it. It runs from the loop, outside any
 * protected call: it must not allocate in Lua (no new strings or tables),
 * so that it works when Lua's memory is exhausted. */
typedef void (*le_coro_done_cb)(le_coro *c, lua_State *co, int nres,
                                const char *error);

/* What a kind of coroutine (a handler, a task) tells its owner: `done`
 * when it returns or raises, and optionally `killed` when le_coro_release
 * ends it instead. One static table per kind keeps every coroutine one
 * pointer smaller than two callbacks would. */
typedef struct le_coro_class {
  le_coro_done_cb done;
  void (*killed)(le_coro *c);
} le_coro_class;

/* Where a loop's coroutines are resumed from. A coroutine woken while
 * another one runs (conn:close() in one coroutine waking a reader in
 * another, say) is not resumed on the spot: it goes on the ready list and
 * the loop resumes it once nothing runs, through `kick`. So no coroutine
 * ever runs nested inside another one's binding. Coroutines are resumed in
 * the order they became ready; one preempted goes to the back, behind a
 * turn of the loop, so I/O is polled before it runs again. */
struct le_coro_sched {
  int depth;                      /* luaecho coroutines running now */
  le_coro *ready, *ready_tail;    /* woken, waiting for the loop */
  le_coro *later, *later_tail;    /* preempted, for the next turn */
  void (*kick)(le_coro_sched *s); /* asks the loop to call le_coro_sched_run */
  /* Returns c's CPU limit in milliseconds (0: none). Asked only when c is
   * preempted, so changing it costs nothing on the data path. */
  uint64_t (*cpu_limit_ms)(le_coro *c);
  le_preempt *preempt;         /* the loop's watchdog, or NULL */
  le_coro *current;            /* the coroutine running now, or NULL */
  int yielded_by_hook;         /* current was just preempted */
  lua_State *nested_preempted; /* a coroutine Lua code resumes, just
                                * suspended by the watchdog: its
                                * resumer suspends itself in turn */
  uint64_t preempted;          /* times a coroutine was preempted */
  uint64_t cpu_killed;         /* coroutines stopped by cpu_limit */
  char stop_where[160];        /* "file:line:" of the last one stopped */
};

struct le_coro {
  lua_State *L;  /* the main state, where the registry ref lives */
  lua_State *co; /* the coroutine, NULL while DEAD */
  int ref;       /* registry ref that keeps co alive */
  uint8_t state; /* le_coro_state */
  unsigned over_limit : 1; /* past its CPU limit: it is being stopped */
  const le_wait_ops *wait_ops; /* from le_coro_wait to its continuation */
  void *wait_obj;
  const le_coro_class *cls; /* what to tell its owner when it ends */
  void *owner;          /* tag of the connection this coroutine works for */
  le_coro *next, *prev; /* in a le_coro_list */
  le_coro_sched *sched;       /* its loop's scheduler, or NULL (run at once) */
  le_coro *next_ready;        /* in sched->ready or sched->later */
  /* Milliseconds, 32 bits: every connection carries a coroutine, and an
   * idle one must stay small (docs/performance.md, idle10k). */
  uint32_t cpu_ms;      /* computed since it last waited, counted when
                         * preempted */
  uint32_t slice_start; /* monotonic ms (low bits) of a resume after a
                         * preemption, 0 */
};

/* A list of coroutines that end together (a connection's spawned tasks). */
typedef struct le_coro_list {
  le_coro *head;
} le_coro_list;

/* Prepares L, a main state, for luaecho coroutines: marks the main thread
 * as not being one (so threads Lua code creates are not either), and makes
 * coroutine.close and coroutine.resume refuse luaecho's coroutines with a
 * clear message, since ending or resuming one behind luaecho's back would
 * leave its wait behind. Call once per state, before any le_coro_start. */
void le_coro_open(lua_State *L, le_coro_sched *s);

/* The count hook the watchdog installs on a coroutine that overran a tick
 * (pass it to le_preempt_start). */
void le_coro_preempt_hook(lua_State *L, lua_Debug *ar);

/* Starts a coroutine running the function below `nargs` arguments on top of
 * L, the main state (all of them are popped), and runs it until it first
 * waits or ends. `from` is the coroutine starting it (NULL from the loop),
 * so that Lua counts nested starts against its C-stack limit. c->owner
 * and c->sched must be set before. Must be called inside a protected call
 * (it allocates). Returns 0; a failure to make the thread raises in L. */
int le_coro_start(le_coro *c, lua_State *L, int nargs,
                  const le_coro_class *cls, lua_State *from);

/* Suspends the coroutine running L until le_coro_wake, continuing in
 * ops->k.
 * See the wait lifecycle above. Use as `return le_coro_wait(...)`. */
int le_coro_wait(lua_State *L, const le_wait_ops *ops, void *obj,
                 const void *arg);

/* Ends c's wait: resumes it in its continuation now, or later from the
 * ready list when another coroutine runs. The waker must have forgotten c
 * first. Does nothing unless c is WAITING. */
void le_coro_wake(le_coro *c);

/* Pushes the len bytes at s with every control byte written as an escape
 * (a newline as backslash-n, byte 27 as backslash-x1b), as the report of a
 * failed coroutine writes its message: a handler may raise or log any
 * bytes, a client's among them, and a log record must stay one line. */
void le_coro_push_one_line(lua_State *L, const char *s, size_t len);

/* Returns the le_coro that L runs in, or NULL for the main thread or a
 * coroutine the handler created itself. */
le_coro *le_coro_of(lua_State *L);

/* Returns 1 while c has not ended. */
static inline int le_coro_alive(const le_coro *c) { return c->co != NULL; }

/* Returns what c waits on ("recv", "sleep", ...), "ready" when it is about
 * to run, "running", or "ended". */
const char *le_coro_waits_on(const le_coro *c);

/* Ends a coroutine that is WAITING or READY without resuming it: its wait
 * is cancelled, its to-be-closed variables are closed, its ref released,
 * it leaves its list, and c->killed runs. `done` is not called. Safe to
 * call on a DEAD coroutine; a RUNNING one cannot be released. */
void le_coro_release(le_coro *c);

/* Resumes the coroutines that are ready now; those that become ready
 * meanwhile wait for the next call. Returns 1 when more remain (the loop
 * should call again on its next turn, after polling for I/O). */
int le_coro_sched_run(le_coro_sched *s);

/* Adds c to list; it leaves the list by itself when it ends. */
void le_coro_list_add(le_coro_list *list, le_coro *c);

/* Releases every coroutine on the list. */
void le_coro_list_release(le_coro_list *list);

#endif
