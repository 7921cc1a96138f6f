/* The conn methods that do not wait: options, addresses, tostring, and the
 * metatable that ties every method together. See include/luaecho/lconn.h. */
#include <stdio.h>
#include <string.h>

#include "lconn_internal.h"
#include "luaecho/addr.h"

void le_lconn_set_peer(le_lconn *lc, const struct sockaddr *sa) {
  memset(&lc->peer, 0, sizeof lc->peer);
  if (sa == NULL)
    lc->peer.sa.sa_family = AF_UNIX;
  else if (sa->sa_family == AF_INET6)
    lc->peer.in6 = *(const struct sockaddr_in6 *)sa;
  else if (sa->sa_family == AF_INET)
    lc->peer.in = *(const struct sockaddr_in *)sa;
}

void le_lconn_peer(le_lconn *lc, char *host, size_t hostlen, int *port) {
  *port = -1;
  host[0] = '\0';
  if (lc->peer.sa.sa_family == AF_INET || lc->peer.sa.sa_family == AF_INET6)
    le_addr_split_sockaddr(&lc->peer.sa, sizeof lc->peer, host, hostlen, port);
  else if (lc->io->peer_path != NULL)
    lc->io->peer_path(lc, host, hostlen);
}

char *le_lconn_format_peer(le_lconn *lc, char *out, size_t len) {
  char host[LE_ADDR_HOST_MAX];
  int port;
  le_lconn_peer(lc, host, sizeof host, &port);
  return le_addr_format_host_port(host, port, out, len);
}

/* Pushes host and port (nil for unix sockets); returns 2. */
static int push_host_port(lua_State *L, const char *host, int port) {
  lua_pushstring(L, host);
  if (port < 0)
    lua_pushnil(L);
  else
    lua_pushinteger(L, port);
  return 2;
}

/* conn:peername() -> host, port */
static int conn_peername(lua_State *L) {
  le_lconn *lc = le__lconn_check_open(L);
  char host[128];
  int port;
  le_lconn_peer(lc, host, sizeof host, &port);
  return push_host_port(L, host, port);
}

/* conn:sockname() -> host, port, or nil, err */
static int conn_sockname(lua_State *L) {
  le_lconn *lc = le__lconn_check_open(L);
  char host[128];
  int port;
  int r = lc->io->sockname(lc, host, sizeof host, &port);
  if (r < 0) {
    lua_pushnil(L);
    le__lconn_push_errname(L, r);
    return 2;
  }
  return push_host_port(L, host, port);
}

/* conn:setopts{name = value, ...}: all options are checked before any is
 * applied, so a bad one leaves the connection as it was. */
static int conn_setopts(lua_State *L) {
  le_lconn *lc = le__lconn_check_open(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  le_opts opts = lc->opts;
  lua_pushnil(L);
  while (lua_next(L, 2) != 0) {
    char why[256];
    const char *name =
        lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : "?";
    le_opt_status st = lua_type(L, -2) == LUA_TSTRING
                           ? le_opts_set(&opts, name, L, -1, why, sizeof why)
                           : LE_OPT_UNKNOWN;
    if (st == LE_OPT_UNKNOWN)
      return luaL_error(L, "conn:setopts: unknown option '%s'",
                        lua_tostring(L, -2) ? lua_tostring(L, -2) : "?");
    if (st == LE_OPT_INVALID)
      return luaL_error(L, "conn:setopts: option '%s': %s", name, why);
    lua_pop(L, 1);
  }
  int sock_changed = le_opts_differ(&opts, &lc->opts, LE_OPTF_SOCKET);
  if (opts.packet != lc->opts.packet) lc->scanned = 0;
  lc->opts = opts;
  if (sock_changed) lc->io->apply_sockopts(lc);
  le__lconn_update_reading(lc);
  le__lconn_wake_writer(lc);
  le__lconn_rearm(lc);
  lua_pushboolean(L, 1);
  return 1;
}

/* conn:getopts(name, ...) -> values; conn:getopts() -> table of all. */
static int conn_getopts(lua_State *L) {
  le_lconn *lc = le__lconn_check_open(L);
  int n = lua_gettop(L) - 1;
  if (n == 0) {
    const char *name;
    lua_createtable(L, 0, (int)le_opts_count());
    for (size_t i = 0; (name = le_opts_name(i)) != NULL; i++) {
      le_opts_push(&lc->opts, name, L);
      lua_setfield(L, -2, name);
    }
    return 1;
  }
  luaL_checkstack(L, n, "too many options");
  for (int i = 2; i <= n + 1; i++) {
    const char *name = luaL_checkstring(L, i);
    if (le_opts_push(&lc->opts, name, L) != 0)
      return luaL_error(L, "conn:getopts: unknown option '%s'", name);
  }
  return n;
}

static int conn_tostring(lua_State *L) {
  le__conn_ud *ud = le__lconn_to_ud(L);
  le_lconn *lc = ud->lc;
  if (lc == NULL) {
    lua_pushliteral(L, "conn (closed)");
    return 1;
  }
  char host[LE_ADDR_HOST_MAX], peer[LE_ADDR_TEXT_MAX], local[LE_ADDR_TEXT_MAX];
  int port, closed = lc->state == LE_LCONN_CLOSED;
  if (closed || lc->io->sockname(lc, host, sizeof host, &port) != 0)
    snprintf(local, sizeof local, "?");
  else
    le_addr_format_host_port(host, port, local, sizeof local);
  lua_pushfstring(L, "conn %I (%s -> %s)%s", (lua_Integer)lc->id,
                  le_lconn_format_peer(lc, peer, sizeof peer), local,
                  closed ? " closed" : "");
  return 1;
}

/* conn.id, and method lookup for everything else (the methods table is
 * upvalue 2). Method lookups, the per-message case, need nothing from the
 * argument; only "id" reads it, and checks it first, since the debug
 * library can call this function with anything. */
static int conn_index(lua_State *L) {
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(2)) != LUA_TNIL) return 1;
  const char *key = lua_tostring(L, 2);
  if (key != NULL && strcmp(key, "id") == 0) {
    le__conn_ud *ud = le__lconn_to_ud(L);
    if (ud->lc != NULL) lua_pushinteger(L, (lua_Integer)ud->lc->id);
  }
  return 1;
}

/* A connection whose conn object the collector finds still open is closed
 * at once: no Lua code can use it any more. A handler's own connection is
 * held by the handler's argument while it runs. */
static int conn_gc(lua_State *L) {
  /* A userdata the debug library gave this metatable is not a conn (see
   * le__conn_ud): nothing to release, and an error here would only be a
   * warning. */
  if (lua_type(L, 1) != LUA_TUSERDATA ||
      lua_rawlen(L, 1) != sizeof(le__conn_ud))
    return 0;
  le__conn_ud *ud = le__lconn_to_ud(L);
  le_lconn *lc = ud->lc;
  if (lc != NULL) {
    lc->ud = NULL;
    ud->lc = NULL;
    le_lconn_note_end(lc, LE_END_COLLECTED);
    if (lc->state != LE_LCONN_CLOSED) le__lconn_close(lc, LE_CLOSE_ABORT);
  }
  return 0;
}

/* conn:trace([on]): starts (the default) or stops tracing. */
static int conn_trace(lua_State *L) {
  le_lconn *lc = le__lconn_check_open(L);
  lc->opts.trace = (uint8_t)(lua_isnone(L, 2) || lua_toboolean(L, 2));
  lua_pushboolean(L, 1);
  return 1;
}

static void set_number(lua_State *L, const char *key, double v) {
  lua_pushnumber(L, v);
  lua_setfield(L, -2, key);
}

static void set_integer(lua_State *L, const char *key, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, key);
}

void le_lconn_push_kernel(lua_State *L, le_lconn *lc) {
  le_sockinfo si;
  if (lc->io->sockinfo == NULL || lc->io->sockinfo(lc, &si) != 0) return;
  lua_createtable(L, 0, 8);
  set_integer(L, "recv_q", si.inq);
  set_integer(L, "send_q", si.outq);
  if (si.tcp) {
    lua_pushstring(L, si.state);
    lua_setfield(L, -2, "state");
    set_number(L, "rtt_ms", si.rtt_ms);
    set_number(L, "rttvar_ms", si.rttvar_ms);
    set_integer(L, "retransmits", si.retransmits);
    set_integer(L, "total_retrans", si.total_retrans);
    set_integer(L, "cwnd", si.cwnd);
    set_integer(L, "mss", si.mss);
  }
  lua_setfield(L, -2, "kernel");
}

/* conn:stats() -> a table of what the connection did and holds. */
static int conn_stats(lua_State *L) {
  static const char *const states[] = {"open", "ended", "closed"};
  le_lconn *lc = le__lconn_check_open(L);
  lua_createtable(L, 0, 14);
  set_integer(L, "id", (lua_Integer)lc->id);
  set_integer(L, "bytes_in", (lua_Integer)lc->bytes_in);
  set_integer(L, "bytes_out", (lua_Integer)lc->bytes_out);
  set_integer(L, "msgs_in", (lua_Integer)lc->msgs_in);
  set_integer(L, "msgs_out", (lua_Integer)lc->msgs_out);
  set_integer(L, "buffered", (lua_Integer)le_buf_size(&lc->in));
  set_integer(L, "queued", (lua_Integer)lc->queued);
  set_number(L, "age", (double)(lc->io->now(lc) - lc->opened_at) / 1000.0);
  lua_pushboolean(L, lc->in_err == UV_EOF);
  lua_setfield(L, -2, "peer_fin");
  lua_pushboolean(L, lc->reading);
  lua_setfield(L, -2, "reading");
  lua_pushstring(L, states[lc->state]);
  lua_setfield(L, -2, "state");
  lua_pushstring(L, le_coro_waits_on(&le_lconn_owner(lc)->coro));
  lua_setfield(L, -2, "waits_on");
  le_lconn_push_kernel(L, lc);
  return 1;
}

static const luaL_Reg info_methods[] = {{"trace", conn_trace},
                                        {"stats", conn_stats},
                                        {"peername", conn_peername},
                                        {"sockname", conn_sockname},
                                        {"setopts", conn_setopts},
                                        {"getopts", conn_getopts},
                                        {NULL, NULL}};

/* Sets mt[name] = fn with the metatable (on top) as its upvalue. */
static void set_metamethod(lua_State *L, const char *name, lua_CFunction fn) {
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, fn, 1);
  lua_setfield(L, -2, name);
}

void le_lconn_open(lua_State *L) {
  luaL_newmetatable(L, LE_LCONN_METATABLE);
  lua_createtable(L, 0, 10); /* the methods */
  lua_pushvalue(L, -2);
  luaL_setfuncs(L, le__lconn_io_methods, 1);
  lua_pushvalue(L, -2);
  luaL_setfuncs(L, info_methods, 1);
  lua_getfield(L, -1, "close");
  lua_setfield(L, -3, "__close");
  lua_pushvalue(L, -2);
  lua_insert(L, -2);
  lua_pushcclosure(L, conn_index, 2);
  lua_setfield(L, -2, "__index");
  set_metamethod(L, "__tostring", conn_tostring);
  set_metamethod(L, "__gc", conn_gc);
  lua_pushliteral(L, LE_LCONN_METATABLE);
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
}
