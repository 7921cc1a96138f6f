/* Handler scripts: load a handler file (or the built-in echo handler),
 * check that it returns a function, and keep versions of it.
 *
 * A handler file is a Lua chunk that returns function(conn). Loading runs the
 * chunk once; the function it returns is what every new connection runs.
 * Reloading loads a new version beside the old one, the way Erlang keeps two
 * versions of a module: new connections get the newest function, open ones
 * keep running the function they started with, and an old version is
 * collected by Lua once no coroutine uses it any more. A version that fails
 * to load is rejected and the previous one keeps serving.
 */
#ifndef LUAECHO_SCRIPT_H
#define LUAECHO_SCRIPT_H

#include <stddef.h>

#include <lua.h>

/* The name the built-in echo handler goes by in messages. */
#define LE_BUILTIN_HANDLER_NAME "echo.lua (built-in)"

typedef struct le_script le_script;

struct le_script {
  char *path;       /* handler file, or NULL for the built-in handler */
  char *dir;        /* directory of path ("." for a bare name), or NULL */
  lua_State *L;     /* the state its versions live in */
  int fn_ref;       /* registry ref of the newest version's function */
  unsigned version; /* 1 for the first load, +1 for each good reload */
  int refs;         /* users: listeners and connections */
  le_script *next;  /* in the owner's list */
};

/* Loads the handler at `path` (NULL: built-in echo) into L and pushes the
 * function it returns; a binary file loads only when L has no sandbox
 * (sandbox.h). Returns 0, or -1 with the message in err, always one line
 * naming the file: Lua's own for syntax and load-time errors ("h.lua:2:
 * unexpected symbol near '+'"), with "h.lua: " in front when it names no
 * file ("h.lua: oops" for error("oops", 0)), "cannot open h.lua: No such
 * file or directory" for a missing file, and "h.lua: handler must return a
 * function, got nil" for a wrong result. */
int le_script_load(lua_State *L, const char *path, char *err, size_t errlen);

/* Loads version 1 of a handler into a new script with one reference.
 * Returns it, or NULL with err set as for le_script_load. */
le_script *le_script_new(lua_State *L, const char *path, char *err,
                         size_t errlen);

/* Loads a new version: modules the handler required from its own directory
 * are loaded afresh too. Returns 0 (version is now one higher), or -1 with
 * err set; the newest good version stays in force either way. */
int le_script_reload(le_script *s, char *err, size_t errlen);

/* Pushes the newest version's function. */
void le_script_push(const le_script *s, lua_State *L);

/* The CPU time loading a handler file (with the modules it requires at
 * load time) may take, when le_script_set_cpu_limit was not called. */
#define LE_DEFAULT_LOAD_CPU_LIMIT 5.0

/* Sets the CPU limit for loading handlers into L (the configuration's
 * cpu_limit; <= 0: none). A load that computes longer fails with
 * "<file>:<line>: cpu_limit exceeded (<seconds> s)", like a broken file. */
void le_script_set_cpu_limit(lua_State *L, double seconds);

/* Adds and drops a reference; the script is freed with its last one. */
void le_script_ref(le_script *s);
void le_script_unref(le_script *s);

/* Returns the name of the handler for messages. */
const char *le_script_name(const char *path);

#endif
