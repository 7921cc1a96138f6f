/* The sandbox: see include/luaecho/sandbox.h. */
#include "luaecho/sandbox.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <string.h>

#include "luaecho/log.h"

/* Registry field holding a sandboxed state's hint (a light userdata pointing
 * to one of the static strings below); absent when there is no sandbox. */
#define HINT_KEY "luaecho.sandbox"

static const char hint_handlers[] =
    "set sandbox = false in the config to allow it";
static const char hint_config[] = "a config file always runs in the sandbox";
static const char hint_client[] = "a client script always runs in the sandbox";

/* What Lua's loader says when a binary chunk is loaded in text mode. */
static const char mode_error[] = "attempt to load a binary chunk";

/* Returns the hint for messages, or NULL when L is not sandboxed. */
static const char *sandbox_hint(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, HINT_KEY);
  const char *hint = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return hint;
}

int le_sandbox_enabled(lua_State *L) { return sandbox_hint(L) != NULL; }

void le_sandbox_for_client(lua_State *L) {
  if (!le_sandbox_enabled(L)) return;
  lua_pushlightuserdata(L, (void *)hint_client);
  lua_setfield(L, LUA_REGISTRYINDEX, HINT_KEY); /* an existing key: no memory */
}

/* ---- loading chunks ---- */

/* Replaces Lua's message for a refused binary chunk (which names no file)
 * by one that names `name` and the sandbox. Returns status. */
static int name_mode_error(lua_State *L, int status, const char *name) {
  const char *msg = lua_tostring(L, -1);
  if (status == LUA_OK || msg == NULL ||
      strncmp(msg, mode_error, sizeof mode_error - 1) != 0)
    return status;
  lua_pop(L, 1);
  lua_pushfstring(L,
                  "%s: binary (precompiled) chunks are disabled by the "
                  "sandbox (%s)",
                  name, sandbox_hint(L));
  return status;
}

int le_sandbox_loadfile(lua_State *L, const char *path) {
  const char *mode = le_sandbox_enabled(L) ? "t" : NULL;
  return name_mode_error(L, luaL_loadfilex(L, path, mode), path);
}

int le_sandbox_loadbuffer(lua_State *L, const char *buf, size_t len,
                          const char *name) {
  const char *mode = le_sandbox_enabled(L) ? "t" : NULL;
  const char *chunkname = lua_pushfstring(L, "@%s", name);
  int status = luaL_loadbufferx(L, buf, len, chunkname, mode);
  lua_remove(L, -2);
  return name_mode_error(L, status, name);
}

/* Returns 1 when msg names the file `name` as a word of its own (at the
 * start or after a space, followed by ':', a space or the end), or starts
 * with "..." as Lua's shortened chunk names do. */
static int names_file(const char *msg, const char *name) {
  size_t len = strlen(name);
  if (strncmp(msg, "...", 3) == 0) return 1;
  for (const char *p = strstr(msg, name); p != NULL; p = strstr(p + 1, name)) {
    if ((p == msg || p[-1] == ' ') &&
        (p[len] == ':' || p[len] == ' ' || p[len] == '\0'))
      return 1;
  }
  return 0;
}

void le_sandbox_where(lua_State *L, int level, char *buf, size_t len) {
  lua_Debug ar;
  buf[0] = '\0';
  for (; lua_getstack(L, level, &ar); level++) {
    if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
      snprintf(buf, len, "%s:%d: ", ar.short_src, ar.currentline);
      return;
    }
  }
}

int le_sandbox_msgh(lua_State *L) {
  if (lua_type(L, 1) == LUA_TSTRING) return 1;
  char where[LUA_IDSIZE + 32];
  le_sandbox_where(L, 1, where, sizeof where);
  lua_pushfstring(L, "%s(error object is a %s value)", where,
                  luaL_typename(L, 1));
  return 1;
}

void le_sandbox_message(char *out, size_t outlen, const char *name,
                        const char *msg) {
  if (outlen == 0) return;
  size_t n = 0;
  if (*name != '\0' && !names_file(msg, name)) {
    /* A file's name comes from outside as much as its message does. */
    n = le_log_escape_into(out, outlen, name, strlen(name));
    for (const char *sep = ": "; *sep != '\0' && n + 1 < outlen; sep++)
      out[n++] = *sep;
    out[n] = '\0';
  }
  for (const unsigned char *p = (const unsigned char *)msg;
       *p != '\0' && n + 1 < outlen; p++) {
    if (*p == '\n' || *p == '\r' || *p == '\t') {
      if (n > 0 && out[n - 1] != ' ') out[n++] = ' ';
    } else {
      char esc[5];
      size_t k = le_log_escape(*p, esc);
      if (k == 0) {
        out[n++] = (char)*p;
      } else if (n + k < outlen) {
        memcpy(out + n, esc, k);
        n += k;
      } else {
        break;
      }
    }
  }
  out[n] = '\0';
}

/* ---- require ---- */

/* Calls package.searchpath (upvalue 2, the original) for name on the
 * package field `field` (upvalue 1 is the package table). Returns the file
 * found, left on the stack, or NULL with nothing pushed. */
static const char *search_path(lua_State *L, const char *name,
                               const char *field) {
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_pushstring(L, name);
  if (lua_getfield(L, lua_upvalueindex(1), field) != LUA_TSTRING)
    luaL_error(L, "'package.%s' must be a string", field);
  lua_call(L, 2, 1);
  if (lua_isstring(L, -1)) return lua_tostring(L, -1);
  lua_pop(L, 1);
  return NULL;
}

/* Takes the place of Lua's own searcher of Lua modules: it finds the file
 * the same way, loads it in the state's mode and reports a failed load on
 * one line, where Lua's takes two: "h.lua:1: error loading module 'm':
 * ./m.lua:2: unexpected symbol near '+'". */
static int search_lua(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  lua_settop(L, 1);
  const char *file = search_path(L, name, "path");
  if (file == NULL) return 0;
  if (le_sandbox_loadfile(L, file) != LUA_OK) {
    luaL_where(L, 2); /* the line that called require */
    lua_pushfstring(L, "%serror loading module '%s': %s", lua_tostring(L, -1),
                    name, lua_tostring(L, -2));
    return lua_error(L);
  }
  lua_pushvalue(L, 2); /* the file, the loader's second argument */
  return 2;
}

/* Under the sandbox, takes the place of Lua's two searchers of C modules:
 * a module found on package.cpath (as "a.b" or as its root "a") is refused
 * with a message naming its file, instead of being loaded. */
static int search_c_refused(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  const char *dot = strchr(name, '.');
  const char *file = search_path(L, name, "cpath");
  if (file == NULL && dot != NULL) {
    lua_pushlstring(L, name, (size_t)(dot - name));
    file = search_path(L, lua_tostring(L, -1), "cpath");
  }
  if (file == NULL) return 0;
  return luaL_error(L,
                    "module '%s' is a C library (%s): loading binary code is "
                    "disabled by the sandbox (%s)",
                    name, file, sandbox_hint(L));
}

/* Pushes the loader the searchers (upvalue 1 is the package table) find for
 * name, and its extra value; raises one line when none does. Messages of
 * searchers that find nothing are not kept: Lua's own list them one per
 * line, every template tried, which buries the one fact that matters. */
static void find_loader(lua_State *L, const char *name) {
  if (lua_getfield(L, lua_upvalueindex(1), "searchers") != LUA_TTABLE)
    luaL_error(L, "'package.searchers' must be a table");
  int searchers = lua_gettop(L);
  for (lua_Integer i = 1; lua_rawgeti(L, searchers, i) != LUA_TNIL; i++) {
    lua_pushstring(L, name);
    lua_call(L, 1, 2);
    if (lua_isfunction(L, -2)) {
      lua_remove(L, searchers);
      return;
    }
    lua_pop(L, 2);
  }
  luaL_error(L,
             "module '%s' not found (searched package.preload, package.path "
             "and package.cpath)",
             name);
}

/* require as in Lua 5.4's loadlib.c, with find_loader's messages. */
static int sandbox_require(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  lua_settop(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, 2, name);
  if (lua_toboolean(L, -1)) return 1;
  lua_pop(L, 1);
  find_loader(L, name);
  lua_rotate(L, -2, 1); /* loader data, loader */
  lua_pushvalue(L, 1);
  lua_pushvalue(L, -3);
  lua_call(L, 2, 1);
  if (!lua_isnil(L, -1))
    lua_setfield(L, 2, name);
  else
    lua_pop(L, 1);
  if (lua_getfield(L, 2, name) == LUA_TNIL) {
    lua_pushboolean(L, 1);
    lua_copy(L, -1, -2);
    lua_setfield(L, 2, name);
  }
  lua_rotate(L, -2, 1); /* module, loader data */
  return 2;
}

/* Pushes the library table `name` as the state loaded it. */
static void push_library(lua_State *L, const char *name) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, name);
  lua_remove(L, -2);
}

/* Installs require and the searchers above; `sandboxed` also replaces the
 * C searchers. */
static void install_require(lua_State *L, int sandboxed) {
  push_library(L, LUA_LOADLIBNAME);
  int package = lua_gettop(L);
  lua_getfield(L, package, "searchers");
  lua_getfield(L, package, "searchpath");
  lua_pushvalue(L, package);
  lua_pushvalue(L, -2);
  lua_pushcclosure(L, search_lua, 2);
  lua_rawseti(L, package + 1, 2);
  if (sandboxed) {
    lua_pushvalue(L, package);
    lua_pushvalue(L, -2);
    lua_pushcclosure(L, search_c_refused, 2);
    lua_rawseti(L, package + 1, 3);
    lua_pushnil(L);
    lua_rawseti(L, package + 1, 4);
  }
  lua_pushvalue(L, package);
  lua_pushcclosure(L, sandbox_require, 1);
  lua_setglobal(L, "require");
  lua_settop(L, package - 1);
}

/* ---- removed functions ---- */

/* Raises "<name> is disabled by the sandbox (<hint>)"; upvalue 1 is the
 * name. */
static int disabled(lua_State *L) {
  return luaL_error(L, "%s is disabled by the sandbox (%s)",
                    lua_tostring(L, lua_upvalueindex(1)), sandbox_hint(L));
}

/* Sets t[field] of the table on top to a stub raising for `name`. */
static void remove_field(lua_State *L, const char *field, const char *name) {
  lua_pushstring(L, name);
  lua_pushcclosure(L, disabled, 1);
  lua_setfield(L, -2, field);
}

/* Replaces every function of the debug library but traceback, the one
 * needed to report errors: the others reach into any value's metatable,
 * upvalues and locals, and with them into the server's own data. */
static void strip_debug(lua_State *L) {
  push_library(L, LUA_DBLIBNAME);
  lua_pushnil(L);
  while (lua_next(L, -2) != 0) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING ||
        strcmp(lua_tostring(L, -1), "traceback") == 0)
      continue;
    lua_pushfstring(L, "debug.%s", lua_tostring(L, -1));
    lua_pushcclosure(L, disabled, 1);
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, -4); /* an existing field: allowed while traversing */
  }
  lua_pop(L, 1);
}

static void remove_functions(lua_State *L) {
  push_library(L, LUA_OSLIBNAME);
  remove_field(L, "exit", "os.exit");
  remove_field(L, "execute", "os.execute");
  lua_pop(L, 1);
  push_library(L, LUA_IOLIBNAME);
  remove_field(L, "popen", "io.popen");
  lua_pop(L, 1);
  push_library(L, LUA_LOADLIBNAME);
  remove_field(L, "loadlib", "package.loadlib");
  lua_pop(L, 1);
  strip_debug(L);
}

/* ---- guarded functions ---- */

/* Calls upvalue 1 (the original function) with the values from index base
 * up; returns the number of results, left from base up. */
static int call_original(lua_State *L, int base) {
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, base);
  lua_call(L, lua_gettop(L) - base, LUA_MULTRET);
  return lua_gettop(L) - base + 1;
}

static int no_stdin(lua_State *L, const char *what) {
  return luaL_error(L,
                    "%s: reading standard input is disabled by the sandbox "
                    "(%s)",
                    what, sandbox_hint(L));
}

/* Returns 1 when the value at idx is the open standard input file. */
static int is_stdin(lua_State *L, int idx) {
  luaL_Stream *p = luaL_testudata(L, idx, LUA_FILEHANDLE);
  return p != NULL && p->closef != NULL && p->f == stdin;
}

/* Returns 1 when the default input file (io.input(), upvalue 2 holds the
 * original) is the standard input. */
static int default_is_stdin(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(2));
  lua_call(L, 0, 1);
  int r = is_stdin(L, -1);
  lua_pop(L, 1);
  return r;
}

/* io.read: refused while the default input is the standard input. Upvalue
 * 1 is the original, 2 the original io.input. */
static int guard_io_read(lua_State *L) {
  if (default_is_stdin(L)) return no_stdin(L, "io.read");
  return call_original(L, 1);
}

/* io.lines(): without a file name it reads the default input. */
static int guard_io_lines(lua_State *L) {
  if (lua_isnoneornil(L, 1) && default_is_stdin(L))
    return no_stdin(L, "io.lines");
  return call_original(L, 1);
}

/* file:read and file:lines: refused on the standard input, however the
 * handle was obtained (io.stdin, io.input()). Upvalue 2 is the name. */
static int guard_method(lua_State *L) {
  if (is_stdin(L, 1)) return no_stdin(L, lua_tostring(L, lua_upvalueindex(2)));
  return call_original(L, 1);
}

/* Replaces t[field] of the table on top by `guard` with the original as
 * upvalue 1 and the value on top of the stack (popped) as upvalue 2. */
static void guard_field(lua_State *L, const char *field, lua_CFunction guard) {
  lua_getfield(L, -2, field);
  lua_insert(L, -2);
  lua_pushcclosure(L, guard, 2);
  lua_setfield(L, -2, field);
}

static void guard_stdin(lua_State *L) {
  push_library(L, LUA_IOLIBNAME);
  lua_getfield(L, -1, "input");
  guard_field(L, "read", guard_io_read);
  lua_getfield(L, -1, "input");
  guard_field(L, "lines", guard_io_lines);
  lua_pop(L, 1);
  luaL_getmetatable(L, LUA_FILEHANDLE);
  lua_getfield(L, -1, "__index");
  lua_pushliteral(L, "io.stdin:read");
  guard_field(L, "read", guard_method);
  lua_pushliteral(L, "io.stdin:lines");
  guard_field(L, "lines", guard_method);
  lua_pop(L, 2);
}

/* load and loadfile in text mode: their argument number `mode` is forced
 * to "t", and the refusal of a binary chunk names `what` (the value at
 * index 1, pushed below the arguments by the caller). Returns the results. */
static int load_text(lua_State *L, int mode) {
  if (lua_gettop(L) - 1 < mode) lua_settop(L, mode + 1);
  lua_pushliteral(L, "t");
  lua_replace(L, mode + 1);
  int nres = call_original(L, 2);
  if (nres == 2 && lua_isnil(L, 2))
    name_mode_error(L, LUA_ERRSYNTAX, lua_tostring(L, 1));
  return nres;
}

static int guard_load(lua_State *L) {
  lua_pushliteral(L, "load");
  lua_insert(L, 1);
  return load_text(L, 3);
}

static int guard_loadfile(lua_State *L) {
  if (lua_isnoneornil(L, 1)) return no_stdin(L, "loadfile");
  lua_pushvalue(L, 1);
  lua_insert(L, 1);
  return load_text(L, 2);
}

static int dofile_cont(lua_State *L, int status, lua_KContext k) {
  (void)status;
  (void)k;
  return lua_gettop(L) - 1;
}

/* dofile as in lbaselib.c, loading through le_sandbox_loadfile. */
static int guard_dofile(lua_State *L) {
  const char *name = luaL_optstring(L, 1, NULL);
  lua_settop(L, 1);
  if (name == NULL) return no_stdin(L, "dofile");
  if (le_sandbox_loadfile(L, name) != LUA_OK) return lua_error(L);
  lua_callk(L, 0, LUA_MULTRET, 0, dofile_cont);
  return dofile_cont(L, LUA_OK, 0);
}

static void guard_loading(lua_State *L) {
  push_library(L, LUA_GNAME);
  lua_pushnil(L);
  guard_field(L, "load", guard_load);
  lua_pushnil(L);
  guard_field(L, "loadfile", guard_loadfile);
  lua_pushcfunction(L, guard_dofile);
  lua_setfield(L, -2, "dofile");
  lua_pop(L, 1);
}

/* ---- applying ---- */

/* lua_CFunction doing le_sandbox_apply's work, run protected. */
static int apply(lua_State *L) {
  le_sandbox_mode mode = (le_sandbox_mode)lua_tointeger(L, 1);
  const char *hint = mode == LE_SANDBOX_HANDLERS ? hint_handlers
                     : mode == LE_SANDBOX_CONFIG ? hint_config
                                                 : NULL;
  if (hint != NULL) {
    lua_pushlightuserdata(L, (void *)hint);
    lua_setfield(L, LUA_REGISTRYINDEX, HINT_KEY);
  }
  install_require(L, hint != NULL);
  if (hint == NULL) return 0;
  remove_functions(L);
  guard_stdin(L);
  guard_loading(L);
  return 0;
}

int le_sandbox_apply(lua_State *L, le_sandbox_mode mode) {
  lua_pushcfunction(L, apply);
  lua_pushinteger(L, mode);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    lua_pop(L, 1);
    return -1;
  }
  return 0;
}
