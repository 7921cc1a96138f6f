/* The Lua face of a connection: see include/luaecho/lconn.h.
 *
 * The flow of one echo round trip through this file: the handler calls
 * conn:recv(), finds nothing buffered and yields (conn_recv); bytes arrive
 * and le_lconn_on_data resumes it with a string made straight from the read
 * buffer; the handler calls conn:send(), which hands the string to the
 * kernel at once (conn_send) and returns without yielding unless too much
 * output is already queued.
 */
#include "luaecho/lconn.h"

#include <ctype.h>
#include <lauxlib.h>
#include <math.h>
#include <stddef.h>
#include <string.h>
#include <uv.h>

/* The userdata Lua holds: only a pointer, cleared when the connection is
 * freed, so Lua's collector and the connection's lifetime stay separate. */
typedef struct conn_ud {
  le_lconn *lc;
} conn_ud;

#define LCONN_OF_CORO(c) \
  ((le_lconn *)((char *)(c) - offsetof(le_lconn, coro)))

char *le_lconn_errname(int err, char *out, size_t len) {
  /* uv_err_name gives "ECONNRESET"; Lua code sees the lower-case form. */
  const char *name =
      (err == UV_EOF || err == UV_ECANCELED) ? "closed" : uv_err_name(err);
  size_t i = 0;
  for (; name[i] && i + 1 < len; i++)
    out[i] = (char)tolower((unsigned char)name[i]);
  out[i] = '\0';
  return out;
}

static void push_errname(lua_State *L, int err) {
  char name[32];
  lua_pushstring(L, le_lconn_errname(err, name, sizeof name));
}

/* Pauses reading while enough input is buffered for a handler that is not
 * asking for it, and resumes once it drains, so TCP pushes back on a peer
 * that sends faster than the handler reads. */
static void update_reading(le_lconn *lc) {
  size_t limit = lc->opts.recv_buffer;
  if (lc->reader != NULL && lc->want > limit) limit = lc->want;
  int on = !lc->in_err && !lc->closed && le_buf_size(&lc->in) < limit;
  if (on != (int)lc->reading) {
    lc->reading = (unsigned)on;
    lc->io->set_reading(lc, on);
  }
}

/* Pushes nil, the error's name and every buffered byte as the partial
 * result. UV_ETIMEDOUT stands for luaecho's own timeouts here. */
static int push_failure(lua_State *L, le_lconn *lc, int err) {
  lua_pushnil(L);
  if (err == UV_ETIMEDOUT)
    lua_pushliteral(L, "timeout");
  else
    push_errname(L, err);
  lua_pushlstring(L, le_buf_size(&lc->in) ? le_buf_peek(&lc->in) : "",
                  le_buf_size(&lc->in));
  le_buf_consume(&lc->in, le_buf_size(&lc->in));
  return 3;
}

/* Pushes the result of recv(n) on L when it is ready and returns the number
 * of values pushed, or returns 0 when the caller must wait for more input. */
static int push_recv(lua_State *L, le_lconn *lc, size_t n) {
  size_t have = le_buf_size(&lc->in);
  if (have > 0 && have >= n) {
    size_t take = n ? n : have;
    lua_pushlstring(L, le_buf_peek(&lc->in), take);
    le_buf_consume(&lc->in, take);
    return 1;
  }
  if (lc->in_err) return push_failure(L, lc, lc->in_err);
  return 0;
}

/* Clears the reader's waiting state and returns it; called before resuming
 * it, so that the resumed code sees a connection nobody waits on. */
static lua_State *take_reader(le_lconn *lc) {
  lua_State *co = lc->reader;
  lc->reader = NULL;
  lc->want = 0;
  if (lc->timer) {
    lc->timer = 0;
    lc->io->set_timer(lc, -1);
  }
  return co;
}

static void resume(lua_State *co, int nres) {
  le_coro_resume(le_coro_of(co), nres);
}

/* Resumes the coroutine waiting in recv if its request can now be answered. */
static void wake_reader(le_lconn *lc) {
  if (lc->reader == NULL) return;
  int nres = push_recv(lc->reader, lc, lc->want);
  if (nres == 0) return;
  resume(take_reader(lc), nres);
}

/* Resumes the coroutine waiting in send once output drained below
 * send_buffer or can no longer be written. */
static void wake_writer(le_lconn *lc) {
  lua_State *co = lc->writer;
  if (co == NULL || (lc->queued > lc->opts.send_buffer && !lc->out_err))
    return;
  lc->writer = NULL;
  if (lc->out_err) {
    lua_pushnil(co);
    push_errname(co, lc->out_err);
    resume(co, 2);
  } else {
    lua_pushboolean(co, 1);
    resume(co, 1);
  }
}

void le_lconn_on_data(le_lconn *lc, const char *data, size_t len) {
  /* The common case of an echo loop: the handler already waits for any
   * bytes and none are buffered, so the string is made straight from the
   * read buffer with one copy and nothing is buffered here. */
  if (lc->reader != NULL && lc->want == 0 && le_buf_size(&lc->in) == 0) {
    lua_State *co = take_reader(lc);
    lua_pushlstring(co, data, len);
    resume(co, 1);
    return;
  }
  if (le_buf_append(&lc->in, data, len) != 0) {
    le_lconn_on_error(lc, UV_ENOMEM);
    return;
  }
  wake_reader(lc);
  update_reading(lc);
}

void le_lconn_on_eof(le_lconn *lc) {
  lc->in_err = UV_EOF;
  lc->reading = 0;
  wake_reader(lc);
}

void le_lconn_on_error(le_lconn *lc, int err) {
  if (!lc->in_err || lc->in_err == UV_EOF) lc->in_err = err;
  if (!lc->out_err) lc->out_err = err;
  if (lc->reading) {
    lc->reading = 0;
    lc->io->set_reading(lc, 0);
  }
  wake_reader(lc);
  wake_writer(lc);
}

void le_lconn_on_written(le_lconn *lc, size_t len, int ref, int status) {
  luaL_unref(lc->L, LUA_REGISTRYINDEX, ref);
  lc->queued -= len;
  if (status < 0 && !lc->out_err) lc->out_err = status;
  wake_writer(lc);
}

void le_lconn_on_timeout(le_lconn *lc) {
  lc->timer = 0;
  if (lc->reader == NULL) return;
  lua_State *co = take_reader(lc);
  int nres = push_failure(co, lc, UV_ETIMEDOUT);
  update_reading(lc);
  resume(co, nres);
}

void le_lconn_abort(le_lconn *lc) {
  if (!lc->in_err || lc->in_err == UV_EOF) lc->in_err = UV_ECANCELED;
  if (!lc->out_err) lc->out_err = UV_ECANCELED;
  wake_reader(lc);
  wake_writer(lc);
  lc->io->close(lc, 1);
}

/* ---- the conn methods ---- */

/* Returns the connection of the conn argument; raises if it is closed. */
static le_lconn *check_open(lua_State *L) {
  conn_ud *ud = luaL_checkudata(L, 1, LE_LCONN_METATABLE);
  if (ud->lc == NULL || ud->lc->closed)
    luaL_error(L, "attempt to use a closed connection");
  return ud->lc;
}

/* Raises unless L is the coroutine the connection belongs to: a blocking
 * call must suspend the coroutine the server will later resume. */
static void check_owner(lua_State *L, le_lconn *lc, const char *method) {
  if (le_coro_of(L) != &lc->coro)
    luaL_error(L,
               "conn:%s() called from a coroutine that does not own "
               "connection %I; call it from the connection's handler",
               method, (lua_Integer)lc->id);
}

static int push_error(lua_State *L, int err) {
  lua_pushnil(L);
  push_errname(L, err);
  return 2;
}

static int push_busy(lua_State *L) {
  lua_pushnil(L);
  lua_pushliteral(L, "busy");
  return 2;
}

/* Reads an optional timeout in seconds at idx; returns -1 for none. */
static double opt_timeout(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return -1;
  double t = (double)luaL_checknumber(L, idx);
  luaL_argcheck(L, t >= 0 && !isnan(t), idx, "timeout must be >= 0 seconds");
  return t;
}

static void arm_timer(le_lconn *lc, double seconds) {
  double ms = ceil(seconds * 1000.0);
  lc->timer = 1;
  lc->io->set_timer(lc, ms > (double)INT64_MAX / 2 ? INT64_MAX / 2
                                                   : (int64_t)ms);
}

/* conn:recv([n [, timeout]]) */
static int conn_recv(lua_State *L) {
  le_lconn *lc = check_open(L);
  lua_Integer n = luaL_optinteger(L, 2, 0);
  luaL_argcheck(L, n >= 0, 2, "byte count must be >= 0");
  double timeout = opt_timeout(L, 3);
  check_owner(L, lc, "recv");
  if (lc->reader != NULL) return push_busy(L);
  int nres = push_recv(L, lc, (size_t)n);
  if (nres > 0) {
    update_reading(lc);
    return nres;
  }
  if (timeout == 0) return push_failure(L, lc, UV_ETIMEDOUT);
  lc->reader = L;
  lc->want = (size_t)n;
  if (timeout > 0) arm_timer(lc, timeout);
  update_reading(lc);
  return le_coro_yield(L);
}

/* conn:send(data) */
static int conn_send(lua_State *L) {
  le_lconn *lc = check_open(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  check_owner(L, lc, "send");
  if (lc->writer != NULL) return push_busy(L);
  if (lc->out_err) return push_error(L, lc->out_err);
  size_t done = 0;
  if (lc->queued == 0) {
    ssize_t n = lc->io->try_write(lc, data, len);
    if (n < 0) {
      lc->out_err = (int)n;
      return push_error(L, lc->out_err);
    }
    done = (size_t)n;
  }
  if (done < len) {
    /* The queued bytes point into the Lua string; a registry ref keeps it
     * alive until the write completes, so nothing is copied. */
    lua_pushvalue(L, 2);
    int ref = luaL_ref(L, LUA_REGISTRYINDEX);
    int r = lc->io->queue_write(lc, data + done, len - done, ref);
    if (r < 0) {
      luaL_unref(L, LUA_REGISTRYINDEX, ref);
      lc->out_err = r;
      return push_error(L, r);
    }
    lc->queued += len - done;
    if (lc->queued > lc->opts.send_buffer) {
      lc->writer = L;
      return le_coro_yield(L);
    }
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* conn:close(): flushes queued output and closes. Closing twice is fine. */
static int conn_close(lua_State *L) {
  conn_ud *ud = luaL_checkudata(L, 1, LE_LCONN_METATABLE);
  le_lconn *lc = ud->lc;
  if (lc != NULL && !lc->closed) {
    lc->closed = 1;
    if (!lc->in_err || lc->in_err == UV_EOF) lc->in_err = UV_ECANCELED;
    if (!lc->out_err) lc->out_err = UV_ECANCELED;
    /* A coroutine of another owner may be waiting on it; it gets
     * nil, "closed". */
    wake_reader(lc);
    wake_writer(lc);
    update_reading(lc);
    lc->io->close(lc, 0);
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* conn:peername() -> host, port (port is nil for unix sockets) */
static int conn_peername(lua_State *L) {
  le_lconn *lc = check_open(L);
  lua_pushstring(L, lc->peer_host);
  if (lc->peer_port < 0)
    lua_pushnil(L);
  else
    lua_pushinteger(L, lc->peer_port);
  return 2;
}

static void push_peer(lua_State *L, const le_lconn *lc) {
  if (lc->peer_port < 0)
    lua_pushfstring(L, "unix:%s", lc->peer_host);
  else if (strchr(lc->peer_host, ':') != NULL)
    lua_pushfstring(L, "[%s]:%d", lc->peer_host, lc->peer_port);
  else
    lua_pushfstring(L, "%s:%d", lc->peer_host, lc->peer_port);
}

static int conn_tostring(lua_State *L) {
  conn_ud *ud = luaL_checkudata(L, 1, LE_LCONN_METATABLE);
  if (ud->lc == NULL) {
    lua_pushstring(L, "conn (closed)");
    return 1;
  }
  push_peer(L, ud->lc);
  lua_pushfstring(L, "conn %I (%s)%s", (lua_Integer)ud->lc->id,
                  lua_tostring(L, -1), ud->lc->closed ? " closed" : "");
  return 1;
}

/* conn.id, and method lookup for everything else. */
static int conn_index(lua_State *L) {
  conn_ud *ud = luaL_checkudata(L, 1, LE_LCONN_METATABLE);
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  const char *key = lua_tostring(L, 2);
  if (key != NULL && strcmp(key, "id") == 0 && ud->lc != NULL) {
    lua_pushinteger(L, (lua_Integer)ud->lc->id);
    return 1;
  }
  return 1;
}

static const luaL_Reg conn_methods[] = {
    {"recv", conn_recv},         {"send", conn_send},
    {"close", conn_close},       {"peername", conn_peername},
    {NULL, NULL}};

void le_lconn_open(lua_State *L) {
  luaL_newmetatable(L, LE_LCONN_METATABLE);
  luaL_newlib(L, conn_methods);
  lua_pushcclosure(L, conn_index, 1);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, conn_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushliteral(L, "luaecho.conn");
  lua_setfield(L, -2, "__name");
  lua_pop(L, 1);
}

/* ---- lifetime ---- */

/* The handler returned or raised: log a failure with its connection, close
 * (at once after an error, else after flushing) and tell the connection. */
static void on_handler_done(le_coro *c, const char *error) {
  le_lconn *lc = LCONN_OF_CORO(c);
  if (error != NULL) {
    lua_State *L = lc->L;
    push_peer(L, lc);
    le_logf(lc->log, LE_LOG_ERROR, "conn %llu %s: handler error: %s",
            (unsigned long long)lc->id, lua_tostring(L, -1), error);
    lua_pop(L, 1);
  }
  if (!lc->closed) {
    lc->closed = 1;
    update_reading(lc);
    lc->io->close(lc, error != NULL);
  }
  lc->io->handler_done(lc);
}

void le_lconn_init(le_lconn *lc, const le_lconn_io *io, const le_log *log,
                   lua_State *L) {
  memset(lc, 0, sizeof *lc);
  lc->io = io;
  lc->log = log;
  lc->L = L;
  lc->ud_ref = LUA_NOREF;
  lc->coro.ref = LUA_NOREF;
  lc->peer_port = -1;
  lc->opts.recv_buffer = LE_DEFAULT_RECV_BUFFER;
  lc->opts.send_buffer = LE_DEFAULT_SEND_BUFFER;
  le_buf_init(&lc->in);
}

int le_lconn_start(le_lconn *lc) {
  lua_State *L = lc->L;
  if (!lua_checkstack(L, 3)) {
    lua_pop(L, 1);
    return -1;
  }
  conn_ud *ud = lua_newuserdatauv(L, sizeof *ud, 0);
  ud->lc = lc;
  luaL_setmetatable(L, LE_LCONN_METATABLE);
  lua_pushvalue(L, -1);
  lc->ud_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (le_coro_start(&lc->coro, L, 1, on_handler_done) != 0) {
    lua_pop(L, 2);
    return -1;
  }
  update_reading(lc);
  return 0;
}

void le_lconn_release(le_lconn *lc) {
  lua_State *L = lc->L;
  le_coro_release(&lc->coro);
  if (lc->ud_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, lc->ud_ref);
    conn_ud *ud = lua_touserdata(L, -1);
    ud->lc = NULL;
    lua_pop(L, 1);
    luaL_unref(L, LUA_REGISTRYINDEX, lc->ud_ref);
    lc->ud_ref = LUA_NOREF;
  }
  le_buf_free(&lc->in);
}
