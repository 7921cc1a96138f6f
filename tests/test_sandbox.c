/* Unit tests for the sandbox (include/luaecho/sandbox.h). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "luaecho/sandbox.h"

#define HANDLER_HINT "(set sandbox = false in the config to allow it)"
#define CONFIG_HINT "(a config file always runs in the sandbox)"

/* One temporary directory for the program; tests write files into it. */
static char tmpdir[] = "/tmp/le-sandbox-XXXXXX";
static char written[16][256];
static size_t nwritten;

static int group_setup(void **state) {
  (void)state;
  return mkdtemp(tmpdir) ? 0 : -1;
}

static int group_teardown(void **state) {
  (void)state;
  for (size_t i = 0; i < nwritten; i++) unlink(written[i]);
  return rmdir(tmpdir);
}

/* Writes len bytes to tmpdir/name and returns the path (static storage). */
static const char *write_file(const char *name, const char *data, size_t len) {
  assert_true(nwritten < 16);
  char *path = written[nwritten++];
  snprintf(path, sizeof written[0], "%s/%s", tmpdir, name);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, len, f), len);
  fclose(f);
  return path;
}

static lua_State *new_state(le_sandbox_mode mode) {
  lua_State *L = luaL_newstate();
  assert_non_null(L);
  luaL_openlibs(L);
  assert_int_equal(le_sandbox_apply(L, mode), 0);
  return L;
}

static int setup_handlers(void **state) {
  *state = new_state(LE_SANDBOX_HANDLERS);
  return 0;
}

static int setup_config(void **state) {
  *state = new_state(LE_SANDBOX_CONFIG);
  return 0;
}

static int setup_off(void **state) {
  *state = new_state(LE_SANDBOX_OFF);
  return 0;
}

static int teardown(void **state) {
  lua_close(*state);
  return 0;
}

/* Runs code as chunk "=t" and returns its error message, or "ok: <first
 * result>" when it succeeds. The string stays on L's stack (so does code,
 * when with_dir made it), until the test clears it. */
static const char *run(lua_State *L, const char *code) {
  assert_true(lua_checkstack(L, 4));
  if (luaL_loadbufferx(L, code, strlen(code), "=t", "t") != LUA_OK ||
      lua_pcall(L, 0, 1, 0) != LUA_OK)
    return lua_tostring(L, -1);
  return lua_pushfstring(L, "ok: %s", luaL_tolstring(L, -1, NULL));
}

/* Pushes `code` with @DIR@ replaced by tmpdir and returns it. */
static const char *with_dir(lua_State *L, const char *code) {
  assert_true(lua_checkstack(L, 4));
  return luaL_gsub(L, code, "@DIR@", tmpdir);
}

/* ---- removed functions ---- */

static void test_removed_functions_raise_naming_themselves(void **state) {
  lua_State *L = *state;
  static const char *const names[] = {
      "os.exit",         "os.execute",         "io.popen",
      "package.loadlib", "debug.getinfo",      "debug.sethook",
      "debug.getlocal",  "debug.setmetatable", "debug.getregistry",
      "debug.upvalueid", "debug.debug",        NULL};
  for (const char *const *n = names; *n; n++) {
    char code[128], want[256];
    snprintf(code, sizeof code, "%s()", *n);
    snprintf(want, sizeof want,
             "t:1: %s is disabled by the sandbox " HANDLER_HINT, *n);
    assert_string_equal(run(L, code), want);
  }
}

static void test_config_mode_says_config_files_always_run_sandboxed(
    void **state) {
  assert_string_equal(run(*state, "os.exit(3)"),
                      "t:1: os.exit is disabled by the sandbox " CONFIG_HINT);
}

static void test_every_alias_of_a_library_sees_the_stubs(void **state) {
  lua_State *L = *state;
  assert_string_equal(run(L, "require('os').exit()"),
                      "t:1: os.exit is disabled by the sandbox " HANDLER_HINT);
  assert_string_equal(
      run(L, "package.loaded.debug.getinfo(1)"),
      "t:1: debug.getinfo is disabled by the sandbox " HANDLER_HINT);
}

static void test_what_stays_works(void **state) {
  lua_State *L = *state;
  assert_string_equal(run(L, "return debug.traceback('x', 1):match('^x\\n')"),
                      "ok: x\n");
  assert_string_equal(run(L, "return os.getenv('NO_SUCH_VARIABLE_LE')"),
                      "ok: nil");
  assert_string_equal(run(L, "return string.format('%d', 42)"), "ok: 42");
  assert_string_equal(run(L, "return type(string.dump(function() end))"),
                      "ok: string");
}

static void test_off_leaves_the_standard_library_alone(void **state) {
  lua_State *L = *state;
  assert_false(le_sandbox_enabled(L));
  assert_string_equal(run(L, "return debug.getinfo(1, 'S').what"), "ok: main");
  assert_string_equal(run(L, "return io.popen('echo hi'):read('l')"), "ok: hi");
  assert_string_equal(
      run(L, "return select(3, package.loadlib('/nonexistent.so', 'f'))"),
      "ok: open");
  assert_string_equal(
      run(L, "return load(string.dump(function() return 7 end))()"), "ok: 7");
}

/* ---- standard input ---- */

static void test_reading_standard_input_raises(void **state) {
  lua_State *L = *state;
  static const char *const cases[][2] = {
      {"io.read()", "io.read"},
      {"io.lines()", "io.lines"},
      {"io.lines(nil)", "io.lines"},
      {"io.stdin:read()", "io.stdin:read"},
      {"io.input():read('l')", "io.stdin:read"},
      {"io.stdin:lines()", "io.stdin:lines"},
      {"loadfile()", "loadfile"},
      {"dofile()", "dofile"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char code[128], want[256];
    snprintf(code, sizeof code, "local x = %s", cases[i][0]);
    snprintf(want, sizeof want,
             "t:1: %s: reading standard input is disabled by the "
             "sandbox " HANDLER_HINT,
             cases[i][1]);
    assert_string_equal(run(L, code), want);
    lua_settop(L, 0);
  }
}

static void test_files_are_read_as_before(void **state) {
  lua_State *L = *state;
  write_file("lines.txt", "one\ntwo\n", 8);
  assert_string_equal(
      run(L, with_dir(L, "io.input('@DIR@/lines.txt') return io.read('l')")),
      "ok: one");
  assert_string_equal(
      run(L, with_dir(L,
                      "local n = 0 for l in io.lines('@DIR@/lines.txt') do "
                      "n = n + 1 end return n")),
      "ok: 2");
  assert_string_equal(run(L, with_dir(L,
                                      "local f = io.open('@DIR@/lines.txt') "
                                      "return f:read('a')")),
                      "ok: one\ntwo\n");
}

/* ---- loading ---- */

static void test_load_keeps_text_and_its_environment(void **state) {
  lua_State *L = *state;
  assert_string_equal(run(L, "return load('return 1 + 1')()"), "ok: 2");
  assert_string_equal(run(L, "return load('return x', 'c', 't', { x = 5 })()"),
                      "ok: 5");
  /* An explicit nil environment is not the same as none. */
  assert_non_null(strstr(run(L, "return load('return x', 'c', 't', nil)()"),
                         "attempt to index a nil value"));
  /* A reader function is loaded in text mode too. */
  assert_string_equal(run(L,
                          "local parts, i = { 'return ', '3' }, 0 "
                          "return load(function() i = i + 1 "
                          "return parts[i] end)()"),
                      "ok: 3");
}

static void test_load_refuses_binary_chunks(void **state) {
  lua_State *L = *state;
  assert_string_equal(
      run(L, "return select(2, load(string.dump(function() end)))"),
      "ok: load: binary (precompiled) chunks are disabled by the "
      "sandbox " HANDLER_HINT);
  assert_string_equal(
      run(L,
          "local s = string.dump(function() end) "
          "return select(2, load(function() local p = s s = nil "
          "return p end))"),
      "ok: load: binary (precompiled) chunks are disabled by the "
      "sandbox " HANDLER_HINT);
  assert_string_equal(
      run(L, "return select(2, load(string.dump(function() end), 'x', 'b'))"),
      "ok: load: binary (precompiled) chunks are disabled by the "
      "sandbox " HANDLER_HINT);
}

static const char *dumped_chunk(lua_State *L, size_t *len) {
  luaL_dostring(L, "return string.dump(function() return 'bin' end)");
  return lua_tolstring(L, -1, len);
}

static void test_binary_files_are_refused_naming_them(void **state) {
  lua_State *L = *state;
  size_t len;
  const char *bin = dumped_chunk(L, &len);
  const char *path = write_file("bin.lua", bin, len);
  char want[512];
  snprintf(want, sizeof want,
           "%s: binary (precompiled) chunks are disabled by the "
           "sandbox " HANDLER_HINT,
           path);
  lua_settop(L, 0);
  assert_int_equal(le_sandbox_loadfile(L, path), LUA_ERRSYNTAX);
  assert_string_equal(lua_tostring(L, -1), want);
  char got[600];
  snprintf(got, sizeof got, "ok: %s", want);
  assert_string_equal(
      run(L, with_dir(L, "return select(2, loadfile('@DIR@/bin.lua'))")), got);
  snprintf(got, sizeof got, "t:1: error loading module 'bin': %s", want);
  lua_settop(L, 0);
  assert_string_equal(
      run(L, with_dir(L, "package.path = '@DIR@/?.lua' require 'bin'")), got);
  assert_string_equal(
      run(L, with_dir(L, "return select(2, pcall(dofile, '@DIR@/bin.lua'))")),
      lua_pushfstring(L, "ok: %s", want));
}

static void test_loadbuffer_names_the_file(void **state) {
  lua_State *L = *state;
  size_t len;
  const char *bin = dumped_chunk(L, &len);
  assert_int_equal(le_sandbox_loadbuffer(L, bin, len, "c.lua"), LUA_ERRSYNTAX);
  assert_string_equal(lua_tostring(L, -1),
                      "c.lua: binary (precompiled) chunks are disabled by the "
                      "sandbox " CONFIG_HINT);
  lua_settop(L, 0);
  assert_int_equal(le_sandbox_loadbuffer(L, "x = = 1", 7, "c.lua"),
                   LUA_ERRSYNTAX);
  assert_string_equal(lua_tostring(L, -1),
                      "c.lua:1: unexpected symbol near '='");
}

static void test_off_loads_binary_files(void **state) {
  lua_State *L = *state;
  size_t len;
  const char *bin = dumped_chunk(L, &len);
  const char *path = write_file("bin_off.lua", bin, len);
  lua_settop(L, 0);
  assert_int_equal(le_sandbox_loadfile(L, path), LUA_OK);
  lua_call(L, 0, 1);
  assert_string_equal(lua_tostring(L, -1), "bin");
}

/* ---- require ---- */

static void test_require_reports_a_missing_module_on_one_line(void **state) {
  lua_State *L = *state;
  assert_string_equal(run(L, "require 'no_such_module_le'"),
                      "t:1: module 'no_such_module_le' not found (searched "
                      "package.preload, package.path and package.cpath)");
}

static void test_require_reports_a_broken_module_on_one_line(void **state) {
  lua_State *L = *state;
  const char *path = write_file("broken.lua", "local x = = 1\n", 14);
  char want[512];
  snprintf(want, sizeof want,
           "t:1: error loading module 'broken': %s:1: unexpected symbol near "
           "'='",
           path);
  assert_string_equal(
      run(L, with_dir(L, "package.path = '@DIR@/?.lua' require 'broken'")),
      want);
}

static void test_require_loads_and_caches_modules(void **state) {
  lua_State *L = *state;
  write_file("good.lua", "n = (n or 0) + 1 return { n = n }\n", 34);
  assert_string_equal(run(L, with_dir(L,
                                      "package.path = '@DIR@/?.lua' "
                                      "local a, where = require 'good' "
                                      "local b = require 'good' "
                                      "return a == b and a.n == 1 and where")),
                      lua_pushfstring(L, "ok: %s/good.lua", tmpdir));
  assert_string_equal(
      run(L,
          "package.preload.pre = function(name) return name .. '!' end "
          "return require 'pre'"),
      "ok: pre!");
}

static void test_require_refuses_c_modules_naming_the_library(void **state) {
  lua_State *L = *state;
  const char *lib = write_file("cmod.so", "not a library", 13);
  char want[512];
  snprintf(want, sizeof want,
           "module 'cmod.sub' is a C library (%s): loading binary code is "
           "disabled by the sandbox " HANDLER_HINT,
           lib);
  assert_string_equal(
      run(L, with_dir(L,
                      "package.cpath = '@DIR@/?.so' "
                      "return select(2, pcall(require, 'cmod.sub'))")),
      lua_pushfstring(L, "ok: %s", want));
}

/* ---- messages ---- */

static void test_message_is_one_line_naming_the_file(void **state) {
  (void)state;
  char out[64];
  le_sandbox_message(out, sizeof out, "h.lua", "h.lua:3: boom");
  assert_string_equal(out, "h.lua:3: boom");
  le_sandbox_message(out, sizeof out, "h.lua", "boom");
  assert_string_equal(out, "h.lua: boom");
  le_sandbox_message(out, sizeof out, "h.lua", "cannot open h.lua: gone");
  assert_string_equal(out, "cannot open h.lua: gone");
  le_sandbox_message(out, sizeof out, "h.lua", "./mh.lua:1: x");
  assert_string_equal(out, "h.lua: ./mh.lua:1: x");
  le_sandbox_message(out, sizeof out, "h.lua", "a:\n\tb\n\tc");
  assert_string_equal(out, "h.lua: a: b c");
  le_sandbox_message(out, sizeof out, "/a/very/long/h.lua",
                     "...long/h.lua:1: x");
  assert_string_equal(out, "...long/h.lua:1: x");
  le_sandbox_message(out, 8, "h.lua", "boom");
  assert_string_equal(out, "h.lua: ");
  /* A file name is text from outside too: escaped like the message's
   * other control bytes, so that the record stays one line. */
  le_sandbox_message(out, sizeof out, "a\nb\033.lua", "boom");
  assert_string_equal(out, "a\\nb\\x1b.lua: boom");
  le_sandbox_message(out, 3, "a\nb", "boom"); /* never half an escape */
  assert_string_equal(out, "a:");
}

/* ---- memory ---- */

/* An allocator that fails every allocation after `left` more. */
static void *limited_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  long *left = ud;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  /* Lua requires that shrinking a block never fails. */
  if (*left <= 0 && (ptr == NULL || nsize > osize)) return NULL;
  --*left;
  return realloc(ptr, nsize);
}

static void test_apply_fails_cleanly_when_memory_runs_out(void **state) {
  (void)state;
  int failed = 0, succeeded = 0;
  for (long budget = 0; budget < 4000 && !succeeded; budget += 7) {
    long left = 1 << 30;
    lua_State *L = lua_newstate(limited_alloc, &left);
    assert_non_null(L);
    luaL_openlibs(L);
    left = budget;
    if (le_sandbox_apply(L, LE_SANDBOX_HANDLERS) == 0)
      succeeded = 1;
    else
      failed = 1;
    lua_close(L);
  }
  assert_true(failed);
  assert_true(succeeded);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(
          test_removed_functions_raise_naming_themselves, setup_handlers,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_config_mode_says_config_files_always_run_sandboxed, setup_config,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_every_alias_of_a_library_sees_the_stubs, setup_handlers,
          teardown),
      cmocka_unit_test_setup_teardown(test_what_stays_works, setup_handlers,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          test_off_leaves_the_standard_library_alone, setup_off, teardown),
      cmocka_unit_test_setup_teardown(test_reading_standard_input_raises,
                                      setup_handlers, teardown),
      cmocka_unit_test_setup_teardown(test_files_are_read_as_before,
                                      setup_handlers, teardown),
      cmocka_unit_test_setup_teardown(test_load_keeps_text_and_its_environment,
                                      setup_handlers, teardown),
      cmocka_unit_test_setup_teardown(test_load_refuses_binary_chunks,
                                      setup_handlers, teardown),
      cmocka_unit_test_setup_teardown(test_binary_files_are_refused_naming_them,
                                      setup_handlers, teardown),
      cmocka_unit_test_setup_teardown(test_loadbuffer_names_the_file,
                                      setup_config, teardown),
      cmocka_unit_test_setup_teardown(test_off_loads_binary_files, setup_off,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          test_require_reports_a_missing_module_on_one_line, setup_handlers,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_require_reports_a_missing_module_on_one_line, setup_off,
          teardown),
      cmocka_unit_test_setup_teardown(
          test_require_reports_a_broken_module_on_one_line, setup_off,
          teardown),
      cmocka_unit_test_setup_teardown(test_require_loads_and_caches_modules,
                                      setup_handlers, teardown),
      cmocka_unit_test_setup_teardown(
          test_require_refuses_c_modules_naming_the_library, setup_handlers,
          teardown),
      cmocka_unit_test(test_message_is_one_line_naming_the_file),
      cmocka_unit_test(test_apply_fails_cleanly_when_memory_runs_out),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
