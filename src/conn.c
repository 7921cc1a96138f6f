/* One connection: see include/luaecho/conn.h.
 *
 * The data path: on_read receives bytes into the loop's shared read buffer
 * and hands them to the Lua face (le_lconn_on_data), which resumes the
 * handler; the handler's conn:send() comes back here through io_try_write,
 * and through io_queue_write for what the kernel did not take at once.
 */
/* struct tcp_info and SIOCINQ are Linux interfaces beyond POSIX. */
#define _DEFAULT_SOURCE
#include "luaecho/conn.h"

#include <assert.h>
#include <errno.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "luaecho/addr.h"

#define READ_BUF_SIZE (64 * 1024)

/* A write the kernel did not take at once: a copy of the frame header (if
 * any) and a pointer into a Lua string, kept alive by `ref` until on_write
 * reports it to the Lua face. */
typedef struct write_req {
  uv_write_t req;
  size_t len;
  int ref;
  char hdr[4];
} write_req;

/* A connection's timer, allocated on first use. It outlives nothing: when
 * the connection closes, `c` is cleared and the timer frees itself. */
struct le_conn_timer {
  uv_timer_t timer;
  le_conn *c;
};

/* An outbound connect in flight; freed by on_connected, which libuv always
 * calls (with UV_ECANCELED if the socket closed first). */
struct le_connect_req {
  uv_connect_t req;
  le_connect_cb cb; /* NULL once reported or cancelled */
  void *arg;
};

static le_conn *conn_of(le_lconn *lc) {
  return (le_conn *)((char *)lc - offsetof(le_conn, lc));
}

/* ---- state ---- */

/* The transitions conn.h allows: bit `to` of allowed[from]. */
static const unsigned allowed[] = {
    [LE_CONN_CONNECTING] = 1u << LE_CONN_OPEN | 1u << LE_CONN_CLOSING,
    [LE_CONN_OPEN] = 1u << LE_CONN_DRAINING | 1u << LE_CONN_CLOSING,
    [LE_CONN_DRAINING] = 1u << LE_CONN_CLOSING,
    [LE_CONN_CLOSING] = 1u << LE_CONN_CLOSED,
    [LE_CONN_CLOSED] = 0,
};

static void set_state(le_conn *c, le_conn_state to) {
  (void)allowed; /* read only by assert, absent under NDEBUG */
  assert(allowed[c->state] & (1u << to));
  c->state = (uint8_t)to;
}

static int is_closing(const le_conn *c) { return c->state >= LE_CONN_CLOSING; }

/* ---- lifetime ---- */

static void unlink_conn(le_conn *c) {
  le_conn_ctx *ctx = c->ctx;
  if (c->prev)
    c->prev->next = c->next;
  else
    ctx->head = c->next;
  if (c->next) c->next->prev = c->prev;
  c->prev = c->next = NULL;
}

/* Adds what lc moved to the counters. */
static void add_counts(le_conn_stats *st, const le_lconn *lc) {
  st->bytes_in += lc->bytes_in;
  st->bytes_out += lc->bytes_out;
  st->msgs_in += lc->msgs_in;
  st->msgs_out += lc->msgs_out;
}

void le_conn_ctx_stats(const le_conn_ctx *ctx, le_conn_stats *out) {
  *out = ctx->stats;
  for (const le_conn *c = ctx->head; c != NULL; c = c->next)
    add_counts(out, &c->lc);
}

/* conn_summary: one log line for a connection that ended. */
static void log_summary(le_conn *c) {
  le_lconn *lc = &c->lc;
  char peer[LE_ADDR_TEXT_MAX];
  le_logf(c->ctx->log, LE_LOG_INFO,
          "conn %llu %s: ended (%s) after %.3f s; in %llu bytes in %llu "
          "messages, out %llu bytes in %llu messages",
          (unsigned long long)lc->id,
          le_lconn_format_peer(lc, peer, sizeof peer),
          le_end_reason_name((le_end_reason)lc->end_reason),
          (double)(uv_now(c->ctx->loop) - lc->opened_at) / 1000.0,
          (unsigned long long)lc->bytes_in, (unsigned long long)lc->msgs_in,
          (unsigned long long)lc->bytes_out, (unsigned long long)lc->msgs_out);
}

static void free_conn(le_conn *c) {
  le_conn_ctx *ctx = c->ctx;
  void *owner = c->owner;
  int status = c->lc.exit_status;
  assert(c->state == LE_CONN_CLOSED && c->handler_done && c->timer == NULL);
  if (c->lc.opts.conn_summary) log_summary(c);
  add_counts(&ctx->stats, &c->lc);
  ctx->stats.closed++;
  ctx->stats.ended[c->lc.end_reason <= LE_END_CONNECT_FAILED ? c->lc.end_reason
                                                             : 0]++;
  if (c->origin != NULL) c->origin->open--;
  unlink_conn(c);
  le_lconn_release(&c->lc);
  if (c->lc.script != NULL) le_script_unref(c->lc.script);
  ctx->count--;
  free(c);
  ctx->on_freed(ctx, owner, status);
}

static void on_reap(uv_check_t *check) {
  le_conn_ctx *ctx = check->data;
  uv_check_stop(check);
  while (ctx->reap != NULL) {
    le_conn *c = ctx->reap;
    ctx->reap = c->next_reap;
    free_conn(c);
  }
}

/* Frees c once both its socket is closed and its handler has ended: here
 * when called from the socket's close callback, else by the reaper at the
 * end of this loop iteration. Until then c stays on the live list, so code
 * walking that list (shutdown, the idle sweep) never loses its place. */
static void release_when_done(le_conn *c, int in_close_callback) {
  if (c->state != LE_CONN_CLOSED || !c->handler_done) return;
  if (in_close_callback) {
    free_conn(c);
    return;
  }
  le_conn_ctx *ctx = c->ctx;
  assert(c->connect == NULL); /* next_reap shares its space */
  c->next_reap = ctx->reap;
  ctx->reap = c;
  uv_check_start(&ctx->reaper, on_reap);
}

static void on_sock_closed(uv_handle_t *handle) {
  le_conn *c = handle->data;
  le_lconn *lc = &c->lc;
  set_state(c, LE_CONN_CLOSED);
  le_lconn_trace(lc, "closed (%s) after %.3f s; in %llu bytes, out %llu bytes",
                 le_end_reason_name((le_end_reason)lc->end_reason),
                 (double)(uv_now(c->ctx->loop) - lc->opened_at) / 1000.0,
                 (unsigned long long)lc->bytes_in,
                 (unsigned long long)lc->bytes_out);
  release_when_done(c, 1);
}

static void free_timer(uv_handle_t *handle) { free(handle->data); }

void le_conn_close(le_conn *c) {
  if (is_closing(c)) return;
  le_lconn_trace(&c->lc, "closing the socket");
  set_state(c, LE_CONN_CLOSING);
  if (c->timer != NULL) {
    c->timer->c = NULL;
    uv_close((uv_handle_t *)&c->timer->timer, free_timer);
    c->timer = NULL;
  }
  uv_close(&c->sock.handle, on_sock_closed);
}

void le_conn_abort(le_conn *c, int why) {
  le_lconn_abort(&c->lc, why);
  le_conn_close(c);
  if (!c->handler_done) {
    /* The handler waits on something other than this connection; it will
     * never be resumed, so it is ended here. */
    le_coro_release(&c->lc.coro);
    c->handler_done = 1;
    release_when_done(c, 0);
  }
}

/* ---- socket events ---- */

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  le_conn *c = handle->data;
  (void)suggested;
  buf->base = c->ctx->read_buf;
  buf->len = c->lc.opts.read_size < c->ctx->read_buf_size
                 ? c->lc.opts.read_size
                 : c->ctx->read_buf_size;
}

/* A trace line is at most 1 KiB (trace.c): the preview is cut to what
 * fits in one, so that a long one still ends with its "...". */
#define TRACE_PREVIEW_MAX 900

static void trace_read(le_conn *c, const char *data, size_t n) {
  char preview[TRACE_PREVIEW_MAX];
  le_lconn *lc = &c->lc;
  if (lc->opts.trace_bytes == 0)
    le_lconn_trace(lc, "read %zu bytes", n);
  else
    le_lconn_trace(lc, "read %zu bytes %s", n,
                   le_trace_preview(preview, sizeof preview, data, n,
                                    lc->opts.trace_bytes, lc->opts.trace_hex));
}

/* The peer's FIN, a reset, or another error ended the input. */
static void trace_read_end(le_conn *c, int err) {
  char name[32];
  if (err == UV_EOF)
    le_lconn_trace(&c->lc, "peer FIN (end of input)");
  else if (err == UV_ECONNRESET)
    le_lconn_trace(&c->lc, "peer reset the connection (RST)");
  else
    le_lconn_trace(&c->lc, "read error: %s",
                   le_lconn_errname(err, name, sizeof name));
}

/* libuv reports EOF, without reading the socket's pending error, when
 * POLLHUP comes with a read that did not fill the buffer: an RST that
 * arrives while input is still unread would look like a FIN. The pending
 * error (ECONNRESET, not EPIPE, which follows the peer's FIN) tells them
 * apart. Returns nread, or UV_ECONNRESET for such an EOF. */
static ssize_t reset_behind_eof(le_conn *c, ssize_t nread) {
  uv_os_fd_t fd;
  int err = 0;
  socklen_t len = sizeof err;
  if (nread == UV_EOF && c->sock.handle.type == UV_TCP &&
      uv_fileno(&c->sock.handle, &fd) == 0 &&
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 &&
      err == ECONNRESET)
    return UV_ECONNRESET;
  return nread;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  le_conn *c = stream->data;
  nread = reset_behind_eof(c, nread);
  if (c->state == LE_CONN_DRAINING) {
    /* Lingering after the handler ended: input is discarded until the
     * peer's FIN (see io_close). */
    if (nread > 0) {
      c->lc.bytes_in += (uint64_t)nread; /* received, if not delivered */
      le_lconn_trace(&c->lc, "lingering: discarded %zd bytes", nread);
    }
    if (nread < 0) {
      trace_read_end(c, (int)nread);
      if (nread == UV_EOF && c->fin == LE_FIN_SENT)
        le_lconn_trace(&c->lc, "linger ended with the peer's FIN");
      uv_read_stop(stream);
      c->peer_fin = 1;
      if (c->fin != LE_FIN_PENDING) le_conn_close(c);
    }
    return;
  }
  if (nread > 0) {
    if (c->lc.opts.trace) trace_read(c, buf->base, (size_t)nread);
    le_lconn_on_data(&c->lc, buf->base, (size_t)nread);
  } else if (nread < 0) {
    trace_read_end(c, (int)nread);
    uv_read_stop(stream);
    c->peer_fin = 1;
    if (nread == UV_EOF)
      le_lconn_on_eof(&c->lc);
    else
      le_lconn_on_error(&c->lc, (int)nread);
  }
}

static void on_write(uv_write_t *req, int status) {
  write_req *w = (write_req *)req;
  le_conn *c = req->handle->data;
  size_t len = w->len;
  int ref = w->ref;
  free(w);
  if (c->lc.opts.trace) {
    char name[32];
    if (status < 0)
      le_lconn_trace(&c->lc, "queued write of %zu bytes failed: %s", len,
                     le_lconn_errname(status, name, sizeof name));
    else
      le_lconn_trace(&c->lc, "wrote %zu queued bytes; %zu left queued", len,
                     c->lc.queued - len);
  }
  le_lconn_on_written(&c->lc, len, ref, status);
}

static void start_timer(le_conn *c, uint64_t ms);

/* Our FIN went out (or could not). A half-closed connection
 * (conn:shutdown("write")) stays open for reading. A closing one closes
 * once the peer has finished sending too, lingering up to LE_LINGER_MS
 * for its FIN. */
static void on_shutdown(uv_shutdown_t *req, int status) {
  le_conn *c = req->handle->data;
  free(req);
  c->fin = LE_FIN_SENT;
  le_lconn_trace(&c->lc, status == UV_ECANCELED ? "FIN not sent: the socket "
                                                  "was closed first"
                         : status < 0 ? "FIN not sent: the socket failed"
                                      : "FIN sent (our side closed)");
  if (c->state != LE_CONN_DRAINING) return;
  if (c->peer_fin || status < 0) {
    le_conn_close(c);
  } else {
    le_lconn_trace(&c->lc,
                   "lingering: discarding input until the peer's "
                   "FIN, for up to %d ms",
                   LE_LINGER_MS);
    start_timer(c, LE_LINGER_MS);
  }
}

/* "accepted PEER -> LOCAL" or "connected PEER (from LOCAL)". */
static void trace_opened(le_conn *c, const char *how) {
  char peer[LE_ADDR_TEXT_MAX], local[LE_ADDR_TEXT_MAX], host[LE_ADDR_HOST_MAX];
  int port;
  le_lconn_format_peer(&c->lc, peer, sizeof peer);
  if (c->lc.io->sockname(&c->lc, host, sizeof host, &port) == 0)
    le_addr_format_host_port(host, port, local, sizeof local);
  else
    snprintf(local, sizeof local, "?");
  if (strcmp(how, "accepted") == 0)
    le_lconn_trace(&c->lc, "accepted %s -> %s", peer, local);
  else
    le_lconn_trace(&c->lc, "%s %s (from %s)", how, peer, local);
}

/* Reports the end of a connect once; on failure the connection closes. */
static void finish_connect(le_conn *c, int status) {
  le_connect_req *cr = c->connect;
  le_connect_cb cb = cr->cb;
  cr->cb = NULL;
  if (status < 0) {
    le_lconn_note_end(&c->lc, LE_END_CONNECT_FAILED);
    le_conn_close(c);
  } else {
    set_state(c, LE_CONN_OPEN);
    c->ctx->stats.connected++;
    c->lc.io->apply_sockopts(&c->lc);
    if (c->lc.opts.trace) trace_opened(c, "connected");
  }
  if (cb != NULL) cb(c, status, cr->arg);
}

static void on_connected(uv_connect_t *req, int status) {
  le_connect_req *cr = (le_connect_req *)req;
  le_conn *c = req->handle->data;
  if (cr->cb != NULL) finish_connect(c, status);
  c->connect = NULL;
  free(cr);
}

static void on_timer(uv_timer_t *timer) {
  le_conn *c = ((le_conn_timer *)timer)->c;
  if (c == NULL) return;
  if (c->state == LE_CONN_CONNECTING)
    finish_connect(c, LE_TIMEOUT);
  else if (c->state == LE_CONN_DRAINING) {
    /* Output not taken, or no FIN from the peer, in time. */
    le_lconn_trace(&c->lc, c->fin == LE_FIN_PENDING
                               ? "closing: queued output not taken in time"
                               : "linger ended without the peer's FIN");
    le_conn_close(c);
  } else if (c->state == LE_CONN_OPEN)
    le_lconn_on_timeout(&c->lc);
}

/* Arms the connection's timer for `ms`, creating it on first use. */
static void start_timer(le_conn *c, uint64_t ms) {
  if (is_closing(c)) return;
  if (c->timer == NULL) {
    le_conn_timer *t = malloc(sizeof *t);
    if (t == NULL) return; /* the deadline is lost, never the connection */
    uv_timer_init(c->ctx->loop, &t->timer);
    t->timer.data = t;
    t->c = c;
    c->timer = t;
  }
  uv_timer_start(&c->timer->timer, on_timer, ms, 0);
}

/* ---- the I/O operations the Lua face calls ---- */

static void trace_write(le_lconn *lc, const uv_buf_t *bufs, unsigned nbufs,
                        int n) {
  char name[32];
  size_t total = 0;
  for (unsigned i = 0; i < nbufs; i++) total += bufs[i].len;
  if (n < 0)
    le_lconn_trace(lc, "write failed: %s",
                   le_lconn_errname(n, name, sizeof name));
  else if ((size_t)n == total)
    le_lconn_trace(lc, "wrote %d bytes", n);
  else
    le_lconn_trace(lc,
                   "partial write: the kernel took %d of %zu bytes; %zu "
                   "queued in luaecho",
                   n, total, total - (size_t)n);
}

static ssize_t io_try_write(le_lconn *lc, const uv_buf_t *bufs,
                            unsigned nbufs) {
  le_conn *c = conn_of(lc);
  if (is_closing(c) || c->fin != LE_FIN_NONE) return UV_ECANCELED;
  int n = uv_try_write(&c->sock.stream, bufs, nbufs);
  n = (n == UV_EAGAIN || n == UV_ENOSYS) ? 0 : n;
  if (lc->opts.trace) trace_write(lc, bufs, nbufs, n);
  return n;
}

static int io_queue_write(le_lconn *lc, const char *hdr, size_t hlen,
                          const char *data, size_t len, int ref) {
  le_conn *c = conn_of(lc);
  if (is_closing(c) || c->fin != LE_FIN_NONE) return UV_ECANCELED;
  write_req *w = malloc(sizeof *w);
  if (w == NULL) return UV_ENOMEM;
  memcpy(w->hdr, hdr, hlen);
  w->len = hlen + len;
  w->ref = ref;
  uv_buf_t bufs[2] = {{.base = w->hdr, .len = hlen},
                      {.base = (char *)data, .len = len}};
  int r = hlen ? uv_write(&w->req, &c->sock.stream, bufs, 2, on_write)
               : uv_write(&w->req, &c->sock.stream, bufs + 1, 1, on_write);
  if (r < 0) free(w);
  return r;
}

static void io_set_reading(le_lconn *lc, int on) {
  le_conn *c = conn_of(lc);
  if (c->state != LE_CONN_OPEN) return;
  if (!on) {
    uv_read_stop(&c->sock.stream);
    return;
  }
  int r = uv_read_start(&c->sock.stream, on_alloc, on_read);
  if (r < 0)
    le_logf(c->ctx->log, LE_LOG_ERROR, "conn %llu: cannot read: %s",
            (unsigned long long)lc->id, uv_strerror(r));
}

/* The loop's clock is cached when its turn begins; a handler that then
 * computed for long where it cannot be preempted (a table.sort comparator)
 * would get a timer that fired at once: recv(n, 0.1) answered "timeout"
 * straight away (found by tests/test_conn.c). Arming a deadline refreshes
 * the clock first, which costs one read of the coarse monotonic clock, on
 * the rare calls that set a deadline only. */
static void io_set_timer(le_lconn *lc, int64_t ms) {
  le_conn *c = conn_of(lc);
  if (c->state != LE_CONN_OPEN) return;
  if (ms >= 0) uv_update_time(c->ctx->loop);
  if (ms >= 0)
    start_timer(c, (uint64_t)ms);
  else if (c->timer != NULL)
    uv_timer_stop(&c->timer->timer);
}

/* The loop's clock, cached when its turn began: cheap enough for the
 * data path (traffic time stamps). Deadlines refresh it (io_set_timer). */
static uint64_t io_now(le_lconn *lc) { return uv_now(conn_of(lc)->ctx->loop); }

/* Requests FIN after queued output; returns 0 or a libuv error. */
static int send_fin(le_conn *c) {
  if (c->fin != LE_FIN_NONE) return 0;
  uv_shutdown_t *req = malloc(sizeof *req);
  if (req == NULL) return UV_ENOMEM;
  int r = uv_shutdown(req, &c->sock.stream, on_shutdown);
  if (r < 0) {
    free(req);
    return r;
  }
  c->fin = LE_FIN_PENDING;
  return 0;
}

static void io_shutdown_write(le_lconn *lc) {
  le_conn *c = conn_of(lc);
  if (c->state == LE_CONN_OPEN) send_fin(c);
}

/* Sets a kernel buffer size and stores what the kernel made of it (Linux
 * doubles the request to leave room for its bookkeeping). A size equal to
 * the kernel's figure is the one stored last time, and is not set again
 * (that would double it once more); asking costs a system call only when
 * the option is set at all. */
static void apply_buffer_size(le_conn *c, uint32_t *size,
                              int (*fn)(uv_handle_t *, int *)) {
  int v = 0;
  if (*size == 0 || (fn(&c->sock.handle, &v) == 0 && v == (int)*size)) return;
  v = (int)*size;
  if (fn(&c->sock.handle, &v) != 0) return;
  v = 0;
  if (fn(&c->sock.handle, &v) == 0 && v > 0) *size = (uint32_t)v;
}

static void io_apply_sockopts(le_lconn *lc) {
  le_conn *c = conn_of(lc);
  if (is_closing(c)) return;
  apply_buffer_size(c, &lc->opts.sndbuf,
                    uv_send_buffer_size);
  apply_buffer_size(c, &lc->opts.rcvbuf,
                    uv_recv_buffer_size);
  if (c->sock.handle.type != UV_TCP) return;
  uv_tcp_nodelay(&c->sock.tcp, lc->opts.nodelay);
  uv_tcp_keepalive(&c->sock.tcp, lc->opts.keepalive > 0,
                   (unsigned)lc->opts.keepalive);
}

static const char *tcp_state_name(unsigned state) {
  static const char *const names[] = {"?",         "ESTABLISHED", "SYN_SENT",
                                      "SYN_RECV",  "FIN_WAIT1",   "FIN_WAIT2",
                                      "TIME_WAIT", "CLOSE",       "CLOSE_WAIT",
                                      "LAST_ACK",  "LISTEN",      "CLOSING"};
  return state < sizeof names / sizeof names[0] ? names[state] : "?";
}

static int io_sockinfo(le_lconn *lc, le_sockinfo *out) {
  le_conn *c = conn_of(lc);
  uv_os_fd_t fd;
  memset(out, 0, sizeof *out);
  out->inq = out->outq = -1;
  if (is_closing(c) || uv_fileno(&c->sock.handle, &fd) != 0) return UV_EBADF;
  int n;
  if (ioctl(fd, SIOCINQ, &n) == 0) out->inq = n;
  if (ioctl(fd, SIOCOUTQ, &n) == 0) out->outq = n;
  struct tcp_info ti;
  socklen_t len = sizeof ti;
  if (c->sock.handle.type == UV_TCP &&
      getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0) {
    out->tcp = 1;
    out->state = tcp_state_name(ti.tcpi_state);
    out->rtt_ms = ti.tcpi_rtt / 1000.0;
    out->rttvar_ms = ti.tcpi_rttvar / 1000.0;
    out->retransmits = ti.tcpi_retransmits;
    out->total_retrans = ti.tcpi_total_retrans;
    out->cwnd = ti.tcpi_snd_cwnd;
    out->mss = ti.tcpi_snd_mss;
  }
  return 0;
}

static int io_sockname(le_lconn *lc, char *host, size_t hostlen, int *port) {
  le_conn *c = conn_of(lc);
  if (is_closing(c)) return UV_EBADF;
  if (c->sock.handle.type == UV_TCP) {
    struct sockaddr_storage ss;
    int len = sizeof ss;
    int r = uv_tcp_getsockname(&c->sock.tcp, (struct sockaddr *)&ss, &len);
    if (r == 0)
      le_addr_split_sockaddr((struct sockaddr *)&ss, (socklen_t)len, host,
                             hostlen, port);
    return r;
  }
  *port = -1;
  return uv_pipe_getsockname(&c->sock.pipe, host, &hostlen);
}

static void io_peer_path(le_lconn *lc, char *path, size_t len) {
  le_conn *c = conn_of(lc);
  if (is_closing(c) || c->sock.handle.type != UV_NAMED_PIPE ||
      uv_pipe_getpeername(&c->sock.pipe, path, &len) != 0)
    len = 0;
  path[len < 1 ? 0 : len] = '\0';
}

/* Closes at once when `abort` is set. Otherwise closes the way a
 * production server does, so that the peer gets every byte:
 *  1. queued output is flushed, then FIN is sent (within send_timeout,
 *     else LE_DEFAULT_FLUSH_TIMEOUT, so a peer that never reads cannot hold
 *     the connection);
 *  2. input still arriving is read and discarded until the peer's FIN, for
 *     up to LE_LINGER_MS. Closing a socket with unread input makes the
 *     kernel send RST, and an RST can destroy the reply the peer has not
 *     read yet. */
/* An abortive close: with SO_LINGER set to 0, close() sends RST and the
 * kernel discards what it still queues; libuv cancels our queued writes. */
static void reset_socket(le_conn *c) {
  uv_os_fd_t fd;
  struct linger lg = {1, 0};
  if (c->sock.handle.type == UV_TCP && uv_fileno(&c->sock.handle, &fd) == 0 &&
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) == 0)
    le_lconn_trace(&c->lc, "reset (RST sent; %zu queued bytes discarded)",
                   c->lc.queued);
  le_conn_close(c);
}

static void io_close(le_lconn *lc, int how) {
  le_conn *c = conn_of(lc);
  if (how == LE_CLOSE_RESET && c->state != LE_CONN_CLOSED &&
      c->state != LE_CONN_CONNECTING) {
    /* A reset also cuts short a close already under way, as long as the
     * socket is still there. */
    if (c->state == LE_CONN_CLOSING) return;
    reset_socket(c);
    return;
  }
  if (is_closing(c)) return;
  if (how != LE_CLOSE_GRACEFUL || c->state == LE_CONN_CONNECTING ||
      (c->peer_fin && lc->queued == 0 && c->fin != LE_FIN_PENDING)) {
    le_conn_close(c);
    return;
  }
  if (c->state == LE_CONN_DRAINING) return;
  set_state(c, LE_CONN_DRAINING);
  le_lconn_trace(lc, "closing gracefully: %zu bytes to flush, then FIN",
                 lc->queued);
  if (!c->peer_fin) uv_read_start(&c->sock.stream, on_alloc, on_read);
  if (send_fin(c) != 0) {
    le_conn_close(c);
  } else if (c->fin == LE_FIN_PENDING) {
    double seconds = lc->opts.send_timeout > 0 ? lc->opts.send_timeout
                                               : LE_DEFAULT_FLUSH_TIMEOUT;
    start_timer(c, (uint64_t)(seconds * 1000.0));
  } else if (c->peer_fin) {
    le_conn_close(c); /* FIN went out earlier (conn:shutdown) */
  } else {
    start_timer(c, LE_LINGER_MS);
  }
}

static void io_handler_done(le_lconn *lc) {
  le_conn *c = conn_of(lc);
  c->handler_done = 1;
  release_when_done(c, 0);
}

static const le_lconn_io conn_io = {
    .try_write = io_try_write,
    .queue_write = io_queue_write,
    .set_reading = io_set_reading,
    .set_timer = io_set_timer,
    .now = io_now,
    .shutdown_write = io_shutdown_write,
    .apply_sockopts = io_apply_sockopts,
    .sockname = io_sockname,
    .sockinfo = io_sockinfo,
    .peer_path = io_peer_path,
    .close = io_close,
    .handler_done = io_handler_done,
};

/* ---- accept and connect ---- */

static void set_peer(le_conn *c) {
  struct sockaddr_storage ss;
  int len = sizeof ss;
  if (c->sock.handle.type == UV_TCP &&
      uv_tcp_getpeername(&c->sock.tcp, (struct sockaddr *)&ss, &len) == 0)
    le_lconn_set_peer(&c->lc, (struct sockaddr *)&ss);
  else
    le_lconn_set_peer(&c->lc, NULL);
}

/* Allocates a connection with its socket handle initialized and puts it on
 * ctx's list; from here on it is released only through le_conn_close.
 * Returns NULL with *err set on failure. */
static le_conn *new_conn(le_conn_ctx *ctx, uv_handle_type type,
                         const le_opts *opts, int *err) {
  le_conn *c = calloc(1, sizeof *c);
  if (c == NULL) {
    *err = UV_ENOMEM;
    return NULL;
  }
  int r = type == UV_TCP ? uv_tcp_init(ctx->loop, &c->sock.tcp)
                         : uv_pipe_init(ctx->loop, &c->sock.pipe, 0);
  if (r < 0) {
    free(c);
    *err = r;
    return NULL;
  }
  c->sock.handle.data = c;
  c->ctx = ctx;
  c->next = ctx->head;
  if (ctx->head) ctx->head->prev = c;
  ctx->head = c;
  ctx->count++;
  le_lconn_init(&c->lc, &conn_io, ctx->log, ctx->L);
  c->lc.trace = ctx->trace;
  c->lc.coro.sched = &ctx->sched;
  c->lc.id = ++ctx->next_id;
  c->lc.opts = *opts;
  c->lc.last_active = uv_now(ctx->loop);
  return c;
}

le_conn *le_conn_accept(le_conn_ctx *ctx, int fd, uv_handle_type type,
                        const le_opts *opts, le_script *script, void *owner) {
  int r = 0;
  le_conn *c = new_conn(ctx, type, opts, &r);
  if (c != NULL) {
    c->state = LE_CONN_OPEN; /* its initial state: nothing to connect */
    c->owner = owner;
    c->lc.script = script;
    c->lc.version = script->version;
    le_script_ref(script);
    r = type == UV_TCP ? uv_tcp_open(&c->sock.tcp, fd)
                       : uv_pipe_open(&c->sock.pipe, fd);
  }
  if (r == 0) {
    io_apply_sockopts(&c->lc);
    set_peer(c);
    ctx->stats.accepted++;
    if (c->lc.opts.trace) trace_opened(c, "accepted");
    le_script_push(script, ctx->L);
    if (le_lconn_start(&c->lc, NULL, 0) == 0) return c;
    r = UV_ENOMEM;
  } else {
    close(fd); /* no handle took it */
  }
  le_logf(ctx->log, LE_LOG_ERROR, "cannot accept a connection: %s",
          uv_strerror(r));
  ctx->stats.accept_errors++;
  if (c != NULL) {
    c->owner = NULL; /* it never started: its owner does not count it */
    c->handler_done = 1;
    le_conn_close(c);
  }
  return NULL;
}

le_conn_origin *le_conn_ctx_origin(le_conn_ctx *ctx, const char *name) {
  for (le_conn_origin *o = ctx->origins; o != NULL; o = o->next)
    if (strcmp(o->name, name) == 0) return o;
  le_conn_origin *o = calloc(1, sizeof *o);
  size_t n = strlen(name) + 1;
  char *copy = o ? malloc(n) : NULL;
  if (copy == NULL) {
    free(o);
    return NULL;
  }
  o->name = memcpy(copy, name, n);
  o->next = ctx->origins;
  ctx->origins = o;
  return o;
}

void le_conn_set_origin(le_conn *c, le_conn_origin *origin) {
  assert(c->origin == NULL);
  c->origin = origin;
  if (origin == NULL) return;
  origin->accepted++;
  origin->open++;
}

le_conn *le_conn_connect(le_conn_ctx *ctx, const struct sockaddr *sa,
                         const char *path, const le_opts *opts,
                         uint64_t timeout_ms, le_connect_cb cb, void *arg,
                         int *err) {
  le_connect_req *cr = malloc(sizeof *cr);
  le_conn *c = cr ? new_conn(ctx, sa ? UV_TCP : UV_NAMED_PIPE, opts, err)
                  : NULL; /* its initial state is CONNECTING */
  if (c == NULL) {
    if (cr == NULL) *err = UV_ENOMEM;
    free(cr);
    return NULL;
  }
  c->handler_done = 1; /* no handler of its own: it ends with its owner */
  cr->cb = cb;
  cr->arg = arg;
  c->connect = cr;
  le_lconn_set_peer(&c->lc, sa);
  int r = 0;
  if (sa != NULL)
    r = uv_tcp_connect(&cr->req, &c->sock.tcp, sa, on_connected);
  else
    uv_pipe_connect(&cr->req, &c->sock.pipe, path, on_connected);
  if (r < 0) {
    free(cr);
    c->connect = NULL;
    *err = r;
    le_conn_close(c);
    return NULL;
  }
  if (timeout_ms > 0) start_timer(c, timeout_ms);
  return c;
}

int le_conn_run(le_conn *c, le_script *script, const char *const *args,
                int nargs, void *owner) {
  assert(c->state == LE_CONN_OPEN && c->handler_done && c->lc.parent == NULL);
  c->handler_done = 0;
  c->owner = owner;
  c->lc.script = script;
  c->lc.version = script->version;
  le_script_ref(script);
  le_script_push(script, c->ctx->L);
  if (le_lconn_start(&c->lc, args, nargs) == 0) return 0;
  c->owner = NULL;
  c->handler_done = 1;
  le_conn_close(c);
  return -1;
}

void le_conn_cancel_connect(le_conn *c) {
  if (c->connect != NULL) c->connect->cb = NULL;
  le_conn_close(c);
}

/* ---- the loop's context ---- */

/* Ends connections that moved no bytes for their idle_timeout. */
static void on_sweep(uv_timer_t *t) {
  le_conn_ctx *ctx = t->data;
  uint64_t now = uv_now(ctx->loop);
  for (le_conn *c = ctx->head, *next; c != NULL; c = next) {
    next = c->next;
    if (c->state != LE_CONN_OPEN) continue;
    /* A large write in progress completes only at its end; the queue
     * shrinking meanwhile is traffic too. */
    uint32_t queued = (uint32_t)c->sock.stream.write_queue_size;
    if (queued != c->swept_queue) {
      c->swept_queue = queued;
      c->lc.last_active = now;
    }
    le_lconn_check_idle(&c->lc, now);
  }
}

/* Resumes the coroutines woken or preempted since; while preempted ones
 * remain, the idle handle stays on, so the loop polls for I/O without
 * blocking between their turns. */
static void on_waker(uv_idle_t *idle) {
  le_conn_ctx *ctx = idle->data;
  if (!le_coro_sched_run(&ctx->sched)) uv_idle_stop(idle);
}

/* A coroutine's CPU limit is its connection's cpu_limit option. */
static uint64_t cpu_limit_of(le_coro *c) {
  double seconds = le_lconn_of_coro(c)->opts.cpu_limit;
  return seconds > 0 ? le_opts_ms(seconds) : 0;
}

le_conn *le_conn_ctx_find(le_conn_ctx *ctx, uint64_t id) {
  for (le_conn *c = ctx->head; c != NULL; c = c->next)
    if (c->lc.script != NULL && c->lc.id == id) return c;
  return NULL;
}

void le_conn_ctx_each(le_conn_ctx *ctx, void (*fn)(le_conn *c, void *arg),
                      void *arg) {
  le_conn *last = ctx->head;
  while (last != NULL && last->next != NULL) last = last->next;
  for (le_conn *c = last, *prev; c != NULL; c = prev) {
    prev = c->prev;
    if (c->lc.script != NULL) fn(c, arg);
  }
}

size_t le_conn_ctx_abort_admin(le_conn_ctx *ctx, int why) {
  size_t n = 0;
  for (le_conn *c = ctx->head, *next; c != NULL; c = next) {
    next = c->next;
    if (c->origin == NULL || !c->origin->admin || !le_conn_is_open(c)) continue;
    le_conn_abort(c, why);
    n++;
  }
  return n;
}

void le_conn_ctx_abort_all(le_conn_ctx *ctx, int why) {
  for (le_conn *c = ctx->head, *next; c != NULL; c = next) {
    next = c->next;
    le_conn_abort(c, why);
  }
}

static void kick_waker(le_coro_sched *s) {
  le_conn_ctx *ctx = (le_conn_ctx *)((char *)s - offsetof(le_conn_ctx, sched));
  uv_idle_start(&ctx->waker, on_waker);
}

int le_conn_ctx_init(le_conn_ctx *ctx, uv_loop_t *loop, lua_State *L,
                     const le_log *log) {
  memset(ctx, 0, sizeof *ctx);
  ctx->loop = loop;
  ctx->L = L;
  ctx->log = log;
  ctx->read_buf_size = READ_BUF_SIZE;
  ctx->read_buf = malloc(READ_BUF_SIZE);
  uv_timer_init(loop, &ctx->sweep);
  uv_check_init(loop, &ctx->reaper);
  uv_idle_init(loop, &ctx->waker);
  ctx->sweep.data = ctx->reaper.data = ctx->waker.data = ctx;
  ctx->sched.kick = kick_waker;
  ctx->sched.cpu_limit_ms = cpu_limit_of;
  le_coro_open(L, &ctx->sched);
  /* The sweep alone must not keep the loop running. */
  uv_timer_start(&ctx->sweep, on_sweep, LE_IDLE_SWEEP_MS, LE_IDLE_SWEEP_MS);
  uv_unref((uv_handle_t *)&ctx->sweep);
  if (ctx->read_buf == NULL) return UV_ENOMEM;
  int r =
      le_preempt_start(&ctx->preempt, le_coro_preempt_hook, LE_PREEMPT_TICK_MS);
  if (r == 0) ctx->sched.preempt = &ctx->preempt;
  return r;
}

void le_conn_ctx_close(le_conn_ctx *ctx) {
  if (ctx->loop == NULL) return;
  le_preempt_stop(&ctx->preempt);
  ctx->sched.preempt = NULL;
  if (!uv_is_closing((uv_handle_t *)&ctx->sweep))
    uv_close((uv_handle_t *)&ctx->sweep, NULL);
  if (!uv_is_closing((uv_handle_t *)&ctx->reaper))
    uv_close((uv_handle_t *)&ctx->reaper, NULL);
  if (!uv_is_closing((uv_handle_t *)&ctx->waker))
    uv_close((uv_handle_t *)&ctx->waker, NULL);
}

void le_conn_ctx_free(le_conn_ctx *ctx) {
  free(ctx->read_buf);
  ctx->read_buf = NULL;
  while (ctx->origins != NULL) {
    le_conn_origin *o = ctx->origins;
    ctx->origins = o->next;
    free(o->name);
    free(o);
  }
}
