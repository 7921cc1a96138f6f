/* Connection options: see include/luaecho/opts.h. */
#include "luaecho/opts.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

const char *const le_opts_names[] = {
    "packet",       "packet_size",        "recv_buffer",  "send_buffer",
    "recv_timeout", "send_timeout",       "idle_timeout", "send_timeout_close",
    "nodelay",      "keepalive",          NULL};

void le_opts_init(le_opts *o) {
  o->packet = LE_PACKET_RAW;
  o->packet_size = 1024 * 1024;
  o->recv_buffer = 256 * 1024;
  o->send_buffer = 256 * 1024;
  o->recv_timeout = -1;
  o->send_timeout = 60;
  o->idle_timeout = 300;
  o->send_timeout_close = 1;
  o->nodelay = 1;
  o->keepalive = 0;
}

int le_opts_known(const char *name) {
  for (const char *const *n = le_opts_names; *n; n++)
    if (strcmp(*n, name) == 0) return 1;
  return 0;
}

/* Writes "expected <what>, got <the value>" into err. */
static le_opt_status invalid(lua_State *L, int idx, const char *what,
                             char *err, size_t errlen) {
  if (lua_type(L, idx) == LUA_TNUMBER || lua_type(L, idx) == LUA_TBOOLEAN)
    snprintf(err, errlen, "expected %s, got %s", what,
             luaL_tolstring(L, idx, NULL));
  else if (lua_type(L, idx) == LUA_TSTRING)
    snprintf(err, errlen, "expected %s, got \"%s\"", what,
             lua_tostring(L, idx));
  else
    snprintf(err, errlen, "expected %s, got %s", what, luaL_typename(L, idx));
  if (lua_type(L, idx) == LUA_TNUMBER || lua_type(L, idx) == LUA_TBOOLEAN)
    lua_pop(L, 1);
  return LE_OPT_INVALID;
}

/* Reads an integer, accepting floats with an integral value (2^20, 64.0) as
 * Lua itself does for integer arguments. Returns 1 and sets *out, or 0. */
static int get_int(lua_State *L, int idx, lua_Integer *out) {
  int isnum = 0;
  if (lua_type(L, idx) != LUA_TNUMBER) return 0;
  *out = lua_tointegerx(L, idx, &isnum);
  return isnum;
}

static le_opt_status set_packet(le_opts *o, lua_State *L, int idx,
                                char *err, size_t errlen) {
  const char *what = "\"raw\", \"line\", 0, 1, 2 or 4";
  int ok = -1;
  lua_Integer n;
  le_packet p = LE_PACKET_RAW;
  if (lua_type(L, idx) == LUA_TSTRING)
    ok = le_packet_parse(lua_tostring(L, idx), 0, &p);
  else if (get_int(L, idx, &n))
    ok = le_packet_parse(NULL, (long)n, &p);
  if (ok != 0) return invalid(L, idx, what, err, errlen);
  o->packet = (uint8_t)p;
  return LE_OPT_OK;
}

static le_opt_status set_size(uint32_t *out, lua_State *L, int idx, char *err,
                              size_t errlen) {
  lua_Integer n;
  if (!get_int(L, idx, &n) || n < 1 || n > LE_MAX_SIZE_OPT)
    return invalid(L, idx, "an integer byte count in 1..1073741824", err,
                   errlen);
  *out = (uint32_t)n;
  return LE_OPT_OK;
}

/* A timeout is a positive number of seconds, or false for none. */
static le_opt_status set_timeout(double *out, lua_State *L, int idx,
                                 char *err, size_t errlen) {
  if (lua_type(L, idx) == LUA_TBOOLEAN && !lua_toboolean(L, idx)) {
    *out = -1;
    return LE_OPT_OK;
  }
  double v = lua_type(L, idx) == LUA_TNUMBER ? lua_tonumber(L, idx) : NAN;
  if (!(v > 0) || isinf(v))
    return invalid(L, idx, "a number of seconds > 0, or false for none", err,
                   errlen);
  /* Longer than LE_MAX_TIMEOUT is "never" in practice; the cap keeps every
   * conversion to milliseconds far from overflow. */
  *out = v > LE_MAX_TIMEOUT ? LE_MAX_TIMEOUT : v;
  return LE_OPT_OK;
}

static le_opt_status set_bool(uint8_t *out, lua_State *L, int idx, char *err,
                              size_t errlen) {
  if (lua_type(L, idx) != LUA_TBOOLEAN)
    return invalid(L, idx, "a boolean", err, errlen);
  *out = (uint8_t)lua_toboolean(L, idx);
  return LE_OPT_OK;
}

/* keepalive is a boolean (true: probe after 60 s idle) or a delay. */
static le_opt_status set_keepalive(uint32_t *out, lua_State *L, int idx,
                                   char *err, size_t errlen) {
  if (lua_type(L, idx) == LUA_TBOOLEAN) {
    *out = lua_toboolean(L, idx) ? 60 : 0;
    return LE_OPT_OK;
  }
  lua_Integer n;
  if (!get_int(L, idx, &n) || n < 1 || n > 86400)
    return invalid(L, idx, "a boolean or a delay in seconds (1..86400)", err,
                   errlen);
  *out = (uint32_t)n;
  return LE_OPT_OK;
}

le_opt_status le_opts_set(le_opts *o, const char *name, lua_State *L,
                          int idx, char *err, size_t errlen) {
  idx = lua_absindex(L, idx);
  if (strcmp(name, "packet") == 0) return set_packet(o, L, idx, err, errlen);
  if (strcmp(name, "packet_size") == 0)
    return set_size(&o->packet_size, L, idx, err, errlen);
  if (strcmp(name, "recv_buffer") == 0)
    return set_size(&o->recv_buffer, L, idx, err, errlen);
  if (strcmp(name, "send_buffer") == 0)
    return set_size(&o->send_buffer, L, idx, err, errlen);
  if (strcmp(name, "recv_timeout") == 0)
    return set_timeout(&o->recv_timeout, L, idx, err, errlen);
  if (strcmp(name, "send_timeout") == 0)
    return set_timeout(&o->send_timeout, L, idx, err, errlen);
  if (strcmp(name, "idle_timeout") == 0)
    return set_timeout(&o->idle_timeout, L, idx, err, errlen);
  if (strcmp(name, "send_timeout_close") == 0)
    return set_bool(&o->send_timeout_close, L, idx, err, errlen);
  if (strcmp(name, "nodelay") == 0)
    return set_bool(&o->nodelay, L, idx, err, errlen);
  if (strcmp(name, "keepalive") == 0)
    return set_keepalive(&o->keepalive, L, idx, err, errlen);
  return LE_OPT_UNKNOWN;
}

static void push_timeout(lua_State *L, double t) {
  if (t < 0)
    lua_pushboolean(L, 0);
  else
    lua_pushnumber(L, t);
}

static void push_packet(lua_State *L, le_packet p) {
  if (p == LE_PACKET_RAW || p == LE_PACKET_LINE)
    lua_pushstring(L, le_packet_name(p));
  else
    lua_pushinteger(L, (lua_Integer)p);
}

int le_opts_push(const le_opts *o, const char *name, lua_State *L) {
  if (strcmp(name, "packet") == 0) push_packet(L, o->packet);
  else if (strcmp(name, "packet_size") == 0) lua_pushinteger(L, (lua_Integer)o->packet_size);
  else if (strcmp(name, "recv_buffer") == 0) lua_pushinteger(L, (lua_Integer)o->recv_buffer);
  else if (strcmp(name, "send_buffer") == 0) lua_pushinteger(L, (lua_Integer)o->send_buffer);
  else if (strcmp(name, "recv_timeout") == 0) push_timeout(L, o->recv_timeout);
  else if (strcmp(name, "send_timeout") == 0) push_timeout(L, o->send_timeout);
  else if (strcmp(name, "idle_timeout") == 0) push_timeout(L, o->idle_timeout);
  else if (strcmp(name, "send_timeout_close") == 0) lua_pushboolean(L, o->send_timeout_close);
  else if (strcmp(name, "nodelay") == 0) lua_pushboolean(L, o->nodelay);
  else if (strcmp(name, "keepalive") == 0) {
    if (o->keepalive) lua_pushinteger(L, o->keepalive); else lua_pushboolean(L, 0);
  } else return -1;
  return 0;
}
