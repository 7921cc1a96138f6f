/* The `luaecho` module handlers get with require "luaecho":
 *
 *   luaecho.connect(host, port [, opts]) / luaecho.connect("unix:/path" [,
 * opts])
 *                            -> conn, or nil, err          (lconnect.c)
 *   luaecho.spawn(fn, ...)   -> task, with task:join()     (ltask.c)
 *   luaecho.sleep(seconds)                                 (lsleep.c)
 *   luaecho.now()   luaecho.log(level, ...)
 *   luaecho.latest()   luaecho.version()                   (lmodule.c)
 *
 * It sits above conn.c (connect makes connections) and works on one loop's
 * le_conn_ctx, which it keeps as an upvalue: no global state.
 */
#ifndef LUAECHO_LMODULE_H
#define LUAECHO_LMODULE_H

#include <lua.h>

#include "luaecho/conn.h"

/* Makes require "luaecho" return the module in ctx->L. */
void le_lmodule_open(le_conn_ctx *ctx);

#endif
