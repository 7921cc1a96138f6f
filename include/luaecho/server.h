/* The server: one libuv loop, one Lua state, the listeners, the handler
 * scripts and their directory watches, and the signal handling around them.
 * Everything mutable lives in le_server; there is no process-wide state, so
 * later several servers (one per worker thread) can run side by side.
 *
 * Start-up: le_server_init loads every handler, le_server_listen binds every
 * listener and logs "listening on ADDR" for each, le_server_run serves until
 * SIGINT or SIGTERM. Shutdown closes the listeners, lets open connections
 * finish for up to shutdown_timeout seconds, closes the rest, and returns.
 *
 * The admin listener (cfg->admin, docs/admin.md), when configured, is one
 * more listener, opened after the others and kept as it started through
 * reloads; its connections run the bundled handler luaecho.admin and are
 * closed at once when a shutdown begins. Its `reload` command reloads
 * through the conn context's reload hook, on the next loop turn.
 *
 * Hot swap: a saved handler file (or a module next to it) is loaded as a
 * new version for new connections while open ones finish on theirs; SIGHUP
 * reloads the handlers and the configuration (listeners added and removed,
 * options for new connections). A version or configuration that fails to
 * load is rejected with a log line and the running one stays in force.
 *
 * Limits: a listener accepts only while the accepted connections are under
 * max_connections (the global cap and its own); at a cap it stops watching
 * its socket, so clients wait in the kernel's backlog and the loop sleeps,
 * and it starts again when a connection ends. Out of descriptors (EMFILE,
 * ENFILE), waiting clients are accepted with a reserve descriptor and
 * closed at once (shed), and a warning counts them at most once a second.
 */
#ifndef LUAECHO_SERVER_H
#define LUAECHO_SERVER_H

#include <stdio.h>
#include <uv.h>

#include "luaecho/config.h"
#include "luaecho/conn.h"
#include "luaecho/lmem.h"
#include "luaecho/log.h"
#include "luaecho/script.h"
#include "luaecho/watch.h"

typedef struct le_server le_server;
typedef struct le_listener le_listener;

/* Builds a fresh configuration for a reload (main knows the config file
 * and the command-line overrides). Returns 0 or -1 with err set. */
typedef int (*le_config_loader)(void *arg, le_config *cfg, char *err,
                                size_t errlen);

struct le_listener {
  uv_poll_t poll;      /* readiness of fd; owned here */
  int fd;              /* the listening socket, or -1 */
  uv_handle_type type; /* UV_TCP or UV_NAMED_PIPE */
  le_server *server;
  const le_listener_conf *conf;      /* in the configuration in force */
  le_script *script;                 /* the handler its connections run */
  size_t nconns;                     /* its accepted connections still alive */
  char bound[LE_ADDR_HOST_MAX + 16]; /* the address actually bound */
  le_conn_origin *origin;            /* what its connections name it by */
  unsigned poll_open : 1;            /* poll was initialized */
  unsigned polling : 1;              /* poll is started: accepting */
  unsigned full : 1;                 /* paused by max_connections */
  unsigned closing : 1;              /* close_listener was called */
  unsigned closed : 1;               /* its handle and socket are gone */
  unsigned unlink_path : 1;          /* a unix socket file we created */
  unsigned keep : 1;                 /* scratch flag while applying a reload */
  unsigned admin : 1;                /* the admin listener (docs/admin.md) */
  le_listener *next;                 /* in the server's list */
};

/* How long a client may take to connect (to each address it tries). */
#define LE_CLIENT_CONNECT_TIMEOUT_MS 10000
/* The most addresses of a host name a client tries, in the resolver's
 * order ("localhost" is often ::1, then 127.0.0.1). */
#define LE_CLIENT_ADDRS_MAX 8

/* Client mode (luaecho --connect): the outbound connections that run the
 * client script, and the exit status they make. */
typedef struct le_clients {
  le_script *script;       /* the client script (on the script list) */
  const char *const *args; /* the script's arguments; not owned */
  int nargs;
  size_t left;                    /* clients connecting or running */
  int status;                     /* the highest exit status so far */
  char address[LE_ADDR_TEXT_MAX]; /* where they connect, for messages */
  char path[LE_ADDR_PATH_MAX];    /* a unix socket's path, or "" */
  struct sockaddr_storage addrs[LE_CLIENT_ADDRS_MAX]; /* TCP: to try */
  int naddrs;
  uint8_t *tried; /* per client: how many of addrs it has tried */
} le_clients;

struct le_server {
  uv_loop_t loop;
  lua_State *L; /* handlers and their coroutines live here */
  le_mem mem;   /* L's allocator: counts and caps its memory */
  le_log log;
  le_trace trace;                 /* trace lines of traced connections */
  int trace_fd;                   /* trace_file's descriptor, or -1 */
  le_conn_ctx conns;              /* every connection of this loop */
  le_config *cfg;                 /* the configuration in force; owned */
  le_config_loader reload_config; /* for SIGHUP; may be NULL */
  void *reload_arg;
  le_listener *listeners;
  le_script *scripts; /* one per distinct handler file */
  le_watch *watches;  /* one per handler directory */
  uv_signal_t sigint, sigterm, sighup;
  uv_timer_t drain_timer;       /* bounds the shutdown drain */
  size_t accepted;              /* accepted connections still alive */
  size_t fd_limit;              /* RLIMIT_NOFILE's soft limit at start */
  int reserve_fd;               /* kept free to shed with at EMFILE, or -1 */
  size_t shed;                  /* connections shed since the last report */
  int shed_err;                 /* why: UV_EMFILE or UV_ENFILE */
  uv_timer_t shed_timer;        /* paces the reports, once a second */
  uv_timer_t reload_timer;      /* a reload the admin asked for */
  le_listener_conf *admin_conf; /* the admin listener's, or NULL; owned */
  le_listener *admin;           /* the admin listener, or NULL */
  unsigned loop_open : 1;
  unsigned signals_open : 1;
  unsigned stopping : 1; /* shutdown has begun */
  le_clients clients;    /* client mode; unused when serving */
  unsigned starved : 1;  /* no descriptor even to shed with: every
                            listener waits for one to be freed */
};

/* Creates the loop and the Lua state and loads every handler of cfg; the
 * server owns cfg from here on (even on failure). Logs the descriptor limit
 * ("file descriptor limit: N") and the max_connections it implies. Returns
 * 0, or -1 with the message in err. */
int le_server_init(le_server *s, le_config *cfg, char *err, size_t errlen);

/* Binds and listens on every listener, logging "listening on ADDR" with
 * the address actually bound, and starts watching handler directories
 * unless the configuration says watch = false. Returns 0, or -1 with a
 * message such as "cannot listen on 127.0.0.1:7000: address already in use". */
int le_server_listen(le_server *s, char *err, size_t errlen);

/* Client mode: opens n connections to `address` ("host:port" or
 * "unix:/path"; a host name is resolved here) and runs the handler file at
 * `path` on each as handler(conn, args...), instead of listening. The
 * server stops once every client has ended; le_server_run then returns
 * the highest exit status of the clients (1 for a client that raised or
 * could not connect; a client may return an integer status). Returns 0,
 * or -1 with the message in err. */
int le_server_connect(le_server *s, const char *address, const char *path,
                      size_t n, const char *const *args, int nargs, char *err,
                      size_t errlen);

/* Serves until a shutdown completes. Returns the process exit status. */
int le_server_run(le_server *s);

/* Begins an orderly shutdown, as SIGTERM does; a second call closes every
 * connection at once. `why` names the cause in the log. */
void le_server_stop(le_server *s, const char *why);

/* Reloads every handler and, when reload_config is set, the configuration,
 * as SIGHUP does. Returns 0, or -1 when the new configuration was rejected
 * (the reason is logged). */
int le_server_reload(le_server *s);

/* Closes whatever is still open and releases everything. */
void le_server_free(le_server *s);

/* Loads every handler of cfg in a scratch Lua state and prints what would
 * listen to `out`, one "would listen on ADDR with handler FILE" line per
 * listener. Returns 0, or -1 with the first error in err. */
int le_server_check(const le_config *cfg, FILE *out, char *err, size_t errlen);

#endif
