/* Watching handler directories for edits.
 *
 * A le_watch watches one directory (not single files: editors that save by
 * writing a temporary file and renaming it over the original, or that delete
 * and recreate the file, replace the inode a file watch would follow). Any
 * change to a "*.lua" file in it calls `on_change` once the directory has
 * been quiet for LE_WATCH_SETTLE_MS, so one save that produces several
 * events (truncate, write, rename) causes one reload.
 */
#ifndef LUAECHO_WATCH_H
#define LUAECHO_WATCH_H

#include <uv.h>

#define LE_WATCH_SETTLE_MS 50

typedef struct le_watch le_watch;
typedef void (*le_watch_cb)(le_watch *w);

struct le_watch {
  uv_fs_event_t event; /* the directory watch; owned here */
  uv_timer_t settle;   /* waits for the directory to go quiet; owned here */
  char *dir;           /* the directory watched */
  le_watch_cb on_change;
  void *data;       /* for the owner */
  int open_handles; /* handles not yet through their close callback */
  le_watch *next;   /* in the owner's list */
};

/* Starts watching `dir`. Returns a new watch, or NULL with *err set. */
le_watch *le_watch_start(uv_loop_t *loop, const char *dir, le_watch_cb cb,
                         void *data, int *err);

/* Stops watching; the memory is released from the close callbacks. */
void le_watch_close(le_watch *w);

#endif
