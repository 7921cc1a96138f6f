/* The server: one libuv loop, one Lua state, the listeners and the signal
 * handling around them. Everything mutable lives in le_server; there is no
 * process-wide state, so later several servers (one per worker thread) can
 * run side by side.
 *
 * Start-up: le_server_init loads every handler, le_server_listen binds every
 * listener and logs "listening on ADDR" for each, le_server_run serves until
 * SIGINT or SIGTERM. Shutdown closes the listeners, lets open connections
 * finish for up to shutdown_timeout seconds, closes the rest, and returns.
 */
#ifndef LUAECHO_SERVER_H
#define LUAECHO_SERVER_H

#include <stdio.h>
#include <uv.h>

#include "luaecho/config.h"
#include "luaecho/conn.h"
#include "luaecho/log.h"
#include "luaecho/script.h"

typedef struct le_server le_server;
typedef struct le_listener le_listener;

struct le_listener {
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } sock;                        /* the listening socket; owned here */
  le_server *server;
  const le_listener_conf *conf;
  le_script *script;             /* the handler its connections run */
  char bound[LE_ADDR_HOST_MAX + 16]; /* the address actually bound */
  unsigned open : 1;             /* the handle was initialized */
  unsigned unlink_path : 1;      /* a unix socket file we created */
};

struct le_server {
  uv_loop_t loop;
  lua_State *L;                  /* handlers and their coroutines live here */
  le_log log;
  le_conn_ctx conns;             /* every connection of this loop */
  const le_config *cfg;
  le_listener *listeners;
  size_t nlisteners;
  le_script *scripts;            /* one per distinct handler file */
  size_t nscripts;
  uv_signal_t sigint, sigterm;
  uv_timer_t drain_timer;        /* bounds the shutdown drain */
  unsigned loop_open : 1;
  unsigned signals_open : 1;
  unsigned stopping : 1;         /* shutdown has begun */
};

/* Creates the loop and the Lua state and loads every handler of cfg, which
 * must outlive the server. Returns 0, or -1 with the message in err. */
int le_server_init(le_server *s, const le_config *cfg, char *err,
                   size_t errlen);

/* Binds and listens on every listener, logging "listening on ADDR" with
 * the address actually bound. Returns 0, or -1 with a message such as
 * "cannot listen on 127.0.0.1:7000: address already in use". */
int le_server_listen(le_server *s, char *err, size_t errlen);

/* Serves until a shutdown completes. Returns the process exit status. */
int le_server_run(le_server *s);

/* Begins an orderly shutdown, as SIGTERM does; a second call closes every
 * connection at once. `why` names the cause in the log. */
void le_server_stop(le_server *s, const char *why);

/* Closes whatever is still open and releases everything. */
void le_server_free(le_server *s);

/* Loads every handler of cfg in a scratch Lua state and prints what would
 * listen to `out`, one "would listen on ADDR with handler FILE" line per
 * listener. Returns 0, or -1 with the first error in err. */
int le_server_check(const le_config *cfg, FILE *out, char *err,
                    size_t errlen);

#endif
