/* Unit tests for handler scripts (include/luaecho/script.h). */
#include "test_support.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "luaecho/script.h"

/* One temporary directory for the whole program; each test writes the
 * handler files it needs into it, and they are removed at the end. */
static char tmpdir[] = "/tmp/le-script-XXXXXX";
static char written[64][256];
static size_t nwritten;

typedef struct fixture {
  lua_State *L;
  le_script *script; /* made by new_script, dropped by teardown */
  char path[256];    /* the file written by write_handler */
  char err[512];
} fixture;

static int group_setup(void **state) {
  (void)state;
  return mkdtemp(tmpdir) ? 0 : -1;
}

static int group_teardown(void **state) {
  (void)state;
  for (size_t i = 0; i < nwritten; i++) unlink(written[i]);
  return rmdir(tmpdir);
}

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  if (f == NULL || (f->L = luaL_newstate()) == NULL) return -1;
  luaL_openlibs(f->L);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  if (f->script != NULL) le_script_unref(f->script);
  lua_close(f->L);
  free(f);
  return 0;
}

/* Writes `source` to tmpdir/name and remembers the path in f->path. */
static const char *write_handler(fixture *f, const char *name,
                                 const char *source) {
  snprintf(f->path, sizeof f->path, "%s/%s", tmpdir, name);
  write_file(f->path, source);
  assert_true(nwritten < sizeof written / sizeof *written);
  strcpy(written[nwritten++], f->path);
  return f->path;
}

/* Loads f->path, which must fail with exactly `expected` ("%s" stands for
 * the path), leaving the stack as it was. */
static void assert_load_fails(fixture *f, const char *expected) {
  char want[512];
  snprintf(want, sizeof want, expected, f->path);
  assert_int_equal(le_script_load(f->L, f->path, f->err, sizeof f->err), -1);
  assert_string_equal(f->err, want);
  assert_int_equal(lua_gettop(f->L), 0);
}

static void test_builtin_echo_pushes_a_function(void **state) {
  fixture *f = *state;
  assert_int_equal(le_script_load(f->L, NULL, f->err, sizeof f->err), 0);
  assert_int_equal(lua_gettop(f->L), 1);
  assert_int_equal(lua_type(f->L, -1), LUA_TFUNCTION);
}

static void test_script_name(void **state) {
  (void)state;
  assert_string_equal(le_script_name(NULL), "echo.lua (built-in)");
  assert_string_equal(le_script_name("h.lua"), "h.lua");
}

static void test_handler_file_pushes_its_function(void **state) {
  fixture *f = *state;
  write_handler(f, "ok.lua", "return function(conn) return 'ran' end\n");
  assert_int_equal(le_script_load(f->L, f->path, f->err, sizeof f->err), 0);
  assert_int_equal(lua_gettop(f->L), 1);
  lua_call(f->L, 0, 1);
  assert_string_equal(lua_tostring(f->L, -1), "ran");
}

/* The chunk runs once, at load; only the function runs per connection. */
static void test_chunk_runs_once_at_load(void **state) {
  fixture *f = *state;
  write_handler(f, "once.lua",
                "loads = (loads or 0) + 1\n"
                "return function() end\n");
  assert_int_equal(le_script_load(f->L, f->path, f->err, sizeof f->err), 0);
  lua_getglobal(f->L, "loads");
  assert_int_equal(lua_tointeger(f->L, -1), 1);
}

static void test_syntax_error_names_file_and_line(void **state) {
  fixture *f = *state;
  write_handler(f, "syntax.lua",
                "return function(conn)\n"
                "  local x = = 1\n"
                "end\n");
  assert_load_fails(f, "%s:2: unexpected symbol near '='");
}

static void test_error_at_load(void **state) {
  fixture *f = *state;
  write_handler(f, "raises.lua",
                "local x = 1\n"
                "error('not today')\n");
  assert_load_fails(f, "%s:2: not today");
}

static void test_error_object_not_a_string(void **state) {
  fixture *f = *state;
  write_handler(f, "table.lua", "local x\nerror({})\n");
  assert_load_fails(f, "%s:2: (error object is a table value)");
}

static void test_must_return_a_function(void **state) {
  fixture *f = *state;
  write_handler(f, "nil.lua", "local x = 1\n");
  assert_load_fails(f, "%s: handler must return a function, got nil");
  write_handler(f, "number.lua", "return 42\n");
  assert_load_fails(f, "%s: handler must return a function, got number");
}

static void test_missing_file(void **state) {
  fixture *f = *state;
  strcpy(f->path, "/nonexistent/h.lua");
  assert_load_fails(f, "cannot open %s: No such file or directory");
}

/* A handler may require modules that sit next to it. */
static void test_require_next_to_handler(void **state) {
  fixture *f = *state;
  write_handler(f, "le_sibling.lua", "return { name = 'sibling' }\n");
  write_handler(f, "uses.lua",
                "local m = require 'le_sibling'\n"
                "return function() return m.name end\n");
  if (le_script_load(f->L, f->path, f->err, sizeof f->err) != 0)
    fail_msg("%s", f->err);
  lua_call(f->L, 0, 1);
  assert_string_equal(lua_tostring(f->L, -1), "sibling");
}

/* Makes a script of f->path (NULL: the built-in handler); it must load. */
static le_script *new_script(fixture *f, const char *path) {
  f->script = le_script_new(f->L, path, f->err, sizeof f->err);
  if (f->script == NULL) fail_msg("%s", f->err);
  assert_int_equal(lua_gettop(f->L), 0);
  return f->script;
}

/* Calls the newest version's function and returns what it returns, as
 * text; "error: ..." when it raises. */
static const char *call_newest(fixture *f, const le_script *s) {
  le_script_push(s, f->L);
  int ok = lua_pcall(f->L, 0, 1, 0) == LUA_OK;
  snprintf(f->err, sizeof f->err, "%s%s",
           ok ? "" : "error: ", luaL_tolstring(f->L, -1, NULL));
  lua_settop(f->L, 0);
  return f->err;
}

static void test_new_push_unref(void **state) {
  fixture *f = *state;
  write_handler(f, "kept.lua", "return function() return 'v1' end\n");
  le_script *s = new_script(f, f->path);
  assert_string_equal(s->path, f->path);
  assert_ptr_not_equal(s->path, f->path); /* a copy */
  assert_int_equal(s->version, 1);
  assert_int_equal(s->refs, 1);
  le_script_push(s, f->L);
  le_script_push(s, f->L);
  assert_int_equal(lua_type(f->L, -1), LUA_TFUNCTION);
  assert_true(lua_rawequal(f->L, -1, -2));
  lua_settop(f->L, 0);
  le_script_ref(s);
  assert_int_equal(s->refs, 2);
  le_script_unref(s);
  assert_int_equal(s->refs, 1);
  assert_string_equal(call_newest(f, s), "v1");
}

static void test_new_builtin(void **state) {
  fixture *f = *state;
  le_script *s = new_script(f, NULL);
  assert_null(s->path);
  le_script_push(s, f->L);
  assert_int_equal(lua_type(f->L, -1), LUA_TFUNCTION);
  lua_settop(f->L, 0);
}

static void test_new_failure(void **state) {
  fixture *f = *state;
  write_handler(f, "bad.lua", "return 1\n");
  assert_null(le_script_new(f->L, f->path, f->err, sizeof f->err));
  char want[512];
  snprintf(want, sizeof want, "%s: handler must return a function, got number",
           f->path);
  assert_string_equal(f->err, want);
  assert_int_equal(lua_gettop(f->L), 0);
}

/* A reload makes a new version for new connections; a function already
 * handed out (an open connection's) keeps running the old code. */
static void test_reload_makes_a_new_version(void **state) {
  fixture *f = *state;
  write_handler(f, "versions.lua", "return function() return 'v1' end\n");
  le_script *s = new_script(f, f->path);
  le_script_push(s, f->L); /* what an open connection runs */
  write_handler(f, "versions.lua", "return function() return 'v2' end\n");
  if (le_script_reload(s, f->err, sizeof f->err) != 0) fail_msg("%s", f->err);
  assert_int_equal(s->version, 2);
  assert_int_equal(lua_pcall(f->L, 0, 1, 0), LUA_OK);
  assert_string_equal(lua_tostring(f->L, -1), "v1");
  lua_settop(f->L, 0);
  assert_string_equal(call_newest(f, s), "v2");
}

static void test_failed_reload_keeps_the_good_version(void **state) {
  fixture *f = *state;
  write_handler(f, "flaky.lua", "return function() return 'good' end\n");
  le_script *s = new_script(f, f->path);
  write_handler(f, "flaky.lua", "return function()\n  return = 'bad'\nend\n");
  assert_int_equal(le_script_reload(s, f->err, sizeof f->err), -1);
  char want[300];
  snprintf(want, sizeof want, "%s:2:", f->path);
  assert_memory_equal(f->err, want, strlen(want));
  assert_int_equal(s->version, 1);
  assert_int_equal(lua_gettop(f->L), 0);
  assert_string_equal(call_newest(f, s), "good");
}

/* Modules the handler requires from its own directory come afresh with a
 * new version. */
static void test_reload_loads_local_modules_afresh(void **state) {
  fixture *f = *state;
  write_handler(f, "le_mod_a.lua", "return { v = 'module 1' }\n");
  write_handler(f, "modh.lua",
                "local m = require 'le_mod_a'\n"
                "return function() return m.v end\n");
  le_script *s = new_script(f, f->path);
  write_handler(f, "le_mod_a.lua", "return { v = 'module 2' }\n");
  if (le_script_reload(s, f->err, sizeof f->err) != 0) fail_msg("%s", f->err);
  assert_string_equal(call_newest(f, s), "module 2");
}

/* A reload that fails because a local module is broken leaves the good
 * version "in force" (script.h): its own require of that module, here made
 * when a connection runs, must still get the module it was loaded with. */
static void test_failed_reload_keeps_local_modules(void **state) {
  fixture *f = *state;
  write_handler(f, "le_mod_b.lua", "return { v = 'module 1' }\n");
  write_handler(f, "lazy.lua",
                "require 'le_mod_b'\n"
                "return function()\n"
                "  return require('le_mod_b').v\n"
                "end\n");
  le_script *s = new_script(f, f->path);
  write_handler(f, "le_mod_b.lua", "return { v = \n"); /* a syntax error */
  assert_int_equal(le_script_reload(s, f->err, sizeof f->err), -1);
  assert_int_equal(s->version, 1);
  assert_string_equal(call_newest(f, s), "module 1");
}

#define TEST(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      TEST(test_builtin_echo_pushes_a_function),
      TEST(test_script_name),
      TEST(test_handler_file_pushes_its_function),
      TEST(test_chunk_runs_once_at_load),
      TEST(test_syntax_error_names_file_and_line),
      TEST(test_error_at_load),
      TEST(test_error_object_not_a_string),
      TEST(test_must_return_a_function),
      TEST(test_missing_file),
      TEST(test_require_next_to_handler),
      TEST(test_new_push_unref),
      TEST(test_new_builtin),
      TEST(test_new_failure),
      TEST(test_reload_makes_a_new_version),
      TEST(test_failed_reload_keeps_the_good_version),
      TEST(test_reload_loads_local_modules_afresh),
      TEST(test_failed_reload_keeps_local_modules),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
