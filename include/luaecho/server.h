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
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } sock;                        /* the listening socket; owned here */
  le_server *server;
  const le_listener_conf *conf;  /* in the configuration in force */
  le_script *script;             /* the handler its connections run */
  char bound[LE_ADDR_HOST_MAX + 16]; /* the address actually bound */
  le_conn_origin *origin;        /* what its connections name it by */
  unsigned open : 1;             /* the handle was initialized */
  unsigned unlink_path : 1;      /* a unix socket file we created */
  unsigned keep : 1;             /* scratch flag while applying a reload */
  unsigned admin : 1;            /* the admin listener (docs/admin.md) */
  le_listener *next;             /* in the server's list */
};

struct le_server {
  uv_loop_t loop;
  lua_State *L;                  /* handlers and their coroutines live here */
  le_mem mem;                    /* L's allocator: counts and caps its memory */
  le_log log;
  le_trace trace;                /* trace lines of traced connections */
  int trace_fd;                  /* trace_file's descriptor, or -1 */
  le_conn_ctx conns;             /* every connection of this loop */
  le_config *cfg;                /* the configuration in force; owned */
  le_config_loader reload_config; /* for SIGHUP; may be NULL */
  void *reload_arg;
  le_listener *listeners;
  le_script *scripts;            /* one per distinct handler file */
  le_watch *watches;             /* one per handler directory */
  uv_signal_t sigint, sigterm, sighup;
  uv_timer_t drain_timer;        /* bounds the shutdown drain */
  uv_timer_t reload_timer;       /* a reload the admin asked for */
  le_listener_conf *admin_conf;  /* the admin listener's, or NULL; owned */
  le_listener *admin;            /* the admin listener, or NULL */
  unsigned loop_open : 1;
  unsigned signals_open : 1;
  unsigned stopping : 1;         /* shutdown has begun */
};

/* Creates the loop and the Lua state and loads every handler of cfg; the
 * server owns cfg from here on (even on failure). Returns 0, or -1 with the
 * message in err. */
int le_server_init(le_server *s, le_config *cfg, char *err, size_t errlen);

/* Binds and listens on every listener, logging "listening on ADDR" with
 * the address actually bound, and starts watching handler directories
 * unless the configuration says watch = false. Returns 0, or -1 with a
 * message such as "cannot listen on 127.0.0.1:7000: address already in use". */
int le_server_listen(le_server *s, char *err, size_t errlen);

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
int le_server_check(const le_config *cfg, FILE *out, char *err,
                    size_t errlen);

#endif
