/* Handler coroutines: start, resume and finish them, and report how they
 * ended. Nothing here knows about sockets.
 *
 * A le_coro lives in its owner (a connection, or a task spawned by one).
 * Every Lua thread started here points back to its le_coro through the
 * thread's extra space, so a binding called from Lua finds the coroutine it
 * runs in with le_coro_of(). Bindings that must wait record how to undo the
 * wait (le_coro_wait), then return le_coro_yield(L); whoever they wait on
 * later pushes the results onto the coroutine and calls le_coro_resume.
 * When the coroutine returns or raises, the `done` callback runs once, from
 * inside le_coro_resume, like a libuv completion callback.
 *
 * Coroutines that work for one connection share its `owner` tag; a
 * connection's spawned coroutines are kept on a list (le_coro_list) so they
 * can all be ended with it.
 */
#ifndef LUAECHO_CORO_H
#define LUAECHO_CORO_H

#include <lua.h>

typedef struct le_coro le_coro;
typedef struct le_coro_sched le_coro_sched;

/* Where a loop's coroutines are resumed from. A coroutine woken while
 * another luaecho coroutine runs (conn:close() in one coroutine waking a
 * reader in another, say) is not resumed on the spot: it goes on the ready
 * list and the loop resumes it once nothing runs, through `kick`. So no
 * coroutine ever runs nested inside another one's binding, where its end
 * could tear down the coroutine that woke it. */
struct le_coro_sched {
  int depth;                       /* luaecho coroutines running now */
  le_coro *ready;                  /* woken, waiting for the loop */
  void (*kick)(le_coro_sched *s);  /* asks the loop to call le_coro_sched_run */
};

/* Called once when the coroutine ends by returning or raising. `co` is the
 * finished thread with its `nres` results on top (when error is NULL);
 * `error` is the message followed by a stack traceback. The le_coro is
 * already detached (c->co is NULL), so the callback may release the memory
 * that holds it. */
typedef void (*le_coro_done_cb)(le_coro *c, lua_State *co, int nres,
                                const char *error);

struct le_coro {
  lua_State *L;          /* the main state, where the registry ref lives */
  lua_State *co;         /* the coroutine, NULL once it ended or was released */
  int ref;               /* registry ref that keeps co alive */
  int waiting;           /* set by le_coro_yield: something will resume it */
  le_coro_done_cb done;  /* completion callback */
  void *owner;           /* tag of the connection this coroutine works for */
  void (*cancel)(le_coro *c); /* undoes the current wait; see le_coro_wait */
  void *wait;            /* what it waits on, for cancel */
  void (*killed)(le_coro *c); /* optional: told when le_coro_release ends it */
  le_coro *next, *prev;  /* in a le_coro_list */
  le_coro_sched *sched;  /* its loop's scheduler; set before le_coro_start */
  le_coro *next_ready;   /* in sched->ready while woken */
  int ready_nargs;       /* values pushed for the deferred resume, or -1 */
};

/* A list of coroutines that end together (a connection's spawned tasks). */
typedef struct le_coro_list {
  le_coro *head;
} le_coro_list;

/* Starts a coroutine running the function below `nargs` arguments on top of
 * L, the main state (all of them are popped), and runs it until it first
 * waits or ends. `from` is the coroutine starting it (NULL from the loop),
 * so that Lua counts nested starts against its C-stack limit. c->owner and
 * c->killed must be set before. Returns 0, or -1 when no thread could be
 * made (nothing is popped then). */
int le_coro_start(le_coro *c, lua_State *L, int nargs, le_coro_done_cb done,
                  lua_State *from);

/* Resumes c with the `nargs` values already pushed on c->co, from the loop.
 * A coroutine that is not suspended in a luaecho wait is left alone (the
 * values are dropped). A coroutine that yields without le_coro_yield (a
 * bare coroutine.yield) is ended as an error, since nothing would ever
 * resume it. */
void le_coro_resume(le_coro *c, int nargs);

/* Same, from inside the coroutine `from` (see le_coro_start). */
void le_coro_resume_from(le_coro *c, int nargs, lua_State *from);

/* Records what the coroutine running L is about to wait on: if it is ended
 * while waiting, cancel(c) runs first so the waited-on object forgets it.
 * The record is cleared when the coroutine is resumed. */
void le_coro_wait(lua_State *L, void (*cancel)(le_coro *c), void *wait);

/* Raises "<what> cannot wait here: ..." unless L can yield. Bindings call
 * it before they record any waiting state, so a call made where Lua cannot
 * yield (a table.sort comparator, a metamethod called from C) fails
 * cleanly instead of leaving a waiter behind. */
void le_coro_check_yieldable(lua_State *L, const char *what);

/* Suspends the calling coroutine until something resumes it; use as
 * `return le_coro_yield(L);` in a binding. If Lua code resumes it instead
 * (coroutine.resume on a handler's thread), the wait is cancelled and the
 * binding raises, so no stale wait is left behind. */
int le_coro_yield(lua_State *L);

/* Returns the le_coro that L runs in, or NULL for the main thread or a
 * coroutine the handler created itself. */
le_coro *le_coro_of(lua_State *L);

/* Returns 1 while c has not ended. */
static inline int le_coro_alive(const le_coro *c) { return c->co != NULL; }

/* Ends a coroutine that is still suspended without resuming it: its wait is
 * cancelled, its to-be-closed variables are closed, its ref released, it
 * leaves its list, and c->killed runs. `done` is not called. Safe to call
 * on an ended coroutine. */
void le_coro_release(le_coro *c);

/* Resumes every coroutine on the ready list. The loop calls it after
 * `kick`, from a callback where no coroutine runs. */
void le_coro_sched_run(le_coro_sched *s);

/* Adds c to list; it leaves the list by itself when it ends. */
void le_coro_list_add(le_coro_list *list, le_coro *c);

/* Releases every coroutine on the list. */
void le_coro_list_release(le_coro_list *list);

#endif
