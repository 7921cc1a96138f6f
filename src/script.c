/* Handler scripts: see include/luaecho/script.h. */
#include "luaecho/script.h"

#include "luaecho/addr.h"
#include "luaecho/preempt.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "luaecho/sandbox.h"

extern const char le_builtin_echo[];
extern const size_t le_builtin_echo_len;

const char *le_script_name(const char *path) {
  return path ? path : LE_BUILTIN_HANDLER_NAME;
}

/* Pushes the package.path fragment for modules next to `path`. */
static void push_module_path(lua_State *L, const char *path) {
  const char *slash = strrchr(path, '/');
  if (slash == NULL) {
    lua_pushliteral(L, "./?.lua;./?/init.lua;");
    return;
  }
  lua_pushlstring(L, path, (size_t)(slash - path));
  const char *dir = lua_tostring(L, -1);
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", dir, dir);
  lua_remove(L, -2);
}

/* Pushes the package library's table as require itself finds it (the
 * global `package` may have been reassigned by handler code). */
static void push_package(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, LUA_LOADLIBNAME);
  lua_remove(L, -2);
}

/* Lets a handler `require` modules that sit next to it: its directory goes
 * in front of package.path, once. */
static void add_module_dir(lua_State *L, const char *path) {
  push_module_path(L, path);
  push_package(L);
  lua_getfield(L, -1, "path");
  const char *prefix = lua_tostring(L, -3);
  const char *current = lua_tostring(L, -1);
  if (current != NULL && strstr(current, prefix) == NULL) {
    lua_pushfstring(L, "%s%s", prefix, current);
    lua_setfield(L, -3, "path");
  }
  lua_pop(L, 3);
}

/* Moves the loaded modules that come from the handler's directory out of
 * package.loaded into a table left on the stack, so the next require loads
 * them afresh for the new version. Versions already running keep the
 * module tables they hold. */
static void forget_local_modules(lua_State *L, const char *path) {
  lua_newtable(L); /* the forgotten modules */
  push_package(L);
  lua_getfield(L, -1, "loaded");
  lua_getfield(L, -2, "searchpath");
  push_module_path(L, path);
  /* stack: saved package loaded searchpath modpath */
  lua_pushnil(L);
  while (lua_next(L, -4) != 0) {
    if (lua_type(L, -2) == LUA_TSTRING) {
      lua_pushvalue(L, -4); /* searchpath */
      lua_pushvalue(L, -3); /* the module name */
      lua_pushvalue(L, -5); /* modpath */
      int found = lua_pcall(L, 2, 1, 0) == LUA_OK && lua_isstring(L, -1);
      lua_pop(L, 1);
      if (found) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -8); /* saved[name] = module */
        lua_pushvalue(L, -1);
        lua_pushnil(L);
        lua_rawset(L, -6); /* loaded[name] = nil, allowed mid-traversal */
        continue;
      }
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 4);
}

/* Puts the modules saved by forget_local_modules (on top) back, for a
 * version that failed to load, and pops them. */
static void restore_modules(lua_State *L) {
  push_package(L);
  lua_getfield(L, -1, "loaded");
  lua_pushnil(L);
  while (lua_next(L, -4) != 0) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, -4);
  }
  lua_pop(L, 3);
}

/* The steps above index package tables that handler code can replace
 * (package = nil), so they run protected: a bad state makes a load or a
 * reload fail with a message, never abort the process. */
static int do_add_module_dir(lua_State *L) {
  add_module_dir(L, lua_touserdata(L, 1));
  return 0;
}

static int do_forget_local_modules(lua_State *L) {
  const char *path = lua_touserdata(L, 1);
  if (path == NULL)
    lua_newtable(L); /* the built-in handler has no modules of its own */
  else
    forget_local_modules(L, path);
  return 1;
}

static int do_restore_modules(lua_State *L) {
  restore_modules(L);
  return 0;
}

/* Calls fn(path) protected; returns its status, leaving `nres` results or
 * the error message on the stack. */
static int call_protected(lua_State *L, lua_CFunction fn, const char *path,
                          int nres) {
  lua_pushcfunction(L, fn);
  lua_pushlightuserdata(L, (void *)path);
  return lua_pcall(L, 1, nres, 0);
}

static int load_chunk(lua_State *L, const char *path) {
  if (path == NULL)
    return luaL_loadbufferx(L, le_builtin_echo, le_builtin_echo_len,
                            "=" LE_BUILTIN_HANDLER_NAME, "t");
  /* Without the module path the handler still loads; only its requires of
   * modules next to it would fail, with Lua's own message. */
  if (call_protected(L, do_add_module_dir, path, 0) != LUA_OK) lua_pop(L, 1);
  return le_sandbox_loadfile(L, path);
}

/* The registry key of the CPU limit for loading (a number). */
static const char cpu_limit_key = 0;

void le_script_set_cpu_limit(lua_State *L, double seconds) {
  lua_pushnumber(L, seconds);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &cpu_limit_key);
}

static double load_cpu_limit(lua_State *L) {
  int isnum;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &cpu_limit_key);
  double seconds = lua_tonumberx(L, -1, &isnum);
  lua_pop(L, 1);
  return isnum ? seconds : LE_DEFAULT_LOAD_CPU_LIMIT;
}

/* Loads and runs the handler chunk, returning the function it returns.
 * Runs protected (le_script_load): every allocation here may fail.
 * Stack: the path as a light userdata (NULL: built-in). */
static int load_protected(lua_State *L) {
  const char *path = lua_touserdata(L, 1);
  lua_settop(L, 0);
  lua_pushcfunction(L, le_sandbox_msgh); /* at 1 */
  if (load_chunk(L, path) != LUA_OK ||
      le_preempt_pcall(L, 0, 1, 1, load_cpu_limit(L)) != LUA_OK)
    return lua_error(L);
  if (lua_type(L, -1) != LUA_TFUNCTION)
    return luaL_error(L, "%s: handler must return a function, got %s",
                      le_script_name(path), luaL_typename(L, -1));
  return 1;
}

int le_script_load(lua_State *L, const char *path, char *err, size_t errlen) {
  if (call_protected(L, load_protected, path, 1) == LUA_OK) return 0;
  const char *msg = lua_tostring(L, -1);
  if (msg != NULL)
    le_sandbox_message(err, errlen, le_script_name(path), msg);
  else
    snprintf(err, errlen, "%s: (error object is a %s value)",
             le_script_name(path), luaL_typename(L, -1));
  lua_pop(L, 1);
  return -1;
}

/* Stack: a function. Returns a registry ref to it (protected: luaL_ref
 * may grow the registry). */
static int ref_protected(lua_State *L) {
  lua_pushinteger(L, luaL_ref(L, LUA_REGISTRYINDEX));
  return 1;
}

/* Pops the function on top of L into a registry ref; returns the ref, or
 * LUA_NOREF when there is no memory for it. */
static int ref_function(lua_State *L) {
  lua_pushcfunction(L, ref_protected);
  lua_insert(L, -2);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    return LUA_NOREF;
  }
  int ref = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  return ref;
}

/* Sets s->path and s->dir (the part before the last '/', "." when there is
 * none, "/" for a file at the root). Returns 0 or -1 when out of memory. */
static int set_path(le_script *s, const char *path) {
  s->path = malloc(strlen(path) + 1);
  s->dir = le_addr_dir(path);
  if (s->path == NULL || s->dir == NULL) return -1;
  strcpy(s->path, path);
  return 0;
}

static void free_script(le_script *s) {
  free(s->path);
  free(s->dir);
  free(s);
}

le_script *le_script_new(lua_State *L, const char *path, char *err,
                         size_t errlen) {
  le_script *s = calloc(1, sizeof *s);
  if (s == NULL || (path != NULL && set_path(s, path) != 0)) {
    if (s) free_script(s);
    snprintf(err, errlen, "%s: out of memory", le_script_name(path));
    return NULL;
  }
  s->L = L;
  if (le_script_load(L, path, err, errlen) != 0) {
    free_script(s);
    return NULL;
  }
  s->fn_ref = ref_function(L);
  if (s->fn_ref == LUA_NOREF) {
    snprintf(err, errlen, "%s: not enough memory", le_script_name(path));
    free_script(s);
    return NULL;
  }
  s->version = 1;
  s->refs = 1;
  return s;
}

int le_script_reload(le_script *s, char *err, size_t errlen) {
  lua_State *L = s->L;
  if (call_protected(L, do_forget_local_modules, s->path, 1) != 0) {
    snprintf(err, errlen, "%s: cannot set its modules aside: %s",
             le_script_name(s->path),
             lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
    lua_pop(L, 1);
    return -1;
  }
  if (le_script_load(L, s->path, err, errlen) != 0) {
    lua_pushcfunction(L, do_restore_modules);
    lua_insert(L, -2);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) lua_pop(L, 1);
    return -1;
  }
  lua_remove(s->L, -2); /* the saved modules are no longer needed */
  int ref = ref_function(s->L);
  if (ref == LUA_NOREF) {
    snprintf(err, errlen, "%s: not enough memory", s->path);
    return -1;
  }
  /* The old version's function is only unreferenced here: coroutines
   * still running it keep it alive until they end. */
  luaL_unref(s->L, LUA_REGISTRYINDEX, s->fn_ref);
  s->fn_ref = ref;
  s->version++;
  return 0;
}

void le_script_push(const le_script *s, lua_State *L) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->fn_ref);
}

void le_script_ref(le_script *s) { s->refs++; }

void le_script_unref(le_script *s) {
  if (--s->refs > 0) return;
  luaL_unref(s->L, LUA_REGISTRYINDEX, s->fn_ref);
  free_script(s);
}
