/* Listeners, signals and shutdown: see include/luaecho/server.h.
 *
 * The path of a new connection starts in on_connection: the listener's
 * handler function is pushed and le_conn_accept takes over.
 */
#include "luaecho/server.h"

#include "luaecho/lmodule.h"

#include <errno.h>
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

static le_server *server_of_conns(le_conn_ctx *ctx) {
  return (le_server *)((char *)ctx - offsetof(le_server, conns));
}

/* ---- Lua state and handlers ---- */

static lua_State *new_lua_state(void) {
  lua_State *L = luaL_newstate();
  if (L == NULL) return NULL;
  /* Coroutines copy the main thread's extra space; NULL there marks
   * threads that are not handler coroutines (see coro.h). */
  *(void **)lua_getextraspace(L) = NULL;
  luaL_openlibs(L);
  le_lconn_open(L);
  return L;
}

/* Creates the loop's Lua state and connection context, with the luaecho
 * module registered. Returns 0 or -1 (out of memory). */
static int open_lua(uv_loop_t *loop, le_conn_ctx *ctx, const le_log *log,
                    lua_State **out) {
  lua_State *L = *out = new_lua_state();
  if (L == NULL || le_conn_ctx_init(ctx, loop, L, log) != 0) return -1;
  le_lmodule_open(ctx);
  return 0;
}

/* Returns the script for `path` (NULL: built-in), loading it the first time
 * a listener names it, or NULL with err set. */
static le_script *script_for(le_server *s, const char *path, char *err,
                             size_t errlen) {
  for (size_t i = 0; i < s->nscripts; i++) {
    const char *p = s->scripts[i].path;
    if ((p == NULL && path == NULL) || (p && path && strcmp(p, path) == 0))
      return &s->scripts[i];
  }
  le_script *sc = &s->scripts[s->nscripts];
  if (le_script_open(sc, s->L, path, err, errlen) != 0) return NULL;
  s->nscripts++;
  return sc;
}

static int load_handlers(le_server *s, char *err, size_t errlen) {
  s->scripts = calloc(s->cfg->nlisteners, sizeof *s->scripts);
  if (s->scripts == NULL) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  for (size_t i = 0; i < s->nlisteners; i++) {
    le_listener *l = &s->listeners[i];
    l->script = script_for(s, le_config_listener_handler(s->cfg, l->conf),
                           err, errlen);
    if (l->script == NULL) return -1;
  }
  return 0;
}

/* ---- listeners ---- */

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
  le_script_push(l->script, s->L);
  le_conn_accept(&s->conns, stream, &l->conf->opts);
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
  if (ss->ss_family == AF_INET)
    ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)a->port);
  else
    ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)a->port);
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

static int listen_unix(le_listener *l, char *why, size_t whylen) {
  const char *path = l->conf->addr.path;
  if (clear_stale_socket(path, &l->server->log, why, whylen) != 0) return -1;
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

int le_server_listen(le_server *s, char *err, size_t errlen) {
  for (size_t i = 0; i < s->nlisteners; i++) {
    le_listener *l = &s->listeners[i];
    char why[300];
    int r = l->conf->addr.kind == LE_ADDR_UNIX
                ? listen_unix(l, why, sizeof why)
                : listen_tcp(l, why, sizeof why);
    if (r != 0) {
      snprintf(err, errlen, "cannot listen on %s: %s", l->conf->address, why);
      return -1;
    }
    l->sock.handle.data = l;
    le_logf(&s->log, LE_LOG_INFO, "listening on %s", l->bound);
  }
  return 0;
}

static void close_listener(le_listener *l) {
  if (!l->open || uv_is_closing(&l->sock.handle)) return;
  uv_close(&l->sock.handle, NULL);
  if (l->unlink_path) unlink(l->conf->addr.path);
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
  }
  close_if_open((uv_handle_t *)&s->drain_timer);
}

static void abort_connections(le_server *s) {
  for (le_conn *c = s->conns.head, *next; c != NULL; c = next) {
    next = c->next;
    le_conn_abort(c);
  }
}

static void on_drain_timeout(uv_timer_t *t) {
  le_server *s = t->data;
  le_logf(&s->log, LE_LOG_WARN, "shutdown timeout: closing %zu connections",
          s->conns.count);
  abort_connections(s);
}

static void on_conn_freed(le_conn_ctx *ctx) {
  le_server *s = server_of_conns(ctx);
  if (s->stopping && ctx->count == 0) finish(s);
}

void le_server_stop(le_server *s, const char *why) {
  if (s->stopping) {
    le_logf(&s->log, LE_LOG_WARN, "%s again: closing %zu connections now",
            why, s->conns.count);
    abort_connections(s);
    return;
  }
  s->stopping = 1;
  for (size_t i = 0; i < s->nlisteners; i++) close_listener(&s->listeners[i]);
  le_logf(&s->log, LE_LOG_INFO,
          "shutting down on %s: %zu connections to drain (up to %gs)", why,
          s->conns.count, s->cfg->shutdown_timeout);
  if (s->conns.count == 0) {
    finish(s);
    return;
  }
  uv_timer_start(&s->drain_timer, on_drain_timeout,
                 (uint64_t)(s->cfg->shutdown_timeout * 1000.0), 0);
}

static void on_signal(uv_signal_t *h, int signum) {
  le_server_stop(h->data, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

static int start_signals(le_server *s) {
  uv_signal_init(&s->loop, &s->sigint);
  uv_signal_init(&s->loop, &s->sigterm);
  s->sigint.data = s->sigterm.data = s;
  s->signals_open = 1;
  int r = uv_signal_start(&s->sigint, on_signal, SIGINT);
  if (r == 0) r = uv_signal_start(&s->sigterm, on_signal, SIGTERM);
  return r;
}

int le_server_run(le_server *s) {
  uv_run(&s->loop, UV_RUN_DEFAULT);
  le_logf(&s->log, LE_LOG_INFO, "stopped");
  return 0;
}

/* ---- set-up and tear-down ---- */

int le_server_init(le_server *s, const le_config *cfg, char *err,
                   size_t errlen) {
  int r;
  memset(s, 0, sizeof *s);
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
  s->listeners = calloc(cfg->nlisteners, sizeof *s->listeners);
  if (s->listeners == NULL ||
      open_lua(&s->loop, &s->conns, &s->log, &s->L) != 0) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  s->conns.on_freed = on_conn_freed;
  /* Signal handlers go in before any listener exists, so a SIGTERM sent as
   * soon as a "listening on" line appears already means an orderly stop. */
  r = start_signals(s);
  if (r < 0) {
    snprintf(err, errlen, "cannot handle signals: %s", uv_strerror(r));
    return -1;
  }
  s->nlisteners = cfg->nlisteners;
  for (size_t i = 0; i < s->nlisteners; i++) {
    le_listener *l = &s->listeners[i];
    l->server = s;
    l->conf = &cfg->listeners[i];
  }
  return load_handlers(s, err, errlen);
}

void le_server_free(le_server *s) {
  if (s->loop_open) {
    for (size_t i = 0; i < s->nlisteners; i++)
      close_listener(&s->listeners[i]);
    abort_connections(s);
    finish(s);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_loop_close(&s->loop);
  }
  /* Lua goes last: write callbacks run by the loop above release strings
   * that live in it. */
  if (s->L != NULL) {
    for (size_t i = 0; i < s->nscripts; i++)
      le_script_close(&s->scripts[i], s->L);
    lua_close(s->L);
  }
  le_conn_ctx_free(&s->conns);
  free(s->scripts);
  free(s->listeners);
  memset(s, 0, sizeof *s);
}

int le_server_check(const le_config *cfg, FILE *out, char *err,
                    size_t errlen) {
  /* Handlers are loaded exactly as the server would, luaecho module
   * included, in a loop that never runs. */
  uv_loop_t loop;
  le_conn_ctx ctx;
  le_log log;
  lua_State *L = NULL;
  le_log_init(&log, cfg->log_level, stderr);
  if (uv_loop_init(&loop) != 0) {
    snprintf(err, errlen, "cannot create the event loop");
    return -1;
  }
  if (open_lua(&loop, &ctx, &log, &L) != 0) {
    snprintf(err, errlen, "out of memory");
    if (L) lua_close(L);
    le_conn_ctx_free(&ctx);
    uv_loop_close(&loop);
    return -1;
  }
  int r = 0;
  for (size_t i = 0; r == 0 && i < cfg->nlisteners; i++) {
    const char *handler = le_config_listener_handler(cfg, &cfg->listeners[i]);
    r = le_script_load(L, handler, err, errlen);
    lua_settop(L, 0);
    if (r == 0)
      fprintf(out, "would listen on %s with handler %s\n",
              cfg->listeners[i].address, le_script_name(handler));
  }
  lua_close(L);
  le_conn_ctx_free(&ctx);
  uv_loop_close(&loop);
  return r;
}
