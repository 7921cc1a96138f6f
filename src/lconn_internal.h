/* Internal interface between lconn.c (state machine, recv/send) and
 * lconn_methods.c (the other conn methods). Not for other modules. */
#ifndef LUAECHO_LCONN_INTERNAL_H
#define LUAECHO_LCONN_INTERNAL_H

#include <lauxlib.h>

#include "luaecho/lconn.h"

/* The userdata Lua holds: only a pointer, cleared when the connection is
 * freed, so Lua's collector and the connection's lifetime stay separate.
 * Its size tells a genuine conn object from another userdata given the
 * conn metatable with the debug library: Lua code can make no userdata of
 * its own, and the standard library's (files) are larger. A cookie beside
 * the pointer would say the same and cost every idle connection 16 bytes
 * (docs/performance.md, idle10k). */
struct le__conn_ud {
  le_lconn *lc;
};
typedef struct le__conn_ud le__conn_ud;

/* recv, send, close and shutdown, from lconn.c. */
extern const luaL_Reg le__lconn_io_methods[];

/* Returns the conn object at argument 1, or raises a type error. Every
 * conn method and metamethod has the conn metatable as upvalue 1; comparing
 * with it is cheaper than luaL_checkudata's registry lookup, and this check
 * runs on every recv and send. */
le__conn_ud *le__lconn_to_ud(lua_State *L);

/* Returns the connection of argument 1; raises if it is closed. */
le_lconn *le__lconn_check_open(lua_State *L);

/* Closes lc for its handler (CLOSED) the way `how` says (LE_CLOSE_*); an
 * abort or a reset also cuts short a flush already under way. */
void le__lconn_close(le_lconn *lc, int how);

void le__lconn_update_reading(le_lconn *lc);
void le__lconn_wake_writer(le_lconn *lc);
void le__lconn_rearm(le_lconn *lc);
void le__lconn_push_errname(lua_State *L, int err);

#endif
