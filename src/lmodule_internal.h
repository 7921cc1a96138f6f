/* Internal interface between the files of the luaecho module: lmodule.c
 * (the module table, log, now, versions), lsleep.c, ltask.c (spawn and
 * join) and lconnect.c. Not for other modules.
 *
 * Every module function has the loop's le_conn_ctx as upvalue 1. */
#ifndef LUAECHO_LMODULE_INTERNAL_H
#define LUAECHO_LMODULE_INTERNAL_H

#include <lauxlib.h>

#include "luaecho/lmodule.h"

/* Returns the loop's context (upvalue 1 of every module function). */
le_conn_ctx *le__lmodule_ctx(lua_State *L);

/* Returns the coroutine L runs in; raises when it is not a handler's or
 * one it spawned. `fn` names the function in the message. */
le_coro *le__lmodule_current(lua_State *L, const char *fn);

int le__lmodule_sleep(lua_State *L);   /* luaecho.sleep */
int le__lmodule_spawn(lua_State *L);   /* luaecho.spawn */
int le__lmodule_connect(lua_State *L); /* luaecho.connect */

/* Registers the task metatable in L. */
void le__lmodule_open_tasks(lua_State *L);

#endif
