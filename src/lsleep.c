/* luaecho.sleep: see include/luaecho/lmodule.h. The wait owns a timer,
 * made when the wait starts and closed exactly once: when it fires, or when
 * the sleeping coroutine is ended first. */
#include <math.h>
#include <stdlib.h>

#include "lmodule_internal.h"

typedef struct sleep_req {
  uv_timer_t timer;
  le_coro *c;
} sleep_req;

static void free_req(uv_handle_t *h) { free(h->data); }

static void on_wake(uv_timer_t *timer) {
  sleep_req *r = timer->data;
  le_coro *c = r->c;
  uv_close((uv_handle_t *)timer, free_req);
  le_coro_wake(c);
}

static int arm_sleep(le_coro *c, void *obj, const void *arg) {
  le_conn_ctx *ctx = obj;
  sleep_req *r = malloc(sizeof *r);
  if (r == NULL) return UV_ENOMEM;
  uv_timer_init(ctx->loop, &r->timer);
  r->timer.data = r;
  r->c = c;
  /* libuv counts a timer from the loop's clock, cached when this turn of
   * the loop began; code that computed before sleeping (where it could not
   * be preempted) would otherwise sleep that much less, or not at all. */
  uv_update_time(ctx->loop);
  uv_timer_start(&r->timer, on_wake, *(const uint64_t *)arg, 0);
  c->wait_obj = r;
  return 0;
}

static void cancel_sleep(le_coro *c, void *obj) {
  sleep_req *r = obj;
  (void)c;
  uv_close((uv_handle_t *)&r->timer, free_req);
}

static int sleep_k(lua_State *L, int status, lua_KContext kctx);

static const le_wait_ops sleep_ops = {"luaecho.sleep", arm_sleep, cancel_sleep,
                                      NULL, sleep_k};

static int sleep_k(lua_State *L, int status, lua_KContext kctx) {
  (void)kctx;
  if (status < 0) return luaL_error(L, "luaecho.sleep: not enough memory");
  return 0;
}

/* luaecho.sleep(seconds): suspends only the calling coroutine. */
int le__lmodule_sleep(lua_State *L) {
  double seconds = (double)luaL_checknumber(L, 1);
  luaL_argcheck(L, seconds >= 0 && !isnan(seconds), 1, "seconds must be >= 0");
  le__lmodule_current(L, "luaecho.sleep");
  uint64_t ms = le_opts_ms(seconds);
  return le_coro_wait(L, &sleep_ops, le__lmodule_ctx(L), &ms);
}
