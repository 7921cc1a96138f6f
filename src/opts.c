/* Connection options: see include/luaecho/opts.h. */
#include "luaecho/opts.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* Expands to offsetof(le_opts, f), and fails to compile unless field f has
 * type T: a row's kind and its field cannot disagree. */
#define FIELD(T, f) _Generic(((le_opts *)0)->f, T : offsetof(le_opts, f))

/* The kind and field of a row, checked together. */
#define PACKET_AT(f) .kind = LE_OPTK_PACKET, .offset = FIELD(uint8_t, f)
#define SIZE_AT(f) .kind = LE_OPTK_SIZE, .offset = FIELD(uint32_t, f)
#define SECONDS_AT(f) .kind = LE_OPTK_SECONDS, .offset = FIELD(double, f)
#define BOOL_AT(f) .kind = LE_OPTK_BOOL, .offset = FIELD(uint8_t, f)
#define DELAY_AT(f) .kind = LE_OPTK_DELAY, .offset = FIELD(uint32_t, f)
#define BYTES_AT(f) .kind = LE_OPTK_BYTES, .offset = FIELD(uint32_t, f)

/* Every connection option, in the order of docs/config.md. `type` and
 * `meaning` are that table's columns word for word (tests/test_opts.c
 * compares them, and the defaults, with it and with docs/api.md). */
static const le_opt_def table[] = {
    {.name = "packet",
     PACKET_AT(packet),
     .def = LE_PACKET_RAW,
     .type = "`\"raw\"` (or `0`), `1`, `2`, `4`, `\"line\"`",
     .meaning = "framing: `\"raw\"` bytes as they come; `1`, `2`, `4` a "
                "big-endian length header of that many bytes before each "
                "message; `\"line\"` one line per `recv`, ending with "
                "`\"\\n\"`"},
    {.name = "packet_size",
     SIZE_AT(packet_size),
     .min = 1,
     .max = LE_MAX_SIZE_OPT,
     .def = 1024 * 1024,
     .type = "integer 1..1073741824",
     .meaning = "the largest message `recv` accepts in framed modes "
                "(payload for 1/2/4, the line with its `\"\\n\"`); a longer "
                "one ends the input with `\"emsgsize\"`"},
    {.name = "recv_buffer",
     SIZE_AT(recv_buffer),
     .min = 1,
     .max = LE_MAX_SIZE_OPT,
     .def = 256 * 1024,
     .type = "integer 1..1073741824",
     .meaning = "input buffered for a handler that is not in `recv`; then "
                "reading pauses and TCP pushes back on the client"},
    {.name = "send_buffer",
     SIZE_AT(send_buffer),
     .min = 1,
     .max = LE_MAX_SIZE_OPT,
     .def = 256 * 1024,
     .type = "integer 1..1073741824",
     .meaning = "queued output above which `send` waits until the client "
                "reads"},
    {.name = "recv_timeout",
     SECONDS_AT(recv_timeout),
     .def = -1,
     .type = "seconds > 0, or `false`",
     .meaning = "how long a `recv` called without a timeout waits before it "
                "returns `nil, \"timeout\"`"},
    {.name = "send_timeout",
     SECONDS_AT(send_timeout),
     .def = 60,
     .type = "seconds > 0, or `false`",
     .meaning = "how long a `send` may wait for the client to read before it "
                "returns `nil, \"timeout\"`; also the flush deadline at close "
                "(below)"},
    {.name = "send_timeout_close",
     BOOL_AT(send_timeout_close),
     .def = 1,
     .type = "boolean",
     .meaning = "after a send timeout, close the connection (`true`) or "
                "leave it open with the data still queued (`false`)"},
    {.name = "idle_timeout",
     SECONDS_AT(idle_timeout),
     .def = 300,
     .type = "seconds > 0, or `false`",
     .meaning = "close a connection that moved no bytes either way for this "
                "long"},
    {.name = "nodelay",
     BOOL_AT(nodelay),
     .def = 1,
     .flags = LE_OPTF_SOCKET,
     .type = "boolean",
     .meaning = "`TCP_NODELAY`: small writes go out at once instead of "
                "waiting for Nagle's algorithm"},
    {.name = "keepalive",
     DELAY_AT(keepalive),
     .min = 1,
     .max = 86400,
     .def = 0,
     .on = 60,
     .flags = LE_OPTF_SOCKET,
     .type = "`false`, `true` (60 s), or seconds 1..86400",
     .meaning = "TCP keepalive: probe a connection idle for this long, so "
                "dead peers are noticed (`recv` then fails with "
                "`\"etimedout\"`)"},
    {.name = "cpu_limit",
     SECONDS_AT(cpu_limit),
     .def = 5,
     .type = "seconds > 0, or `false`",
     .meaning = "how long a handler may compute without waiting on I/O, a "
                "timer or a task before it is stopped with a "
                "`cpu_limit exceeded` error (see docs/operations.md)"},
    {.name = "sndbuf",
     BYTES_AT(sndbuf),
     .min = 1,
     .max = LE_MAX_SIZE_OPT,
     .def = 0,
     .flags = LE_OPTF_SOCKET,
     .type = "integer 1..1073741824, or `false`",
     .meaning = "`SO_SNDBUF`: the kernel's send buffer (`false`: the "
                "kernel's default); `getopts` reports what the kernel set, "
                "which on Linux is twice the request"},
    {.name = "rcvbuf",
     BYTES_AT(rcvbuf),
     .min = 1,
     .max = LE_MAX_SIZE_OPT,
     .def = 0,
     .flags = LE_OPTF_SOCKET,
     .type = "integer 1..1073741824, or `false`",
     .meaning = "`SO_RCVBUF`: the kernel's receive buffer (`false`: the "
                "kernel's default), reported like `sndbuf`"},
    {.name = "read_size",
     SIZE_AT(read_size),
     .min = 1,
     .max = 65536,
     .def = 65536,
     .type = "integer 1..65536",
     .meaning = "the most bytes taken from the kernel by one read, so "
                "partial reads can be made to happen"},
    {.name = "trace",
     BOOL_AT(trace),
     .def = 0,
     .type = "boolean",
     .meaning = "write a trace line for every socket event of the "
                "connection (see docs/observability.md)"},
    {.name = "trace_bytes",
     SIZE_AT(trace_bytes),
     .min = 0,
     .max = 4096,
     .def = 32,
     .type = "integer 0..4096",
     .meaning = "how many bytes of each read a trace line shows (`0`: none)"},
    {.name = "trace_hex",
     BOOL_AT(trace_hex),
     .def = 0,
     .type = "boolean",
     .meaning = "show those bytes as hex instead of an escaped string"},
    {.name = "conn_summary",
     BOOL_AT(conn_summary),
     .def = 0,
     .type = "boolean",
     .meaning = "log one line when the connection ends: how long it lasted, "
                "bytes and messages each way, and why it ended"},
};

#define COUNT (sizeof table / sizeof table[0])

const le_opt_def *le_opts_at(size_t i) { return i < COUNT ? &table[i] : NULL; }

const char *le_opts_name(size_t i) { return i < COUNT ? table[i].name : NULL; }

size_t le_opts_count(void) { return COUNT; }

const le_opt_def *le_opts_find(const char *name) {
  for (size_t i = 0; i < COUNT; i++)
    if (strcmp(table[i].name, name) == 0) return &table[i];
  return NULL;
}

int le_opts_known(const char *name) { return le_opts_find(name) != NULL; }

/* ---- fields ---- */

/* A field holds a uint8_t, a uint32_t or a double (the kinds' types);
 * values travel between parsers, fields and Lua as doubles, which hold
 * every one of them exactly. */

static void *field_of(le_opts *o, const le_opt_def *d) {
  return (char *)o + d->offset;
}

static const void *cfield_of(const le_opts *o, const le_opt_def *d) {
  return (const char *)o + d->offset;
}

static size_t field_size(const le_opt_def *d);

/* Stores v, already valid for row d, in its field. */
static void store(le_opts *o, const le_opt_def *d, double v) {
  void *p = field_of(o, d);
  switch (field_size(d)) {
  case sizeof(double): *(double *)p = v; break;
  case sizeof(uint32_t): *(uint32_t *)p = (uint32_t)v; break;
  default: *(uint8_t *)p = (uint8_t)v; break;
  }
}

/* Returns the value in row d's field. */
static double load(const le_opts *o, const le_opt_def *d) {
  const void *p = cfield_of(o, d);
  switch (field_size(d)) {
  case sizeof(double): return *(const double *)p;
  case sizeof(uint32_t): return *(const uint32_t *)p;
  default: return *(const uint8_t *)p;
  }
}

void le_opts_init(le_opts *o) {
  memset(o, 0, sizeof *o);
  for (size_t i = 0; i < COUNT; i++) store(o, &table[i], table[i].def);
}

int le_opts_differ(const le_opts *a, const le_opts *b, unsigned flags) {
  for (size_t i = 0; i < COUNT; i++) {
    const le_opt_def *d = &table[i];
    if ((d->flags & flags) && load(a, d) != load(b, d)) return 1;
  }
  return 0;
}

/* ---- reading Lua values ---- */

/* Writes "expected <what>, got <the value>" into err: numbers and booleans
 * as Lua prints them, strings in quotes, other values by type. */
static le_opt_status invalid(lua_State *L, int idx, const char *what, char *err,
                             size_t errlen) {
  int t = lua_type(L, idx);
  if (t == LUA_TNUMBER || t == LUA_TBOOLEAN) {
    snprintf(err, errlen, "expected %s, got %s", what,
             luaL_tolstring(L, idx, NULL));
    lua_pop(L, 1);
  } else if (t == LUA_TSTRING) {
    snprintf(err, errlen, "expected %s, got \"%s\"", what,
             lua_tostring(L, idx));
  } else {
    snprintf(err, errlen, "expected %s, got %s", what, luaL_typename(L, idx));
  }
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

/* Each parser checks the value at idx against row d; on success it sets
 * *v to what store() takes and returns NULL, else it returns what the
 * value should have been (the "expected" words), built in buf if the
 * words depend on the row. */
typedef const char *(*parse_fn)(const le_opt_def *d, lua_State *L, int idx,
                                double *v, char *buf, size_t buflen);

static const char *parse_packet(const le_opt_def *d, lua_State *L, int idx,
                                double *v, char *buf, size_t buflen) {
  (void)d, (void)buf, (void)buflen;
  int ok = -1;
  lua_Integer n;
  le_packet p = LE_PACKET_RAW;
  if (lua_type(L, idx) == LUA_TSTRING)
    ok = le_packet_parse(lua_tostring(L, idx), 0, &p);
  else if (get_int(L, idx, &n))
    ok = le_packet_parse(NULL, (long)n, &p);
  *v = p;
  return ok == 0 ? NULL : "\"raw\", \"line\", 0, 1, 2 or 4";
}

/* Reads an integer in d->min..d->max into *v; returns 1, or 0. */
static int get_in_range(const le_opt_def *d, lua_State *L, int idx, double *v) {
  lua_Integer n;
  if (!get_int(L, idx, &n) || n < d->min || n > d->max) return 0;
  *v = (double)n;
  return 1;
}

static const char *parse_size(const le_opt_def *d, lua_State *L, int idx,
                              double *v, char *buf, size_t buflen) {
  if (get_in_range(d, L, idx, v)) return NULL;
  snprintf(buf, buflen, "an integer byte count in %lld..%lld",
           (long long)d->min, (long long)d->max);
  return buf;
}

/* A timeout is a positive number of seconds, or false for none. */
static const char *parse_seconds(const le_opt_def *d, lua_State *L, int idx,
                                 double *v, char *buf, size_t buflen) {
  (void)d, (void)buf, (void)buflen;
  if (lua_type(L, idx) == LUA_TBOOLEAN && !lua_toboolean(L, idx)) {
    *v = -1;
    return NULL;
  }
  double s = lua_type(L, idx) == LUA_TNUMBER ? lua_tonumber(L, idx) : NAN;
  if (!(s > 0) || isinf(s)) return "a number of seconds > 0, or false for none";
  /* Longer than LE_MAX_TIMEOUT is "never" in practice; the cap keeps every
   * conversion to milliseconds far from overflow. */
  *v = s > LE_MAX_TIMEOUT ? LE_MAX_TIMEOUT : s;
  return NULL;
}

static const char *parse_bool(const le_opt_def *d, lua_State *L, int idx,
                              double *v, char *buf, size_t buflen) {
  (void)d, (void)buf, (void)buflen;
  if (lua_type(L, idx) != LUA_TBOOLEAN) return "a boolean";
  *v = lua_toboolean(L, idx);
  return NULL;
}

/* A delay is a boolean (true: d->on seconds, false: off) or seconds. */
static const char *parse_delay(const le_opt_def *d, lua_State *L, int idx,
                               double *v, char *buf, size_t buflen) {
  if (lua_type(L, idx) == LUA_TBOOLEAN) {
    *v = lua_toboolean(L, idx) ? d->on : 0;
    return NULL;
  }
  if (get_in_range(d, L, idx, v)) return NULL;
  snprintf(buf, buflen, "a boolean or a delay in seconds (%lld..%lld)",
           (long long)d->min, (long long)d->max);
  return buf;
}

/* ---- the Lua form ---- */

/* Pushes value v of row d as getopts returns it. */
typedef void (*push_fn)(const le_opt_def *d, double v, lua_State *L);

static void push_packet(const le_opt_def *d, double v, lua_State *L) {
  (void)d;
  le_packet m = (le_packet)v;
  if (m == LE_PACKET_RAW || m == LE_PACKET_LINE)
    lua_pushstring(L, le_packet_name(m));
  else
    lua_pushinteger(L, (lua_Integer)m);
}

static void push_integer(const le_opt_def *d, double v, lua_State *L) {
  (void)d;
  lua_pushinteger(L, (lua_Integer)v);
}

/* Seconds, or false for none (stored as -1). */
static void push_seconds(const le_opt_def *d, double v, lua_State *L) {
  (void)d;
  if (v < 0)
    lua_pushboolean(L, 0);
  else
    lua_pushnumber(L, v);
}

static void push_bool(const le_opt_def *d, double v, lua_State *L) {
  (void)d;
  lua_pushboolean(L, v != 0);
}

/* A delay in seconds, or false for off (stored as 0). */
static void push_delay(const le_opt_def *d, double v, lua_State *L) {
  if (v == 0)
    push_bool(d, v, L);
  else
    push_integer(d, v, L);
}

/* A byte count, or false (stored as 0) for the kernel's default. */
static const char *parse_bytes(const le_opt_def *d, lua_State *L, int idx,
                               double *v, char *buf, size_t buflen) {
  if (lua_type(L, idx) == LUA_TBOOLEAN && !lua_toboolean(L, idx)) {
    *v = 0;
    return NULL;
  }
  if (get_in_range(d, L, idx, v)) return NULL;
  snprintf(buf, buflen, "an integer byte count in %lld..%lld, or false",
           (long long)d->min, (long long)d->max);
  return buf;
}

/* ---- kinds ---- */

/* What each kind does: read a Lua value, show one, and the size of its
 * field (the *_AT macros above check the field's type; store() and load()
 * know uint8_t, uint32_t and double). A new kind is an LE_OPTK_ value in
 * opts.h, a *_AT macro, a parser, a push function and a row here. */
static const struct {
  parse_fn parse;
  push_fn push;
  size_t size;
} kinds[] = {
    [LE_OPTK_PACKET] = {parse_packet, push_packet, sizeof(uint8_t)},
    [LE_OPTK_SIZE] = {parse_size, push_integer, sizeof(uint32_t)},
    [LE_OPTK_SECONDS] = {parse_seconds, push_seconds, sizeof(double)},
    [LE_OPTK_BOOL] = {parse_bool, push_bool, sizeof(uint8_t)},
    [LE_OPTK_DELAY] = {parse_delay, push_delay, sizeof(uint32_t)},
    [LE_OPTK_BYTES] = {parse_bytes, push_delay, sizeof(uint32_t)},
};

static size_t field_size(const le_opt_def *d) { return kinds[d->kind].size; }

le_opt_status le_opts_set(le_opts *o, const char *name, lua_State *L, int idx,
                          char *err, size_t errlen) {
  const le_opt_def *d = le_opts_find(name);
  if (d == NULL) return LE_OPT_UNKNOWN;
  idx = lua_absindex(L, idx);
  char words[96];
  double v = 0;
  const char *expected =
      kinds[d->kind].parse(d, L, idx, &v, words, sizeof words);
  if (expected != NULL) return invalid(L, idx, expected, err, errlen);
  store(o, d, v);
  return LE_OPT_OK;
}

int le_opts_push(const le_opts *o, const char *name, lua_State *L) {
  const le_opt_def *d = le_opts_find(name);
  if (d == NULL) return -1;
  kinds[d->kind].push(d, load(o, d), L);
  return 0;
}
