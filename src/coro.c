/* Coroutines the core runs: see include/luaecho/coro.h. */
#include "luaecho/coro.h"

#include <assert.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "luaecho/lmem.h"
#include "luaecho/log.h"
#include "luaecho/sandbox.h"

/* The registry key of the loop's scheduler (a light userdata), for the
 * preemption hook, which is given nothing but a lua_State. */
static const char sched_key = 0;

/* The transitions coro.h allows: bit `to` of allowed[from]. */
static const unsigned allowed[] = {
    [LE_CORO_DEAD] = 1u << LE_CORO_RUNNING,
    [LE_CORO_RUNNING] =
        1u << LE_CORO_WAITING | 1u << LE_CORO_READY | 1u << LE_CORO_DEAD,
    [LE_CORO_WAITING] =
        1u << LE_CORO_RUNNING | 1u << LE_CORO_READY | 1u << LE_CORO_DEAD,
    [LE_CORO_READY] = 1u << LE_CORO_RUNNING | 1u << LE_CORO_DEAD,
};

static void set_state(le_coro *c, le_coro_state to) {
  (void)allowed; /* read only by assert, absent under NDEBUG */
  assert(allowed[c->state] & (1u << to));
  c->state = to;
}

static void set_owner(lua_State *co, le_coro *c) {
  *(le_coro **)lua_getextraspace(co) = c;
}

le_coro *le_coro_of(lua_State *L) { return *(le_coro **)lua_getextraspace(L); }

const char *le_coro_waits_on(const le_coro *c) {
  switch (c->state) {
  case LE_CORO_WAITING: return c->wait_ops->what;
  case LE_CORO_READY: return "ready";
  case LE_CORO_RUNNING: return "running";
  default: return "ended";
  }
}

/* Monotonic milliseconds, low 32 bits: enough to measure slices of CPU
 * time (a wrap every 49 days is harmless to a difference). */
static uint32_t now_ms(void) {
  return (uint32_t)(le_preempt_now_ns() / 1000000u);
}

/* ---- lists ---- */

/* The list a coroutine is on is reachable through its neighbours only, so
 * le_coro_list keeps the head and unlinking goes through `prev`. */
static void unlink_coro(le_coro *c) {
  if (c->prev) c->prev->next = c->next;
  if (c->next) c->next->prev = c->prev;
  c->next = c->prev = NULL;
}

void le_coro_list_add(le_coro_list *list, le_coro *c) {
  c->next = list->head;
  if (list->head) list->head->prev = c;
  list->head = c;
  /* The head's prev points at a sentinel made from the list itself, so
   * unlinking the head updates list->head. */
  c->prev = (le_coro *)((char *)list - offsetof(le_coro, next));
}

void le_coro_list_release(le_coro_list *list) {
  while (list->head != NULL) le_coro_release(list->head);
}

static void enqueue(le_coro **head, le_coro **tail, le_coro *c) {
  c->next_ready = NULL;
  if (*tail)
    (*tail)->next_ready = c;
  else
    *head = c;
  *tail = c;
}

static int dequeue_from(le_coro **head, le_coro **tail, le_coro *c) {
  le_coro *prev = NULL;
  for (le_coro *p = *head; p != NULL; prev = p, p = p->next_ready) {
    if (p != c) continue;
    if (prev)
      prev->next_ready = c->next_ready;
    else
      *head = c->next_ready;
    if (*tail == c) *tail = prev;
    c->next_ready = NULL;
    return 1;
  }
  return 0;
}

/* Takes a READY coroutine off whichever list it is on. The lists are short
 * and this is rare (a coroutine ended between being woken and resumed). */
static void unready(le_coro *c) {
  le_coro_sched *s = c->sched;
  if (!dequeue_from(&s->ready, &s->ready_tail, c))
    dequeue_from(&s->later, &s->later_tail, c);
}

/* ---- ending ---- */

/* Makes c DEAD and returns its thread, pushed on the main stack to keep it
 * alive while the caller still needs it. */
static lua_State *detach(le_coro *c) {
  lua_State *co = c->co;
  if (c->state == LE_CORO_READY) unready(c);
  if (c->state == LE_CORO_READY && c->wait_ops && c->wait_ops->drop)
    c->wait_ops->drop(c, c->wait_obj);
  set_state(c, LE_CORO_DEAD);
  c->co = NULL;
  c->wait_ops = NULL;
  c->wait_obj = NULL;
  set_owner(co, NULL);
  unlink_coro(c);
  lua_rawgeti(c->L, LUA_REGISTRYINDEX, c->ref);
  luaL_unref(c->L, LUA_REGISTRYINDEX, c->ref);
  c->ref = LUA_NOREF;
  return co;
}

/* A hook that raises at every instruction: code that must not run on (the
 * to-be-closed handlers of a coroutine stopped for its CPU limit, code that
 * caught that error) ends at once. */
static void stop_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  luaL_error(L, "cpu_limit exceeded");
}

/* Closes pending to-be-closed variables of a thread that will never run
 * again and pops its anchor from the main stack. An error in one of their
 * __close handlers has nobody left to catch it: it goes out as a Lua
 * warning, as Lua itself reports an error in a __gc metamethod. Closing a
 * thread that ended in an error returns that error again, so only an
 * error object other than the original one comes from a __close handler.
 * The thread is gone either way. */
static void reset(lua_State *L, lua_State *co, int stopped) {
  int had_error = lua_status(co) != LUA_OK && lua_status(co) != LUA_YIELD;
  int kept = had_error && lua_gettop(co) > 0 && lua_checkstack(co, 1) &&
             lua_checkstack(L, 2);
  if (kept) {
    lua_pushvalue(co, -1);
    lua_xmove(co, L, 1); /* the original error, to compare */
  }
  if (stopped) lua_sethook(co, stop_hook, LUA_MASKCOUNT, 1);
#if LUA_VERSION_RELEASE_NUM >= 50406
  int status = lua_closethread(co, L);
#else
  int status = lua_resetthread(co);
#endif
  if (status != LUA_OK && !stopped && (kept || !had_error) &&
      lua_checkstack(co, 1)) {
    lua_pushvalue(co, -1);
    lua_xmove(co, L, 1);
    if (!kept || !lua_rawequal(L, -1, -2)) {
      const char *msg =
          lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
      lua_warning(L, "error in __close (", 1);
      lua_warning(L, msg ? msg : "error object is not a string", 1);
      lua_warning(L, ")", 0);
    }
    lua_pop(L, 1);
  }
  if (kept) lua_pop(L, 1);
  lua_pop(L, 1);
}

void le_coro_push_one_line(lua_State *L, const char *s, size_t len) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (size_t i = 0; i < len; i++) {
    char esc[5];
    size_t k = le_log_escape((unsigned char)s[i], esc);
    if (k == 0)
      luaL_addchar(&b, s[i]);
    else
      luaL_addlstring(&b, esc, k);
  }
  luaL_pushresult(&b);
}

/* Builds "<message>\nstack traceback: ..." on L (protected: it allocates).
 * Stack: the failed thread, the message as a light userdata. */
static int build_report(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  const char *msg = lua_touserdata(L, 2);
  le_coro_push_one_line(L, msg, strlen(msg));
  luaL_traceback(L, co, lua_tostring(L, -1), 0);
  return 1;
}

/* Writes the plain message for a coroutine that ended with `status` into
 * buf (or points at the thread's own error string). */
static const char *plain_message(le_coro *c, int status, char *buf,
                                 size_t len) {
  lua_State *co = c->co;
  if (c->over_limit) {
    uint64_t limit = c->sched->cpu_limit_ms ? c->sched->cpu_limit_ms(c) : 0;
    snprintf(buf, len,
             "%s cpu_limit exceeded: computed for %.1f s without "
             "waiting (cpu_limit = %g s)",
             c->sched->stop_where, (double)c->cpu_ms / 1e3,
             (double)limit / 1000.0);
  } else if (status == LUA_YIELD) {
    snprintf(buf, len,
             "the handler yielded without waiting on luaecho "
             "(a bare coroutine.yield() in a handler is not supported)");
  } else if (lua_type(co, -1) == LUA_TSTRING) {
    return lua_tostring(co, -1);
  } else {
    char where[LUA_IDSIZE + 32];
    le_sandbox_where(co, 0, where, sizeof where);
    snprintf(buf, len, "%s(error object is a %s value)", where,
             luaL_typename(co, -1));
  }
  return buf;
}

/* Returns the report of a failed coroutine: the message and a traceback,
 * pushed on the main stack (*pushed = 1), or when memory is short just the
 * message, pushing nothing. */
static const char *report(le_coro *c, int status, char *buf, size_t len,
                          int *pushed) {
  lua_State *L = c->L;
  const char *msg = plain_message(c, status, buf, len);
  lua_pushcfunction(L, build_report);
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref);
  lua_pushlightuserdata(L, (void *)msg);
  *pushed = lua_pcall(L, 2, 1, 0) == LUA_OK;
  if (*pushed) return lua_tostring(L, -1);
  lua_pop(L, 1);
  /* No memory for Lua to escape it with: it is escaped here, without the
   * traceback. */
  char copy[512];
  snprintf(copy, sizeof copy, "%s", msg);
  le_log_escape_into(buf, len, copy, strlen(copy));
  return buf;
}

/* Reports how the coroutine ended and drops it. The error text is built
 * while the dead coroutine's stack is still there to walk. */
static void finish(le_coro *c, int status, int nres) {
  lua_State *L = c->L;
  const char *error = NULL;
  char buf[512];
  int pushed = 0, stopped = c->over_limit;
  if (status != LUA_OK) {
    error = report(c, status, buf, sizeof buf, &pushed);
    nres = 0;
    if (stopped) c->sched->cpu_killed++;
  }
  le_coro_done_cb done = c->cls->done;
  lua_State *co = detach(c); /* pushes the thread, above the report */
  done(c, co, nres, error);
  reset(L, co, stopped);
  if (pushed) lua_pop(L, 1);
  /* A coroutine that met max_memory leaves garbage that only a collection
   * gives back to the next one (see le_mem_collect). */
  le_mem_collect(L);
}

/* ---- running ---- */

static void after_run(le_coro *c, int status, int nres, int preempted) {
  if (status == LUA_YIELD && c->state == LE_CORO_WAITING) {
    lua_pop(c->co, nres);
    return;
  }
  if (status == LUA_YIELD && preempted && !c->over_limit) {
    le_coro_sched *s = c->sched;
    set_state(c, LE_CORO_READY);
    c->slice_start = 0; /* its next slice starts when it runs again */
    s->preempted++;
    enqueue(&s->later, &s->later_tail, c);
    s->kick(s);
    return;
  }
  finish(c, status, nres);
}

/* Runs c until it waits, is preempted or ends. */
static void run(le_coro *c, int nargs, lua_State *from) {
  le_coro_sched *s = c->sched;
  le_coro *outer = NULL;
  lua_State *prev = NULL;
  int nres = 0;
  set_state(c, LE_CORO_RUNNING);
  if (s != NULL) {
    s->depth++;
    if (s->preempt != NULL) prev = le_preempt_enter(s->preempt, c->co);
    outer = s->current;
    s->current = c;
  }
  int status = lua_resume(c->co, from ? from : c->L, nargs, &nres);
  int preempted = 0;
  if (s != NULL) {
    s->current = outer;
    preempted = s->yielded_by_hook;
    s->yielded_by_hook = 0;
    if (s->preempt != NULL) le_preempt_leave(s->preempt, prev);
    s->depth--;
  }
  after_run(c, status, nres, preempted);
}

int le_coro_start(le_coro *c, lua_State *L, int nargs, const le_coro_class *cls,
                  lua_State *from) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  lua_State *main = lua_tothread(L, -1);
  lua_pop(L, 1);
  lua_State *co = lua_newthread(L);
  c->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  c->L = main;
  c->co = co;
  c->cls = cls;
  c->state = LE_CORO_DEAD;
  c->wait_ops = NULL;
  c->next_ready = NULL;
  c->cpu_ms = 0;
  c->slice_start = 0;
  c->over_limit = 0;
  set_owner(co, c);
  lua_xmove(L, co, nargs + 1);
  run(c, nargs, from);
  return 0;
}

/* ---- waiting ---- */

/* Continues a binding after its coroutine was resumed. le_coro_wake makes
 * it RUNNING first; finding it still WAITING means something resumed it
 * behind luaecho's back, and whatever it waited on must forget it. */
static int after_wait(lua_State *L, int status, lua_KContext kctx) {
  le_coro *c = (le_coro *)kctx;
  const le_wait_ops *ops = c->wait_ops;
  void *obj = c->wait_obj;
  int foreign = c->state == LE_CORO_WAITING;
  if (foreign && ops->cancel) ops->cancel(c, obj);
  c->wait_ops = NULL;
  c->wait_obj = NULL;
  if (foreign) {
    c->state = LE_CORO_RUNNING;
    return luaL_error(L,
                      "a luaecho coroutine was resumed by other code; "
                      "only luaecho may resume it");
  }
  return ops->k(L, status, (lua_KContext)obj);
}

int le_coro_wait(lua_State *L, const le_wait_ops *ops, void *obj,
                 const void *arg) {
  le_coro *c = le_coro_of(L);
  assert(c != NULL && c->co == L && c->state == LE_CORO_RUNNING);
  if (!lua_isyieldable(L)) {
    if (ops->drop) ops->drop(c, obj);
    return luaL_error(L,
                      "%s cannot wait here: attempt to yield across a C-call "
                      "boundary (inside a C function such as a table.sort "
                      "comparator or a string.gsub callback)",
                      ops->what);
  }
  c->wait_ops = ops;
  c->wait_obj = obj;
  int err = ops->arm ? ops->arm(c, obj, arg) : 0;
  if (err != 0) {
    void *final = c->wait_obj;
    c->wait_ops = NULL;
    c->wait_obj = NULL;
    return ops->k(L, err, (lua_KContext) final);
  }
  set_state(c, LE_CORO_WAITING);
  c->cpu_ms = 0; /* waiting ends a stretch of computing */
  c->slice_start = 0;
  return lua_yieldk(L, 0, (lua_KContext)c, after_wait);
}

void le_coro_wake(le_coro *c) {
  if (c->state != LE_CORO_WAITING) return;
  le_coro_sched *s = c->sched;
  if (s != NULL && s->depth > 0) {
    set_state(c, LE_CORO_READY);
    enqueue(&s->ready, &s->ready_tail, c);
    s->kick(s);
    return;
  }
  run(c, 0, NULL);
}

void le_coro_release(le_coro *c) {
  if (c->state == LE_CORO_DEAD) return;
  assert(c->state != LE_CORO_RUNNING);
  if (c->state == LE_CORO_WAITING && c->wait_ops->cancel)
    c->wait_ops->cancel(c, c->wait_obj);
  lua_State *co = detach(c);
  reset(c->L, co, 0);
  le_mem_collect(c->L);
  if (c->cls->killed != NULL) c->cls->killed(c);
}

int le_coro_sched_run(le_coro_sched *s) {
  /* Those preempted on the last turn go behind everything woken since. */
  if (s->later != NULL) {
    if (s->ready_tail)
      s->ready_tail->next_ready = s->later;
    else
      s->ready = s->later;
    s->ready_tail = s->later_tail;
    s->later = s->later_tail = NULL;
  }
  /* Only those ready now run: coroutines that wake each other would
   * otherwise keep this loop going and the loop from polling I/O. They
   * are counted rather than cut off into a list of their own, because
   * le_coro_release takes a READY coroutine off s->ready. */
  size_t n = 0;
  for (le_coro *p = s->ready; p != NULL; p = p->next_ready) n++;
  while (n-- > 0 && s->ready != NULL) {
    le_coro *c = s->ready;
    s->ready = c->next_ready;
    if (s->ready == NULL) s->ready_tail = NULL;
    c->next_ready = NULL;
    if (c->slice_start == 0 && c->cpu_ms > 0)
      c->slice_start = now_ms(); /* it computes on */
    run(c, 0, NULL);
  }
  return s->later != NULL || s->ready != NULL;
}

/* ---- preemption ---- */

/* Records "file:line:" of the running function as where c was stopped. */
static void note_where(le_coro_sched *s, lua_State *L, lua_Debug *ar) {
  if (lua_getinfo(L, "Sl", ar) && ar->currentline > 0)
    snprintf(s->stop_where, sizeof s->stop_where, "%s:%d:", ar->short_src,
             ar->currentline);
  else
    snprintf(s->stop_where, sizeof s->stop_where, "%s:", ar->short_src);
}

/* Charges c for computing since its slice began; returns 1 when that puts
 * it past its CPU limit. */
static int charge(le_coro_sched *s, le_coro *c, uint64_t since_ns) {
  uint32_t now = now_ms();
  uint32_t start =
      c->slice_start ? c->slice_start : (uint32_t)(since_ns / 1000000u);
  c->cpu_ms += now - start; /* unsigned: right across a wrap of the clock */
  c->slice_start = now;
  uint64_t limit_ms = s->cpu_limit_ms ? s->cpu_limit_ms(c) : 0;
  return limit_ms > 0 && c->cpu_ms >= limit_ms;
}

/* The thread the watchdog sees running: c's own, or one that
 * resume_watched runs. */
static lua_State *watched_thread(le_coro_sched *s) {
  return s->preempt == NULL
             ? NULL
             : atomic_load_explicit(&s->preempt->running, memory_order_relaxed);
}

/* Installed by the watchdog's signal on the thread that has run for a
 * whole tick: that is c's own thread, or a coroutine Lua code created and
 * resumes from it. c's own thread yields (to run again after the others,
 * or to be stopped); elsewhere only the limit is enforced, by an error
 * raised at every instruction until c's own thread can be stopped. */
void le_coro_preempt_hook(lua_State *L, lua_Debug *ar) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &sched_key);
  le_coro_sched *s = lua_touserdata(L, -1);
  lua_pop(L, 1);
  le_coro *c = s ? s->current : NULL;
  if (c == NULL) { /* nothing of luaecho's runs: a stale hook */
    lua_sethook(L, NULL, 0, 0);
    return;
  }
  if (!c->over_limit) {
    uint64_t since;
    lua_sethook(L, NULL, 0, 0); /* the data path runs without a hook */
    if (!le_preempt_current(s->preempt, &since)) return;
    if (!charge(s, c, since)) {
      if (L == c->co && lua_isyieldable(L)) {
        s->yielded_by_hook = 1;
        lua_yield(L, 0);
      } else if (lua_isyieldable(L) && L == watched_thread(s)) {
        /* A coroutine of Lua code's own, run by resume_watched: that is
         * its resumer, and suspends itself in turn. */
        s->nested_preempted = L;
        lua_yield(L, 0);
      }
      return; /* where it cannot yield, it is looked at again next tick */
    }
    c->over_limit = 1;
    note_where(s, L, ar);
  }
  if (L == c->co && lua_isyieldable(L)) {
    lua_yield(L, 0); /* finish() reports it as stopped */
    return;
  }
  lua_sethook(L, le_coro_preempt_hook, LUA_MASKCOUNT, 1);
  luaL_error(L, "cpu_limit exceeded");
}

/* ---- guarding the coroutine library ---- */

#define LUAECHO_CORO_MSG \
  "coroutine run by luaecho (a handler or a spawned task)"

/* coroutine.close(co): refused for luaecho's coroutines, whose waits only
 * luaecho can end. */
static int guard_close(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  if (co != NULL && le_coro_of(co) != NULL)
    return luaL_error(L, "coroutine.close: cannot close a " LUAECHO_CORO_MSG
                         "; return from it, or close its connection");
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

/* What resume_watched returns to: coroutine.resume or a wrapped function. */
enum { AS_RESUME, AS_WRAP };

static int resume_watched(lua_State *L, lua_KContext as);

/* Continues resume_watched after its coroutine was resumed by luaecho, or
 * by the resume_watched below it, following a preemption. */
static int resume_again(lua_State *L, int status, lua_KContext as) {
  (void)status;
  return resume_watched(L, as);
}

/* Hands the results of a wrapped function's resume back as Lua's own wrap
 * does: the values, or the error with the position prepended, after
 * closing the dead coroutine. Stack: the thread, ok, values. */
static int wrap_results(lua_State *L, lua_State *co) {
  if (lua_toboolean(L, 2)) return lua_gettop(L) - 2;
  int status = lua_status(co);
  if (status != LUA_OK && status != LUA_YIELD) {
#if LUA_VERSION_RELEASE_NUM >= 50406
    lua_closethread(co, L);
#else
    lua_resetthread(co);
#endif
  }
  if (lua_type(L, 3) == LUA_TSTRING) {
    luaL_where(L, 1);
    lua_insert(L, 3);
    lua_concat(L, 2);
  }
  lua_settop(L, 3);
  return lua_error(L);
}

/* Resumes the thread at index 1 with the values above it through the
 * original coroutine.resume (upvalue 1), telling the watchdog which thread
 * runs meanwhile (the scheduler is upvalue 2). When the watchdog suspended
 * that thread, the one running this suspends too, so luaecho's coroutine
 * at the bottom yields to the loop; resumed, it resumes the thread again
 * with no values. Where L cannot yield it resumes the thread at once. */
static int resume_watched(lua_State *L, lua_KContext as) {
  le_coro_sched *s = lua_touserdata(L, lua_upvalueindex(2));
  le_preempt *p = s ? s->preempt : NULL;
  lua_State *co = lua_tothread(L, 1);
  for (;;) {
    int nargs = lua_gettop(L) - 1;
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushvalue(L, 1);
    lua_rotate(L, 2, 2); /* thread, resume, thread, values */
    lua_State *prev = p ? le_preempt_enter(p, co) : NULL;
    lua_call(L, nargs + 1, LUA_MULTRET);
    if (p) le_preempt_leave(p, prev);
    if (s == NULL || s->nested_preempted != co) break;
    s->nested_preempted = NULL;
    lua_settop(L, 1); /* the hook yielded no values */
    if (!lua_isyieldable(L)) continue;
    if (s->current != NULL && L == s->current->co)
      s->yielded_by_hook = 1;
    else
      s->nested_preempted = L;
    return lua_yieldk(L, 0, as, resume_again);
  }
  if (as == AS_WRAP) return wrap_results(L, co);
  return lua_gettop(L) - 1;
}

/* coroutine.resume(co, ...): refused (false, message) for luaecho's
 * coroutines; other coroutines run under the watchdog like their caller. */
static int guard_resume(lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co != NULL, 1, "coroutine");
  if (le_coro_of(co) != NULL) {
    lua_pushboolean(L, 0);
    lua_pushliteral(
        L, "cannot resume a " LUAECHO_CORO_MSG ": only luaecho resumes it");
    return 2;
  }
  return resume_watched(L, AS_RESUME);
}

/* The function coroutine.wrap returns: resumes its coroutine (upvalue 3)
 * through resume_watched. */
static int wrap_call(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(3));
  lua_insert(L, 1);
  return resume_watched(L, AS_WRAP);
}

/* coroutine.wrap(f): as Lua's own, but resumed under the watchdog. */
static int guard_wrap(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_State *co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushvalue(L, lua_upvalueindex(1)); /* resume */
  lua_pushvalue(L, lua_upvalueindex(2)); /* sched */
  lua_pushvalue(L, -3);                  /* the thread */
  lua_pushcclosure(L, wrap_call, 3);
  return 1;
}

/* Lua's auxiliary library makes the metatable of its buffer boxes
 * ("_UBOX*") the first time a buffer outgrows LUAL_BUFFERSIZE, in two
 * steps (register it, then set __gc and __close); running out of memory
 * between them leaves a metatable without __close in the registry for
 * good, and every later large string.rep, table.concat or traceback in the
 * state then fails with "got a non-closable value". Found by
 * tests/test_alloc.c. Making it here, while memory is plentiful, avoids
 * that. Runs protected. */
static int make_buffer_box(lua_State *L) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_prepbuffsize(&b, LUAL_BUFFERSIZE + 1);
  luaL_pushresult(&b);
  return 0;
}

void le_coro_open(lua_State *L, le_coro_sched *s) {
  lua_pushcfunction(L, make_buffer_box);
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) lua_pop(L, 1);
  /* Threads copy the main thread's extra space: NULL there marks the
   * threads Lua code creates as not being luaecho's. */
  set_owner(L, NULL);
  lua_pushlightuserdata(L, s);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &sched_key);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, LUA_COLIBNAME) == LUA_TTABLE) {
    lua_pushlightuserdata(L, s);
    lua_insert(L, -2);
    lua_getfield(L, -1, "close");
    lua_pushcclosure(L, guard_close, 1);
    lua_setfield(L, -2, "close");
    lua_getfield(L, -1, "resume");
    lua_pushvalue(L, -3);
    lua_pushcclosure(L, guard_resume, 2);
    lua_setfield(L, -2, "resume");
    /* wrap's upvalues: the original resume, and the scheduler. */
    lua_getfield(L, -1, "resume");
    lua_getupvalue(L, -1, 1);
    lua_remove(L, -2);
    lua_pushvalue(L, -3);
    lua_pushcclosure(L, guard_wrap, 2);
    lua_setfield(L, -2, "wrap");
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
}
