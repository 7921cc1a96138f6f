/* Directory watches: see include/luaecho/watch.h. */
#include "luaecho/watch.h"

#include <stdlib.h>
#include <string.h>

static void on_closed(uv_handle_t *h) {
  le_watch *w = h->data;
  if (--w->open_handles > 0) return;
  free(w->dir);
  free(w);
}

static void on_settled(uv_timer_t *t) {
  le_watch *w = t->data;
  w->on_change(w);
}

static int is_lua_file(const char *name) {
  size_t n = name ? strlen(name) : 0;
  return n > 4 && strcmp(name + n - 4, ".lua") == 0;
}

static void on_event(uv_fs_event_t *e, const char *filename, int events,
                     int status) {
  le_watch *w = e->data;
  (void)events;
  /* A name-less event or an error may hide a change: check anyway. */
  if (status == 0 && filename != NULL && !is_lua_file(filename)) return;
  uv_timer_start(&w->settle, on_settled, LE_WATCH_SETTLE_MS, 0);
}

le_watch *le_watch_start(uv_loop_t *loop, const char *dir, le_watch_cb cb,
                         void *data, int *err) {
  le_watch *w = calloc(1, sizeof *w);
  char *copy = w ? malloc(strlen(dir) + 1) : NULL;
  if (copy == NULL) {
    free(w);
    *err = UV_ENOMEM;
    return NULL;
  }
  strcpy(copy, dir);
  w->dir = copy;
  w->on_change = cb;
  w->data = data;
  uv_fs_event_init(loop, &w->event);
  uv_timer_init(loop, &w->settle);
  w->event.data = w->settle.data = w;
  w->open_handles = 2;
  int r = uv_fs_event_start(&w->event, on_event, dir, 0);
  if (r < 0) {
    *err = r;
    le_watch_close(w);
    return NULL;
  }
  return w;
}

void le_watch_close(le_watch *w) {
  if (uv_is_closing((uv_handle_t *)&w->event)) return;
  uv_close((uv_handle_t *)&w->event, on_closed);
  uv_close((uv_handle_t *)&w->settle, on_closed);
}
