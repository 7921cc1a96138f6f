/* Handler coroutines: start, resume and finish them, and report how they
 * ended. Nothing here knows about sockets.
 *
 * A le_coro is embedded in its owner (a connection). Every Lua thread started
 * here points back to its le_coro through the thread's extra space, so a
 * binding called from Lua finds the coroutine it runs in with le_coro_of().
 * Bindings that must wait return le_coro_yield(L); the owner later pushes the
 * results onto the coroutine and calls le_coro_resume. When the coroutine
 * returns or raises, the `done` callback runs once, from inside
 * le_coro_resume, like a libuv completion callback.
 */
#ifndef LUAECHO_CORO_H
#define LUAECHO_CORO_H

#include <lua.h>

typedef struct le_coro le_coro;

/* Called once when the coroutine ends. `error` is NULL after a normal
 * return, else the error message followed by a stack traceback. */
typedef void (*le_coro_done_cb)(le_coro *c, const char *error);

struct le_coro {
  lua_State *L;         /* the main state, where the registry ref lives */
  lua_State *co;        /* the coroutine, NULL once it ended or was released */
  int ref;              /* registry ref that keeps co alive */
  int waiting;          /* set by le_coro_yield: a binding will resume it */
  le_coro_done_cb done; /* completion callback */
};

/* Starts a coroutine running the function below `nargs` arguments on top of
 * L (all of them are popped) and runs it until it first waits or ends.
 * Returns 0, or -1 when no thread could be made (nothing is popped then). */
int le_coro_start(le_coro *c, lua_State *L, int nargs, le_coro_done_cb done);

/* Resumes c with the `nargs` values already pushed on c->co. A coroutine
 * that yields without le_coro_yield (a bare coroutine.yield) is ended as an
 * error, since nothing would ever resume it. */
void le_coro_resume(le_coro *c, int nargs);

/* Suspends the calling coroutine until its owner resumes it; use as
 * `return le_coro_yield(L);` in a binding. */
int le_coro_yield(lua_State *L);

/* Returns the le_coro that L runs in, or NULL for the main thread or a
 * coroutine the handler created itself. */
le_coro *le_coro_of(lua_State *L);

/* Returns 1 while c has not ended. */
static inline int le_coro_alive(const le_coro *c) { return c->co != NULL; }

/* Ends a coroutine that is still suspended without resuming it: its pending
 * to-be-closed variables are closed and its ref released. `done` is not
 * called. Safe to call on an ended coroutine. */
void le_coro_release(le_coro *c);

#endif
