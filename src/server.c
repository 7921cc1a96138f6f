/* Listeners, handler scripts, signals, reloads and shutdown: see
 * include/luaecho/server.h.
 *
 * The path of a new connection starts in on_acceptable: the server accepts
 * the socket itself (accept4), within the max_connections caps, and hands
 * it with the listener's handler script to le_conn_accept, which takes
 * over. libuv's own accept path is not used because it cannot pause
 * without holding a client, and sheds clients silently when out of
 * descriptors.
 */
#define _GNU_SOURCE /* accept4: non-blocking sockets in one call */
#include "luaecho/server.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <lualib.h>
#include <netdb.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/resource.h>
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
  if (ok)
    s->conns.stats.reloads++;
  else
    s->conns.stats.reloads_rejected++;
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
  le_logf(&s->log, LE_LOG_DEBUG,
          "a .lua file changed in %s: reloading the handlers there", w->dir);
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
    le_watch *w =
        seen ? NULL : le_watch_start(&s->loop, dir, on_dir_change, s, &err);
    if (w != NULL) {
      w->next = s->watches;
      s->watches = w;
    } else if (!seen) {
      le_logf(&s->log, LE_LOG_WARN, "cannot watch %s for changes: %s", dir,
              uv_strerror(err));
    }
  }
}

/* ---- limits: max_connections and descriptors ---- */

/* Connections one readiness event of a listener accepts before the loop
 * turns to other work; the rest are taken on its next turn. */
#define ACCEPT_BATCH 64

/* Waiting clients one shedding pass accepts and closes at most. */
#define SHED_BATCH 1024

/* The shortest interval between two "out of file descriptors" reports. */
#define SHED_REPORT_MS 1000

/* The plural ending for n connections. */
static const char *plural(size_t n) { return n == 1 ? "" : "s"; }

/* Returns the soft descriptor limit (main has raised it as far as it
 * goes), or 0 when there is none or it cannot be read. */
static size_t read_fd_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
    return 0;
  return (size_t)rl.rlim_cur;
}

/* Logs the descriptor limit and the max_connections in force. */
static void log_fd_limit(le_server *s) {
  size_t max = le_config_max_connections(s->cfg, s->fd_limit);
  char figure[32] = "unlimited", cap[32] = "none";
  if (s->fd_limit > 0) snprintf(figure, sizeof figure, "%zu", s->fd_limit);
  if (max > 0) snprintf(cap, sizeof cap, "%zu", max);
  le_logf(&s->log, LE_LOG_INFO,
          "file descriptor limit: %s, max_connections: %s", figure, cap);
}

/* Returns 1 when l may accept one more connection under both caps. */
static int has_room(const le_listener *l) {
  const le_server *s = l->server;
  if (l->admin) return 1;
  size_t global = le_config_max_connections(s->cfg, s->fd_limit);
  size_t own = (size_t)l->conf->max_connections;
  return (global == 0 || s->accepted < global) && (own == 0 || l->nconns < own);
}

static void on_acceptable(uv_poll_t *p, int status, int events);

/* Starts or stops watching l's socket as the caps and the descriptor
 * supply allow. A listener that does not watch its socket accepts nothing:
 * new clients wait in the kernel's backlog, and the loop sleeps. */
static void update_listener(le_listener *l) {
  le_server *s = l->server;
  if (l->closing || !l->poll_open) return;
  int room = has_room(l);
  if (room == l->full) {
    l->full = !room;
    if (room)
      le_logf(&s->log, LE_LOG_DEBUG, "accepting again on %s", l->bound);
    else
      le_logf(&s->log, LE_LOG_DEBUG,
              "max_connections reached on %s (%zu connection%s here, %zu in "
              "all): accepting paused",
              l->bound, l->nconns, plural(l->nconns), s->accepted);
  }
  int want = room && !s->starved;
  if (want == (int)l->polling) return;
  l->polling = want;
  if (want)
    uv_poll_start(&l->poll, UV_READABLE, on_acceptable);
  else
    uv_poll_stop(&l->poll);
}

static void update_listeners(le_server *s) {
  for (le_listener *l = s->listeners; l != NULL; l = l->next)
    update_listener(l);
}

/* Opens the reserve descriptor unless it is held. Returns 1 when held. */
static int hold_reserve(le_server *s) {
  if (s->reserve_fd < 0)
    s->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  return s->reserve_fd >= 0;
}

/* Pauses every listener (nothing to accept with) or lets them go on. */
static void set_starved(le_server *s, int starved) {
  if ((int)s->starved == starved) return;
  s->starved = starved;
  le_logf(&s->log, LE_LOG_DEBUG,
          starved ? "accepting paused on every listener until resources free up"
                  : "accepting again on every listener");
  update_listeners(s);
}

/* Logs the connections shed since the last report, if any. */
static void report_shed(le_server *s) {
  if (s->shed == 0) return;
  le_logf(&s->log, LE_LOG_WARN,
          "out of file descriptors (%s): shed %zu connection%s since the "
          "last report",
          uv_err_name(s->shed_err), s->shed, plural(s->shed));
  s->shed = 0;
}

/* Runs once a second while descriptors are short: reports what was shed
 * and lets starved listeners try again; stops after a quiet second. */
static void on_shed_timer(uv_timer_t *t) {
  le_server *s = t->data;
  int quiet = s->shed == 0 && !s->starved;
  report_shed(s);
  set_starved(s, !hold_reserve(s));
  if (quiet) uv_timer_stop(t);
}

/* Reports at once unless a report went out less than a second ago, in
 * which case the timer reports later. */
static void pace_report(le_server *s) {
  if (uv_is_active((uv_handle_t *)&s->shed_timer)) return;
  report_shed(s);
  uv_timer_start(&s->shed_timer, on_shed_timer, SHED_REPORT_MS, SHED_REPORT_MS);
}

/* Accepting failed for want of descriptors (err is UV_EMFILE or
 * UV_ENFILE). The clients waiting on l are accepted with the reserve
 * descriptor and closed at once, so they learn now instead of timing out
 * in the backlog; then the reserve is taken back. Without one, every
 * listener pauses until a connection ends or the timer tries again: the
 * socket stays readable, so watching it would spin. libuv's own trick is
 * the same, but silent; the server accepts itself to count. */
static void shed(le_listener *l, int err) {
  le_server *s = l->server;
  s->shed_err = err;
  if (s->reserve_fd >= 0) close(s->reserve_fd);
  s->reserve_fd = -1;
  for (int i = 0; i < SHED_BATCH; i++) {
    int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd >= 0) {
      close(fd);
      s->shed++;
    } else if (errno != EINTR && errno != ECONNABORTED) {
      break;
    }
  }
  set_starved(s, !hold_reserve(s));
  pace_report(s);
}

/* ---- listeners ---- */

/* Hands an accepted socket to a new connection and counts it. The admin
 * listener's connections (l->admin) do not count against the global cap:
 * an operator must be able to look at a server that refuses everyone
 * else. */
static void admit(le_listener *l, int fd) {
  le_server *s = l->server;
  le_conn *c =
      le_conn_accept(&s->conns, fd, l->type, &l->conf->opts, l->script, l);
  if (c == NULL) return;
  le_conn_set_origin(c, l->origin);
  l->nconns++;
  if (!l->admin) s->accepted++;
}

/* Returns 1 for an accept(2) error that concerns only the client it would
 * have returned (Linux passes pending network errors on this way), after
 * which the next one may be accepted. */
static int client_error(int err) {
  return err == EINTR || err == ECONNABORTED || err == EPROTO ||
         err == ENETDOWN || err == ENOPROTOOPT || err == EHOSTDOWN ||
         err == ENONET || err == EHOSTUNREACH || err == EOPNOTSUPP ||
         err == ENETUNREACH || err == EPERM;
}

/* Something other than descriptors is short (memory, buffers), or the
 * socket reported an error: every listener pauses for a second rather
 * than spin on a readable socket. */
static void accept_failed(le_listener *l, int err) {
  le_server *s = l->server;
  le_logf(&s->log, LE_LOG_WARN, "accept on %s failed: %s; pausing for a second",
          l->bound, uv_strerror(err));
  set_starved(s, 1);
  pace_report(s);
}

/* l's socket is readable: accepts while the caps allow, then pauses or
 * keeps watching as update_listener decides. A handler runs inside admit,
 * so l is checked again after each one. */
static void on_acceptable(uv_poll_t *p, int status, int events) {
  le_listener *l = p->data;
  (void)events;
  if (status < 0) {
    /* libuv stopped the handle; the listeners' retry starts it again. */
    l->polling = 0;
    accept_failed(l, status);
    return;
  }
  for (int i = 0; i < ACCEPT_BATCH && !l->closing && has_room(l); i++) {
    int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      admit(l, fd);
    } else if (errno == EMFILE || errno == ENFILE) {
      shed(l, -errno); /* libuv's error codes are negated errno values */
      break;
    } else if (errno == ENOBUFS || errno == ENOMEM) {
      accept_failed(l, -errno);
      break;
    } else if (!client_error(errno)) {
      break; /* EAGAIN: nobody else is waiting */
    }
  }
  update_listener(l);
}

/* Resolves a TCP address at start-up (so blocking is fine): a numeric form
 * directly, a name through the resolver. Fills ss with up to max addresses
 * in the resolver's order; returns how many, or -1 with why set. */
static int resolve_all(const le_addr *a, struct sockaddr_storage *ss, int max,
                       int flags, char *why, size_t whylen) {
  if (uv_ip4_addr(a->host, a->port, (struct sockaddr_in *)ss) == 0 ||
      uv_ip6_addr(a->host, a->port, (struct sockaddr_in6 *)ss) == 0)
    return 1;
  struct addrinfo hints, *res;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = flags;
  int r = getaddrinfo(a->host, NULL, &hints, &res);
  if (r != 0) {
    snprintf(why, whylen, "cannot resolve host '%s': %s", a->host,
             gai_strerror(r));
    return -1;
  }
  int n = 0;
  for (struct addrinfo *ai = res; ai != NULL && n < max; ai = ai->ai_next) {
    if (ai->ai_addrlen > sizeof ss[n]) continue;
    memcpy(&ss[n], ai->ai_addr, ai->ai_addrlen);
    le_addr_set_port((struct sockaddr *)&ss[n], a->port);
    n++;
  }
  freeaddrinfo(res);
  return n;
}

/* Resolves a TCP listen address to the one address to bind. */
static int resolve(const le_addr *a, struct sockaddr_storage *ss, char *why,
                   size_t whylen) {
  return resolve_all(a, ss, 1, AI_PASSIVE, why, whylen) < 0 ? -1 : 0;
}

/* Creates l's socket for `family`, as libuv would: non-blocking, closed
 * on exec; TCP ones reuse the address, so that a restart does not wait for
 * old connections in TIME_WAIT, and IPv6 ones take IPv4 too. Returns 0 or
 * a negative error. */
static int open_socket(le_listener *l, int family) {
  int on = 1, off = 0, r = 0;
  l->fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (l->fd < 0) return -errno;
  if (family != AF_UNIX)
    r = setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
  if (r == 0 && family == AF_INET6)
    r = setsockopt(l->fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
  return r == 0 ? 0 : -errno;
}

/* Listens on l's bound socket and starts watching it. Returns 0 or a
 * negative error. */
static int start_listening(le_listener *l) {
  if (listen(l->fd, l->conf->backlog) != 0) return -errno;
  int r = uv_poll_init_socket(&l->server->loop, &l->poll, l->fd);
  if (r < 0) return r;
  l->poll.data = l;
  l->poll_open = 1;
  update_listener(l);
  return 0;
}

static int listen_tcp(le_listener *l, char *why, size_t whylen) {
  struct sockaddr_storage ss;
  if (resolve(&l->conf->addr, &ss, why, whylen) != 0) return -1;
  socklen_t len = ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                           : sizeof(struct sockaddr_in);
  int r = open_socket(l, ss.ss_family);
  if (r == 0 && bind(l->fd, (struct sockaddr *)&ss, len) != 0) r = -errno;
  if (r == 0) r = start_listening(l);
  if (r < 0) {
    snprintf(why, whylen, "%s", uv_strerror(r));
    return -1;
  }
  len = sizeof ss;
  getsockname(l->fd, (struct sockaddr *)&ss, &len);
  le_addr_format_sockaddr((struct sockaddr *)&ss, len, l->bound,
                          sizeof l->bound);
  return 0;
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
  char dir[sizeof((struct sockaddr_un *)0)->sun_path];
  size_t n = le_addr_dir_len(path);
  if (n == 0) return 0;
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
  struct sockaddr_un un;
  memset(&un, 0, sizeof un);
  un.sun_family = AF_UNIX;
  memcpy(un.sun_path, path, strlen(path)); /* its length was checked */
  int r = open_socket(l, AF_UNIX);
  if (r == 0 && bind(l->fd, (struct sockaddr *)&un, sizeof un) != 0) r = -errno;
  if (r == 0) {
    l->unlink_path = 1;
    r = start_listening(l);
  }
  if (r < 0) {
    snprintf(why, whylen, "%s", uv_strerror(r));
    return -1;
  }
  snprintf(l->bound, sizeof l->bound, "unix:%s", path);
  return 0;
}

/* Frees l once its socket is closed and the last of its connections is
 * gone: until then, those connections still report to it. */
static void free_if_done(le_listener *l) {
  if (l->closed && l->nconns == 0) free(l);
}

static void on_poll_closed(uv_handle_t *h) {
  le_listener *l = h->data;
  l->closed = 1;
  free_if_done(l);
}

/* Closes a listener; its memory goes when its handle is closed and its
 * connections, which are not affected, have ended. The socket closes at
 * once, as libuv closes a stream's: uv_close has already stopped watching
 * it, and a client must be refused from now on. */
static void close_listener(le_listener *l) {
  if (l->closing) return;
  l->closing = 1;
  if (l->unlink_path) unlink(l->conf->addr.path);
  l->unlink_path = 0;
  le_script_unref(l->script);
  l->script = NULL;
  if (l->poll_open) uv_close((uv_handle_t *)&l->poll, on_poll_closed);
  if (l->fd >= 0) close(l->fd);
  l->fd = -1;
  if (!l->poll_open) {
    l->closed = 1;
    free_if_done(l);
  }
}

/* Binds a listener for conf running script and starts accepting. Returns
 * it (not yet on the list), or NULL with a message in err. */
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
  l->fd = -1;
  l->admin = (unsigned)admin;
  le_script_ref(script);
  char why[300];
  int r;
  if (conf->addr.kind == LE_ADDR_UNIX) {
    l->type = UV_NAMED_PIPE;
    r = listen_unix(l, why, sizeof why);
  } else {
    l->type = UV_TCP;
    r = listen_tcp(l, why, sizeof why);
  }
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
  socklen_t len = sizeof ss;
  if (getsockname(l->fd, (struct sockaddr *)&ss, &len) != 0) return 0;
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
            "keeping %s",
            was ? was : "none");
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
  }
  if (s->admin_conf != NULL && open_admin(s, err, errlen) != 0) return -1;
  /* Logged once every address is bound, so that a start-up failure is the
   * one line of its message. */
  log_fd_limit(s);
  for (le_listener *l = s->listeners; l != NULL; l = l->next)
    le_logf(&s->log, LE_LOG_INFO, "listening on %s", l->bound);
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
  le_listener **same = calloc(n, sizeof *same),
              **fresh = calloc(n, sizeof *fresh);
  int r = same && fresh ? 0 : -1;
  if (r != 0) snprintf(err, errlen, "out of memory");
  for (size_t i = 0; r == 0 && i < n; i++)
    if (load_script(s, le_config_listener_handler(cfg, &cfg->listeners[i]), err,
                    errlen) == NULL)
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
  /* On success the list is rebuilt in the config's order, so that a later
   * reload matches entries of the same address text (two "host:0") to
   * the listeners in the same order, oldest first. */
  le_listener **tail = &s->listeners;
  for (size_t i = 0; i < n; i++) {
    if (r != 0) {
      if (fresh && fresh[i]) close_listener(fresh[i]);
      continue;
    }
    le_listener *l = same[i] ? same[i] : fresh[i];
    *tail = l;
    tail = &l->next;
    le_script *script = script_for(s, cfg, &cfg->listeners[i]);
    le_script_ref(script);
    le_script_unref(l->script);
    l->script = script;
    l->conf = &cfg->listeners[i];
    if (fresh[i] != NULL)
      le_logf(&s->log, LE_LOG_INFO, "listening on %s", l->bound);
  }
  if (r == 0) *tail = NULL;
  free(same);
  free(fresh);
  prune_scripts(s);
  return r;
}

int le_server_reload(le_server *s) {
  for (le_script *sc = s->scripts; sc != NULL; sc = sc->next)
    if (sc->path != NULL) reload_script(s, sc);
  /* A client (luaecho --connect) runs on the built-in configuration:
   * applying it again would open its listener in a process that is no
   * server, and keep that process from ending with its clients. */
  if (s->reload_config == NULL || s->clients.script != NULL) return 0;
  char err[1024];
  le_config *cfg = calloc(1, sizeof *cfg);
  int r = cfg ? s->reload_config(s->reload_arg, cfg, err, sizeof err) : -1;
  if (cfg == NULL) snprintf(err, sizeof err, "out of memory");
  if (r == 0) check_admin_change(s, cfg);
  if (r == 0) r = apply_config(s, cfg, err, sizeof err);
  if (r != 0) {
    s->conns.stats.reloads_rejected++;
    le_logf(&s->log, LE_LOG_ERROR,
            "config reload failed: %s; keeping the running configuration", err);
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
  update_listeners(s); /* the caps may have changed */
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
  /* The signal handles stay open, only no longer holding the loop: a
   * signal during the rest of the teardown still reaches libuv instead of
   * killing the process (le_server_free closes them). */
  if (s->signals_open) {
    uv_unref((uv_handle_t *)&s->sigint);
    uv_unref((uv_handle_t *)&s->sigterm);
    uv_unref((uv_handle_t *)&s->sighup);
  }
  close_if_open((uv_handle_t *)&s->drain_timer);
  close_if_open((uv_handle_t *)&s->shed_timer);
  close_if_open((uv_handle_t *)&s->reload_timer);
  le_conn_ctx_close(&s->conns);
}

/* Closes the signal handles, last of all. libuv gives the signals their
 * default action back then, which for SIGINT and SIGTERM would end the
 * process in the middle of freeing the Lua state: they are ignored for
 * the little that is left. */
static void close_signals(le_server *s) {
  if (!s->signals_open) return;
  close_if_open((uv_handle_t *)&s->sigint);
  close_if_open((uv_handle_t *)&s->sigterm);
  close_if_open((uv_handle_t *)&s->sighup);
  s->signals_open = 0;
}

static void on_drain_timeout(uv_timer_t *t) {
  le_server *s = t->data;
  le_logf(&s->log, LE_LOG_WARN, "shutdown timeout: closing %zu connection%s",
          s->conns.count, plural(s->conns.count));
  le_conn_ctx_abort_all(&s->conns, LE_ESHUTDOWN);
}

/* A connection ended: if a listener accepted it, that listener and every
 * other one paused by the global cap may have room again. */
static void client_ended(le_server *s, int exit_status);

static void on_conn_freed(le_conn_ctx *ctx, void *owner, int exit_status) {
  le_server *s = server_of_conns(ctx);
  if (owner == (void *)&s->clients) {
    client_ended(s, exit_status);
    return;
  }
  le_listener *l = owner;
  if (l != NULL) {
    l->nconns--;
    if (!l->admin) s->accepted--;
    free_if_done(l);
  }
  if (s->stopping) {
    if (ctx->count == 0) finish(s);
    return;
  }
  if (s->starved) set_starved(s, !hold_reserve(s));
  update_listeners(s);
}

void le_server_stop(le_server *s, const char *why) {
  if (s->stopping) {
    le_logf(&s->log, LE_LOG_WARN, "%s again: closing %zu connection%s now", why,
            s->conns.count, plural(s->conns.count));
    le_conn_ctx_abort_all(&s->conns, LE_ESHUTDOWN);
    return;
  }
  s->stopping = 1;
  close_listeners(s);
  stop_watches(s);
  size_t left =
      s->conns.count - le_conn_ctx_abort_admin(&s->conns, LE_ESHUTDOWN);
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
  if (s->clients.script == NULL) le_logf(&s->log, LE_LOG_INFO, "stopped");
  return s->clients.status;
}

/* ---- client mode ---- */

/* One client ended (its connection freed, or it never connected): once
 * none is left, the server stops like after SIGTERM with nothing left.
 * After a signal (stopping already set) the last connection to go must
 * still finish, as on_conn_freed does for accepted ones. */
static void client_ended(le_server *s, int exit_status) {
  le_clients *cl = &s->clients;
  if (exit_status > cl->status) cl->status = exit_status;
  if (--cl->left == 0) s->stopping = 1;
  if (s->stopping && s->conns.count == 0) finish(s);
}

static void on_client_connected(le_conn *c, int status, void *arg);

/* Starts client i's connect to the next address it has not tried (the
 * unix socket when there is one). Returns 0, or a libuv error when no
 * address is left that takes a connect. */
static int connect_client(le_server *s, size_t i) {
  le_clients *cl = &s->clients;
  int r = UV_EAI_NONAME;
  if (cl->path[0] != '\0' && cl->tried[i]++ == 0)
    return le_conn_connect(&s->conns, NULL, cl->path, &s->cfg->opts,
                           LE_CLIENT_CONNECT_TIMEOUT_MS, on_client_connected,
                           &cl->tried[i], &r)
               ? 0
               : r;
  while (cl->path[0] == '\0' && cl->tried[i] < cl->naddrs) {
    const struct sockaddr *sa = (struct sockaddr *)&cl->addrs[cl->tried[i]++];
    if (le_conn_connect(&s->conns, sa, NULL, &s->cfg->opts,
                        LE_CLIENT_CONNECT_TIMEOUT_MS, on_client_connected,
                        &cl->tried[i], &r) != NULL)
      return 0;
  }
  return r;
}

/* A client's connect ended: it runs the script, or tries the name's next
 * address, or gives up with the last error. `arg` is its tried[] entry. */
static void on_client_connected(le_conn *c, int status, void *arg) {
  le_server *s = server_of_conns(c->ctx);
  le_clients *cl = &s->clients;
  size_t i = (size_t)((uint8_t *)arg - cl->tried);
  if (status < 0 && !s->stopping) {
    int r = connect_client(s, i);
    if (r == 0) return;
    if (r != UV_EAI_NONAME) status = r;
  }
  if (status < 0) {
    char name[32];
    le_logf(&s->log, LE_LOG_ERROR, "cannot connect to %s: %s", cl->address,
            le_lconn_errname(status, name, sizeof name));
    client_ended(s, 1);
    return;
  }
  if (le_conn_run(c, cl->script, cl->args, cl->nargs, cl) != 0) {
    le_logf(&s->log, LE_LOG_ERROR, "cannot start %s: out of memory",
            le_script_name(cl->script->path));
    client_ended(s, 1);
  }
}

int le_server_connect(le_server *s, const char *address, const char *path,
                      size_t n, const char *const *args, int nargs, char *err,
                      size_t errlen) {
  le_clients *cl = &s->clients;
  le_addr a;
  char why[300];
  if (le_addr_parse(address, &a, why, sizeof why) != 0) {
    snprintf(err, errlen, "--connect: invalid address '%s': %s", address, why);
    return -1;
  }
  if (a.kind == LE_ADDR_TCP) {
    cl->naddrs =
        resolve_all(&a, cl->addrs, LE_CLIENT_ADDRS_MAX, 0, why, sizeof why);
    if (cl->naddrs <= 0) {
      snprintf(err, errlen, "cannot connect to %s: %s", address,
               cl->naddrs < 0 ? why : "the name has no address");
      return -1;
    }
  } else {
    memcpy(cl->path, a.path, sizeof cl->path);
  }
  le_sandbox_for_client(s->L);
  cl->tried = calloc(n, 1);
  if (cl->tried == NULL) {
    snprintf(err, errlen, "cannot connect to %s: out of memory", address);
    return -1;
  }
  cl->script = load_script(s, path, err, errlen);
  if (cl->script == NULL) return -1;
  cl->args = args;
  cl->nargs = nargs;
  le_addr_format(&a, cl->address, sizeof cl->address);
  for (size_t i = 0; i < n; i++) {
    cl->left++;
    int r = connect_client(s, i);
    if (r != 0) {
      snprintf(err, errlen, "cannot connect to %s: %s", cl->address,
               uv_strerror(r));
      return -1;
    }
  }
  return 0;
}

/* ---- set-up and tear-down ---- */

/* Opens path for appending trace lines; returns the fd, or -1 with errno.
 * Opening a FIFO for writing waits for a reader, which would hold up the
 * start for good: a FIFO nobody reads yet is opened for reading and writing
 * instead (Linux lets a FIFO be opened so, without waiting), and its lines
 * wait there for a reader; once it is full the trace drops and counts
 * them. The fd is left blocking, for the trace's writer thread. */
static int open_trace_file(const char *path) {
  int flags = O_CREAT | O_APPEND | O_CLOEXEC | O_NONBLOCK;
  int fd = open(path, flags | O_WRONLY, 0644);
  if (fd < 0 && errno == ENXIO) fd = open(path, flags | O_RDWR, 0644);
  if (fd < 0) return -1;
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  return fd;
}

/* Trace lines go to trace_file, or else to the log's stream with the log's
 * prefix. The file is opened for appending at start. */
static int open_trace(le_server *s, char *err, size_t errlen) {
  s->trace_fd = -1;
  if (s->cfg->trace_file == NULL) {
    le_trace_init(&s->trace, fileno(stderr), 1);
    return 0;
  }
  s->trace_fd = open_trace_file(s->cfg->trace_file);
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
  s->reserve_fd = -1;
  s->cfg = cfg;
  le_log_init(&s->log, cfg->log_level, stderr);
  s->fd_limit = read_fd_limit();
  hold_reserve(s);
  r = uv_loop_init(&s->loop);
  if (r < 0) {
    snprintf(err, errlen, "cannot create the event loop: %s", uv_strerror(r));
    return -1;
  }
  s->loop_open = 1;
  uv_timer_init(&s->loop, &s->drain_timer);
  uv_timer_init(&s->loop, &s->shed_timer);
  s->drain_timer.data = s->shed_timer.data = s;
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
    /* Nothing new starts in the tear-down: a client whose connect the
     * aborts below cancel must not go on to the name's next address (as
     * after a start-up that failed half-way through its clients). */
    s->stopping = 1;
    close_listeners(s);
    stop_watches(s);
    le_conn_ctx_abort_all(&s->conns, LE_ESHUTDOWN);
    finish(s);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    close_signals(s);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_loop_close(&s->loop);
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
  }
  /* Lua goes last: write callbacks run by the loop above release strings
   * that live in it, and scripts release their functions. */
  while (s->scripts != NULL) {
    le_script *sc = s->scripts;
    s->scripts = sc->next;
    le_script_unref(sc);
  }
  if (s->L != NULL) lua_close(s->L);
  if (s->reserve_fd >= 0) close(s->reserve_fd);
  le_conn_ctx_free(&s->conns);
  le_trace_close(&s->trace);
  if (s->trace_fd >= 0) close(s->trace_fd);
  if (s->cfg != NULL) le_config_free(s->cfg);
  free(s->cfg);
  free(s->clients.tried);
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
  if (r != 0)
    snprintf(err, errlen, "cannot listen on %s: %s", conf->address, why);
  return r;
}

int le_server_check(const le_config *cfg, FILE *out, char *err, size_t errlen) {
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
