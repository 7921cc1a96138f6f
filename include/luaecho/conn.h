/* One connection, accepted or outbound: its socket, its timer and requests,
 * and the one close path. Its Lua face (le_lconn) is embedded and driven
 * from here.
 *
 * The socket's life (c->state), and the only transitions allowed
 * (asserted in set_state):
 *
 *   CONNECTING --connected-->                 OPEN
 *   CONNECTING --failed, timed out, cancelled--> CLOSING
 *   OPEN       --graceful close (io_close)-->   DRAINING
 *   OPEN       --le_conn_close-->               CLOSING
 *   DRAINING   --flushed and the peer's FIN seen, or its deadline-->
 *                                               CLOSING
 *   CLOSING    --the socket's close callback--> CLOSED
 *
 * CONNECTING: an outbound connect is in flight. OPEN: the handler reads and
 * writes. DRAINING: the handler is done with it; queued output is flushed,
 * our FIN sent, and input read and discarded until the peer's FIN, for up
 * to LE_LINGER_MS, so that closing with unread input does not turn into an
 * RST that destroys the reply. CLOSING: uv_close was called. CLOSED: the
 * handle is gone. Beside the state, two facts about the directions: `fin`
 * (our FIN: none, requested, sent) and `peer_fin` (the peer's FIN or a
 * read error was seen), and one about the handler: `handler_done`.
 *
 * Memory: an idle connection holds only what it must (the socket handle and
 * the Lua face); its timer and its connect or shutdown request are
 * allocated when first needed and released on their own close callbacks.
 * Idleness needs no per-connection timer: the loop sweeps every connection
 * four times a second (le_lconn_check_idle).
 *
 * Lifetime: a connection is freed when it is CLOSED and its handler has
 * ended, in either order: in the socket's close callback if that comes
 * last, else at the end of that loop iteration (the loop's reaper), never
 * inside a call chain that still uses it. Every socket event passes through
 * one function here (on_read, on_write, on_shutdown, on_connected,
 * on_timer, le_conn_close), the place where a trace line can be emitted.
 */
#ifndef LUAECHO_CONN_H
#define LUAECHO_CONN_H

#include <uv.h>

#include "luaecho/lconn.h"
#include "luaecho/log.h"
#include "luaecho/preempt.h"

/* Seconds a connection whose handler ended may spend flushing queued output
 * to a peer that does not read, when send_timeout is off. */
#define LE_DEFAULT_FLUSH_TIMEOUT 30.0

/* How long a closing connection waits for the peer's FIN after sending its
 * own, reading and discarding input meanwhile (see io_close in conn.c). */
#define LE_LINGER_MS 2000

/* How often the loop checks every connection's idle deadline. */
#define LE_IDLE_SWEEP_MS 250

typedef enum le_conn_state {
  LE_CONN_CONNECTING,
  LE_CONN_OPEN,
  LE_CONN_DRAINING,
  LE_CONN_CLOSING,
  LE_CONN_CLOSED
} le_conn_state;

typedef enum le_conn_fin {
  LE_FIN_NONE,    /* we have not asked for our FIN */
  LE_FIN_PENDING, /* uv_shutdown was called, its callback has not run */
  LE_FIN_SENT     /* its callback ran (the FIN went out, or could not) */
} le_conn_fin;

typedef struct le_conn le_conn;
typedef struct le_conn_ctx le_conn_ctx;
typedef struct le_conn_timer le_conn_timer;
typedef struct le_connect_req le_connect_req;

/* Counters of one loop's connections, for luaecho.stats() and metrics.
 * Per-connection byte and message counts are added in when a connection is
 * freed; le_conn_ctx_stats adds those of the live ones. */
typedef struct le_conn_stats {
  uint64_t accepted;      /* connections accepted */
  uint64_t connected;     /* outbound connections opened */
  uint64_t accept_errors; /* accepts that failed after the kernel's */
  uint64_t closed;        /* connections freed */
  uint64_t bytes_in, bytes_out;
  uint64_t msgs_in, msgs_out;
  uint64_t ended[LE_END_CONNECT_FAILED + 1]; /* freed, by le_end_reason */
  uint64_t reloads;          /* handler and config reloads that took */
  uint64_t reloads_rejected; /* and those rejected */
} le_conn_stats;

/* A listening address as its connections remember it, for the admin's
 * listings and metrics. The context keeps one per address ever listened on
 * for the loop's life, so a connection may outlive its listener (a reload
 * that drops it) and still name it. */
typedef struct le_conn_origin {
  char *name;         /* the bound address: "127.0.0.1:7000", "unix:/p" */
  uint64_t accepted;  /* connections accepted from it */
  uint64_t open;      /* of those, still live */
  unsigned admin : 1; /* the admin listener's */
  struct le_conn_origin *next;
} le_conn_origin;

/* What connections share within one loop: per-loop state, never global. */
struct le_conn_ctx {
  uv_loop_t *loop;
  lua_State *L; /* the loop's Lua state; handlers run here */
  const le_log *log;
  le_trace *trace;     /* where traced connections write, or NULL */
  le_conn_stats stats; /* counters; see le_conn_ctx_stats */
  char *read_buf;      /* one read buffer for every connection of the loop */
  size_t read_buf_size;
  le_conn *head;       /* every live connection */
  size_t count;        /* number of live connections */
  uint64_t next_id;    /* last connection id handed out */
  uv_timer_t sweep;    /* the idle sweep; owned here */
  uv_check_t reaper;   /* frees connections whose handler ended last */
  le_coro_sched sched; /* coroutines woken while another one runs ... */
  uv_idle_t waker;     /* ... are resumed from here, on the next turn */
  le_preempt preempt;  /* the watchdog that preempts long-running handlers */
  le_conn *reap;       /* connections waiting for the reaper */
  /* Called after a connection was freed (the count is already lower), with
   * the owner it was accepted for (NULL for outbound connections). */
  void (*on_freed)(le_conn_ctx *ctx, void *owner, int exit_status);
  le_conn_origin *origins; /* see le_conn_ctx_origin; owned here */
  /* Asks the server to reload as SIGHUP does, on a later loop turn (the
   * admin's `reload`); set by the server, NULL in a bare context. */
  void (*reload)(le_conn_ctx *ctx);
};

struct le_conn {
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } sock;                  /* the socket; owned here */
  le_conn_timer *timer;    /* deadlines; created on first use */
  /* An outbound connect in flight, or NULL; and once the connection is
   * CLOSED with its handler done, its place in ctx's reap list. The two
   * never overlap (libuv reports a connect, cancelled if need be, before
   * the socket's close callback), so they share the space. */
  union {
    le_connect_req *connect;
    le_conn *next_reap;
  };
  le_lconn lc;             /* the Lua face */
  le_conn_ctx *ctx;
  le_conn *prev, *next;      /* in ctx's list of live connections */
  void *owner;               /* opaque: what accepted it, for on_freed */
  le_conn_origin *origin;    /* the listener it came from, NULL outbound */
  uint32_t swept_queue;      /* write queue size (low bits) at the last sweep */
  uint8_t state;             /* le_conn_state */
  uint8_t fin;               /* le_conn_fin */
  unsigned peer_fin : 1;     /* the peer's FIN or a read error was seen */
  unsigned handler_done : 1; /* the handler coroutine has ended */
};

/* Initializes ctx for `loop` and starts its idle sweep and its preemption
 * watchdog, and prepares L's coroutine library (le_coro_open); the read
 * buffer is allocated here. Returns 0 or a negative error. */
int le_conn_ctx_init(le_conn_ctx *ctx, uv_loop_t *loop, lua_State *L,
                     const le_log *log);

/* Closes the context's handles and stops its watchdog; the loop must then
 * run to let them go. */
void le_conn_ctx_close(le_conn_ctx *ctx);

/* Frees the read buffer and the origins, after the loop has run the
 * handles' close. */
void le_conn_ctx_free(le_conn_ctx *ctx);

/* Takes over `fd`, a socket just accepted (type UV_TCP or UV_NAMED_PIPE),
 * and runs the newest version of `script` for it with `opts`. `owner` is
 * handed back to ctx->on_freed when the connection is freed. Returns the
 * connection, or NULL after logging why (fd is closed then). The
 * connection holds a reference to the script until it is freed. */
le_conn *le_conn_accept(le_conn_ctx *ctx, int fd, uv_handle_type type,
                        const le_opts *opts, le_script *script, void *owner);

/* Returns the context's record of the listening address `name`, adding it
 * on first use, or NULL when out of memory. */
le_conn_origin *le_conn_ctx_origin(le_conn_ctx *ctx, const char *name);

/* Records that the accepted connection c came from origin (counted in its
 * `accepted` and, while c lives, `open`). origin may be NULL. */
void le_conn_set_origin(le_conn *c, le_conn_origin *origin);

/* Reports the end of an outbound connect: status 0 (then the caller adopts
 * c->lc with le_lconn_adopt), a libuv error or LE_TIMEOUT (then c is
 * already closing). */
typedef void (*le_connect_cb)(le_conn *c, int status, void *arg);

/* Opens an outbound connection to `sa` (TCP) or `path` (unix; sa NULL),
 * giving up after timeout_ms (0: no limit). `cb` runs once, from the loop,
 * unless le_conn_cancel_connect is called first. Returns the connection,
 * or NULL with *err set when it could not even start. */
le_conn *le_conn_connect(le_conn_ctx *ctx, const struct sockaddr *sa,
                         const char *path, const le_opts *opts,
                         uint64_t timeout_ms, le_connect_cb cb, void *arg,
                         int *err);

/* Runs `script` as the handler of c, an outbound connection just
 * connected (from its le_connect_cb) that nothing adopted:
 * handler(conn, args...) as for an accepted connection. This is client
 * mode. `owner` and the handler's exit status reach ctx->on_freed.
 * Returns 0, or -1 when Lua is out of memory (c then closes). */
int le_conn_run(le_conn *c, le_script *script, const char *const *args,
                int nargs, void *owner);

/* Abandons a connect in progress: cb will not run, the socket closes. */
void le_conn_cancel_connect(le_conn *c);

/* Closes the connection at once. Idempotent; memory is released later. */
void le_conn_close(le_conn *c);

/* Ends the connection from the server's side: a waiting handler gets
 * nil, NAME (le_lconn_errname(why): "shutdown" for LE_ESHUTDOWN), the
 * socket closes, and a handler still suspended on anything else is ended
 * without being resumed. */
void le_conn_abort(le_conn *c, int why);

/* Writes the loop's counters, live connections included, into out. */
void le_conn_ctx_stats(const le_conn_ctx *ctx, le_conn_stats *out);

/* Returns the live connection with this id that runs a handler of its own
 * (accepted, or a client's), or NULL. */
le_conn *le_conn_ctx_find(le_conn_ctx *ctx, uint64_t id);

/* Calls fn for every live connection that runs a handler of its own, the
 * oldest first. fn must not free connections (it may start closing one). */
void le_conn_ctx_each(le_conn_ctx *ctx, void (*fn)(le_conn *c, void *arg),
                      void *arg);

/* Aborts the connections that came from an admin listener (at shutdown,
 * a page that watches the server must not hold up the drain of the
 * others). Returns how many. */
size_t le_conn_ctx_abort_admin(le_conn_ctx *ctx, int why);

/* Aborts every connection of ctx (le_conn_abort). */
void le_conn_ctx_abort_all(le_conn_ctx *ctx, int why);

/* Returns 1 when c is still open for its handler (not closing). */
static inline int le_conn_is_open(const le_conn *c) {
  return c->state <= LE_CONN_OPEN;
}

#endif
