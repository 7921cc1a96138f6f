/* The sandbox: the standard library as handlers and config files see it.
 *
 * Handlers run on the server's one event loop, so a call that ends the
 * process or waits outside the loop stops every connection, not just the
 * one that made it. Under the sandbox those calls are replaced by functions
 * that raise an error naming the call and saying how to turn the sandbox
 * off; everything else stays. Removed: os.exit, os.execute, io.popen,
 * package.loadlib and C modules, binary (precompiled) chunks, reading
 * standard input (io.read and io.lines() on it, io.stdin:read/lines,
 * loadfile() and dofile() without a name) and every debug function but
 * debug.traceback. docs/api.md lists them with the reasons.
 *
 * Whatever the mode, `require` reports a missing module, or one that fails
 * to load, on one line that names the module (and its file).
 *
 * The changes are made in the library tables themselves (os, io, debug,
 * package, the global table and the file handle methods), so every alias
 * (require "os", package.loaded.io) sees them; the originals are kept only
 * as C upvalues, which Lua code cannot reach without the debug library.
 */
#ifndef LUAECHO_SANDBOX_H
#define LUAECHO_SANDBOX_H

#include <stddef.h>

#include <lua.h>

typedef enum {
  LE_SANDBOX_OFF,      /* sandbox = false: the full standard library */
  LE_SANDBOX_HANDLERS, /* sandbox = true: handlers and their modules */
  LE_SANDBOX_CONFIG    /* config files, which always run sandboxed */
} le_sandbox_mode;

/* Prepares the standard library of L (opened with luaL_openlibs) for
 * `mode`. A removed function then raises, for a handler,
 * "h.lua:3: os.exit is disabled by the sandbox (set sandbox = false in the
 * config to allow it)", and in a config file the same ending with
 * "(a config file always runs in the sandbox)". Returns 0, or -1 when out
 * of memory (the state is then only partly prepared: close it). */
int le_sandbox_apply(lua_State *L, le_sandbox_mode mode);

/* Returns 1 when L was prepared with a sandbox mode, else 0. */
int le_sandbox_enabled(lua_State *L);

/* Client mode reads no config, so "set sandbox = false in the config" is
 * no advice there: once L (sandboxed) runs a client script, its messages
 * end with "(a client script always runs in the sandbox)". Does nothing
 * when L has no sandbox. */
void le_sandbox_for_client(lua_State *L);

/* Loads the Lua file at path (not NULL) as luaL_loadfilex does, in text
 * mode under the sandbox. A binary chunk that is refused gives a message
 * naming the file: "h.lua: binary (precompiled) chunks are disabled by the
 * sandbox (...)". Returns the status of luaL_loadfilex. */
int le_sandbox_loadfile(lua_State *L, const char *path);

/* Same for a chunk in memory; `name` stands for its file in messages. */
int le_sandbox_loadbuffer(lua_State *L, const char *buf, size_t len,
                          const char *name);

/* Writes "file:line: " of the innermost Lua function on L's stack, from
 * level `level` outwards (0: the running function), into buf, or "" when
 * there is none: an error value that is not a string carries no
 * position, and a message about it should still name where it was
 * raised. */
void le_sandbox_where(lua_State *L, int level, char *buf, size_t len);

/* A message handler for lua_pcall over a file's code: an error value that
 * is not a string (error({}), error(nil)) carries no position, so it
 * becomes "file:line: (error object is a table value)" with the line of
 * the innermost Lua function that raised it. Strings pass unchanged. */
int le_sandbox_msgh(lua_State *L);

/* Writes msg, an error from loading or running the file `name`, into out as
 * the one line luaecho reports: runs of newlines and tabs (Lua's multi-line
 * messages, a message a chunk raised) become one space, other control bytes
 * are written as escapes (byte 27 as backslash-x1b, so that the line cannot
 * move a terminal's cursor over what it says), and "name: " goes
 * in front unless msg names the file already (or starts with "...", as Lua
 * shortens a long file name). Cut at outlen, never overrun. */
void le_sandbox_message(char *out, size_t outlen, const char *name,
                        const char *msg);

#endif
