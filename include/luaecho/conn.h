/* One accepted connection: its libuv handles, its write requests and the one
 * close path. Its Lua face (le_lconn) is embedded and driven from here.
 *
 * Lifetime: a connection is freed in its close callback, and only once both
 * its handles are closed and its handler coroutine has ended, so neither
 * libuv nor Lua can ever reach freed memory. Every socket event of a
 * connection passes through one function in conn.c (on_read, on_write,
 * on_timer, le_conn_close), the place where a trace line can be emitted.
 */
#ifndef LUAECHO_CONN_H
#define LUAECHO_CONN_H

#include <uv.h>

#include "luaecho/lconn.h"
#include "luaecho/log.h"

/* Seconds a connection whose handler ended may spend flushing queued output
 * to a peer that does not read, when send_timeout is off. */
#define LE_DEFAULT_FLUSH_TIMEOUT 30.0

typedef struct le_conn le_conn;
typedef struct le_conn_ctx le_conn_ctx;

/* What connections share within one loop: per-loop state, never global. */
struct le_conn_ctx {
  uv_loop_t *loop;
  lua_State *L;       /* the loop's Lua state; handlers run here */
  const le_log *log;
  char *read_buf;     /* one read buffer for every connection of the loop */
  size_t read_buf_size;
  le_conn *head;      /* every live connection, for shutdown */
  size_t count;       /* number of live connections */
  uint64_t next_id;   /* last connection id handed out */
  /* Called after a connection was freed (the count is already lower). */
  void (*on_freed)(le_conn_ctx *ctx);
};

struct le_conn {
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } sock;                  /* the socket; owned here */
  uv_timer_t timer;        /* recv timeouts and the flush deadline */
  union {
    uv_connect_t connect;  /* an outbound connection's connect request */
    uv_shutdown_t shutdown; /* the flush-then-FIN request, always later */
  } req;
  void (*on_connect)(le_conn *c, int status, void *arg); /* while connecting */
  void *connect_arg;
  le_lconn lc;             /* the Lua face */
  le_conn_ctx *ctx;
  le_conn *prev, *next;    /* in ctx's list */
  int open_handles;        /* handles not yet through their close callback */
  unsigned closing : 1;    /* le_conn_close was called on the socket */
  unsigned flushing : 1;   /* waiting for queued output before closing */
  unsigned shutdown_sent : 1;    /* FIN requested (uv_shutdown called) */
  unsigned shutdown_pending : 1; /* ... and its callback has not run yet */
  unsigned handler_done : 1; /* the handler coroutine has ended */
};

/* Initializes ctx for `loop`; the read buffer is allocated here.
 * Returns 0 or UV_ENOMEM. */
int le_conn_ctx_init(le_conn_ctx *ctx, uv_loop_t *loop, lua_State *L,
                     const le_log *log);
void le_conn_ctx_free(le_conn_ctx *ctx);

/* Accepts a pending connection from `server` (a TCP or pipe listener) and
 * runs the newest version of `script` for it with `opts`. Returns the
 * connection, or NULL after logging why. The connection holds a reference
 * to the script until it is freed. */
le_conn *le_conn_accept(le_conn_ctx *ctx, uv_stream_t *server,
                        const le_opts *opts, le_script *script);

/* Reports the end of an outbound connect: status 0 (then the caller adopts
 * c->lc with le_lconn_adopt) or a libuv error (then c is already closing). */
typedef void (*le_connect_cb)(le_conn *c, int status, void *arg);

/* Opens an outbound connection to `sa` (TCP) or `path` (unix; sa NULL),
 * giving up after timeout_ms (0: no limit). `cb` runs once, from the loop,
 * unless le_conn_cancel_connect is called first. Returns the connection,
 * or NULL with *err set when it could not even start. */
le_conn *le_conn_connect(le_conn_ctx *ctx, const struct sockaddr *sa,
                         const char *path, const le_opts *opts,
                         uint64_t timeout_ms, le_connect_cb cb, void *arg,
                         int *err);

/* Abandons a connect in progress: cb will not run, the socket closes. */
void le_conn_cancel_connect(le_conn *c);

/* Closes the connection at once. Idempotent; memory is released later. */
void le_conn_close(le_conn *c);

/* Ends the connection from the server's side: a waiting handler gets
 * nil, "closed", the socket closes, and a handler still suspended on
 * anything else is ended without being resumed. */
void le_conn_abort(le_conn *c);

#endif
