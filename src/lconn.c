/* The Lua face of a connection: see include/luaecho/lconn.h. This file
 * holds the state machine (socket events, waiting, deadlines) and the
 * methods that wait: recv and send. The other methods are in
 * lconn_methods.c.
 *
 * The flow of one echo round trip: the handler calls conn:recv(), finds
 * nothing buffered and waits (conn_recv); bytes arrive, le_lconn_on_data
 * points `direct` at them and wakes the reader, whose continuation
 * (recv_k) makes the string straight from the read buffer; the handler calls
 * conn:send(), which hands the string to the kernel at once (conn_send) and
 * returns without waiting unless too much output is already queued.
 *
 * Wakers never push values on a coroutine: they update this state (the
 * reader slot, reader_err) and call le_coro_wake; the continuation reads the
 * state and builds the results inside the coroutine, where running out of
 * memory is an ordinary Lua error.
 */
#include "lconn_internal.h"

#include <assert.h>
#include <ctype.h>
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "luaecho/addr.h"
#include "luaecho/lmem.h"

char *le_lconn_errname(int err, char *out, size_t len) {
  if (err == UV_EOF || err == UV_ECANCELED)
    snprintf(out, len, "closed");
  else if (err == LE_TIMEOUT)
    snprintf(out, len, "timeout");
  else if (err == LE_EIDLE)
    snprintf(out, len, "idle");
  else if (err == LE_ESHUTDOWN)
    snprintf(out, len, "shutdown");
  else if (err == LE_EKILLED)
    snprintf(out, len, "killed");
  else /* the _r form: uv_err_name leaks a string for unknown codes */
    uv_err_name_r(err, out, len);
  /* libuv says "ECONNRESET"; Lua code sees the lower-case form. */
  for (size_t i = 0; out[i]; i++) out[i] = (char)tolower((unsigned char)out[i]);
  return out;
}

void le__lconn_push_errname(lua_State *L, int err) {
  char name[32];
  lua_pushstring(L, le_lconn_errname(err, name, sizeof name));
}

int le_lconn_push_error(lua_State *L, int err) {
  lua_pushnil(L);
  le__lconn_push_errname(L, err);
  return 2;
}

/* ---- state ---- */

const char *le_end_reason_name(le_end_reason r) {
  static const char *const names[] = {
      [LE_END_NONE] = "open",
      [LE_END_PEER_FIN] = "peer FIN",
      [LE_END_RESET] = "reset by the peer",
      [LE_END_SOCKET_ERROR] = "socket error",
      [LE_END_RETURNED] = "handler returned",
      [LE_END_CLOSED] = "handler closed it",
      [LE_END_RESET_SENT] = "handler reset it",
      [LE_END_HANDLER_ERROR] = "handler error",
      [LE_END_IDLE] = "idle timeout",
      [LE_END_SEND_TIMEOUT] = "send timeout",
      [LE_END_SHUTDOWN] = "server shutdown",
      [LE_END_KILLED] = "killed from the admin",
      [LE_END_COLLECTED] = "conn object collected",
      [LE_END_CONNECT_FAILED] = "connect failed",
  };
  return r <= LE_END_CONNECT_FAILED ? names[r] : "?";
}

const char *le_end_reason_key(le_end_reason r) {
  static const char *const keys[] = {
      [LE_END_NONE] = "open",
      [LE_END_PEER_FIN] = "peer_fin",
      [LE_END_RESET] = "reset",
      [LE_END_SOCKET_ERROR] = "socket_error",
      [LE_END_RETURNED] = "returned",
      [LE_END_CLOSED] = "closed",
      [LE_END_RESET_SENT] = "reset_sent",
      [LE_END_HANDLER_ERROR] = "handler_error",
      [LE_END_IDLE] = "idle",
      [LE_END_SEND_TIMEOUT] = "send_timeout",
      [LE_END_SHUTDOWN] = "shutdown",
      [LE_END_KILLED] = "killed",
      [LE_END_COLLECTED] = "collected",
      [LE_END_CONNECT_FAILED] = "connect_failed",
  };
  return r <= LE_END_CONNECT_FAILED ? keys[r] : "?";
}

void le_lconn_note_end(le_lconn *lc, le_end_reason why) {
  if (lc->end_reason == LE_END_NONE ||
      (why == LE_END_HANDLER_ERROR && lc->end_reason == LE_END_PEER_FIN))
    lc->end_reason = (uint8_t)why;
}

/* The reason an error code ends a connection for. */
static le_end_reason reason_of(int err) {
  switch (err) {
  case UV_EOF: return LE_END_PEER_FIN;
  case UV_ECONNRESET:
  case UV_EPIPE: return LE_END_RESET;
  case LE_EIDLE: return LE_END_IDLE;
  case LE_ESHUTDOWN: return LE_END_SHUTDOWN;
  case LE_EKILLED: return LE_END_KILLED;
  case UV_ECANCELED: return LE_END_CLOSED;
  default: return LE_END_SOCKET_ERROR;
  }
}

static const unsigned allowed[] = {
    [LE_LCONN_OPEN] = 1u << LE_LCONN_ENDED | 1u << LE_LCONN_CLOSED,
    [LE_LCONN_ENDED] = 1u << LE_LCONN_CLOSED,
    [LE_LCONN_CLOSED] = 0,
};

static void set_state(le_lconn *lc, le_lconn_state to) {
  (void)allowed; /* read only by assert, absent under NDEBUG */
  assert(allowed[lc->state] & (1u << to));
  lc->state = to;
}

/* Input ends with err, unless it already ended with something other than
 * the peer's FIN (a reset or a timeout says more than the FIN before it). */
static void end_input(le_lconn *lc, int err) {
  if (!lc->in_err || lc->in_err == UV_EOF) lc->in_err = err;
}

static void end_output(le_lconn *lc, int err) {
  if (!lc->out_err) lc->out_err = err;
}

/* Memory each queued write costs besides its payload, measured: the write
 * request (about 224 bytes with malloc's own), the Lua string's header
 * (about 40) and its registry slot (16 to 32), rounded up. */
#define WRITE_OVERHEAD 320

/* Returns 1 when queued output holds more than send_buffer bytes of
 * memory, so that send must wait for the peer to read. */
static int over_send_buffer(const le_lconn *lc) {
  return lc->queued + lc->nqueued * WRITE_OVERHEAD > lc->opts.send_buffer;
}

static int framed(const le_lconn *lc) {
  return lc->opts.packet != LE_PACKET_RAW;
}

/* ---- reading ---- */

/* Pauses reading while enough input is buffered for a handler that is not
 * asking for it, and resumes once it drains, so TCP pushes back on a peer
 * that sends faster than the handler reads. A reader waiting for a message
 * larger than recv_buffer raises the limit to what it needs. */
void le__lconn_update_reading(le_lconn *lc) {
  size_t limit = lc->opts.recv_buffer;
  if (lc->reader != NULL) {
    size_t need = framed(lc) ? lc->opts.packet_size + 4 : lc->want;
    if (need > limit) limit = need;
  }
  int on = !lc->in_err && lc->state != LE_LCONN_CLOSED &&
           le_buf_size(&lc->in) < limit;
  if (on != (int)lc->reading) {
    lc->reading = (unsigned)on;
    lc->io->set_reading(lc, on);
    /* Backpressure, for the trace: reading stops because the buffer is
     * full, and resumes once the handler drained it. */
    if (!on && lc->in_err == 0 && lc->state != LE_LCONN_CLOSED) {
      lc->paused = 1;
      le_lconn_trace(lc, "reading paused: %zu bytes buffered, recv_buffer %u",
                     le_buf_size(&lc->in), (unsigned)limit);
    } else if (on && lc->paused) {
      lc->paused = 0;
      le_lconn_trace(lc, "reading resumed: %zu bytes buffered",
                     le_buf_size(&lc->in));
    }
  }
}

/* The input recv looks at: the bytes on_data is handing over directly, or
 * else the buffer. */
typedef struct input {
  const char *data;
  size_t len;
  int direct;
} input;

/* While on_data hands a read straight to a waiting reader: the connection
 * and the bytes not yet taken. Valid only during that call, when its `in`
 * is empty. One loop runs per thread, and one on_data at a time in it, so
 * this is per-thread state rather than 16 bytes in every connection. */
static _Thread_local struct {
  const le_lconn *lc;
  const char *data;
  size_t len;
} direct;

static input current_input(const le_lconn *lc) {
  if (direct.lc == lc && direct.len > 0)
    return (input){direct.data, direct.len, 1};
  return (input){le_buf_peek(&lc->in), le_buf_size(&lc->in), 0};
}

static void consume(le_lconn *lc, const input *in, size_t n) {
  if (in->direct) {
    direct.data += n;
    direct.len -= n;
  } else {
    le_buf_consume(&lc->in, n);
  }
}

/* Drops every byte received and not yet returned. */
static void discard_input(le_lconn *lc) {
  le_buf_consume(&lc->in, le_buf_size(&lc->in));
  if (direct.lc == lc) direct.len = 0;
  lc->scanned = 0;
}

/* Pushes nil, the error's name and the partial result. In raw mode every
 * received byte is the partial result and is consumed; in framed modes an
 * unfinished message stays buffered so the stream keeps its framing. */
static int push_failure(lua_State *L, le_lconn *lc, int err) {
  char name[32];
  le_lconn_trace(lc, "recv returned nil, \"%s\"",
                 le_lconn_errname(err, name, sizeof name));
  lua_pushnil(L);
  le__lconn_push_errname(L, err);
  if (framed(lc)) {
    lua_pushliteral(L, "");
  } else {
    input in = current_input(lc);
    lua_pushlstring(L, in.len ? in.data : "", in.len);
    consume(lc, &in, in.len);
  }
  return 3;
}

/* Finds the next message in data[0..n) for a reader asking for `want`
 * bytes (raw mode). Returns LE_FRAME_OK with *out set, LE_FRAME_MORE, or
 * LE_FRAME_TOOBIG. */
static le_frame_status next_message(le_lconn *lc, const char *data, size_t n,
                                    size_t want, size_t *scanned,
                                    le_frame *out) {
  if (framed(lc))
    return le_frame_decode(lc->opts.packet, lc->opts.packet_size, data, n,
                           scanned, out);
  if (n == 0 || n < want) return LE_FRAME_MORE;
  out->off = 0;
  out->len = out->used = want ? want : n;
  return LE_FRAME_OK;
}

/* Looks for the next message; line mode remembers how far the buffer is
 * known to hold no newline. */
static le_frame_status find_message(le_lconn *lc, const input *in, size_t want,
                                    le_frame *f) {
  size_t scanned = in->direct ? 0 : lc->scanned;
  le_frame_status st = next_message(lc, in->data, in->len, want, &scanned, f);
  if (!in->direct) lc->scanned = (uint32_t)scanned; /* <= packet_size */
  return st;
}

/* Pushes the result of recv on L when it is ready and returns the number
 * of values pushed, or returns 0 when the caller must wait for more. */
static int push_recv(lua_State *L, le_lconn *lc, size_t want) {
  le_frame f;
  input in = current_input(lc);
  le_frame_status st = find_message(lc, &in, want, &f);
  if (st == LE_FRAME_OK) {
    /* Bytes that do not fit under max_memory stay where they are: the
     * handler learns it is out of memory, nothing is lost. Like every
     * failed recv it returns a partial result, "" here since nothing was
     * consumed (docs/api.md: partial is always a string). */
    if (!le_mem_fits(L, f.len)) {
      le_lconn_trace(lc,
                     "recv returned nil, \"enomem\": %zu bytes do not "
                     "fit under max_memory",
                     f.len);
      le_lconn_push_error(L, UV_ENOMEM);
      lua_pushliteral(L, "");
      return 3;
    }
    lua_pushlstring(L, in.data + f.off, f.len);
    consume(lc, &in, f.used);
    lc->msgs_in++;
    le_lconn_trace(
        lc, "recv returned %zu bytes (%s%s)", f.len,
        framed(lc) && lc->opts.packet != LE_PACKET_LINE ? "packet " : "",
        le_packet_name(lc->opts.packet));
    return 1;
  }
  if (st == LE_FRAME_TOOBIG) {
    /* The stream cannot be resynchronized: input ends here. */
    lc->in_err = UV_EMSGSIZE;
    discard_input(lc);
  }
  if (lc->in_err) return push_failure(L, lc, lc->in_err);
  return 0;
}

/* Returns 1 when push_recv would answer the waiting reader now. */
static int reader_answerable(le_lconn *lc) {
  if (lc->in_err || lc->reader_err) return 1;
  le_frame f;
  input in = current_input(lc);
  return find_message(lc, &in, lc->want, &f) != LE_FRAME_MORE;
}

/* Clears the reader's waiting state and returns it; called before waking
 * it, so that the woken code sees a connection nobody waits on. */
static le_coro *take_reader(le_lconn *lc) {
  le_coro *c = lc->reader;
  lc->reader = NULL;
  lc->want = 0;
  lc->read_deadline = 0;
  return c;
}

static le_coro *take_writer(le_lconn *lc) {
  le_coro *c = lc->writer;
  lc->writer = NULL;
  lc->write_deadline = 0;
  return c;
}

/* Wakes the coroutine waiting in recv if its request can be answered. */
static void wake_reader(le_lconn *lc) {
  if (lc->reader != NULL && reader_answerable(lc))
    le_coro_wake(take_reader(lc));
}

/* Wakes the reader with an error of its own (a timeout). */
static void fail_reader(le_lconn *lc, int err) {
  if (lc->reader == NULL) return;
  lc->reader_err = err;
  le_coro_wake(take_reader(lc));
}

static void fail_writer(le_lconn *lc, int err) {
  if (lc->writer == NULL) return;
  lc->writer_err = err;
  le_coro_wake(take_writer(lc));
}

/* Wakes the coroutine waiting in send once output drained to send_buffer
 * or can no longer be written. */
void le__lconn_wake_writer(le_lconn *lc) {
  if (lc->writer != NULL && (!over_send_buffer(lc) || lc->out_err))
    le_coro_wake(take_writer(lc));
}

void le_lconn_on_data(le_lconn *lc, const char *data, size_t len) {
  lc->last_active = lc->io->now(lc);
  lc->bytes_in += len;
  if (lc->in_err) return; /* nothing more is delivered */
  int r = 0;
  if (lc->reader != NULL && le_buf_size(&lc->in) == 0) {
    /* The common case of an echo loop costs one copy, into the Lua
     * string, and no buffering: the reader takes what it needs straight
     * from the read buffer, and only the rest is kept. */
    direct.lc = lc;
    direct.data = data;
    direct.len = len;
    wake_reader(lc);
    if (direct.len > 0 && !lc->in_err)
      r = le_buf_append(&lc->in, direct.data, direct.len);
    direct.lc = NULL;
    direct.len = 0;
  } else {
    r = le_buf_append(&lc->in, data, len);
    if (r == 0) wake_reader(lc);
  }
  if (r != 0) {
    le_lconn_on_error(lc, UV_ENOMEM);
    return;
  }
  le__lconn_update_reading(lc);
  le__lconn_rearm(lc);
}

void le_lconn_on_eof(le_lconn *lc) {
  le_lconn_note_end(lc, LE_END_PEER_FIN);
  end_input(lc, UV_EOF);
  lc->reading = 0;
  wake_reader(lc);
}

void le_lconn_on_error(le_lconn *lc, int err) {
  le_lconn_note_end(lc, reason_of(err));
  if (!lc->in_err || lc->in_err == UV_EOF) lc->in_err = err;
  end_output(lc, err);
  if (lc->reading) {
    lc->reading = 0;
    lc->io->set_reading(lc, 0);
  }
  wake_reader(lc);
  le__lconn_wake_writer(lc);
}

void le_lconn_on_written(le_lconn *lc, size_t len, int ref, int status) {
  luaL_unref(lc->L, LUA_REGISTRYINDEX, ref);
  lc->queued -= len;
  lc->nqueued--;
  if (status == 0) lc->bytes_out += len;
  lc->last_active = lc->io->now(lc);
  if (status < 0) end_output(lc, status);
  le__lconn_wake_writer(lc);
}

/* ---- deadlines ---- */

static uint64_t earliest(uint64_t a, uint64_t b) {
  if (a == 0) return b;
  if (b == 0) return a;
  return a < b ? a : b;
}

/* Makes sure the io timer fires no later than the earliest deadline, the
 * reader's or the writer's. A timer already set to fire earlier is left
 * alone; when it fires early, on_timeout finds nothing due and re-arms.
 * Idle deadlines need no timer: the loop sweeps every connection with
 * le_lconn_check_idle. */
void le__lconn_rearm(le_lconn *lc) {
  uint64_t d = earliest(lc->read_deadline, lc->write_deadline);
  if (d == 0 || (lc->armed != 0 && lc->armed <= d)) return;
  lc->armed = d;
  uint64_t now = lc->io->now(lc);
  lc->io->set_timer(lc, d > now ? (int64_t)(d - now) : 0);
}

static uint64_t deadline_after(le_lconn *lc, double seconds) {
  uint64_t ms = le_opts_ms(seconds);
  return lc->io->now(lc) + (ms ? ms : 1); /* 0 would mean "no deadline" */
}

/* Ends the connection from this side: a coroutine waiting in recv gets
 * nil, read_err, one waiting in send gets nil, write_err, and every later
 * call gets nil, `later` (set before anyone is woken), so a loop that
 * retries on "timeout" cannot spin. The socket closes at once. */
static void end_with(le_lconn *lc, int read_err, int write_err, int later) {
  le_lconn_note_end(
      lc, write_err == LE_TIMEOUT ? LE_END_SEND_TIMEOUT : reason_of(later));
  if (lc->state == LE_LCONN_OPEN) set_state(lc, LE_LCONN_ENDED);
  end_input(lc, later);
  end_output(lc, later);
  /* Closed before the waiters are woken: a handler that returns at once
   * would otherwise start a graceful close (and trace it) first. */
  lc->io->close(lc, LE_CLOSE_ABORT);
  fail_reader(lc, read_err);
  fail_writer(lc, write_err);
}

void le_lconn_on_timeout(le_lconn *lc) {
  uint64_t now = lc->io->now(lc);
  lc->armed = 0;
  if (lc->reader != NULL && lc->read_deadline && now >= lc->read_deadline) {
    le_lconn_trace(lc, "recv timeout");
    fail_reader(lc, LE_TIMEOUT);
  }
  if (lc->writer != NULL && lc->write_deadline && now >= lc->write_deadline) {
    le_lconn_trace(lc, "send timeout: %zu bytes still queued%s", lc->queued,
                   lc->opts.send_timeout_close ? "; closing" : "");
    if (lc->opts.send_timeout_close)
      end_with(lc, UV_ECANCELED, LE_TIMEOUT, UV_ECANCELED);
    else
      fail_writer(lc, LE_TIMEOUT);
  }
  le__lconn_rearm(lc);
}

void le_lconn_check_idle(le_lconn *lc, uint64_t now) {
  if (lc->opts.idle_timeout < 0 || lc->state != LE_LCONN_OPEN) return;
  if (now < lc->last_active + (uint64_t)(lc->opts.idle_timeout * 1000.0))
    return;
  le_logf(lc->log, LE_LOG_DEBUG, "conn %llu: idle timeout",
          (unsigned long long)lc->id);
  le_lconn_trace(lc, "idle timeout: no traffic for %g s",
                 lc->opts.idle_timeout);
  end_with(lc, LE_EIDLE, LE_EIDLE, LE_EIDLE);
}

void le_lconn_abort(le_lconn *lc, int why) {
  char name[32];
  le_lconn_trace(lc, "ended by the server (%s)",
                 le_lconn_errname(why, name, sizeof name));
  end_with(lc, why, why, why);
}

/* ---- recv and send ---- */

le__conn_ud *le__lconn_to_ud(lua_State *L) {
  le__conn_ud *ud = lua_touserdata(L, 1);
  int ok = ud != NULL && lua_getmetatable(L, 1);
  if (ok) {
    ok = lua_rawequal(L, -1, lua_upvalueindex(1));
    lua_pop(L, 1);
  }
  if (!ok) luaL_typeerror(L, 1, LE_LCONN_METATABLE);
  /* The metatable can be copied onto another userdata with the debug
   * library; its size cannot (see le__conn_ud). A type error would read
   * "luaecho.conn expected, got luaecho.conn" here. */
  if (lua_rawlen(L, 1) != sizeof *ud)
    luaL_argerror(L, 1,
                  LE_LCONN_METATABLE
                  " expected, got another userdata "
                  "with its metatable");
  return ud;
}

le_lconn *le__lconn_check_open(lua_State *L) {
  le__conn_ud *ud = le__lconn_to_ud(L);
  if (ud->lc == NULL || ud->lc->state == LE_LCONN_CLOSED)
    luaL_error(L, "attempt to use a closed connection");
  return ud->lc;
}

/* Raises unless L is a coroutine of the connection lc belongs to (its
 * handler or one it spawned): a blocking call must suspend a coroutine the
 * server knows how to resume and to end. */
static void check_owner(lua_State *L, le_lconn *lc, const char *method) {
  le_coro *c = le_coro_of(L);
  if (c == NULL || c->owner != le_lconn_owner(lc))
    luaL_error(L,
               "conn:%s() called from a coroutine that does not own "
               "connection %I; call it from the connection's handler",
               method, (lua_Integer)lc->id);
}

static int push_busy(lua_State *L) {
  lua_pushnil(L);
  lua_pushliteral(L, "busy");
  return 2;
}

/* Reads the timeout argument at idx: seconds, or nil for the connection's
 * recv_timeout. Returns -1 for none. */
static double opt_timeout(lua_State *L, int idx, double dflt) {
  if (lua_isnoneornil(L, idx)) return dflt;
  double t = (double)luaL_checknumber(L, idx);
  luaL_argcheck(L, t >= 0 && !isnan(t), idx, "timeout must be >= 0 seconds");
  return t;
}

/* What recv waits for, handed to arm_reader. */
typedef struct recv_wait {
  size_t want;
  uint64_t deadline;
} recv_wait;

static int arm_reader(le_coro *c, void *obj, const void *arg) {
  le_lconn *lc = obj;
  const recv_wait *w = arg;
  lc->reader = c;
  lc->want = (uint32_t)w->want;
  lc->read_deadline = w->deadline;
  lc->reader_err = 0;
  le__lconn_update_reading(lc);
  le__lconn_rearm(lc);
  return 0;
}

/* The reader ended while waiting: forget it. */
static void cancel_reader(le_coro *c, void *obj) {
  le_lconn *lc = obj;
  if (lc->reader != c) return;
  take_reader(lc);
  le__lconn_rearm(lc);
}

static int recv_k(lua_State *L, int status, lua_KContext kctx);

static const le_wait_ops recv_ops = {"conn:recv", arm_reader, cancel_reader,
                                     NULL, recv_k};

static int recv_k(lua_State *L, int status, lua_KContext kctx);

/* Answers recv(n) from what has arrived, or waits. Shared by the first
 * call and the continuation after a wake. */
static int recv_now(lua_State *L, le_lconn *lc, size_t want, double timeout) {
  int nres = push_recv(L, lc, want);
  if (nres == 0 && timeout == 0) nres = push_failure(L, lc, LE_TIMEOUT);
  if (nres > 0) {
    le__lconn_update_reading(lc);
    return nres;
  }
  recv_wait w = {want, timeout > 0 ? deadline_after(lc, timeout) : 0};
  return le_coro_wait(L, &recv_ops, lc, &w);
}

/* After a wake: the connection may have gone meanwhile (its conn object
 * then points nowhere), or the reader has its own error (a timeout). The
 * byte count is still at 2 on the stack. */
static int recv_k(lua_State *L, int status, lua_KContext kctx) {
  le_lconn *lc = ((le__conn_ud *)lua_touserdata(L, 1))->lc;
  (void)status;
  (void)kctx;
  if (lc == NULL) return le_lconn_push_error(L, UV_ECANCELED);
  if (lc->reader_err) {
    int err = lc->reader_err;
    lc->reader_err = 0;
    int nres = push_failure(L, lc, err);
    le__lconn_update_reading(lc);
    return nres;
  }
  return recv_now(L, lc, framed(lc) ? 0 : (size_t)lua_tointeger(L, 2), -1);
}

/* conn:recv([n [, timeout]]) */
static int conn_recv(lua_State *L) {
  le_lconn *lc = le__lconn_check_open(L);
  lua_Integer n = luaL_optinteger(L, 2, 0);
  luaL_argcheck(L, n >= 0 && n <= LE_MAX_SIZE_OPT, 2,
                "byte count must be 0..1073741824");
  double timeout = opt_timeout(L, 3, lc->opts.recv_timeout);
  check_owner(L, lc, "recv");
  if (lc->reader != NULL) return push_busy(L);
  lua_settop(L, 2); /* the continuation finds the conn object and n here */
  return recv_now(L, lc, framed(lc) ? 0 : (size_t)n, timeout);
}

/* Writes hdr+data: at once as far as the kernel takes it, the rest queued
 * with a ref that keeps the Lua string at idx alive until it is written,
 * so nothing is copied. Returns 0 or a libuv error. */
static int write_message(lua_State *L, le_lconn *lc, int idx,
                         const unsigned char *hdr, size_t hlen,
                         const char *data, size_t len) {
  size_t done = 0;
  if (lc->queued == 0) {
    uv_buf_t bufs[2] = {{.base = (char *)hdr, .len = hlen},
                        {.base = (char *)data, .len = len}};
    ssize_t n = hlen ? lc->io->try_write(lc, bufs, 2)
                     : lc->io->try_write(lc, bufs + 1, 1);
    if (n < 0) return (int)n;
    done = (size_t)n;
    lc->bytes_out += done;
  }
  if (done == hlen + len) return 0;
  size_t hdone = done < hlen ? done : hlen;
  size_t ddone = done - hdone;
  lua_pushvalue(L, idx);
  int ref = luaL_ref(L, LUA_REGISTRYINDEX);
  int r = lc->io->queue_write(lc, (const char *)hdr + hdone, hlen - hdone,
                              data + ddone, len - ddone, ref);
  if (r < 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    return r;
  }
  lc->queued += hlen + len - done;
  lc->nqueued++;
  return 0;
}

static int arm_writer(le_coro *c, void *obj, const void *arg) {
  le_lconn *lc = obj;
  (void)arg;
  lc->writer = c;
  lc->writer_err = 0;
  lc->wait_since = (uint32_t)lc->io->now(lc);
  le_lconn_trace(lc, "send waits: %zu bytes queued, over send_buffer %u",
                 lc->queued, (unsigned)lc->opts.send_buffer);
  if (lc->opts.send_timeout > 0)
    lc->write_deadline = deadline_after(lc, lc->opts.send_timeout);
  le__lconn_rearm(lc);
  return 0;
}

static void cancel_writer(le_coro *c, void *obj) {
  le_lconn *lc = obj;
  if (lc->writer != c) return;
  take_writer(lc);
  le__lconn_rearm(lc);
}

static int send_k(lua_State *L, int status, lua_KContext kctx);

static const le_wait_ops send_ops = {"conn:send", arm_writer, cancel_writer,
                                     NULL, send_k};

/* After the wait for queued output to drain. */
static int send_k(lua_State *L, int status, lua_KContext kctx) {
  le_lconn *lc = ((le__conn_ud *)lua_touserdata(L, 1))->lc;
  (void)status;
  (void)kctx;
  if (lc == NULL) return le_lconn_push_error(L, UV_ECANCELED);
  int err = lc->writer_err ? lc->writer_err : lc->out_err;
  lc->writer_err = 0;
  le_lconn_trace(lc, "send resumed after %llu ms%s",
                 (unsigned long long)(uint32_t)((uint32_t)lc->io->now(lc) -
                                                lc->wait_since),
                 err ? " with an error" : "");
  if (err) return le_lconn_push_error(L, err);
  lua_pushboolean(L, 1);
  return 1;
}

/* conn:send(data) */
static int conn_send(lua_State *L) {
  le_lconn *lc = le__lconn_check_open(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  check_owner(L, lc, "send");
  if (lc->writer != NULL) return push_busy(L);
  if (lc->out_err) return le_lconn_push_error(L, lc->out_err);
  unsigned char hdr[4];
  int hlen = le_frame_header(lc->opts.packet, len, hdr);
  if (hlen < 0) return le_lconn_push_error(L, UV_EMSGSIZE);
  if (len == 0 && hlen == 0) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lc->last_active = lc->io->now(lc);
  lc->msgs_out++;
  int r = write_message(L, lc, 2, hdr, (size_t)hlen, data, len);
  if (r < 0) {
    lc->out_err = r;
    return le_lconn_push_error(L, r);
  }
  /* Where Lua cannot yield (a C callback), the bytes are already queued:
   * send returns true without waiting rather than raise after sending. */
  if (over_send_buffer(lc) && lua_isyieldable(L))
    return le_coro_wait(L, &send_ops, lc, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

/* Ends the handler's use of lc: methods raise from now on, waiting
 * coroutines of the connection get nil, "closed" on the loop's next turn,
 * and the socket closes (after flushing, unless `abort`). */
static void close_by_handler(le_lconn *lc, int how) {
  if (lc->state != LE_LCONN_CLOSED) set_state(lc, LE_LCONN_CLOSED);
  le_lconn_note_end(lc,
                    how == LE_CLOSE_RESET ? LE_END_RESET_SENT : LE_END_CLOSED);
  end_input(lc, UV_ECANCELED);
  end_output(lc, UV_ECANCELED);
  wake_reader(lc);
  le__lconn_wake_writer(lc);
  le__lconn_update_reading(lc);
  le__lconn_rearm(lc);
  lc->io->close(lc, how);
}

void le__lconn_close(le_lconn *lc, int how) {
  if (lc->state != LE_LCONN_CLOSED || how != LE_CLOSE_GRACEFUL)
    close_by_handler(lc, how);
}

/* conn:close(): flushes queued output and closes. Closing twice is fine. */
static int conn_close(lua_State *L) {
  le__conn_ud *ud = le__lconn_to_ud(L);
  if (ud->lc != NULL && ud->lc->state != LE_LCONN_CLOSED)
    close_by_handler(ud->lc, 0);
  lua_pushboolean(L, 1);
  return 1;
}

/* conn:reset(): an abortive close. The peer gets an RST instead of a FIN
 * (its next read fails with "econnreset"), and output still queued is
 * discarded. */
static int conn_reset(lua_State *L) {
  close_by_handler(le__lconn_check_open(L), LE_CLOSE_RESET);
  lua_pushboolean(L, 1);
  return 1;
}

/* conn:shutdown("write" | "read" | "both"): half-close. */
static int conn_shutdown(lua_State *L) {
  static const char *const hows[] = {"write", "read", "both", NULL};
  le_lconn *lc = le__lconn_check_open(L);
  int how = luaL_checkoption(L, 2, NULL, hows);
  if (how != 0) { /* read side: nothing more is delivered */
    end_input(lc, UV_ECANCELED);
    discard_input(lc);
    wake_reader(lc);
    le__lconn_update_reading(lc);
  }
  if (how != 1 && !lc->out_err) {
    lc->out_err = UV_ECANCELED;
    le__lconn_wake_writer(lc);
    lc->io->shutdown_write(lc);
  }
  lua_pushboolean(L, 1);
  return 1;
}

const luaL_Reg le__lconn_io_methods[] = {
    {"recv", conn_recv},         {"send", conn_send},   {"close", conn_close},
    {"shutdown", conn_shutdown}, {"reset", conn_reset}, {NULL, NULL}};

/* ---- lifetime ---- */

#define LCONN_OF_CORO(c) ((le_lconn *)((char *)(c)-offsetof(le_lconn, coro)))

/* Ends what the handler's coroutines started: spawned coroutines and
 * outbound connections go with it. */
static void end_children(le_lconn *lc) {
  le_coro_list_release(&lc->tasks);
  while (lc->children != NULL) {
    le_lconn *child = lc->children;
    le_lconn_orphan(child);
    le__lconn_close(child, LE_CLOSE_ABORT);
  }
}

/* The status a client-mode handler gives the process: 1 after an error,
 * the integer it returned (as a shell exit status, 0..255), else 0. */
static uint8_t exit_status_of(lua_State *co, int nres, const char *error) {
  if (error != NULL) return 1;
  if (nres < 1 || !lua_isinteger(co, -nres)) return 0;
  return (uint8_t)(lua_tointeger(co, -nres) & 0xff);
}

/* The handler returned or raised: log a failure with its connection, close
 * (at once after an error, else after flushing) and tell the connection.
 * Nothing here allocates in Lua (see le_coro_done_cb). */
static void on_handler_done(le_coro *c, lua_State *co, int nres,
                            const char *error) {
  le_lconn *lc = LCONN_OF_CORO(c);
  lc->exit_status = exit_status_of(co, nres, error);
  if (error != NULL) {
    char peer[LE_ADDR_TEXT_MAX];
    le_lconn_format_peer(lc, peer, sizeof peer);
    le_logf(lc->log, LE_LOG_ERROR, "conn %llu %s: handler error: %s",
            (unsigned long long)lc->id, peer, error);
    le_lconn_trace(lc, "handler error: %.*s", (int)strcspn(error, "\n"), error);
    le_lconn_note_end(lc, LE_END_HANDLER_ERROR);
  } else {
    le_lconn_trace(lc, "handler returned");
    le_lconn_note_end(lc, LE_END_RETURNED);
  }
  end_children(lc);
  /* After an error, output is dropped even if close() began a flush. */
  le__lconn_close(lc, error != NULL ? LE_CLOSE_ABORT : LE_CLOSE_GRACEFUL);
  lc->io->handler_done(lc);
}

void le_lconn_init(le_lconn *lc, const le_lconn_io *io, const le_log *log,
                   lua_State *L) {
  memset(lc, 0, sizeof *lc);
  lc->io = io;
  lc->log = log;
  lc->L = L;
  lc->coro.ref = LUA_NOREF;
  lc->peer.sa.sa_family = AF_UNIX;
  lc->state = LE_LCONN_OPEN;
  le_opts_init(&lc->opts);
  le_buf_init(&lc->in);
}

/* Pushes a new conn object for lc on L. */
static void push_conn_object(le_lconn *lc, lua_State *L) {
  le__conn_ud *ud = lua_newuserdatauv(L, sizeof *ud, 0);
  ud->lc = NULL;
  luaL_setmetatable(L, LE_LCONN_METATABLE);
  ud->lc = lc;
  lc->ud = ud;
}

/* Detaches lc from its conn object: later use of the object raises. */
static void detach_object(le_lconn *lc) {
  if (lc->ud != NULL) lc->ud->lc = NULL;
  lc->ud = NULL;
}

/* What start_protected starts. */
typedef struct start_args {
  le_lconn *lc;
  const char *const *args;
  int nargs;
} start_args;

/* lua_CFunction: handler(conn, args...) in a new coroutine. Stack: the
 * handler function, the start_args as a light userdata. */
static int start_protected(lua_State *L) {
  const start_args *a = lua_touserdata(L, 2);
  lua_pop(L, 1);
  luaL_checkstack(L, a->nargs + 2, "too many arguments");
  /* The conn object is not referenced from C: the handler holds it, and
   * lc->ud is a weak link that __gc clears if it goes first. */
  push_conn_object(a->lc, L);
  for (int i = 0; i < a->nargs; i++) lua_pushstring(L, a->args[i]);
  static const le_coro_class handler_class = {on_handler_done, NULL};
  le_coro_start(&a->lc->coro, L, 1 + a->nargs, &handler_class, NULL);
  return 0;
}

int le_lconn_start(le_lconn *lc, const char *const *args, int nargs) {
  lua_State *L = lc->L;
  start_args a = {lc, args, nargs};
  if (!lua_checkstack(L, 3)) {
    lua_pop(L, 1);
    return -1;
  }
  lc->last_active = lc->opened_at = lc->io->now(lc);
  lc->coro.owner = lc;
  lua_pushcfunction(L, start_protected);
  lua_insert(L, -2);
  lua_pushlightuserdata(L, &a);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    lua_pop(L, 1);
    if (!le_coro_alive(&lc->coro)) {
      detach_object(lc);
      return -1;
    }
  }
  le__lconn_update_reading(lc);
  le__lconn_rearm(lc);
  return 0;
}

void le_lconn_adopt(le_lconn *lc, lua_State *L) {
  le_coro *c = le_coro_of(L);
  le_lconn *parent = le_lconn_of_coro(c);
  lc->parent = parent;
  lc->next_child = parent->children;
  if (parent->children) parent->children->prev_child = lc;
  parent->children = lc;
  lc->last_active = lc->opened_at = lc->io->now(lc);
  le__lconn_update_reading(lc);
  le__lconn_rearm(lc);
  /* Last, since it may raise (out of memory): the connection is already
   * the parent's child then, and is closed with it. */
  push_conn_object(lc, L);
}

void le_lconn_orphan(le_lconn *lc) {
  le_lconn *parent = lc->parent;
  if (parent == NULL) return;
  if (lc->prev_child)
    lc->prev_child->next_child = lc->next_child;
  else
    parent->children = lc->next_child;
  if (lc->next_child) lc->next_child->prev_child = lc->prev_child;
  lc->parent = lc->next_child = lc->prev_child = NULL;
}

void le_lconn_release(le_lconn *lc) {
  end_children(lc);
  le_lconn_orphan(lc);
  le_coro_release(&lc->coro);
  /* Later use of a conn object that outlives its connection raises; a
   * coroutine of another task still waiting here learns it is closed. */
  detach_object(lc);
  if (lc->reader) le_coro_wake(take_reader(lc));
  if (lc->writer) le_coro_wake(take_writer(lc));
  le_buf_free(&lc->in);
}
