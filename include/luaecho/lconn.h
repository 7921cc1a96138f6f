/* The Lua face of a connection: the `conn` object a handler receives, its
 * methods (recv, send, shutdown, close, setopts, ...), and the handler
 * coroutine that runs with it.
 *
 * lconn keeps the connection state a handler sees, explicitly: received
 * bytes not yet returned (`in`), bytes queued for the kernel (`queued`), who
 * waits and for what (`reader`/`want`, `writer`), their deadlines, how each
 * direction ended (`in_err`, `out_err`), and where the connection stands
 * for its handler (`state`). It makes no socket calls itself: the connection
 * that embeds it supplies a table of I/O operations (le_lconn_io) and
 * reports socket events through the le_lconn_on_* functions, the way libuv
 * reports completions. So the same bindings can sit on TCP, Unix sockets
 * and, later, other transports, and are unit-tested without a network. (It
 * includes uv.h for uv_buf_t and the error codes only.)
 *
 * States, and the only transitions allowed (asserted):
 *
 *   OPEN  --the server ends it (timeout, idle, shutdown, abort)-->  ENDED
 *   OPEN  --conn:close(), the handler ends, the collector-->         CLOSED
 *   ENDED --conn:close(), the handler ends, the collector-->         CLOSED
 *
 * OPEN: every method works. ENDED: methods still work but I/O fails with
 * nil, err (err names why it ended: "idle", "shutdown", "closed").
 * CLOSED: using the connection raises "attempt to use a closed connection".
 *
 * Failures follow the gen_tcp/LuaSocket convention: a failed operation
 * returns nil and an error name ("closed", "timeout", "econnreset", ...);
 * misuse (a bad argument, a closed connection, the wrong coroutine) raises.
 */
#ifndef LUAECHO_LCONN_H
#define LUAECHO_LCONN_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <lua.h>
#include <uv.h>

#include "luaecho/buf.h"
#include "luaecho/coro.h"
#include "luaecho/log.h"
#include "luaecho/opts.h"
#include "luaecho/script.h"
#include "luaecho/trace.h"

#define LE_LCONN_METATABLE "luaecho.conn"

/* luaecho's own error codes: below libuv's, which end at UV_ERRNO_MAX
 * (-4096), and within 16 bits, the width of le_lconn's error fields;
 * le_lconn_errname names them. LE_TIMEOUT is luaecho's own deadline
 * ("timeout", retryable), not the kernel's "etimedout". */
#define LE_TIMEOUT (-5000)   /* a deadline passed: "timeout" */
#define LE_EIDLE (-5001)     /* ended by idle_timeout: "idle" */
#define LE_ESHUTDOWN (-5002) /* ended by the server's shutdown: "shutdown" */
#define LE_EKILLED (-5003)   /* closed from the admin listener: "killed" */
_Static_assert(LE_TIMEOUT < UV_ERRNO_MAX && LE_EKILLED >= INT16_MIN,
               "luaecho's error codes fit neither libuv's gap nor 16 bits");

/* Why a connection ended, for the trace, conn_summary and statistics.
 * The first cause recorded wins, except that a handler error replaces the
 * peer's FIN (it says more). */
typedef enum le_end_reason {
  LE_END_NONE,
  LE_END_PEER_FIN,      /* the peer closed its side */
  LE_END_RESET,         /* the peer reset the connection (RST, EPIPE) */
  LE_END_SOCKET_ERROR,  /* another socket error */
  LE_END_RETURNED,      /* the handler returned */
  LE_END_CLOSED,        /* the handler called conn:close() */
  LE_END_RESET_SENT,    /* the handler called conn:reset() */
  LE_END_HANDLER_ERROR, /* the handler raised (cpu_limit included) */
  LE_END_IDLE,          /* idle_timeout */
  LE_END_SEND_TIMEOUT,  /* send_timeout with send_timeout_close */
  LE_END_SHUTDOWN,      /* the server shut down */
  LE_END_KILLED,        /* closed from the admin listener */
  LE_END_COLLECTED,     /* its conn object was collected while open */
  LE_END_CONNECT_FAILED /* an outbound connect failed */
} le_end_reason;

/* Returns the reason's words ("peer FIN", "idle timeout", ...). */
const char *le_end_reason_name(le_end_reason r);

/* Returns the reason as an identifier ("peer_fin", "idle", ...), for
 * tables and metric labels. */
const char *le_end_reason_key(le_end_reason r);

/* How io->close closes. */
#define LE_CLOSE_GRACEFUL 0
#define LE_CLOSE_ABORT 1
#define LE_CLOSE_RESET 2

typedef enum le_lconn_state {
  LE_LCONN_OPEN,
  LE_LCONN_ENDED,
  LE_LCONN_CLOSED
} le_lconn_state;

typedef struct le_lconn le_lconn;
struct le_trace;

/* What the kernel knows of a socket: its queues (as `ss` shows Recv-Q and
 * Send-Q) and, for TCP, from TCP_INFO. */
typedef struct le_sockinfo {
  int inq, outq;     /* bytes unread by us; bytes not yet acked; -1 */
  int tcp;           /* 1 when the fields below are filled */
  const char *state; /* "ESTABLISHED", "CLOSE_WAIT", ... */
  double rtt_ms, rttvar_ms;
  unsigned retransmits; /* unanswered retransmits now */
  unsigned total_retrans;
  unsigned cwnd; /* congestion window, in segments */
  unsigned mss;
} le_sockinfo;

/* Writes a trace line for lc when its `trace` option is on; costs one test
 * of a flag when it is off. */
#define le_lconn_trace(lc, ...)                                               \
  do {                                                                        \
    if ((lc)->opts.trace) le_trace_event((lc)->trace, (lc)->id, __VA_ARGS__); \
  } while (0)

/* The socket operations a connection provides to its Lua face. */
typedef struct le_lconn_io {
  /* Writes what the kernel takes at once from bufs, without queueing.
   * Returns the number of bytes written (possibly 0) or a libuv error. */
  ssize_t (*try_write)(le_lconn *lc, const uv_buf_t *bufs, unsigned nbufs);
  /* Queues hdr (hlen <= 4 bytes, copied) then data behind earlier writes.
   * `data` stays valid until le_lconn_on_written reports this write with
   * the same `ref`. Returns 0 or a libuv error (then no report comes). */
  int (*queue_write)(le_lconn *lc, const char *hdr, size_t hlen,
                     const char *data, size_t len, int ref);
  /* Starts (on != 0) or stops reading from the socket. */
  void (*set_reading)(le_lconn *lc, int on);
  /* Arms the connection's timer to call le_lconn_on_timeout after `ms`
   * milliseconds, replacing any earlier deadline; ms < 0 disarms it. */
  void (*set_timer)(le_lconn *lc, int64_t ms);
  /* Returns the loop's current time in milliseconds. */
  uint64_t (*now)(le_lconn *lc);
  /* Sends FIN once queued output is written (half-close). */
  void (*shutdown_write)(le_lconn *lc);
  /* Applies the socket-level options in lc->opts (nodelay, keepalive). */
  void (*apply_sockopts)(le_lconn *lc);
  /* Fills what the kernel knows of the socket (conn:stats()); returns 0
   * or a libuv error. May be NULL. */
  int (*sockinfo)(le_lconn *lc, struct le_sockinfo *out);
  /* Writes the local address; returns 0 or a libuv error. */
  int (*sockname)(le_lconn *lc, char *host, size_t hostlen, int *port);
  /* Writes a unix socket peer's path ("" when unnamed or unknown); may be
   * NULL for transports without one. */
  void (*peer_path)(le_lconn *lc, char *path, size_t len);
  /* Closes the socket: after flushing queued output (LE_CLOSE_GRACEFUL),
   * at once (LE_CLOSE_ABORT), or with an RST that discards queued output
   * (LE_CLOSE_RESET). May be called more than once; the first call counts,
   * except that an abort or a reset cuts a flush short. */
  void (*close)(le_lconn *lc, int how);
  /* The handler coroutine has ended; the connection may now be freed once
   * its handles are closed. */
  void (*handler_done)(le_lconn *lc);
} le_lconn_io;

struct le_lconn {
  const le_lconn_io *io;  /* socket operations of the embedding connection */
  const le_log *log;      /* where handler errors go */
  struct le_trace *trace; /* where trace lines go, or NULL */
  lua_State *L;           /* main state */
  le_coro coro;           /* the handler coroutine (unused when outbound) */
  le_script *script;      /* the handler it runs (accepted connections) */
  le_coro_list tasks;     /* coroutines spawned by its handler */
  le_lconn *children;     /* outbound connections its coroutines opened */
  le_lconn *parent;       /* for an outbound connection: whose child it is */
  le_lconn *next_child, *prev_child; /* in parent->children */
  struct le__conn_ud *ud; /* the conn object; a weak link (see __gc) */
  uint64_t id;            /* unique within its loop (one per process today,
                           * until worker threads); conn.id */
  union {
    struct sockaddr sa;
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
  } peer;           /* peer address; family AF_UNIX for unix sockets */
  unsigned version; /* the handler version it started with */
  le_opts opts;     /* options in force (conn:setopts changes them) */
  le_buf in;        /* received bytes not yet returned by recv */
  size_t queued;    /* bytes queued by io->queue_write, not yet written */
  le_coro *reader;  /* coroutine waiting in recv, or NULL */
  le_coro *writer;  /* coroutine waiting in send for output to drain */
  uint64_t read_deadline;  /* loop time the reader times out, 0 none */
  uint64_t write_deadline; /* loop time the writer times out, 0 none */
  uint64_t last_active;    /* loop time bytes last moved either way */
  uint64_t armed;          /* deadline the io timer is set for, 0 none */
  uint64_t opened_at;      /* loop time the connection began */
  uint64_t bytes_in, bytes_out; /* moved through the socket */
  /* 32-bit fields keep an idle connection small (docs/performance.md's
   * idle10k: every byte here is 10,000 bytes there). Sizes are bounded by
   * a 1 GiB option (packet_size, recv's n) or by memory; message counts
   * wrap after 4 billion; wait_since is the loop clock's low bits, so a
   * wait is measured right if it lasts less than 49 days. */
  uint32_t scanned;    /* line mode: bytes of `in` known to hold no '\n' */
  uint32_t want;       /* raw mode: what the reader waits for, 0 any */
  uint32_t nqueued;    /* writes queued by io->queue_write, not yet done */
  uint32_t wait_since; /* loop time (low bits) the writer began to wait */
  uint32_t msgs_in, msgs_out; /* returned by recv; given to send */
  int16_t in_err;     /* 0; UV_EOF after the peer's FIN; or an error */
  int16_t out_err;    /* 0, or the error that ended output */
  int16_t reader_err; /* for the woken reader only: its error, 0 none */
  int16_t writer_err; /* for the woken writer only: its error, 0 none */
  uint8_t state;        /* le_lconn_state */
  uint8_t end_reason;   /* le_end_reason: why it ended, once it did */
  uint8_t exit_status;  /* the handler's: 1 after an error, the integer
                         * it returned (0..255), else 0 (client mode) */
  unsigned reading : 1; /* io->set_reading(lc, 1) is in force */
  unsigned paused : 1;  /* reading stopped because `in` was full */
};

/* Registers the conn metatable in L. Call once per Lua state. */
void le_lconn_open(lua_State *L);

/* Returns the connection whose coroutines may wait on lc: lc itself, or
 * for an outbound connection the one whose handler opened it. (Derived,
 * not stored: an idle connection stays small.) */
static inline le_lconn *le_lconn_owner(le_lconn *lc) {
  return lc->parent != NULL ? lc->parent : lc;
}

/* Returns the connection the coroutine c works for (its owner tag). */
static inline le_lconn *le_lconn_of_coro(const le_coro *c) {
  return (le_lconn *)c->owner;
}

/* Records why lc ends (see le_end_reason). */
void le_lconn_note_end(le_lconn *lc, le_end_reason why);

/* Prepares lc with default options; the embedding connection then fills
 * id, peer (le_lconn_set_peer) and opts. */
void le_lconn_init(le_lconn *lc, const le_lconn_io *io, const le_log *log,
                   lua_State *L);

/* Makes lc an outbound connection opened by the coroutine running L: it
 * belongs to the same connection (same owner, closed when that one ends),
 * and pushes its conn object, which the collector may close. */
void le_lconn_adopt(le_lconn *lc, lua_State *L);

/* Unlinks an outbound connection from its parent (call when freeing). */
void le_lconn_orphan(le_lconn *lc);

/* Records the peer address (IPv4 or IPv6; NULL for a unix socket). */
void le_lconn_set_peer(le_lconn *lc, const struct sockaddr *sa);

/* Writes the peer's host text and port (port -1 and host "" for unix
 * sockets). */
void le_lconn_peer(le_lconn *lc, char *host, size_t hostlen, int *port);

/* Writes the peer as "host:port", "[v6]:port", "unix:path" or "unix". */
char *le_lconn_format_peer(le_lconn *lc, char *out, size_t len);

/* Checks the idle deadline at loop time `now`: a connection without
 * traffic for idle_timeout is ended (a waiting recv gets nil, "timeout").
 * The connection's loop calls it periodically for every connection. */
void le_lconn_check_idle(le_lconn *lc, uint64_t now);

/* Runs the handler function on top of L (popped) as
 * handler(conn, args[0], ..., args[nargs - 1]) in a new coroutine, up to
 * its first wait, inside a protected call. Returns 0, or -1 when Lua is
 * out of memory (the function is popped, the conn object, if made, is
 * detached, and io->handler_done is not called). */
int le_lconn_start(le_lconn *lc, const char *const *args, int nargs);

/* Socket events, reported by the embedding connection. `data` is only
 * valid during the call. */
void le_lconn_on_data(le_lconn *lc, const char *data, size_t len);
void le_lconn_on_eof(le_lconn *lc);
void le_lconn_on_error(le_lconn *lc, int err);
void le_lconn_on_written(le_lconn *lc, size_t len, int ref, int status);
void le_lconn_on_timeout(le_lconn *lc);

/* Ends the connection from the server's side: waiting coroutines get
 * nil, NAME where NAME is le_lconn_errname(why) ("shutdown" for
 * LE_ESHUTDOWN), so do later calls, and the socket is closed at once. */
void le_lconn_abort(le_lconn *lc, int why);

/* Drops everything lc holds in Lua: a still-suspended handler coroutine is
 * ended (its to-be-closed variables run), the userdata is detached so later
 * use raises, and the input buffer is freed. Call from the connection's
 * final close callback. */
void le_lconn_release(le_lconn *lc);

/* Writes the lower-case name Lua code sees for a libuv error into out and
 * returns out: "closed" for UV_EOF and UV_ECANCELED, "timeout" for
 * LE_TIMEOUT, "idle" for LE_EIDLE, "shutdown" for LE_ESHUTDOWN, else
 * "econnreset", "etimedout" and the like. */
char *le_lconn_errname(int err, char *out, size_t len);

/* Sets field `kernel` of the table on top of L to what the kernel knows of
 * lc's socket (conn:stats().kernel); leaves it unset when that is unknown
 * (a closing socket). */
void le_lconn_push_kernel(lua_State *L, le_lconn *lc);

/* Pushes nil and the error's name (le_lconn_errname) on L; returns 2. */
int le_lconn_push_error(lua_State *L, int err);

#endif
