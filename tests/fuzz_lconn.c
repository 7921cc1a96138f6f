/* libFuzzer target for the input path of a connection's Lua face
 * (include/luaecho/lconn.h), without sockets: a fake transport, like the
 * one in test_lconn.c, feeds a byte stream through le_lconn_on_data in
 * reads of arbitrary sizes, then ends it with EOF or a socket error, while
 * a handler loops recv/send.
 *
 * An input is read as
 *   byte 0     bits 0-1: the plan's length (1..4); bit 2: the stream ends
 *              with a socket error (econnreset) instead of EOF
 *   plan       one byte per step, cycled through by the handler's recv
 *              calls: the byte modulo 6 is raw recv(), packet 1, 2, 4,
 *              line, or raw recv(n) with n = 1 + (byte >> 3)
 *   1 byte     packet_size: 0 keeps the default (1 MiB), else 1..255
 *   1 byte     how the stream is split into reads: 0 is one byte per read,
 *              k is reads of 1..k bytes from a generator seeded with k
 *   1 byte     the kernel's appetite: 0, every send is taken at once; k,
 *              each try_write takes at most (k - 1) & 0x7f bytes, the rest
 *              is queued, send_buffer and recv_buffer are small so that
 *              send waits and reading pauses, and queued writes complete
 *              at points drawn from k
 *   the rest   the bytes the peer sends
 *
 * The handler sets the step's mode, calls recv, keeps each message in a
 * table and sends it back in the same mode; on the first failure it keeps
 * err and partial, sends partial back (raw mode) and returns. Checked,
 * else abort():
 *
 *   no crash and no sanitizer report; the handler neither raises nor
 *   hangs: it ends once the stream has ended and queued writes completed
 *   each message is what an independent decoder finds next in the bytes
 *     delivered: for a framed step the next whole message of its mode
 *     within packet_size; for raw recv(n) exactly the next n bytes; for
 *     raw recv() the next bytes, at least one
 *   the failure is the one the rest of the stream calls for: "emsgsize"
 *     exactly when the decoder finds an oversized message next, else
 *     "closed" after EOF or "econnreset" after the error, once no whole
 *     message is left (for raw recv(), nothing is left); partial is what
 *     remains in raw mode and "" in framed modes
 *   the bytes written are the messages re-encoded in their modes followed
 *     by the raw partial: all of them after EOF, a prefix after an error
 *
 * Built with clang as a libFuzzer target, or with any compiler together
 * with fuzz_replay.c, which supplies main. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <uv.h>

#include "luaecho/buf.h"
#include "luaecho/framing.h"
#include "luaecho/lconn.h"
#include "fuzz_support.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_PLAN 4
#define MAX_PENDING 4096

typedef struct step {
  le_packet packet;
  size_t n; /* raw recv(n); 0 for recv() */
} step;

/* A write queued with io->queue_write, waiting to be reported done. */
typedef struct pending {
  char hdr[4];
  size_t hlen;
  const char *data;
  size_t len;
  int ref;
} pending;

typedef struct fake {
  le_lconn lc;
  lua_State *L;
  le_log log;
  FILE *log_file;
  char *log_text;
  size_t log_len;
  size_t accept; /* bytes one try_write takes; SIZE_MAX: all */
  le_buf out;    /* bytes written, in order */
  pending queue[MAX_PENDING];
  size_t head, tail;
  int reading;
  int done;
} fake;

static fake *current; /* the run in progress, for print_log */

/* Shows what the handler logged (its errors) when a check fails. */
static void print_log(void) {
  if (current == NULL || current->log_file == NULL) return;
  fflush(current->log_file);
  fprintf(stderr, "luaecho log:\n%.*s\n", (int)current->log_len,
          current->log_text ? current->log_text : "");
}

static fake *fake_of(le_lconn *lc) {
  return (fake *)((char *)lc - offsetof(fake, lc));
}

/* ---- the fake transport ---- */

static ssize_t io_try_write(le_lconn *lc, const uv_buf_t *bufs,
                            unsigned nbufs) {
  fake *f = fake_of(lc);
  /* Nothing may overtake bytes already queued. */
  if (f->head != f->tail) return 0;
  size_t total = 0;
  for (unsigned i = 0; i < nbufs && total < f->accept; i++) {
    size_t n = bufs[i].len;
    if (n > f->accept - total) n = f->accept - total;
    CHECK(le_buf_append(&f->out, bufs[i].base, n) == 0);
    total += n;
  }
  return (ssize_t)total;
}

static int io_queue_write(le_lconn *lc, const char *hdr, size_t hlen,
                          const char *data, size_t len, int ref) {
  fake *f = fake_of(lc);
  CHECK(hlen <= 4);
  if (f->tail - f->head == MAX_PENDING) return UV_ENOBUFS;
  pending *w = &f->queue[f->tail++ % MAX_PENDING];
  memcpy(w->hdr, hdr, hlen);
  w->hlen = hlen;
  w->data = data;
  w->len = len;
  w->ref = ref;
  return 0;
}

static void io_set_reading(le_lconn *lc, int on) { fake_of(lc)->reading = on; }
static void io_set_timer(le_lconn *lc, int64_t ms) { (void)lc, (void)ms; }
static uint64_t io_now(le_lconn *lc) {
  (void)lc;
  return 1000000;
}
static void io_shutdown_write(le_lconn *lc) { (void)lc; }
static void io_apply_sockopts(le_lconn *lc) { (void)lc; }

static int io_sockname(le_lconn *lc, char *host, size_t hostlen, int *port) {
  (void)lc;
  snprintf(host, hostlen, "127.0.0.1");
  *port = 7000;
  return 0;
}

static void io_peer_path(le_lconn *lc, char *path, size_t len) {
  (void)lc;
  if (len > 0) path[0] = '\0';
}

static void io_close(le_lconn *lc, int abort) { (void)lc, (void)abort; }
static void io_handler_done(le_lconn *lc) { fake_of(lc)->done = 1; }

static const le_lconn_io fake_io = {
    .try_write = io_try_write,
    .queue_write = io_queue_write,
    .set_reading = io_set_reading,
    .set_timer = io_set_timer,
    .now = io_now,
    .shutdown_write = io_shutdown_write,
    .apply_sockopts = io_apply_sockopts,
    .sockname = io_sockname,
    .peer_path = io_peer_path,
    .close = io_close,
    .handler_done = io_handler_done,
};

/* Reports the oldest queued write done; `status` < 0 means it failed and
 * its bytes never left. */
static void complete_write(fake *f, int status) {
  pending *w = &f->queue[f->head++ % MAX_PENDING];
  if (status == 0) {
    CHECK(le_buf_append(&f->out, w->hdr, w->hlen) == 0);
    CHECK(le_buf_append(&f->out, w->data, w->len) == 0);
  }
  le_lconn_on_written(&f->lc, w->hlen + w->len, w->ref, status);
}

/* ---- the handler ---- */

static const char handler_src[] =
    "return function(conn)\n"
    "  conn:setopts(OPTS)\n"
    "  local i = 0\n"
    "  while true do\n"
    "    local step = PLAN[i % #PLAN + 1]\n"
    "    i = i + 1\n"
    "    conn:setopts{ packet = step.packet }\n"
    "    local data, err, partial = conn:recv(step.n)\n"
    "    if not data then\n"
    "      END_ERR, END_PARTIAL = err, partial\n"
    "      if partial ~= '' then conn:send(partial) end\n"
    "      return\n"
    "    end\n"
    "    GOT[#GOT + 1] = data\n"
    "    conn:send(data)\n"
    "  end\n"
    "end\n";

static void push_packet(lua_State *L, le_packet p) {
  if (p == LE_PACKET_RAW)
    lua_pushliteral(L, "raw");
  else if (p == LE_PACKET_LINE)
    lua_pushliteral(L, "line");
  else
    lua_pushinteger(L, (lua_Integer)p);
}

static void set_globals(lua_State *L, const step *plan, size_t nplan,
                        size_t packet_size, int limited) {
  lua_createtable(L, (int)nplan, 0);
  for (size_t i = 0; i < nplan; i++) {
    lua_createtable(L, 0, 2);
    push_packet(L, plan[i].packet);
    lua_setfield(L, -2, "packet");
    if (plan[i].n > 0) {
      lua_pushinteger(L, (lua_Integer)plan[i].n);
      lua_setfield(L, -2, "n");
    }
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setglobal(L, "PLAN");
  lua_createtable(L, 0, 3);
  lua_pushinteger(L, (lua_Integer)packet_size);
  lua_setfield(L, -2, "packet_size");
  if (limited) {
    lua_pushinteger(L, 16);
    lua_setfield(L, -2, "send_buffer");
    lua_pushinteger(L, 64);
    lua_setfield(L, -2, "recv_buffer");
  }
  lua_setglobal(L, "OPTS");
  lua_newtable(L);
  lua_setglobal(L, "GOT");
}

/* ---- the independent decoder ---- */

typedef enum { WHOLE, SHORT, OVERSIZED } found;

/* Finds the message a step reads at the front of p[0..n): its payload
 * offset, length and the bytes it uses. */
static found next_message(const step *s, size_t max, const uint8_t *p, size_t n,
                          size_t *off, size_t *len, size_t *used) {
  *off = 0;
  if (s->packet == LE_PACKET_RAW) {
    size_t want = s->n ? s->n : 1;
    if (n < want) return SHORT;
    *len = *used = s->n ? s->n : n;
    return WHOLE;
  }
  if (s->packet == LE_PACKET_LINE) {
    for (size_t i = 0; i < n && i < max; i++) {
      if (p[i] == '\n') {
        *len = *used = i + 1;
        return WHOLE;
      }
    }
    return n >= max ? OVERSIZED : SHORT;
  }
  size_t h = fuzz_header_size(s->packet);
  if (n < h) return SHORT;
  uint64_t announced = 0;
  for (size_t i = 0; i < h; i++) announced = announced << 8 | p[i];
  if (announced > max) return OVERSIZED;
  if (n - h < announced) return SHORT;
  *off = h;
  *len = (size_t)announced;
  *used = h + (size_t)announced;
  return WHOLE;
}

static void append_header(le_buf *b, le_packet p, size_t len) {
  size_t h = fuzz_header_size(p);
  for (size_t i = 0; i < h; i++) {
    char c = (char)(uint8_t)((uint64_t)len >> (8 * (h - 1 - i)));
    CHECK(le_buf_append(b, &c, 1) == 0);
  }
}

/* Checks what the handler saw against the delivered bytes and builds the
 * output it should have written in `expected`. */
static void check_handler(fake *f, const step *plan, size_t nplan, size_t max,
                          const uint8_t *stream, size_t delivered,
                          int ended_by_error, le_buf *expected) {
  lua_State *L = f->L;
  size_t pos = 0, k = 0;
  lua_getglobal(L, "GOT");
  size_t count = (size_t)luaL_len(L, -1);
  for (; k < count; k++) {
    const step *s = &plan[k % nplan];
    lua_rawgeti(L, -1, (lua_Integer)k + 1);
    size_t n;
    const char *msg = lua_tolstring(L, -1, &n);
    CHECK(msg != NULL);
    size_t off = 0, len = 0, used = 0;
    CHECK(next_message(s, max, stream + pos, delivered - pos, &off, &len,
                       &used) == WHOLE);
    if (s->packet == LE_PACKET_RAW && s->n == 0) len = used = n; /* any */
    CHECK(n == len && used <= delivered - pos);
    CHECK(memcmp(msg, stream + pos + off, n) == 0);
    append_header(expected, s->packet, n);
    CHECK(le_buf_append(expected, msg, n) == 0);
    pos += used;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);

  const step *s = &plan[k % nplan];
  size_t off, len, used;
  found next =
      next_message(s, max, stream + pos, delivered - pos, &off, &len, &used);
  lua_getglobal(L, "END_ERR");
  lua_getglobal(L, "END_PARTIAL");
  const char *err = lua_tostring(L, -2);
  size_t plen = 0;
  const char *partial = lua_tolstring(L, -1, &plen);
  CHECK(err != NULL && partial != NULL);
  if (next == OVERSIZED) {
    CHECK(strcmp(err, "emsgsize") == 0);
  } else {
    CHECK(strcmp(err, ended_by_error ? "econnreset" : "closed") == 0);
    CHECK(next == SHORT); /* no whole message was left unread */
  }
  if (s->packet == LE_PACKET_RAW && next != OVERSIZED) {
    CHECK(plen == delivered - pos);
    CHECK(plen == 0 || memcmp(partial, stream + pos, plen) == 0);
    CHECK(le_buf_append(expected, partial, plen) == 0);
  } else {
    CHECK(plen == 0);
  }
  lua_pop(L, 2);
}

/* ---- one run ---- */

/* Reads of the stream: the next read's size, from a fixed generator. */
static size_t next_read(uint32_t *rng, unsigned split, size_t left) {
  if (split == 0) return 1;
  *rng = *rng * 1103515245u + 12345u;
  size_t k = 1 + (*rng >> 16) % split;
  return k < left ? k : left;
}

static void deliver(fake *f, const uint8_t *p, size_t n) {
  /* A copy that dies right after the call: `data` is only valid during
   * le_lconn_on_data, and AddressSanitizer sees any later use. */
  char *copy = malloc(n);
  CHECK(copy != NULL);
  memcpy(copy, p, n);
  le_lconn_on_data(&f->lc, copy, n);
  free(copy);
}

static void start_handler(fake *f) {
  lua_State *L = f->L;
  if (luaL_loadbufferx(L, handler_src, sizeof handler_src - 1, "=fuzz", "t") !=
          LUA_OK ||
      lua_pcall(L, 0, 1, 0) != LUA_OK) {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
    abort();
  }
  CHECK(le_lconn_start(&f->lc, NULL, 0) == 0);
  CHECK(lua_gettop(L) == 0);
}

static void setup(fake *f) {
  memset(f, 0, sizeof *f);
  f->L = luaL_newstate();
  f->log_file = open_memstream(&f->log_text, &f->log_len);
  CHECK(f->L != NULL && f->log_file != NULL);
  *(void **)lua_getextraspace(f->L) = NULL;
  luaL_openlibs(f->L);
  le_lconn_open(f->L);
  le_log_init(&f->log, LE_LOG_DEBUG, f->log_file);
  le_lconn_init(&f->lc, &fake_io, &f->log, f->L);
  f->lc.id = 1;
  le_buf_init(&f->out);
}

static void teardown(fake *f) {
  le_lconn_release(&f->lc);
  CHECK(lua_gettop(f->L) == 0);
  lua_close(f->L);
  fclose(f->log_file);
  free(f->log_text);
  le_buf_free(&f->out);
}

static const le_packet packets[] = {LE_PACKET_RAW, LE_PACKET_1, LE_PACKET_2,
                                    LE_PACKET_4, LE_PACKET_LINE};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  size_t nplan = 1 + (data[0] & 3);
  int ended_by_error = (data[0] >> 2) & 1;
  if (size < 1 + nplan + 3) return 0;
  step plan[MAX_PLAN];
  for (size_t i = 0; i < nplan; i++) {
    uint8_t b = data[1 + i];
    plan[i].packet = packets[b % 6 == 5 ? 0 : b % 6];
    plan[i].n = b % 6 == 5 ? 1 + (size_t)(b >> 3) : 0;
  }
  const uint8_t *p = data + 1 + nplan;
  size_t max = p[0] ? p[0] : 1024 * 1024;
  unsigned split = p[1];
  uint8_t appetite = p[2];
  const uint8_t *stream = p + 3;
  size_t total = size - (size_t)(stream - data);

  static fake f;
  setup(&f);
  current = &f;
  fuzz_on_failure = print_log;
  f.accept = appetite ? (size_t)((appetite - 1) & 0x7f) : SIZE_MAX;
  set_globals(f.L, plan, nplan, max, appetite != 0);
  start_handler(&f);

  /* Feeds the stream while the connection reads; when it pauses, queued
   * writes complete, as the peer reading its answers would make them. */
  uint32_t rng = split * 2654435761u ^ (uint32_t)total;
  uint32_t drain = appetite * 40503u + 1;
  size_t pos = 0;
  while (pos < total && !f.done) {
    if (f.reading) {
      size_t k = next_read(&rng, split, total - pos);
      deliver(&f, stream + pos, k);
      pos += k;
      drain = drain * 1103515245u + 12345u;
      if (f.head != f.tail && (drain >> 16) % 3 == 0) complete_write(&f, 0);
    } else if (f.head != f.tail) {
      complete_write(&f, 0);
    } else {
      break; /* input is over for good (emsgsize) */
    }
  }
  /* A connection whose handler ended reads no more, so nothing follows. */
  if (!f.done && ended_by_error)
    le_lconn_on_error(&f.lc, UV_ECONNRESET);
  else if (!f.done)
    le_lconn_on_eof(&f.lc);
  /* After an error, writes still queued fail, as libuv cancels them. */
  for (size_t i = 0; f.head != f.tail; i++) {
    CHECK(i < 100000);
    complete_write(&f, ended_by_error ? UV_ECANCELED : 0);
  }
  CHECK(f.done); /* the handler ended and did not raise */

  le_buf expected;
  le_buf_init(&expected);
  check_handler(&f, plan, nplan, max, stream, pos, ended_by_error, &expected);
  size_t got = le_buf_size(&f.out), want = le_buf_size(&expected);
  if (ended_by_error)
    CHECK(got <= want);
  else
    CHECK(got == want);
  CHECK(got == 0 ||
        memcmp(le_buf_peek(&f.out), le_buf_peek(&expected), got) == 0);
  le_buf_free(&expected);
  teardown(&f);
  current = NULL;
  return 0;
}
