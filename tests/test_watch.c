/* Unit tests for directory watches (include/luaecho/watch.h): a save of a
 * .lua file in the directory is reported once it settles, whether the
 * editor writes in place or renames a temporary file over the original;
 * other files are ignored. */
#include "test_support.h"

#include <unistd.h>

#include <uv.h>

#include "luaecho/watch.h"

typedef struct fixture {
  uv_loop_t loop;
  uv_timer_t tick; /* bounds each turn of the loop */
  le_watch *w;
  int changes;
  char dir[64];
  char path[128];
} fixture;

static fixture F;

static void on_change(le_watch *w) {
  assert_ptr_equal(w->data, &F);
  F.changes++;
}

static void on_tick(uv_timer_t *t) { (void)t; }

/* Runs the loop until `changes` reaches n, for at most 10 s. */
static void wait_changes(int n) {
  uint64_t give_up = uv_hrtime() + 10000000000u;
  while (F.changes < n) {
    if (uv_hrtime() > give_up) fail_msg("no change reported (%d)", n);
    uv_run(&F.loop, UV_RUN_ONCE);
  }
}

/* Runs the loop for `ms` (only to show that nothing is reported). */
static void run_for(unsigned ms) {
  uint64_t until = uv_hrtime() + (uint64_t)ms * 1000000u;
  while (uv_hrtime() < until) uv_run(&F.loop, UV_RUN_ONCE);
}

static char *in_dir(const char *name) {
  snprintf(F.path, sizeof F.path, "%s/%s", F.dir, name);
  return F.path;
}

static int setup(void **state) {
  (void)state;
  memset(&F, 0, sizeof F);
  assert_int_equal(uv_loop_init(&F.loop), 0);
  uv_timer_init(&F.loop, &F.tick);
  uv_timer_start(&F.tick, on_tick, 5, 5);
  snprintf(F.dir, sizeof F.dir, "/tmp/luaecho-watch-XXXXXX");
  assert_non_null(mkdtemp(F.dir));
  write_file(in_dir("handler.lua"), "return function() end\n");
  int err = 0;
  F.w = le_watch_start(&F.loop, F.dir, on_change, &F, &err);
  assert_non_null(F.w);
  assert_int_equal(err, 0);
  assert_string_equal(F.w->dir, F.dir);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  le_watch_close(F.w);
  le_watch_close(F.w); /* idempotent */
  uv_close((uv_handle_t *)&F.tick, NULL);
  uv_run(&F.loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&F.loop), 0);
  unlink(in_dir("handler.lua"));
  unlink(in_dir("notes.txt"));
  unlink(in_dir(".handler.lua.swp"));
  rmdir(F.dir);
  return 0;
}

static void test_write_in_place_reported_once(void **state) {
  (void)state;
  /* Truncate, write, close: several events, one report. */
  write_file(in_dir("handler.lua"), "return function(c) c:send('1') end\n");
  wait_changes(1);
  run_for(3 * LE_WATCH_SETTLE_MS);
  assert_int_equal(F.changes, 1);
}

static void test_rename_over_reported(void **state) {
  (void)state;
  write_file(in_dir(".handler.lua.swp"), "return function() end\n");
  char tmp[128];
  snprintf(tmp, sizeof tmp, "%s", F.path);
  assert_int_equal(rename(tmp, in_dir("handler.lua")), 0);
  wait_changes(1);
  /* The watch follows the directory, not the replaced inode. */
  write_file(in_dir("handler.lua"), "return function() end -- again\n");
  wait_changes(2);
}

static void test_other_files_ignored(void **state) {
  (void)state;
  write_file(in_dir("notes.txt"), "not a handler\n");
  /* A wrongly reported change would come within the settle time. */
  run_for(4 * LE_WATCH_SETTLE_MS);
  assert_int_equal(F.changes, 0);
  write_file(in_dir("handler.lua"), "return function() end\n");
  wait_changes(1);
}

static void test_missing_directory(void **state) {
  (void)state;
  int err = 0;
  le_watch *w = le_watch_start(&F.loop, "/nonexistent/luaecho-watch", on_change,
                               &F, &err);
  assert_null(w);
  assert_int_equal(err, UV_ENOENT);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_write_in_place_reported_once, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_rename_over_reported, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_other_files_ignored, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_missing_directory, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
