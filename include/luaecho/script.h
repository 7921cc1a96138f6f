/* Handler scripts: load a handler file (or the built-in echo handler) into
 * a Lua state and check that it returns a function.
 *
 * A handler file is a Lua chunk that returns function(conn). Loading runs the
 * chunk once; the function it returns is what every new connection runs.
 */
#ifndef LUAECHO_SCRIPT_H
#define LUAECHO_SCRIPT_H

#include <stddef.h>

#include <lua.h>

/* The name the built-in echo handler goes by in messages. */
#define LE_BUILTIN_HANDLER_NAME "echo.lua (built-in)"

typedef struct le_script {
  char *path;     /* handler file, or NULL for the built-in echo handler */
  int fn_ref;     /* registry ref of the handler function */
  unsigned version; /* 1 for the first load */
} le_script;

/* Loads the handler at `path` (NULL: built-in echo) into L and pushes the
 * function it returns. Returns 0, or -1 with the message in err: Lua's own
 * for syntax and load-time errors ("h.lua:2: unexpected symbol near '+'"),
 * "cannot open h.lua: No such file or directory" for a missing file, and
 * "h.lua: handler must return a function, got nil" for a wrong result. */
int le_script_load(lua_State *L, const char *path, char *err, size_t errlen);

/* Loads the handler into s, keeping its function in the registry of L.
 * Returns 0 or -1 with err set as for le_script_load. */
int le_script_open(le_script *s, lua_State *L, const char *path, char *err,
                   size_t errlen);

/* Pushes the handler function of s. */
void le_script_push(const le_script *s, lua_State *L);

/* Releases what s holds in L. */
void le_script_close(le_script *s, lua_State *L);

/* Returns the name of the handler for messages. */
const char *le_script_name(const char *path);

#endif
