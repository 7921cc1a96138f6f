/* The `luaecho.inspect` module: what the admin listener (lua/luaecho/
 * admin.lua) needs to see and steer the server, as plain Lua functions over
 * one loop's connections, so the admin service is an ordinary handler.
 *
 *   local inspect = require "luaecho.inspect"
 *   inspect.conns()        -> { conn info, ... } (accepted connections, by id)
 *   inspect.conn(id)       -> conn info with traceback and kernel, or nil
 *   inspect.trace(id, on)  -> true, or nil, "no such connection"
 *   inspect.kill(id)       -> true, or nil, "no such connection"
 *   inspect.listeners()    -> { { name, accepted, open, admin }, ... }
 *   inspect.reload()       -> true (the reload runs on the next loop turn)
 *   inspect.subscribe(id)  -> sub, or nil, "no such connection"
 *   sub:events(since)      -> { { seq, us, event }, ... }, last seq
 *   sub:close()
 *
 * The server's counters are luaecho.stats().
 *
 * A conn info table: id, peer, local, age (s), listener, handler, version,
 * waits_on, bytes_in, bytes_out, msgs_in, msgs_out, queued, buffered,
 * state ("open", "draining", "closing", "closed"), trace (boolean).
 *
 * kill ends a connection on the next loop turn, as the server's shutdown
 * does, with the error "killed" (a waiting recv returns nil, "killed"; the
 * end reason is "killed from the admin"). It raises when asked to end the
 * connection whose coroutine is calling it.
 *
 * subscribe turns tracing on for the connection and keeps its last
 * LE_INSPECT_RING trace events for the subscriber; closing the last
 * subscription (sub:close(), or the collector, or the end of a
 * to-be-closed variable) puts the connection's trace option back. While
 * nobody subscribes, nothing here is on the data path.
 *
 * docs/admin.md documents the module with the admin listener.
 */
#ifndef LUAECHO_LINSPECT_H
#define LUAECHO_LINSPECT_H

#include "luaecho/conn.h"

/* Trace events kept per subscribed connection. */
#define LE_INSPECT_RING 200

/* Makes require "luaecho.inspect" return the module in ctx->L. */
void le_linspect_open(le_conn_ctx *ctx);

#endif
