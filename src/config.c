/* Configuration loading and validation: see include/luaecho/config.h. */
#include "luaecho/config.h"

#include "luaecho/lmem.h"
#include "luaecho/log.h"
#include "luaecho/preempt.h"

#include <lauxlib.h>
#include <lualib.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "luaecho/sandbox.h"

/* What validation needs while walking one file. */
typedef struct loader {
  lua_State *L;
  const char *name; /* the file as named in messages */
  const char *dir;  /* directory for relative paths, or NULL */
  char *err;
  size_t errlen;
} loader;

/* Keys besides the connection options (opts.h), which both levels take. */
static const char *const top_keys[] = {
    "listen",           "handler",    "backlog", "max_connections",
    "shutdown_timeout", "log_level",  "watch",   "sandbox",
    "max_memory",       "trace_file", "admin",   NULL};
static const char *const listener_keys[] = {"address", "handler", "backlog",
                                            "max_connections", NULL};

static char *dup_string(const char *s) {
  size_t n = strlen(s) + 1;
  char *copy = malloc(n);
  if (copy != NULL) memcpy(copy, s, n);
  return copy;
}

/* Writes "<file>: <formatted message>" into the loader's error buffer, on
 * one line, and returns -1. Messages longer than the buffer are cut, never
 * overrun. */
static int fail(loader *ld, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

static int fail(loader *ld, const char *fmt, ...) {
  char raw[1024];
  va_list ap;
  int n = snprintf(raw, sizeof raw, "%s: ", ld->name);
  if (n >= 0 && (size_t)n < sizeof raw) {
    va_start(ap, fmt);
    vsnprintf(raw + n, sizeof raw - (size_t)n, fmt, ap);
    va_end(ap);
  }
  le_log_escape_into(ld->err, ld->errlen, raw, strlen(raw));
  return -1;
}

static int out_of_memory(loader *ld) {
  snprintf(ld->err, ld->errlen, "%s: out of memory", ld->name);
  return -1;
}

static int wrong_type(loader *ld, const char *key, const char *expected,
                      int idx) {
  return fail(ld, "key '%s': expected %s, got %s", key, expected,
              luaL_typename(ld->L, idx));
}

/* Reads the integer at idx into *out, within [min, max]. */
static int get_integer(loader *ld, int idx, const char *key, long min, long max,
                       int *out) {
  lua_Integer v;
  if (lua_isinteger(ld->L, idx)) {
    v = lua_tointeger(ld->L, idx);
  } else if (lua_type(ld->L, idx) == LUA_TNUMBER) {
    lua_Number n = lua_tonumber(ld->L, idx);
    if (n != floor(n) || n < (lua_Number)min || n > (lua_Number)max)
      return wrong_type(ld, key, "integer", idx);
    v = (lua_Integer)n;
  } else {
    return wrong_type(ld, key, "integer", idx);
  }
  if (v < min || v > max)
    return fail(ld, "key '%s': expected integer in %ld..%ld, got %lld", key,
                min, max, (long long)v);
  *out = (int)v;
  return 0;
}

/* Reads max_connections at idx: a positive integer, or false for no cap
 * (stored as 0). */
static int get_max_connections(loader *ld, int idx, const char *key, int *out) {
  if (lua_type(ld->L, idx) == LUA_TBOOLEAN && !lua_toboolean(ld->L, idx)) {
    *out = 0;
    return 0;
  }
  if (lua_type(ld->L, idx) != LUA_TNUMBER)
    return wrong_type(ld, key, "positive integer or false", idx);
  return get_integer(ld, idx, key, 1, LE_MAX_CONNECTIONS_MAX, out);
}

static int get_seconds(loader *ld, int idx, const char *key, double *out) {
  if (lua_type(ld->L, idx) != LUA_TNUMBER)
    return wrong_type(ld, key, "number of seconds", idx);
  double v = (double)lua_tonumber(ld->L, idx);
  if (!(v >= 0) || isinf(v))
    return fail(ld,
                "key '%s': expected a finite number of seconds >= 0, got %g",
                key, v);
  *out = v > LE_MAX_TIMEOUT ? LE_MAX_TIMEOUT : v;
  return 0;
}

/* Returns a malloc'd copy of path, joined to the config's directory when it
 * is relative, or NULL with err set. */
static char *resolve_path(loader *ld, const char *path) {
  char *out;
  if (path[0] == '/' || ld->dir == NULL || strcmp(ld->dir, ".") == 0) {
    out = dup_string(path);
  } else {
    size_t n = strlen(ld->dir) + strlen(path) + 2;
    out = malloc(n);
    if (out != NULL) snprintf(out, n, "%s/%s", ld->dir, path);
  }
  if (out == NULL) out_of_memory(ld);
  return out;
}

static int get_path(loader *ld, int idx, const char *key, char **out) {
  if (lua_type(ld->L, idx) != LUA_TSTRING)
    return wrong_type(ld, key, "string (a file path)", idx);
  const char *s = lua_tostring(ld->L, idx);
  if (*s == '\0') return fail(ld, "key '%s': the path is empty", key);
  char *path = resolve_path(ld, s);
  if (path == NULL) return -1;
  free(*out);
  *out = path;
  return 0;
}

static int get_log_level(loader *ld, int idx, const char *key,
                         le_log_level *out) {
  const char *expected = "one of \"debug\", \"info\", \"warn\", \"error\"";
  if (lua_type(ld->L, idx) != LUA_TSTRING)
    return wrong_type(ld, key, expected, idx);
  if (le_log_level_parse(lua_tostring(ld->L, idx), out) != 0)
    return fail(ld, "key '%s': expected %s, got \"%s\"", key, expected,
                lua_tostring(ld->L, idx));
  return 0;
}

/* Fails on the first key of the table at idx that is neither in `known`
 * nor a connection option;
 * `prefix` names the table in the message ("" at top level). */
static int check_keys(loader *ld, int idx, const char *prefix,
                      const char *const *known) {
  lua_State *L = ld->L;
  idx = lua_absindex(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    lua_pop(L, 1);
    int ok = 0;
    if (lua_type(L, -1) == LUA_TSTRING) {
      ok = le_opts_known(lua_tostring(L, -1));
      for (const char *const *k = known; *k && !ok; k++)
        ok = strcmp(lua_tostring(L, -1), *k) == 0;
    }
    if (!ok) {
      if (lua_type(L, -1) == LUA_TSTRING)
        fail(ld, "unknown key '%s%s'", prefix, lua_tostring(L, -1));
      else if (lua_type(L, -1) == LUA_TNUMBER)
        fail(ld, "unknown key '%s[%s]'", prefix, luaL_tolstring(L, -1, NULL));
      else
        fail(ld, "unknown key '%s(a %s key)'", prefix, luaL_typename(L, -1));
      lua_settop(L, idx);
      return -1;
    }
  }
  return 0;
}

/* Pushes t[key] for the table at idx, without metamethods, and returns 1;
 * pushes nothing and returns 0 when the key is not set. */
static int field(lua_State *L, int idx, const char *key) {
  idx = lua_absindex(L, idx);
  lua_pushstring(L, key);
  if (lua_rawget(L, idx) != LUA_TNIL) return 1;
  lua_pop(L, 1);
  return 0;
}

/* Reads the boolean key of the table at idx into *out, if it is set. */
static int get_boolean(loader *ld, int idx, const char *key, int *out) {
  if (!field(ld->L, idx, key)) return 0;
  int r = 0;
  if (lua_type(ld->L, -1) != LUA_TBOOLEAN)
    r = wrong_type(ld, key, "boolean", -1);
  else
    *out = lua_toboolean(ld->L, -1);
  lua_pop(ld->L, 1);
  return r;
}

/* Applies every connection option set in the table at idx to opts;
 * `prefix` names the table in messages. */
static int get_opts(loader *ld, int idx, const char *prefix, le_opts *opts) {
  lua_State *L = ld->L;
  const char *name;
  for (size_t i = 0; (name = le_opts_name(i)) != NULL; i++) {
    if (!field(L, idx, name)) continue;
    char why[256];
    le_opt_status st = le_opts_set(opts, name, L, -1, why, sizeof why);
    lua_pop(L, 1);
    if (st != LE_OPT_OK) return fail(ld, "key '%s%s': %s", prefix, name, why);
  }
  return 0;
}

static void listener_free(le_listener_conf *l) {
  free(l->address);
  free(l->handler);
  memset(l, 0, sizeof *l);
}

static int set_address(loader *ld, le_listener_conf *l, const char *text,
                       const char *key) {
  char why[160];
  if (le_addr_parse(text, &l->addr, why, sizeof why) != 0)
    return fail(ld, "key '%s': invalid address '%s': %s", key, text, why);
  l->address = dup_string(text);
  return l->address ? 0 : out_of_memory(ld);
}

/* Reads one entry of `listen` (a string or a listener table) at idx. */
static int get_listener(loader *ld, int idx, const char *key,
                        const le_config *cfg, le_listener_conf *l) {
  lua_State *L = ld->L;
  char sub[256];
  idx = lua_absindex(L, idx);
  memset(l, 0, sizeof *l);
  l->backlog = cfg->backlog;
  l->opts = cfg->opts;
  if (lua_type(L, idx) == LUA_TSTRING)
    return set_address(ld, l, lua_tostring(L, idx), key);
  if (lua_type(L, idx) != LUA_TTABLE)
    return wrong_type(ld, key, "address string or listener table", idx);
  snprintf(sub, sizeof sub, "%s.", key);
  if (check_keys(ld, idx, sub, listener_keys) != 0) return -1;
  int r;
  snprintf(sub, sizeof sub, "%s.address", key);
  if (!field(L, idx, "address"))
    return fail(ld, "key '%s': missing (every listener needs one)", sub);
  if (lua_type(L, -1) != LUA_TSTRING)
    r = wrong_type(ld, sub, "address string", -1);
  else
    r = set_address(ld, l, lua_tostring(L, -1), sub);
  lua_pop(L, 1);
  if (r == 0 && field(L, idx, "handler")) {
    snprintf(sub, sizeof sub, "%s.handler", key);
    r = get_path(ld, -1, sub, &l->handler);
    lua_pop(L, 1);
  }
  if (r == 0 && field(L, idx, "backlog")) {
    snprintf(sub, sizeof sub, "%s.backlog", key);
    r = get_integer(ld, -1, sub, 1, 65535, &l->backlog);
    lua_pop(L, 1);
  }
  if (r == 0 && field(L, idx, "max_connections")) {
    snprintf(sub, sizeof sub, "%s.max_connections", key);
    r = get_max_connections(ld, -1, sub, &l->max_connections);
    lua_pop(L, 1);
  }
  snprintf(sub, sizeof sub, "%s.", key);
  return r == 0 ? get_opts(ld, idx, sub, &l->opts) : r;
}

/* Returns 1 when the table at idx has exactly the keys 1..n. */
static int is_sequence(lua_State *L, int idx, size_t n) {
  size_t count = 0;
  int ok = 1;
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    lua_pop(L, 1);
    count++;
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 ||
        (size_t)lua_tointeger(L, -1) > n)
      ok = 0;
  }
  return ok && count == n;
}

static void listeners_free(le_listener_conf *ls, size_t n) {
  for (size_t i = 0; i < n; i++) listener_free(&ls[i]);
  free(ls);
}

/* Reads `listen` at idx: one address, one listener table (it has an
 * `address` field) or a list of either. */
static int get_listen(loader *ld, int idx, le_config *cfg) {
  lua_State *L = ld->L;
  idx = lua_absindex(L, idx);
  int single = lua_type(L, idx) == LUA_TSTRING;
  if (!single && lua_type(L, idx) == LUA_TTABLE) {
    single = field(L, idx, "address");
    lua_pop(L, single);
  } else if (!single) {
    return wrong_type(ld, "listen", "address string or list of addresses", idx);
  }
  size_t n = single ? 1 : (size_t)lua_rawlen(L, idx);
  if (n == 0)
    return fail(ld,
                "key 'listen': expected at least one address, got an "
                "empty list");
  if (!single && !is_sequence(L, idx, n))
    return fail(ld,
                "key 'listen': expected a list of addresses (keys 1..n), "
                "got other keys");
  le_listener_conf *ls = calloc(n, sizeof *ls);
  if (ls == NULL) return out_of_memory(ld);
  for (size_t i = 0; i < n; i++) {
    char key[64];
    int r;
    if (single) {
      r = get_listener(ld, idx, "listen", cfg, &ls[i]);
    } else {
      snprintf(key, sizeof key, "listen[%zu]", i + 1);
      lua_rawgeti(L, idx, (lua_Integer)i + 1);
      r = get_listener(ld, -1, key, cfg, &ls[i]);
      lua_pop(L, 1);
    }
    if (r != 0) {
      listeners_free(ls, n);
      return -1;
    }
  }
  listeners_free(cfg->listeners, cfg->nlisteners);
  cfg->listeners = ls;
  cfg->nlisteners = n;
  return 0;
}

/* max_memory: a byte count of at least LE_MIN_MAX_MEMORY, or false for
 * no cap (stored as 0). */
static int get_max_memory(loader *ld, int idx, size_t *out) {
  lua_State *L = ld->L;
  if (lua_type(L, idx) == LUA_TBOOLEAN && !lua_toboolean(L, idx)) {
    *out = 0;
    return 0;
  }
  int isint = 0;
  lua_Integer v =
      lua_type(L, idx) == LUA_TNUMBER ? lua_tointegerx(L, idx, &isint) : 0;
  if (!isint || v < LE_MIN_MAX_MEMORY)
    return fail(ld,
                "key 'max_memory': expected a byte count >= %d (or false "
                "for no cap), got %s",
                LE_MIN_MAX_MEMORY,
                lua_type(L, idx) == LUA_TNUMBER ? luaL_tolstring(L, idx, NULL)
                                                : luaL_typename(L, idx));
  *out = (size_t)v;
  return 0;
}

/* admin: the admin listener's address, or false for none. */
static int get_admin(loader *ld, int idx, le_config *cfg) {
  lua_State *L = ld->L;
  if (lua_type(L, idx) == LUA_TBOOLEAN && !lua_toboolean(L, idx)) {
    listeners_free(cfg->admin, cfg->admin ? 1 : 0);
    cfg->admin = NULL;
    return 0;
  }
  if (lua_type(L, idx) != LUA_TSTRING)
    return wrong_type(ld, "admin", "address string (or false for none)", idx);
  le_listener_conf *l = calloc(1, sizeof *l);
  if (l == NULL) return out_of_memory(ld);
  l->backlog = LE_DEFAULT_BACKLOG;
  le_opts_init(&l->opts);
  if (set_address(ld, l, lua_tostring(L, idx), "admin") != 0) {
    listeners_free(l, 1);
    return -1;
  }
  listeners_free(cfg->admin, cfg->admin ? 1 : 0);
  cfg->admin = l;
  return 0;
}

/* Validates the environment table at idx into cfg. Scalars come first so
 * that listeners inherit the file's own `backlog`. */
static int apply_env(loader *ld, int idx, le_config *cfg) {
  lua_State *L = ld->L;
  idx = lua_absindex(L, idx);
  int r = check_keys(ld, idx, "", top_keys);
  if (r == 0 && field(L, idx, "backlog")) {
    r = get_integer(ld, -1, "backlog", 1, 65535, &cfg->backlog);
    lua_pop(L, 1);
  }
  if (r == 0) r = get_opts(ld, idx, "", &cfg->opts);
  if (r == 0 && field(L, idx, "max_connections")) {
    r = get_max_connections(ld, -1, "max_connections", &cfg->max_connections);
    lua_pop(L, 1);
  }
  if (r == 0 && field(L, idx, "shutdown_timeout")) {
    r = get_seconds(ld, -1, "shutdown_timeout", &cfg->shutdown_timeout);
    lua_pop(L, 1);
  }
  if (r == 0) r = get_boolean(ld, idx, "watch", &cfg->watch);
  if (r == 0) r = get_boolean(ld, idx, "sandbox", &cfg->sandbox);
  if (r == 0 && field(L, idx, "max_memory")) {
    r = get_max_memory(ld, -1, &cfg->max_memory);
    lua_pop(L, 1);
  }
  if (r == 0 && field(L, idx, "log_level")) {
    r = get_log_level(ld, -1, "log_level", &cfg->log_level);
    lua_pop(L, 1);
  }
  if (r == 0 && field(L, idx, "handler")) {
    r = get_path(ld, -1, "handler", &cfg->handler);
    lua_pop(L, 1);
  }
  if (r == 0 && field(L, idx, "trace_file")) {
    r = get_path(ld, -1, "trace_file", &cfg->trace_file);
    lua_pop(L, 1);
  }
  if (r == 0 && field(L, idx, "admin")) {
    r = get_admin(ld, -1, cfg);
    lua_pop(L, 1);
  }
  if (r == 0 && field(L, idx, "listen")) {
    r = get_listen(ld, -1, cfg);
    lua_pop(L, 1);
  } else if (r == 0) {
    /* The built-in default listener takes this file's top-level settings;
     * listeners a file defined keep the values they were defined with. */
    for (size_t i = 0; i < cfg->nlisteners; i++) {
      if (!cfg->listeners[i].builtin) continue;
      cfg->listeners[i].backlog = cfg->backlog;
      cfg->listeners[i].opts = cfg->opts;
    }
  }
  return r;
}

/* lua_CFunction running apply_env(loader, env, cfg) under lua_pcall. */
static int validate(lua_State *L) {
  loader *ld = lua_touserdata(L, 2);
  le_config *cfg = lua_touserdata(L, 3);
  lua_pushboolean(L, apply_env(ld, 1, cfg) == 0);
  return 1;
}

/* Runs the loaded chunk on top of L with a fresh environment whose reads
 * fall back to the standard globals, then validates what it assigned. */
static int run_chunk(loader *ld, le_config *cfg) {
  lua_State *L = ld->L;
  lua_newtable(L); /* the environment */
  lua_newtable(L); /* its metatable */
  lua_pushglobaltable(L);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  lua_setupvalue(L, -3, 1); /* the chunk's _ENV */
  lua_insert(L, -2);
  /* A config file is evaluated again on SIGHUP, inside the running
   * server: one that computes without end must fail, not freeze it. */
  lua_pushcfunction(L, le_sandbox_msgh);
  lua_insert(L, -3);
  int msgh = lua_gettop(L) - 2;
  int status = le_preempt_pcall(L, 0, 0, msgh, LE_CONFIG_CPU_LIMIT);
  lua_remove(L, msgh);
  if (status != LUA_OK) {
    const char *msg = lua_type(L, -1) == LUA_TSTRING
                          ? lua_tostring(L, -1)
                          : "(error object is not a string)";
    le_sandbox_message(ld->err, ld->errlen, ld->name, msg);
    return -1;
  }
  /* Validation only reads raw fields, but a file can still make a Lua call
   * fail (a value whose conversion raises, memory): it runs protected so
   * that such a file gets a message instead of aborting the process. */
  lua_pushcfunction(L, validate);
  lua_insert(L, -2);
  lua_pushlightuserdata(L, ld);
  lua_pushlightuserdata(L, cfg);
  if (lua_pcall(L, 3, 1, 0) != LUA_OK) {
    return fail(ld, "invalid configuration: %s",
                lua_tostring(L, -1) ? lua_tostring(L, -1) : "(no message)");
  }
  return lua_toboolean(L, -1) ? 0 : -1;
}

/* What load_protected works on. */
typedef struct load_args {
  loader *ld;
  le_config *cfg;
  const char *chunk; /* the config text, or NULL to read the file */
  int r;             /* the outcome: 0 or -1 with ld->err set */
} load_args;

/* Opens the libraries, loads and runs the config chunk and validates it.
 * Runs protected, so running out of memory anywhere here is a message,
 * not an abort. Stack: the load_args as a light userdata. */
static int load_protected(lua_State *L) {
  load_args *a = lua_touserdata(L, 1);
  loader *ld = a->ld;
  lua_settop(L, 0);
  luaL_openlibs(L);
  /* A config file is evaluated again on SIGHUP inside the running server,
   * where os.exit or a call that blocks would stop every connection: it
   * always runs sandboxed, whatever its `sandbox` key says. */
  if (le_sandbox_apply(L, LE_SANDBOX_CONFIG) != 0) {
    a->r = out_of_memory(ld);
    return 0;
  }
  int status =
      a->chunk ? le_sandbox_loadbuffer(L, a->chunk, strlen(a->chunk), ld->name)
               : le_sandbox_loadfile(L, ld->name);
  if (status != LUA_OK) {
    le_sandbox_message(ld->err, ld->errlen, ld->name, lua_tostring(L, -1));
    a->r = -1;
  } else {
    a->r = run_chunk(ld, a->cfg);
  }
  return 0;
}

static int load_with(le_config *cfg, const char *chunk, const char *name,
                     const char *dir, char *err, size_t errlen) {
  /* A config file is Lua too: what it allocates is capped like a
   * handler's, so a runaway one fails instead of growing the process. */
  le_mem mem;
  loader ld = {le_mem_newstate(&mem, LE_DEFAULT_MAX_MEMORY), name, dir, err,
               errlen};
  if (ld.L == NULL) return out_of_memory(&ld);
  load_args a = {&ld, cfg, chunk, -1};
  lua_pushcfunction(ld.L, load_protected);
  lua_pushlightuserdata(ld.L, &a);
  if (lua_pcall(ld.L, 1, 0, 0) != LUA_OK)
    fail(&ld, "%s", lua_tostring(ld.L, -1) ? lua_tostring(ld.L, -1) : "?");
  lua_close(ld.L);
  return a.r;
}

int le_config_load_file(le_config *cfg, const char *path, char *err,
                        size_t errlen) {
  char *dir = le_addr_dir(path);
  char *copy = dup_string(path);
  if (dir == NULL || copy == NULL) {
    free(dir);
    free(copy);
    snprintf(err, errlen, "%s: out of memory", path);
    return -1;
  }
  int r = load_with(cfg, NULL, path, dir, err, errlen);
  free(dir);
  if (r == 0) {
    free(cfg->path);
    cfg->path = copy;
  } else {
    free(copy);
  }
  return r;
}

int le_config_load_string(le_config *cfg, const char *chunk, const char *name,
                          const char *dir, char *err, size_t errlen) {
  return load_with(cfg, chunk, name, dir, err, errlen);
}

int le_config_set_listen(le_config *cfg, const char *const *addrs, size_t n,
                         char *err, size_t errlen) {
  loader ld = {NULL, "--listen", NULL, err, errlen};
  le_listener_conf *ls = calloc(n ? n : 1, sizeof *ls);
  if (ls == NULL) return out_of_memory(&ld);
  for (size_t i = 0; i < n; i++) {
    ls[i].backlog = cfg->backlog;
    ls[i].opts = cfg->opts;
    char why[160];
    if (le_addr_parse(addrs[i], &ls[i].addr, why, sizeof why) != 0) {
      listeners_free(ls, n);
      return fail(&ld, "invalid address '%s': %s", addrs[i], why);
    }
    ls[i].address = dup_string(addrs[i]);
    if (ls[i].address == NULL) {
      listeners_free(ls, n);
      return out_of_memory(&ld);
    }
  }
  listeners_free(cfg->listeners, cfg->nlisteners);
  cfg->listeners = ls;
  cfg->nlisteners = n;
  return 0;
}

int le_config_set_handler(le_config *cfg, const char *path) {
  char *copy = dup_string(path);
  if (copy == NULL) return -1;
  free(cfg->handler);
  cfg->handler = copy;
  return 0;
}

const char *le_config_listener_handler(const le_config *cfg,
                                       const le_listener_conf *l) {
  return l->handler ? l->handler : cfg->handler;
}

int le_config_init(le_config *cfg) {
  char err[256];
  const char *def = LE_DEFAULT_LISTEN;
  memset(cfg, 0, sizeof *cfg);
  cfg->backlog = LE_DEFAULT_BACKLOG;
  cfg->max_connections = LE_MAX_CONNECTIONS_AUTO;
  cfg->shutdown_timeout = LE_DEFAULT_SHUTDOWN_TIMEOUT;
  cfg->log_level = LE_LOG_INFO;
  cfg->watch = 1;
  cfg->sandbox = 1;
  cfg->max_memory = LE_DEFAULT_MAX_MEMORY;
  le_opts_init(&cfg->opts);
  if (le_config_set_listen(cfg, &def, 1, err, sizeof err) != 0) return -1;
  cfg->listeners[0].builtin = 1;
  return 0;
}

void le_config_trace_all(le_config *cfg) {
  cfg->opts.trace = 1;
  for (size_t i = 0; i < cfg->nlisteners; i++) cfg->listeners[i].opts.trace = 1;
}

size_t le_config_max_connections(const le_config *cfg, size_t fd_limit) {
  if (cfg->max_connections != LE_MAX_CONNECTIONS_AUTO)
    return (size_t)cfg->max_connections;
  if (fd_limit == 0) return 0;
  size_t reserve = fd_limit / 8 > 32 ? fd_limit / 8 : 32;
  return fd_limit > reserve ? fd_limit - reserve : 1;
}

void le_config_free(le_config *cfg) {
  listeners_free(cfg->listeners, cfg->nlisteners);
  if (cfg->admin != NULL) listeners_free(cfg->admin, 1);
  free(cfg->handler);
  free(cfg->trace_file);
  free(cfg->path);
  memset(cfg, 0, sizeof *cfg);
}
