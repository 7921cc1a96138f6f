/* libFuzzer target for the config loader (include/luaecho/config.h).
 *
 * An input is the text of a config file (up to its first NUL byte, as the
 * loader reads a string). It is loaded with le_config_load_string on top of
 * the built-in defaults under the name "fuzz.lua" in the directory
 * "/fuzz-dir", and the result is checked; any failure calls abort():
 *
 *   the loader returns 0 or -1, and never crashes or trips a sanitizer
 *   on -1: the message is one line (no '\n'), not empty, and names the
 *     file ("fuzz.lua"), unless this fuzzer's own limits below stopped it
 *   on 0: the configuration is usable: at least one listener, each with
 *     its address text and a parsed address, a backlog in 1..65535, a
 *     framing mode luaecho knows, sizes within 1..1 GiB, and handler paths
 *     that are absolute (relative ones resolved against "/fuzz-dir");
 *     shutdown_timeout is a number >= 0; le_config_free releases it all
 *
 * A config is a program, so arbitrary text can loop forever, take all
 * memory, or touch the machine (os.exit, io.open, os.remove). The loader
 * has no limits of its own yet, so this fuzzer brings them: it defines
 * luaL_newstate and luaL_openlibs, which the loader calls, to give the
 * state an allocator capped at MEMORY_LIMIT bytes and a count hook that
 * raises after INSTRUCTION_LIMIT instructions, and to open the standard
 * libraries with every function that reaches outside the process (files,
 * processes, standard input and output, native modules, hooks) replaced by
 * one that raises "fuzz_config: NAME is disabled"; load keeps to text,
 * because crafted bytecode can crash Lua itself. An error the limits cause
 * is not held to the "names the file" rule.
 *
 * Built with clang as a libFuzzer target, or with any compiler together
 * with fuzz_replay.c, which supplies main. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "luaecho/config.h"
#include "fuzz_support.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NAME "fuzz.lua"
#define DIR "/fuzz-dir"
#define MEMORY_LIMIT (64u << 20)
#define INSTRUCTION_LIMIT 1000000
#define HOOK_EVERY 1000

/* What this input's state has used, and whether a limit stopped it. */
static size_t memory_used;
static long instructions;
static int limit_hit;

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    memory_used -= old;
    return NULL;
  }
  if (nsize > old && nsize - old > MEMORY_LIMIT - memory_used) {
    limit_hit = 1;
    return NULL;
  }
  void *p = realloc(ptr, nsize);
  if (p != NULL) memory_used = memory_used - old + nsize;
  return p;
}

static void count_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  instructions += HOOK_EVERY;
  if (instructions > INSTRUCTION_LIMIT) {
    limit_hit = 1;
    luaL_error(L, "fuzz_config: instruction limit reached");
  }
}

static int panic(lua_State *L) {
  fprintf(stderr, "fuzz_config: unprotected Lua error: %s\n",
          lua_tostring(L, -1) ? lua_tostring(L, -1) : "(not a string)");
  abort();
}

/* Replaces liblua's luaL_newstate for the loader: the same state, with
 * this fuzzer's memory cap and instruction count hook. */
lua_State *luaL_newstate(void) {
  lua_State *L = lua_newstate(capped_alloc, NULL);
  if (L != NULL) {
    lua_atpanic(L, panic);
    lua_sethook(L, count_hook, LUA_MASKCOUNT, HOOK_EVERY);
  }
  return L;
}

/* What luaL_openlibs runs after opening the libraries (see the top
 * comment). The tables keep their shape, so code that looks functions up
 * finds them; calling one raises. */
static const char disable_outside[] =
    "local function disabled(name)\n"
    "  return function() error('fuzz_config: ' .. name .. ' is disabled', 2) "
    "end\n"
    "end\n"
    "local function disable(t, prefix, names)\n"
    "  for _, n in ipairs(names) do t[n] = disabled(prefix .. n) end\n"
    "end\n"
    "disable(_G, '', { 'dofile', 'loadfile', 'require', 'print' })\n"
    "disable(os, 'os.', { 'execute', 'exit', 'remove', 'rename', 'tmpname' })\n"
    "disable(io, 'io.', { 'close', 'input', 'lines', 'open', 'output',\n"
    "                     'popen', 'read', 'tmpfile', 'write' })\n"
    "disable(getmetatable(io.stdin).__index, 'file:', { 'close', 'flush',\n"
    "        'lines', 'read', 'seek', 'setvbuf', 'write' })\n"
    "disable(package, 'package.', { 'loadlib', 'searchpath' })\n"
    "package.path, package.cpath = '', ''\n"
    "disable(debug, 'debug.', { 'debug', 'sethook' })\n"
    "local load = load\n"
    "_G.load = function(chunk, name, mode, ...)\n"
    "  return load(chunk, name, 't', ...)\n"
    "end\n";

/* Replaces liblua's luaL_openlibs for the loader: the same libraries, as
 * linit.c opens them, then disable_outside. */
void luaL_openlibs(lua_State *L) {
  static const luaL_Reg libs[] = {{LUA_GNAME, luaopen_base},
                                  {LUA_LOADLIBNAME, luaopen_package},
                                  {LUA_COLIBNAME, luaopen_coroutine},
                                  {LUA_TABLIBNAME, luaopen_table},
                                  {LUA_IOLIBNAME, luaopen_io},
                                  {LUA_OSLIBNAME, luaopen_os},
                                  {LUA_STRLIBNAME, luaopen_string},
                                  {LUA_MATHLIBNAME, luaopen_math},
                                  {LUA_UTF8LIBNAME, luaopen_utf8},
                                  {LUA_DBLIBNAME, luaopen_debug},
                                  {NULL, NULL}};
  for (const luaL_Reg *lib = libs; lib->func; lib++) {
    luaL_requiref(L, lib->name, lib->func, 1);
    lua_pop(L, 1);
  }
  if (luaL_dostring(L, disable_outside) != LUA_OK) panic(L);
}

static void check_path(const char *path) {
  if (path != NULL) CHECK(path[0] == '/');
}

static void check_size(uint32_t n) { CHECK(n >= 1 && n <= LE_MAX_SIZE_OPT); }

static void check_opts(const le_opts *o) {
  CHECK(o->packet == LE_PACKET_RAW || o->packet == LE_PACKET_1 ||
        o->packet == LE_PACKET_2 || o->packet == LE_PACKET_4 ||
        o->packet == LE_PACKET_LINE);
  check_size(o->packet_size);
  check_size(o->recv_buffer);
  check_size(o->send_buffer);
  CHECK(!isnan(o->recv_timeout) && !isnan(o->send_timeout) &&
        !isnan(o->idle_timeout));
}

static void check_config(const le_config *cfg) {
  CHECK(cfg->nlisteners >= 1 && cfg->listeners != NULL);
  for (size_t i = 0; i < cfg->nlisteners; i++) {
    const le_listener_conf *l = &cfg->listeners[i];
    CHECK(l->address != NULL);
    CHECK(l->backlog >= 1 && l->backlog <= 65535);
    if (l->addr.kind == LE_ADDR_TCP)
      CHECK(l->addr.port >= 0 && l->addr.port <= 65535);
    else
      CHECK(l->addr.kind == LE_ADDR_UNIX && l->addr.path[0] != '\0');
    check_path(l->handler);
    check_opts(&l->opts);
    (void)le_config_listener_handler(cfg, l);
  }
  check_path(cfg->handler);
  check_opts(&cfg->opts);
  CHECK(cfg->backlog >= 1 && cfg->backlog <= 65535);
  CHECK(cfg->shutdown_timeout >= 0 && !isnan(cfg->shutdown_timeout));
}

static void check_error(const char *err) {
  if (err[0] == '\0' || strchr(err, '\n') != NULL ||
      (!limit_hit && strstr(err, NAME) == NULL)) {
    fprintf(stderr, "fuzz_config: bad error message: \"%s\"\n", err);
    abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = malloc(size + 1);
  CHECK(text != NULL);
  memcpy(text, data, size);
  text[size] = '\0';
  memory_used = 0;
  instructions = 0;
  limit_hit = 0;

  le_config cfg;
  CHECK(le_config_init(&cfg) == 0);
  char err[1024];
  memset(err, 0, sizeof err);
  int r = le_config_load_string(&cfg, text, NAME, DIR, err, sizeof err);
  CHECK(r == 0 || r == -1);
  if (r == 0)
    check_config(&cfg);
  else
    check_error(err);
  le_config_free(&cfg);
  CHECK(memory_used == 0); /* the loader closed its state */
  free(text);
  return 0;
}
