/* Lua modules compiled into the binary, so `require` finds them in an
 * installed luaecho with no files beside it: require "luaecho.faults",
 * "luaecho.admin" (the admin listener's handler) and "luaecho.admin_page"
 * (its web page, as a string).
 *
 * Each module's source is embedded at build time (cmake/EmbedFile.cmake)
 * and registered in package.preload, which `require` searches before any
 * path. A module is loaded as text, with the chunk name "=luaecho/NAME.lua"
 * in its error messages and tracebacks, the first time it is required.
 */
#ifndef LUAECHO_BUNDLED_H
#define LUAECHO_BUNDLED_H

#include <lua.h>

/* Registers every bundled module in package.preload of L; the package
 * library must be open. Raises only on memory errors, as Lua's own library
 * openers do. */
void le_bundled_open(lua_State *L);

/* Runs lua/luaecho/extra.lua, the functions of the `luaecho` module that
 * are written in Lua (luaecho.send_paced), with the module table on top of
 * L's stack as its argument: the chunk adds them to that table. Raises on
 * errors, as the loader of a module does. */
void le_bundled_extend_luaecho(lua_State *L);

#endif
