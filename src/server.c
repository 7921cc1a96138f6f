/* Listeners, handler scripts, signals, reloads and shutdown: see
 * include/luaecho/server.h.
 *
 * The path of a new connection starts in on_connection: the listener's
 * handler script goes to le_conn_accept, which takes over.
 */
#include "luaecho/server.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <lualib.h>
#include <netdb.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "luaecho/bundled.h"
#include "luaecho/linspect.h"
#include "luaecho/lmodule.h"
#include "luaecho/sandbox.h"

static le_server *server_of_conns(le_conn_ctx *ctx) {
  return (le_server *)((char *)ctx - offsetof(le_server, conns));
}

/* ---- Lua state ---- */

/* Returns a new state with the standard library, its memory counted and
 * capped at max_memory by mem, under the sandbox unless `sandbox` is 0, or
 * NULL when out of memory. */
static lua_State *new_lua_state(le_mem *mem, size_t max_memory, int sandbox) {
  lua_State *L = le_mem_newstate(mem, max_memory);
  if (L == NULL) return NULL;
  luaL_openlibs(L);
  if (le_sandbox_apply(L, sandbox ? LE_SANDBOX_HANDLERS : LE_SANDBOX_OFF) !=
      0) {
    lua_close(L);
    return NULL;
  }
  le_lconn_open(L);
  le_bundled_open(L);
  return L;
}

/* Creates the loop's Lua state (capped and sandboxed as cfg says) and
 * connection context, with the luaecho module registered. Returns 0 or -1
 * (out of memory). */
static int open_lua(uv_loop_t *loop, le_conn_ctx *ctx, const le_log *log,
                    const le_config *cfg, le_mem *mem, lua_State **out) {
  lua_State *L = *out = new_lua_state(mem, cfg->max_memory, cfg->sandbox);
  if (L == NULL || le_conn_ctx_init(ctx, loop, L, log) != 0) return -1;
  le_lmodule_open(ctx);
  le_linspect_open(ctx);
  le_script_set_cpu_limit(L, cfg->opts.cpu_limit);
  return 0;
}

/* ---- handler scripts ---- */

static int same_path(const char *a, const char *b) {
  return (a == NULL && b == NULL) || (a && b && strcmp(a, b) == 0);
}

static le_script *find_script(le_server *s, const char *path) {
  for (le_script *sc = s->scripts; sc != NULL; sc = sc->next)
    if (same_path(sc->path, path)) return sc;
  return NULL;
}

/* Makes sure the handler at path is on the server's list (which holds one
 * reference to each script) and returns it, or NULL with err set. */
static le_script *load_script(le_server *s, const char *path, char *err,
                              size_t errlen) {
  le_script *sc = find_script(s, path);
  if (sc != NULL) return sc;
  sc = le_script_new(s->L, path, err, errlen);
  if (sc == NULL) return NULL;
  sc->next = s->scripts;
  s->scripts = sc;
  return sc;
}

static int load_handlers(le_server *s, char *err, size_t errlen) {
  for (size_t i = 0; i < s->cfg->nlisteners; i++) {
    const char *path =
        le_config_listener_handler(s->cfg, &s->cfg->listeners[i]);
    if (load_script(s, path, err, errlen) == NULL) return -1;
  }
  return 0;
}

/* Loads a new version of one handler; logs the outcome either way. */
static void reload_script(le_server *s, le_script *sc) {
  char err[1024];
  int ok = le_script_reload(sc, err, sizeof err) == 0;
  if (ok) s->conns.stats.reloads++; else s->conns.stats.reloads_rejected++;
  if (ok)
    le_logf(&s->log, LE_LOG_INFO, "reloaded %s (version %u)",
            le_script_name(sc->path), sc->version);
  else
    le_logf(&s->log, LE_LOG_ERROR,
            "reload of %s failed: %s; version %u keeps serving",
            le_script_name(sc->path), err, sc->version);
}

/* Drops the scripts no listener uses from the list; connections still
 * running them keep their own references. */
static void prune_scripts(le_server *s) {
  for (le_script **p = &s->scripts; *p != NULL;) {
    le_script *sc = *p;
    int used = 0;
    for (le_listener *l = s->listeners; l != NULL && !used; l = l->next)
      used = l->script == sc;
    if (used) {
      p = &sc->next;
      continue;
    }
    *p = sc->next;
    le_script_unref(sc);
  }
}

/* ---- watching handler directories ---- */

/* A .lua file changed in a watched directory: every handler there loads a
 * new version (a module it requires may be the file that changed). */
static void on_dir_change(le_watch *w) {
  le_server *s = w->data;
  for (le_script *sc = s->scripts; sc != NULL; sc = sc->next) {
    if (sc->dir != NULL && strcmp(sc->dir, w->dir) == 0) reload_script(s, sc);
  }
}

static void stop_watches(le_server *s) {
  while (s->watches != NULL) {
    le_watch *w = s->watches;
    s->watches = w->next;
    le_watch_close(w);
  }
}

/* Watches the directory of every handler file, once per directory. */
static void start_watches(le_server *s) {
  stop_watches(s);
  if (!s->cfg->watch) return;
  for (le_script *sc = s->scripts; sc != NULL; sc = sc->next) {
    const char *dir = sc->dir;
    int seen = dir == NULL;
    for (le_watch *w = s->watches; w != NULL && !seen; w = w->next)
      seen = strcmp(w->dir, dir) == 0;
    int err = 0;
    le_watch *w = seen ? NULL : le_watch_start(&s->loop, dir, on_dir_change,
                                               s, &err);
    if (w != NULL) {
      w->next = s->watches;
      s->watches = w;
    } else if (!seen) {
      le_logf(&s->log, LE_LOG_WARN, "cannot watch %s for changes: %s", dir,
              uv_strerror(err));
    }
  }
}

/* ---- listeners ---- */

/* Limits on connections must not apply to the admin listener's (l->admin):
 * an operator must be able to look at a server that refuses everyone
 * else. */
static void on_connection(uv_stream_t *stream, int status) {
  le_listener *l = stream->data;
  le_server *s = l->server;
  if (status < 0) {
    /* Out of descriptors and the like: this one connection is lost, the
     * listener keeps accepting. */
    le_logf(&s->log, LE_LOG_WARN, "accept on %s failed: %s", l->bound,
            uv_strerror(status));
    return;
  }
  le_conn *c = le_conn_accept(&s->conns, stream, &l->conf->opts, l->script);
  if (c != NULL) le_conn_set_origin(c, l->origin);
}

/* Resolves a TCP listen address: numeric forms directly, names through the
 * resolver (at start-up, so blocking is fine). */
static int resolve(const le_addr *a, struct sockaddr_storage *ss, char *why,
                   size_t whylen) {
  if (uv_ip4_addr(a->host, a->port, (struct sockaddr_in *)ss) == 0 ||
      uv_ip6_addr(a->host, a->port, (struct sockaddr_in6 *)ss) == 0)
    return 0;
  struct addrinfo hints, *res;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  int r = getaddrinfo(a->host, NULL, &hints, &res);
  if (r != 0) {
    snprintf(why, whylen, "cannot resolve host '%s': %s", a->host,
             gai_strerror(r));
    return -1;
  }
  memcpy(ss, res->ai_addr, res->ai_addrlen);
  le_addr_set_port((struct sockaddr *)ss, a->port);
  freeaddrinfo(res);
  return 0;
}

static int listen_tcp(le_listener *l, char *why, size_t whylen) {
  struct sockaddr_storage ss;
  if (resolve(&l->conf->addr, &ss, why, whylen) != 0) return -1;
  int r = uv_tcp_init(&l->server->loop, &l->sock.tcp);
  if (r < 0) goto fail;
  l->open = 1;
  /* libuv sets SO_REUSEADDR on every TCP bind, so a restart does not wait
   * for old connections in TIME_WAIT. */
  r = uv_tcp_bind(&l->sock.tcp, (struct sockaddr *)&ss, 0);
  if (r == 0) r = uv_listen(&l->sock.stream, l->conf->backlog, on_connection);
  if (r < 0) goto fail;
  int len = sizeof ss;
  uv_tcp_getsockname(&l->sock.tcp, (struct sockaddr *)&ss, &len);
  le_addr_format_sockaddr((struct sockaddr *)&ss, (socklen_t)len, l->bound,
                          sizeof l->bound);
  return 0;
fail:
  snprintf(why, whylen, "%s", uv_strerror(r));
  return -1;
}

/* Makes way for a unix socket at path: nothing there is fine; a socket file
 * nobody listens on is stale (its server died) and is removed; a live one
 * or any other file is an error. */
static int clear_stale_socket(const char *path, le_log *log, char *why,
                              size_t whylen) {
  struct stat st;
  if (lstat(path, &st) != 0) return 0;
  if (!S_ISSOCK(st.st_mode)) {
    snprintf(why, whylen, "a file that is not a socket is in the way");
    return -1;
  }
  struct sockaddr_un un;
  memset(&un, 0, sizeof un);
  un.sun_family = AF_UNIX;
  memcpy(un.sun_path, path, strlen(path));
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  int live = connect(fd, (struct sockaddr *)&un, sizeof un) == 0;
  int err = errno;
  close(fd);
  if (live) {
    snprintf(why, whylen, "%s", uv_strerror(UV_EADDRINUSE));
    return -1;
  }
  if (err == ECONNREFUSED && unlink(path) == 0)
    le_logf(log, LE_LOG_INFO, "removed stale socket file %s", path);
  return 0;
}

/* Checks that the directory a unix socket goes in exists: bind(2) would
 * report only ENOENT or EACCES, which does not say what is missing.
 * Returns 0, or -1 with the reason in why. */
static int check_socket_dir(const char *path, char *why, size_t whylen) {
  const char *slash = strrchr(path, '/');
  if (slash == NULL) return 0;
  char dir[sizeof ((struct sockaddr_un *)0)->sun_path];
  size_t n = slash == path ? 1 : (size_t)(slash - path);
  if (n >= sizeof dir) return 0; /* too long: bind says so */
  memcpy(dir, path, n);
  dir[n] = '\0';
  struct stat st;
  int r = stat(dir, &st);
  if (r != 0 && (errno == ENOENT || errno == ENOTDIR))
    snprintf(why, whylen, "directory %s does not exist", dir);
  else if (r == 0 && !S_ISDIR(st.st_mode))
    snprintf(why, whylen, "%s is not a directory", dir);
  else
    return 0;
  return -1;
}

static int listen_unix(le_listener *l, char *why, size_t whylen) {
  const char *path = l->conf->addr.path;
  if (check_socket_dir(path, why, whylen) != 0 ||
      clear_stale_socket(path, &l->server->log, why, whylen) != 0)
    return -1;
  int r = uv_pipe_init(&l->server->loop, &l->sock.pipe, 0);
  if (r < 0) goto fail;
  l->open = 1;
  r = uv_pipe_bind(&l->sock.pipe, path);
  if (r < 0) goto fail;
  l->unlink_path = 1;
  r = uv_listen(&l->sock.stream, l->conf->backlog, on_connection);
  if (r < 0) goto fail;
  snprintf(l->bound, sizeof l->bound, "unix:%s", path);
  return 0;
fail:
  snprintf(why, whylen, "%s", uv_strerror(r));
  return -1;
}

static void free_listener(uv_handle_t *h) { free(h->data); }

/* Closes a listener; its memory goes in the close callback. Connections it
 * accepted are not affected. */
static void close_listener(le_listener *l) {
  if (l->unlink_path) unlink(l->conf->addr.path);
  l->unlink_path = 0;
  le_script_unref(l->script);
  if (l->open)
    uv_close(&l->sock.handle, free_listener);
  else
    free(l);
}

/* Binds a listener for conf running script. Returns it (not yet on the
 * list), or NULL with a message in err. */
static le_listener *open_listener(le_server *s, const le_listener_conf *conf,
                                  le_script *script, int admin, char *err,
                                  size_t errlen) {
  le_listener *l = calloc(1, sizeof *l);
  if (l == NULL) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  l->server = s;
  l->conf = conf;
  l->script = script;
  l->admin = (unsigned)admin;
  le_script_ref(script);
  l->sock.handle.data = l;
  char why[300];
  int r = conf->addr.kind == LE_ADDR_UNIX ? listen_unix(l, why, sizeof why)
                                          : listen_tcp(l, why, sizeof why);
  l->sock.handle.data = l;
  if (r != 0) {
    snprintf(err, errlen, "cannot listen on %s: %s", conf->address, why);
    close_listener(l);
    return NULL;
  }
  l->origin = le_conn_ctx_origin(&s->conns, l->bound);
  if (l->origin != NULL) l->origin->admin = (unsigned)admin;
  return l;
}

static le_script *script_for(le_server *s, const le_config *cfg,
                             const le_listener_conf *conf) {
  return find_script(s, le_config_listener_handler(cfg, conf));
}

/* ---- the admin listener ---- */

/* The name the admin handler goes by in listings. */
#define ADMIN_HANDLER_NAME "luaecho/admin.lua (built-in)"

/* Pushes the admin handler: the function the bundled module luaecho.admin
 * returns, loaded through its package.preload entry. Runs protected. */
static int push_admin_handler(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_getfield(L, -1, "luaecho.admin");
  lua_pushliteral(L, "luaecho.admin");
  lua_call(L, 1, 1);
  luaL_checktype(L, -1, LUA_TFUNCTION);
  lua_pushinteger(L, luaL_ref(L, LUA_REGISTRYINDEX));
  return 1;
}

/* Returns a script for the admin handler, or NULL with err set. It is not
 * on s->scripts: it has no file to watch or reload, so its `path` only
 * names it (le_script_name). */
static le_script *admin_script(le_server *s, char *err, size_t errlen) {
  le_script *sc = calloc(1, sizeof *sc);
  char *name = malloc(sizeof ADMIN_HANDLER_NAME);
  lua_pushcfunction(s->L, push_admin_handler);
  int r = sc && name ? lua_pcall(s->L, 0, 1, 0) : LUA_ERRMEM;
  if (r != LUA_OK) {
    snprintf(err, errlen, "cannot load the admin handler: %s",
             r == LUA_ERRMEM ? "out of memory" : lua_tostring(s->L, -1));
    lua_pop(s->L, 1);
    free(sc);
    free(name);
    return NULL;
  }
  sc->fn_ref = (int)lua_tointeger(s->L, -1);
  lua_pop(s->L, 1);
  sc->path = memcpy(name, ADMIN_HANDLER_NAME, sizeof ADMIN_HANDLER_NAME);
  sc->L = s->L;
  sc->version = 1;
  sc->refs = 1;
  return sc;
}

/* Returns 1 when the TCP listener l is bound to a loopback address. */
static int on_loopback(le_listener *l) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  if (uv_tcp_getsockname(&l->sock.tcp, (struct sockaddr *)&ss, &len) != 0)
    return 0;
  if (ss.ss_family == AF_INET)
    return ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24 == 127;
  const struct in6_addr *a6 = &((struct sockaddr_in6 *)&ss)->sin6_addr;
  return ss.ss_family == AF_INET6 &&
         (IN6_IS_ADDR_LOOPBACK(a6) ||
          (IN6_IS_ADDR_V4MAPPED(a6) && a6->s6_addr[12] == 127));
}

/* Opens the admin listener of s->admin_conf. Returns 0 or -1 with err. */
static int open_admin(le_server *s, char *err, size_t errlen) {
  le_script *sc = admin_script(s, err, errlen);
  if (sc == NULL) return -1;
  s->admin = open_listener(s, s->admin_conf, sc, 1, err, errlen);
  le_script_unref(sc); /* the listener holds it now */
  if (s->admin == NULL) return -1;
  le_logf(&s->log, LE_LOG_INFO, "admin interface on %s", s->admin->bound);
  if (s->admin_conf->addr.kind == LE_ADDR_TCP && !on_loopback(s->admin))
    le_logf(&s->log, LE_LOG_WARN,
            "the admin interface on %s is not limited to this host: anyone "
            "who reaches it can list, trace and close connections",
            s->admin->bound);
  return 0;
}

/* Ends the admin's connections at once: at shutdown, a page that watches
 * the server must not hold up the drain of the others. Returns how many it
 * ended. */
static size_t abort_admin_conns(le_server *s) {
  size_t n = 0;
  for (le_conn *c = s->conns.head, *next; c != NULL; c = next) {
    next = c->next;
    if (c->origin == NULL || !c->origin->admin || !le_conn_is_open(c))
      continue;
    le_conn_abort(c, LE_ESHUTDOWN);
    n++;
  }
  return n;
}

static void on_reload_timer(uv_timer_t *t) {
  le_server *s = t->data;
  if (s->stopping) return;
  le_logf(&s->log, LE_LOG_INFO, "reloading on the admin's request");
  le_server_reload(s);
}

/* The conn context's reload hook: the reload runs from the loop, outside
 * the admin coroutine that asked for it (it loads code and may close
 * listeners). */
static void request_reload(le_conn_ctx *ctx) {
  le_server *s = server_of_conns(ctx);
  uv_timer_start(&s->reload_timer, on_reload_timer, 0, 0);
}

/* A reload keeps the admin listener as it started. */
static void check_admin_change(le_server *s, const le_config *cfg) {
  const char *was = s->admin_conf ? s->admin_conf->address : NULL;
  const char *now = cfg->admin ? cfg->admin->address : NULL;
  if (!same_path(was, now))
    le_logf(&s->log, LE_LOG_WARN,
            "admin: a change of address takes effect at the next start; "
            "keeping %s", was ? was : "none");
}

int le_server_listen(le_server *s, char *err, size_t errlen) {
  /* Watches go in before the first "listening on" line, so a save made as
   * soon as the server reports ready is seen. */
  start_watches(s);
  le_listener **tail = &s->listeners;
  for (size_t i = 0; i < s->cfg->nlisteners; i++) {
    const le_listener_conf *conf = &s->cfg->listeners[i];
    le_listener *l =
        open_listener(s, conf, script_for(s, s->cfg, conf), 0, err, errlen);
    if (l == NULL) return -1;
    *tail = l;
    tail = &l->next;
    le_logf(&s->log, LE_LOG_INFO, "listening on %s", l->bound);
  }
  if (s->admin_conf != NULL && open_admin(s, err, errlen) != 0) return -1;
  le_logf(&s->log, LE_LOG_INFO, "luaecho %s running as pid %ld with %s",
          LE_VERSION, (long)getpid(),
          s->cfg->path ? s->cfg->path : "built-in defaults");
  return 0;
}

static void close_listeners(le_server *s) {
  if (s->admin != NULL) close_listener(s->admin);
  s->admin = NULL;
  while (s->listeners != NULL) {
    le_listener *l = s->listeners;
    s->listeners = l->next;
    close_listener(l);
  }
}

/* ---- reloading the configuration ---- */

static le_listener *find_listener(le_server *s, const char *address) {
  for (le_listener *l = s->listeners; l != NULL; l = l->next)
    if (!l->keep && strcmp(l->conf->address, address) == 0) return l;
  return NULL;
}

/* Switches to cfg: listeners that stay keep their sockets and take the new
 * settings, new ones are opened, removed ones closed (their connections
 * finish normally). All or nothing: if a handler fails to load or a new
 * address cannot be bound, nothing changes. Takes cfg on success. */
static int apply_config(le_server *s, le_config *cfg, char *err,
                        size_t errlen) {
  size_t n = cfg->nlisteners;
  le_listener **same = calloc(n, sizeof *same), **fresh = calloc(n, sizeof *fresh);
  int r = same && fresh ? 0 : -1;
  if (r != 0) snprintf(err, errlen, "out of memory");
  for (size_t i = 0; r == 0 && i < n; i++)
    if (load_script(s, le_config_listener_handler(cfg, &cfg->listeners[i]),
                    err, errlen) == NULL)
      r = -1;
  for (size_t i = 0; r == 0 && i < n; i++) {
    const le_listener_conf *conf = &cfg->listeners[i];
    same[i] = find_listener(s, conf->address);
    if (same[i] != NULL)
      same[i]->keep = 1;
    else if ((fresh[i] = open_listener(s, conf, script_for(s, cfg, conf), 0,
                                       err, errlen)) == NULL)
      r = -1;
  }
  for (le_listener **p = &s->listeners; *p != NULL;) {
    le_listener *l = *p;
    if (r != 0 || l->keep) {
      l->keep = 0;
      p = &l->next;
      continue;
    }
    *p = l->next;
    le_logf(&s->log, LE_LOG_INFO, "stopped listening on %s", l->bound);
    close_listener(l);
  }
  for (size_t i = 0; i < n; i++) {
    if (r != 0) {
      if (fresh && fresh[i]) close_listener(fresh[i]);
      continue;
    }
    le_listener *l = same[i] ? same[i] : fresh[i];
    le_script *script = script_for(s, cfg, &cfg->listeners[i]);
    le_script_ref(script);
    le_script_unref(l->script);
    l->script = script;
    l->conf = &cfg->listeners[i];
    if (fresh[i] != NULL) {
      l->next = s->listeners;
      s->listeners = l;
      le_logf(&s->log, LE_LOG_INFO, "listening on %s", l->bound);
    }
  }
  free(same);
  free(fresh);
  prune_scripts(s);
  return r;
}

int le_server_reload(le_server *s) {
  for (le_script *sc = s->scripts; sc != NULL; sc = sc->next)
    if (sc->path != NULL) reload_script(s, sc);
  if (s->reload_config == NULL) return 0;
  char err[1024];
  le_config *cfg = calloc(1, sizeof *cfg);
  int r = cfg ? s->reload_config(s->reload_arg, cfg, err, sizeof err) : -1;
  if (cfg == NULL) snprintf(err, sizeof err, "out of memory");
  if (r == 0) check_admin_change(s, cfg);
  if (r == 0) r = apply_config(s, cfg, err, sizeof err);
  if (r != 0) {
    s->conns.stats.reloads_rejected++;
    le_logf(&s->log, LE_LOG_ERROR,
            "config reload failed: %s; keeping the running configuration",
            err);
    if (cfg) le_config_free(cfg);
    free(cfg);
    return -1;
  }
  le_config_free(s->cfg);
  free(s->cfg);
  s->cfg = cfg;
  s->log.level = cfg->log_level;
  le_script_set_cpu_limit(s->L, cfg->opts.cpu_limit);
  s->mem.limit = cfg->max_memory;
  start_watches(s);
  s->conns.stats.reloads++;
  le_logf(&s->log, LE_LOG_INFO, "config reloaded%s%s",
          cfg->path ? " from " : "", cfg->path ? cfg->path : "");
  return 0;
}

/* ---- shutdown ---- */

static void close_if_open(uv_handle_t *h) {
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* Closes the last handles that keep the loop running. */
static void finish(le_server *s) {
  if (s->signals_open) {
    close_if_open((uv_handle_t *)&s->sigint);
    close_if_open((uv_handle_t *)&s->sigterm);
    close_if_open((uv_handle_t *)&s->sighup);
  }
  close_if_open((uv_handle_t *)&s->drain_timer);
  close_if_open((uv_handle_t *)&s->reload_timer);
  le_conn_ctx_close(&s->conns);
}

/* The plural ending for n connections. */
static const char *plural(size_t n) { return n == 1 ? "" : "s"; }

static void on_drain_timeout(uv_timer_t *t) {
  le_server *s = t->data;
  le_logf(&s->log, LE_LOG_WARN, "shutdown timeout: closing %zu connection%s",
          s->conns.count, plural(s->conns.count));
  le_conn_ctx_abort_all(&s->conns, LE_ESHUTDOWN);
}

static void on_conn_freed(le_conn_ctx *ctx) {
  le_server *s = server_of_conns(ctx);
  if (s->stopping && ctx->count == 0) finish(s);
}

void le_server_stop(le_server *s, const char *why) {
  if (s->stopping) {
    le_logf(&s->log, LE_LOG_WARN, "%s again: closing %zu connection%s now",
            why, s->conns.count, plural(s->conns.count));
    le_conn_ctx_abort_all(&s->conns, LE_ESHUTDOWN);
    return;
  }
  s->stopping = 1;
  close_listeners(s);
  stop_watches(s);
  size_t left = s->conns.count - abort_admin_conns(s);
  le_logf(&s->log, LE_LOG_INFO,
          "shutting down on %s: %zu connection%s to drain (up to %gs)", why,
          left, plural(left), s->cfg->shutdown_timeout);
  if (s->conns.count == 0) {
    finish(s);
    return;
  }
  uv_timer_start(&s->drain_timer, on_drain_timeout,
                 (uint64_t)(s->cfg->shutdown_timeout * 1000.0), 0);
}

static void on_signal(uv_signal_t *h, int signum) {
  le_server *s = h->data;
  if (signum == SIGHUP) {
    le_logf(&s->log, LE_LOG_INFO, "reloading on SIGHUP");
    if (!s->stopping) le_server_reload(s);
    return;
  }
  le_server_stop(s, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

static int start_signals(le_server *s) {
  uv_signal_init(&s->loop, &s->sigint);
  uv_signal_init(&s->loop, &s->sigterm);
  uv_signal_init(&s->loop, &s->sighup);
  s->sigint.data = s->sigterm.data = s->sighup.data = s;
  s->signals_open = 1;
  int r = uv_signal_start(&s->sigint, on_signal, SIGINT);
  if (r == 0) r = uv_signal_start(&s->sigterm, on_signal, SIGTERM);
  if (r == 0) r = uv_signal_start(&s->sighup, on_signal, SIGHUP);
  return r;
}

int le_server_run(le_server *s) {
  uv_run(&s->loop, UV_RUN_DEFAULT);
  le_logf(&s->log, LE_LOG_INFO, "stopped");
  return 0;
}

/* ---- set-up and tear-down ---- */

/* Trace lines go to trace_file, or else to the log's stream with the log's
 * prefix. The file is opened for appending at start. */
static int open_trace(le_server *s, char *err, size_t errlen) {
  s->trace_fd = -1;
  if (s->cfg->trace_file == NULL) {
    le_trace_init(&s->trace, fileno(stderr), 1);
    return 0;
  }
  s->trace_fd = open(s->cfg->trace_file, O_WRONLY | O_CREAT | O_APPEND |
                     O_CLOEXEC, 0644);
  if (s->trace_fd < 0) {
    snprintf(err, errlen, "cannot open trace_file %s: %s", s->cfg->trace_file,
             strerror(errno));
    return -1;
  }
  le_trace_init(&s->trace, s->trace_fd, 0);
  return 0;
}

int le_server_init(le_server *s, le_config *cfg, char *err, size_t errlen) {
  int r;
  memset(s, 0, sizeof *s);
  s->trace_fd = -1;
  s->cfg = cfg;
  le_log_init(&s->log, cfg->log_level, stderr);
  r = uv_loop_init(&s->loop);
  if (r < 0) {
    snprintf(err, errlen, "cannot create the event loop: %s", uv_strerror(r));
    return -1;
  }
  s->loop_open = 1;
  uv_timer_init(&s->loop, &s->drain_timer);
  s->drain_timer.data = s;
  uv_timer_init(&s->loop, &s->reload_timer);
  s->reload_timer.data = s;
  s->admin_conf = cfg->admin; /* kept as it started (check_admin_change) */
  cfg->admin = NULL;
  if (open_trace(s, err, errlen) != 0) return -1;
  if (open_lua(&s->loop, &s->conns, &s->log, cfg, &s->mem, &s->L) != 0) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  s->conns.trace = &s->trace;
  s->conns.on_freed = on_conn_freed;
  s->conns.reload = request_reload;
  /* Signal handlers go in before any listener exists, so a SIGTERM sent as
   * soon as a "listening on" line appears already means an orderly stop. */
  r = start_signals(s);
  if (r < 0) {
    snprintf(err, errlen, "cannot handle signals: %s", uv_strerror(r));
    return -1;
  }
  return load_handlers(s, err, errlen);
}

void le_server_free(le_server *s) {
  if (s->loop_open) {
    close_listeners(s);
    stop_watches(s);
    le_conn_ctx_abort_all(&s->conns, LE_ESHUTDOWN);
    finish(s);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_loop_close(&s->loop);
  }
  /* Lua goes last: write callbacks run by the loop above release strings
   * that live in it, and scripts release their functions. */
  while (s->scripts != NULL) {
    le_script *sc = s->scripts;
    s->scripts = sc->next;
    le_script_unref(sc);
  }
  if (s->L != NULL) lua_close(s->L);
  le_conn_ctx_free(&s->conns);
  le_trace_close(&s->trace);
  if (s->trace_fd >= 0) close(s->trace_fd);
  if (s->cfg != NULL) le_config_free(s->cfg);
  free(s->cfg);
  if (s->admin_conf != NULL) {
    free(s->admin_conf->address);
    free(s->admin_conf);
  }
  memset(s, 0, sizeof *s);
}

/* What --check can learn about a listener's address without binding it:
 * that its host name resolves, that a unix socket's directory exists.
 * Returns 0, or -1 with the message the server would give. */
static int check_address(const le_listener_conf *conf, char *err,
                         size_t errlen) {
  char why[300];
  struct sockaddr_storage ss;
  int r = conf->addr.kind == LE_ADDR_UNIX
              ? check_socket_dir(conf->addr.path, why, sizeof why)
              : resolve(&conf->addr, &ss, why, sizeof why);
  if (r != 0) snprintf(err, errlen, "cannot listen on %s: %s", conf->address, why);
  return r;
}

int le_server_check(const le_config *cfg, FILE *out, char *err,
                    size_t errlen) {
  /* Handlers are loaded exactly as the server would, luaecho module
   * included, in a loop that never runs. */
  uv_loop_t loop;
  le_conn_ctx ctx;
  le_log log;
  le_mem mem;
  lua_State *L = NULL;
  memset(&ctx, 0, sizeof ctx);
  le_log_init(&log, cfg->log_level, stderr);
  if (uv_loop_init(&loop) != 0) {
    snprintf(err, errlen, "cannot create the event loop");
    return -1;
  }
  int r = open_lua(&loop, &ctx, &log, cfg, &mem, &L);
  if (r != 0) snprintf(err, errlen, "out of memory");
  for (size_t i = 0; r == 0 && i < cfg->nlisteners; i++) {
    const char *handler = le_config_listener_handler(cfg, &cfg->listeners[i]);
    r = check_address(&cfg->listeners[i], err, errlen);
    if (r == 0) r = le_script_load(L, handler, err, errlen);
    lua_settop(L, 0);
    if (r == 0)
      fprintf(out, "would listen on %s with handler %s\n",
              cfg->listeners[i].address, le_script_name(handler));
  }
  if (r == 0 && cfg->admin != NULL) {
    r = check_address(cfg->admin, err, errlen);
    if (r == 0)
      fprintf(out, "would serve the admin interface on %s\n",
              cfg->admin->address);
  }
  if (L != NULL) lua_close(L);
  le_conn_ctx_close(&ctx);
  uv_run(&loop, UV_RUN_DEFAULT);
  le_conn_ctx_free(&ctx);
  uv_loop_close(&loop);
  return r;
}
