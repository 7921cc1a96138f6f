/* Handler scripts: see include/luaecho/script.h. */
#include "luaecho/script.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const char le_builtin_echo[];
extern const size_t le_builtin_echo_len;

const char *le_script_name(const char *path) {
  return path ? path : LE_BUILTIN_HANDLER_NAME;
}

/* Lets a handler `require` modules that sit next to it: its directory goes
 * in front of package.path, once. */
static void add_module_dir(lua_State *L, const char *path) {
  const char *slash = strrchr(path, '/');
  if (slash == NULL) {
    lua_pushliteral(L, "./?.lua;./?/init.lua;");
  } else {
    lua_pushlstring(L, path, (size_t)(slash - path));
    const char *dir = lua_tostring(L, -1);
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", dir, dir);
    lua_remove(L, -2);
  }
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  const char *prefix = lua_tostring(L, -3);
  const char *current = lua_tostring(L, -1);
  if (current != NULL && strstr(current, prefix) == NULL) {
    lua_pushfstring(L, "%s%s", prefix, current);
    lua_setfield(L, -3, "path");
  }
  lua_pop(L, 3);
}

static int load_chunk(lua_State *L, const char *path) {
  if (path == NULL)
    return luaL_loadbufferx(L, le_builtin_echo, le_builtin_echo_len,
                            "=" LE_BUILTIN_HANDLER_NAME, "t");
  add_module_dir(L, path);
  return luaL_loadfilex(L, path, "t");
}

int le_script_load(lua_State *L, const char *path, char *err, size_t errlen) {
  const char *name = le_script_name(path);
  if (load_chunk(L, path) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    if (msg != NULL)
      snprintf(err, errlen, "%s", msg);
    else
      snprintf(err, errlen, "%s: (error object is a %s value)", name,
               luaL_typename(L, -1));
    lua_pop(L, 1);
    return -1;
  }
  if (lua_type(L, -1) != LUA_TFUNCTION) {
    snprintf(err, errlen, "%s: handler must return a function, got %s", name,
             luaL_typename(L, -1));
    lua_pop(L, 1);
    return -1;
  }
  return 0;
}

int le_script_open(le_script *s, lua_State *L, const char *path, char *err,
                   size_t errlen) {
  memset(s, 0, sizeof *s);
  s->fn_ref = LUA_NOREF;
  if (path != NULL) {
    s->path = malloc(strlen(path) + 1);
    if (s->path == NULL) {
      snprintf(err, errlen, "%s: out of memory", path);
      return -1;
    }
    strcpy(s->path, path);
  }
  if (le_script_load(L, path, err, errlen) != 0) {
    free(s->path);
    s->path = NULL;
    return -1;
  }
  s->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  s->version = 1;
  return 0;
}

void le_script_push(const le_script *s, lua_State *L) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->fn_ref);
}

void le_script_close(le_script *s, lua_State *L) {
  luaL_unref(L, LUA_REGISTRYINDEX, s->fn_ref);
  free(s->path);
  memset(s, 0, sizeof *s);
  s->fn_ref = LUA_NOREF;
}
