/*
 * loadgen: a verifying load generator for TCP echo servers.
 *
 * One thread, one epoll set, non-blocking sockets, libc only. Every byte that
 * comes back is compared with what was sent: messages are cut from a fixed
 * pseudo-random pattern at an offset derived from (connection, generation,
 * message number), so a wrong, lost, duplicated or reordered byte shows up
 * as a mismatch. Latencies go into a log-linear histogram (32 linear steps
 * per power of two, about 3% resolution); percentiles are reported in
 * microseconds.
 *
 * Modes (see usage()): pingpong, pipeline, bulk, connrate, idle.
 * Exit status: 0 when no error and no wrong byte was seen, 1 otherwise,
 * 2 for a usage error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF_SIZE (256 * 1024) /* one read() at most */
#define PAT_LEN 1048573u       /* pattern period: odd, not a power of two */
#define BULK_RING 64           /* write chunks tracked per bulk connection */
#define MAX_EVENTS 512
#define MAX_REPORTS 20         /* error lines printed before suppressing */

/* Log-linear histogram of nanosecond values. */
#define H_SUB_BITS 5
#define H_SUB (1u << H_SUB_BITS)
#define H_MAX_MSB 42 /* values are capped at about 8.8e12 ns */
#define H_BUCKETS ((H_MAX_MSB - H_SUB_BITS + 2) * H_SUB)

enum mode { MODE_PINGPONG, MODE_PIPELINE, MODE_BULK, MODE_CONNRATE, MODE_IDLE };
static const char *const mode_names[] = {"pingpong", "pipeline", "bulk",
                                         "connrate", "idle"};

enum cstate { CS_NEW, CS_CONNECTING, CS_OPEN, CS_CLOSED };

struct chunk {
  uint64_t end; /* stream offset just past the chunk */
  uint64_t t;   /* when write() accepted it */
};

struct conn {
  int fd;
  enum cstate state;
  uint32_t id;      /* slot number, fixed */
  uint32_t gen;     /* how many sockets this slot has opened (connrate) */
  int ready;        /* counted in g.ready */
  uint64_t t_start; /* when connect() was called */
  /* message modes */
  uint64_t sseq;     /* messages queued for sending */
  uint64_t rseq;     /* messages fully received */
  size_t roff;       /* bytes of message rseq received so far */
  uint64_t *stamps;  /* queue time of in-flight messages, ring of k */
  unsigned char *out; /* bytes queued but not yet taken by the kernel */
  size_t out_head, out_tail;
  /* bulk mode */
  uint64_t sent, recvd; /* stream bytes written and verified */
  uint64_t bstart;      /* stream offset 0 maps to this pattern offset */
  struct chunk *ring;
  unsigned rhead, rtail;
};

struct opts {
  const char *host, *port;
  enum mode mode;
  int conns, k, packet, max_connecting, json, nodelay, src_addrs;
  size_t size, wsize, window;
  double duration, warmup, connect_timeout, drain_timeout;
  double hold_secs, hold_timeout; /* hold_secs < 0: wait for stdin */
};

static struct {
  struct opts o;
  int ep;
  struct sockaddr_storage addr;
  socklen_t addrlen;
  char addrtext[NI_MAXHOST + NI_MAXSERV + 2];
  struct conn *conns;
  unsigned char *pat;
  size_t pat_alloc;
  unsigned char hdr[4];
  size_t hdrlen, msglen;
  unsigned char *rbuf;
  int running;                     /* new work may be started */
  uint64_t t_meas_start, t_meas_end; /* measurement window */
  int idle_target;                 /* idle mode: messages each conn sends */
  int stdin_done;
  /* establishment */
  int opened, ready, failed_setup, verified;
  /* results */
  uint64_t ops, bytes, errors, wrong, reports;
  uint64_t hist[H_BUCKETS], hcount, hmax;
} g;

static int stdin_tag; /* epoll data for stdin */

/* ---- small helpers ---------------------------------------------------- */

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t sec_ns(double s) { return (uint64_t)(s * 1e9); }

/* Prints one diagnostic line on stderr, the first MAX_REPORTS only. */
static void report(const char *fmt, ...) {
  if (g.reports++ >= MAX_REPORTS) {
    if (g.reports == MAX_REPORTS + 1)
      fprintf(stderr, "loadgen: further messages suppressed\n");
    return;
  }
  va_list ap;
  va_start(ap, fmt);
  fputs("loadgen: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("loadgen: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(2);
}

static void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) die("out of memory");
  return p;
}

static uint64_t mix64(uint64_t x) { /* splitmix64 finaliser */
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/* Pattern offset where message seq of connection c starts. */
static size_t msg_start(const struct conn *c, uint64_t seq) {
  uint64_t key = ((uint64_t)c->id << 40) ^ ((uint64_t)c->gen << 20) ^ seq;
  return (size_t)(mix64(key ^ 0x5bd1e995u) % PAT_LEN);
}

static void fill_pattern(void) {
  size_t extra = RBUF_SIZE;
  if (g.o.wsize > extra) extra = g.o.wsize;
  if (g.o.size > extra) extra = g.o.size;
  g.pat_alloc = PAT_LEN + extra;
  g.pat = xcalloc(g.pat_alloc, 1);
  uint64_t s = 0x243F6A8885A308D3ull;
  for (size_t i = 0; i < PAT_LEN; i++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    g.pat[i] = (unsigned char)(s >> 24);
  }
  /* Repeat the start so any span of up to `extra` bytes is contiguous. */
  for (size_t i = PAT_LEN; i < g.pat_alloc; i++) g.pat[i] = g.pat[i - PAT_LEN];
}

/* ---- histogram -------------------------------------------------------- */

static unsigned hist_index(uint64_t v) {
  if (v < H_SUB) return (unsigned)v;
  unsigned msb = 63u - (unsigned)__builtin_clzll(v);
  if (msb > H_MAX_MSB) {
    msb = H_MAX_MSB;
    v = (2ull << H_MAX_MSB) - 1;
  }
  unsigned shift = msb - H_SUB_BITS;
  return (msb - H_SUB_BITS + 1) * H_SUB + (unsigned)((v >> shift) & (H_SUB - 1));
}

/* Midpoint of bucket i, in nanoseconds. */
static double hist_value(unsigned i) {
  if (i < H_SUB) return i;
  unsigned shift = i / H_SUB - 1;
  uint64_t low = (uint64_t)(H_SUB + i % H_SUB) << shift;
  uint64_t width = 1ull << shift;
  return (double)low + (double)(width - 1) / 2.0;
}

static void hist_add(uint64_t ns) {
  g.hist[hist_index(ns)]++;
  g.hcount++;
  if (ns > g.hmax) g.hmax = ns;
}

/* Returns the p-quantile (0 < p <= 1) in microseconds, 0 when empty. */
static double hist_pct_us(double p) {
  if (!g.hcount) return 0;
  uint64_t want = (uint64_t)(p * (double)g.hcount + 0.999999);
  if (want < 1) want = 1;
  uint64_t seen = 0;
  for (unsigned i = 0; i < H_BUCKETS; i++) {
    seen += g.hist[i];
    if (seen >= want) {
      double v = hist_value(i);
      if (v > (double)g.hmax) v = (double)g.hmax;
      return v / 1000.0;
    }
  }
  return (double)g.hmax / 1000.0;
}

static int in_window(uint64_t t) {
  return t >= g.t_meas_start && t < g.t_meas_end;
}

/* ---- verification ----------------------------------------------------- */

/* Compares n received bytes with the expected ones and returns how many
 * differ; the first mismatch is reported with its position. */
static size_t check(const unsigned char *got, const unsigned char *exp,
                    size_t n, const struct conn *c, const char *where,
                    uint64_t unit, uint64_t off) {
  if (memcmp(got, exp, n) == 0) return 0;
  size_t bad = 0, first = n;
  for (size_t i = 0; i < n; i++)
    if (got[i] != exp[i]) {
      if (first == n) first = i;
      bad++;
    }
  report("conn %u: wrong byte in %s %" PRIu64 " at offset %" PRIu64
         ": expected 0x%02x, got 0x%02x (%zu wrong in this read)",
         c->id, where, unit, off + first, exp[first], got[first], bad);
  return bad;
}

static size_t msg_verify(const struct conn *c, uint64_t seq, size_t off,
                         const unsigned char *p, size_t n) {
  size_t bad = 0;
  if (off < g.hdrlen) {
    size_t h = g.hdrlen - off < n ? g.hdrlen - off : n;
    bad += check(p, g.hdr + off, h, c, "message", seq, off);
    p += h, n -= h, off += h;
  }
  if (n) {
    size_t start = msg_start(c, seq) + (off - g.hdrlen);
    bad += check(p, g.pat + start, n, c, "message", seq, off);
  }
  return bad;
}

/* ---- connections ------------------------------------------------------ */

static void conn_close(struct conn *c) {
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  c->state = CS_CLOSED;
}

/* Counts an error on c and closes it. err is an errno value or 0. */
static void conn_error(struct conn *c, const char *what, int err) {
  g.errors++;
  report("conn %u: %s%s%s", c->id, what, err ? ": " : "", err ? strerror(err) : "");
  if (!c->ready) g.failed_setup++;
  conn_close(c);
}

static void mark_ready(struct conn *c) {
  if (!c->ready) {
    c->ready = 1;
    g.ready++;
  }
}

/* Binds fd to the next of the 127.0.0.2.. source addresses, leaving the
 * port to connect(). Spreading connections over many source addresses keeps
 * the kernel's ephemeral-port search short when TIME_WAIT sockets pile up
 * (connrate mode); only meaningful when the server is on loopback. */
static int bind_source(int fd) {
  static uint32_t next;
  int one = 1;
  struct sockaddr_in sa = {.sin_family = AF_INET};
  sa.sin_addr.s_addr = htonl(0x7f000002u + next++ % (uint32_t)g.o.src_addrs);
  setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
  return bind(fd, (struct sockaddr *)&sa, sizeof sa);
}

/* Opens a fresh socket in slot c and starts a non-blocking connect. */
static void start_connect(struct conn *c) {
  c->gen++;
  c->ready = 0;
  c->sseq = c->rseq = 0;
  c->roff = c->out_head = c->out_tail = 0;
  c->sent = c->recvd = 0;
  c->rhead = c->rtail = 0;
  c->bstart = mix64(((uint64_t)c->id << 32) ^ c->gen) % PAT_LEN;
  c->t_start = now_ns();
  g.opened++;
  c->fd = socket(g.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0) {
    conn_error(c, "socket", errno);
    return;
  }
  int one = 1;
  if (g.o.nodelay) setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (g.o.src_addrs && bind_source(c->fd) < 0) {
    conn_error(c, "bind source address", errno);
    return;
  }
  if (connect(c->fd, (struct sockaddr *)&g.addr, g.addrlen) < 0 && errno != EINPROGRESS) {
    conn_error(c, "connect", errno);
    return;
  }
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                           .data.ptr = c};
  if (epoll_ctl(g.ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
    conn_error(c, "epoll_ctl", errno);
    return;
  }
  c->state = CS_CONNECTING;
}

/* Writes queued bytes until done or the kernel refuses more; an EPOLLOUT
 * edge resumes it. */
static void flush(struct conn *c) {
  while (c->out_head < c->out_tail) {
    ssize_t n = write(c->fd, c->out + c->out_head, c->out_tail - c->out_head);
    if (n > 0) {
      c->out_head += (size_t)n;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == EAGAIN) {
      return;
    } else {
      conn_error(c, "write", n < 0 ? errno : EIO);
      return;
    }
  }
  c->out_head = c->out_tail = 0;
}

static void queue_msg(struct conn *c) {
  size_t cap = (size_t)g.o.k * g.msglen;
  if (c->out_tail + g.msglen > cap) { /* compact; in-flight bytes fit */
    memmove(c->out, c->out + c->out_head, c->out_tail - c->out_head);
    c->out_tail -= c->out_head;
    c->out_head = 0;
  }
  unsigned char *p = c->out + c->out_tail;
  memcpy(p, g.hdr, g.hdrlen);
  memcpy(p + g.hdrlen, g.pat + msg_start(c, c->sseq), g.o.size);
  c->out_tail += g.msglen;
  c->stamps[c->sseq % (uint64_t)g.o.k] = now_ns();
  c->sseq++;
}

static int want_more(const struct conn *c) {
  switch (g.o.mode) {
  case MODE_IDLE: return c->sseq < (uint64_t)g.idle_target;
  case MODE_CONNRATE: return c->sseq < 1;
  default: return g.running;
  }
}

/* Keeps up to k messages in flight and pushes them out. */
static void msg_topup(struct conn *c) {
  while (want_more(c) && c->sseq - c->rseq < (uint64_t)g.o.k) queue_msg(c);
  flush(c);
}

static void msg_complete(struct conn *c, uint64_t now) {
  uint64_t t0 = c->stamps[c->rseq % (uint64_t)g.o.k];
  c->rseq++;
  c->roff = 0;
  if (g.o.mode == MODE_IDLE) {
    if (c->rseq == 1) mark_ready(c);
    if (c->rseq == 2) g.verified++;
  } else if (g.o.mode == MODE_CONNRATE) {
    t0 = c->t_start; /* a transaction is connect + exchange */
  }
  if (g.o.mode != MODE_IDLE && in_window(now)) {
    g.ops++;
    g.bytes += g.msglen;
    hist_add(now - t0);
  }
}

/* Verifies n received bytes against the messages in flight. */
static void msg_consume(struct conn *c, const unsigned char *p, size_t n, uint64_t now) {
  while (n) {
    if (c->rseq == c->sseq) {
      g.wrong += n;
      report("conn %u: %zu bytes received with no message outstanding", c->id, n);
      return;
    }
    size_t take = g.msglen - c->roff < n ? g.msglen - c->roff : n;
    g.wrong += msg_verify(c, c->rseq, c->roff, p, take);
    c->roff += take, p += take, n -= take;
    if (c->roff == g.msglen) msg_complete(c, now);
  }
}

static void connrate_finish(struct conn *c) {
  conn_close(c);
  if (g.running) start_connect(c);
}

static void msg_read(struct conn *c) {
  for (;;) {
    ssize_t n = read(c->fd, g.rbuf, RBUF_SIZE);
    if (n > 0) {
      msg_consume(c, g.rbuf, (size_t)n, now_ns());
      if (g.o.mode == MODE_CONNRATE && c->rseq == 1) {
        connrate_finish(c);
        return;
      }
      if ((size_t)n < RBUF_SIZE) break; /* socket drained */
    } else if (n == 0) {
      conn_error(c, "connection closed by server", 0);
      return;
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN) {
      break;
    } else {
      conn_error(c, "read", errno);
      return;
    }
  }
  msg_topup(c);
}

/* Writes stream bytes straight from the pattern while the window allows. */
static void bulk_write(struct conn *c) {
  while (g.running) {
    uint64_t infl = c->sent - c->recvd;
    if (infl >= g.o.window || c->rtail - c->rhead == BULK_RING) return;
    size_t len = g.o.wsize;
    if (g.o.window - infl < len) len = (size_t)(g.o.window - infl);
    size_t pos = (size_t)((c->bstart + c->sent) % PAT_LEN);
    ssize_t n = write(c->fd, g.pat + pos, len);
    if (n > 0) {
      c->sent += (uint64_t)n;
      c->ring[c->rtail++ % BULK_RING] = (struct chunk){c->sent, now_ns()};
      if ((size_t)n < len) return;
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == EAGAIN) {
      return;
    } else {
      conn_error(c, "write", n < 0 ? errno : EIO);
      return;
    }
  }
}

static void bulk_read(struct conn *c) {
  for (;;) {
    ssize_t n = read(c->fd, g.rbuf, RBUF_SIZE);
    if (n > 0) {
      uint64_t now = now_ns();
      size_t m = (size_t)n;
      if (c->recvd + m > c->sent) {
        size_t extra = (size_t)(c->recvd + m - c->sent);
        g.wrong += extra;
        report("conn %u: %zu bytes received beyond what was sent", c->id, extra);
        m -= extra;
      }
      size_t pos = (size_t)((c->bstart + c->recvd) % PAT_LEN);
      g.wrong += check(g.rbuf, g.pat + pos, m, c, "stream at", c->recvd, 0);
      c->recvd += m;
      if (in_window(now)) g.bytes += m;
      while (c->rhead != c->rtail && c->ring[c->rhead % BULK_RING].end <= c->recvd) {
        struct chunk *ch = &c->ring[c->rhead++ % BULK_RING];
        if (in_window(now)) {
          g.ops++;
          hist_add(now - ch->t);
        }
      }
      if ((size_t)n < RBUF_SIZE) break;
    } else if (n == 0) {
      conn_error(c, "connection closed by server", 0);
      return;
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN) {
      break;
    } else {
      conn_error(c, "read", errno);
      return;
    }
  }
  bulk_write(c);
}

static void on_connected(struct conn *c) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
  if (err) {
    conn_error(c, "connect", err);
    return;
  }
  c->state = CS_OPEN;
  if (g.o.mode == MODE_IDLE || g.o.mode == MODE_CONNRATE)
    msg_topup(c); /* ready once the first echo is back */
  else
    mark_ready(c);
}

static void on_event(struct conn *c, uint32_t ev) {
  if (c->state == CS_CONNECTING) {
    if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) return;
    on_connected(c);
  }
  if (c->state != CS_OPEN) return;
  if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP | EPOLLRDHUP)) {
    if (g.o.mode == MODE_BULK)
      bulk_read(c);
    else
      msg_read(c);
  }
  if (c->state != CS_OPEN || !(ev & EPOLLOUT)) return;
  if (g.o.mode == MODE_BULK)
    bulk_write(c);
  else
    flush(c);
}

static void on_stdin(void) {
  char buf[256];
  ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
  if (n < 0 && errno == EINTR) return;
  g.stdin_done = 1; /* a line, EOF or an error all end the hold */
}

/* Waits up to timeout_ms for events and handles them. */
static void poll_once(int timeout_ms) {
  struct epoll_event evs[MAX_EVENTS];
  int n = epoll_wait(g.ep, evs, MAX_EVENTS, timeout_ms);
  if (n < 0) {
    if (errno != EINTR) die("epoll_wait: %s", strerror(errno));
    return;
  }
  for (int i = 0; i < n; i++) {
    if (evs[i].data.ptr == &stdin_tag)
      on_stdin();
    else
      on_event(evs[i].data.ptr, evs[i].events);
  }
}

static int ms_until(uint64_t deadline, int cap) {
  uint64_t now = now_ns();
  if (now >= deadline) return 0;
  uint64_t ms = (deadline - now + 999999) / 1000000;
  return ms > (uint64_t)cap ? cap : (int)ms;
}

/* ---- phases ----------------------------------------------------------- */

/* Opens every connection, at most max_connecting at a time still setting
 * up, and waits until each is ready or failed (or the timeout passes). */
static void open_all(void) {
  uint64_t deadline = now_ns() + sec_ns(g.o.connect_timeout);
  int next = 0;
  for (;;) {
    while (next < g.o.conns && next - g.ready - g.failed_setup < g.o.max_connecting)
      start_connect(&g.conns[next++]);
    if (next == g.o.conns && g.ready + g.failed_setup >= g.o.conns) return;
    if (now_ns() >= deadline) break;
    poll_once(ms_until(deadline, 100));
  }
  for (int i = 0; i < next; i++) {
    struct conn *c = &g.conns[i];
    if (!c->ready && c->state != CS_CLOSED) conn_error(c, "setup timed out", 0);
  }
  if (next < g.o.conns) {
    g.errors++;
    report("only %d of %d connections were attempted before the timeout", next, g.o.conns);
  }
}

static int outstanding(const struct conn *c) {
  if (g.o.mode == MODE_CONNRATE) return c->state == CS_CONNECTING || c->state == CS_OPEN;
  if (c->state != CS_OPEN) return 0;
  if (g.o.mode == MODE_BULK) return c->sent != c->recvd;
  return c->sseq != c->rseq;
}

/* Waits until no connection has bytes in flight; what is still missing
 * at the deadline counts as an error. */
static void drain(double timeout) {
  uint64_t deadline = now_ns() + sec_ns(timeout);
  for (;;) {
    int busy = 0;
    for (int i = 0; i < g.o.conns && !busy; i++) busy = outstanding(&g.conns[i]);
    if (!busy) return;
    if (now_ns() >= deadline) break;
    poll_once(ms_until(deadline, 100));
  }
  for (int i = 0; i < g.o.conns; i++) {
    struct conn *c = &g.conns[i];
    if (outstanding(c)) conn_error(c, "echo still missing at the drain deadline", 0);
  }
}

static void run_for(uint64_t until) {
  while (now_ns() < until) poll_once(ms_until(until, 100));
}

static void run_timed(void) {
  if (g.o.mode != MODE_CONNRATE) open_all();
  uint64_t t0 = now_ns();
  g.t_meas_start = t0 + sec_ns(g.o.warmup);
  g.t_meas_end = g.t_meas_start + sec_ns(g.o.duration);
  g.running = 1;
  for (int i = 0; i < g.o.conns; i++) {
    struct conn *c = &g.conns[i];
    if (g.o.mode == MODE_CONNRATE)
      start_connect(c);
    else if (c->state == CS_OPEN && g.o.mode == MODE_BULK)
      bulk_write(c);
    else if (c->state == CS_OPEN)
      msg_topup(c);
  }
  run_for(g.t_meas_end);
  g.running = 0;
  drain(g.o.drain_timeout);
  if (g.ops == 0) {
    g.errors++;
    report("no operation completed in the measurement window");
  }
}

/* Idle mode: waits for a line (or EOF) on stdin, or hold_secs. */
static void hold(void) {
  uint64_t deadline = now_ns() + sec_ns(g.o.hold_secs >= 0 ? g.o.hold_secs : g.o.hold_timeout);
  if (g.o.hold_secs < 0) {
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &stdin_tag};
    if (epoll_ctl(g.ep, EPOLL_CTL_ADD, STDIN_FILENO, &ev) < 0)
      on_stdin(); /* a file or /dev/null: not pollable, reads at once */
  }
  while (!g.stdin_done && now_ns() < deadline) poll_once(ms_until(deadline, 100));
  if (g.o.hold_secs < 0 && !g.stdin_done)
    report("hold: nothing on stdin after %.0f s, going on", g.o.hold_timeout);
  epoll_ctl(g.ep, EPOLL_CTL_DEL, STDIN_FILENO, NULL);
}

static double run_idle(void) {
  g.idle_target = 1;
  uint64_t t0 = now_ns();
  open_all();
  double setup = (double)(now_ns() - t0) / 1e9;
  int open = 0;
  for (int i = 0; i < g.o.conns; i++) open += g.conns[i].state == CS_OPEN;
  printf("idle: %d connections open\n", open);
  fflush(stdout);
  hold();
  g.idle_target = 2;
  for (int i = 0; i < g.o.conns; i++)
    if (g.conns[i].state == CS_OPEN) msg_topup(&g.conns[i]);
  drain(g.o.drain_timeout);
  if (g.verified < g.o.conns) {
    g.errors++;
    report("%d of %d connections echoed after the hold", g.verified, g.o.conns);
  }
  return setup;
}

/* ---- setup and output ------------------------------------------------- */

static void raise_nofile(int need) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0) return;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)need > rl.rlim_cur)
    fprintf(stderr, "loadgen: warning: RLIMIT_NOFILE is %llu, %d descriptors wanted\n",
            (unsigned long long)rl.rlim_cur, need);
}

static void resolve(void) {
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
  int rc = getaddrinfo(g.o.host, g.o.port, &hints, &res);
  if (rc) die("cannot resolve %s:%s: %s", g.o.host, g.o.port, gai_strerror(rc));
  memcpy(&g.addr, res->ai_addr, res->ai_addrlen);
  g.addrlen = res->ai_addrlen;
  char h[NI_MAXHOST], s[NI_MAXSERV];
  if (getnameinfo(res->ai_addr, res->ai_addrlen, h, sizeof h, s, sizeof s,
                  NI_NUMERICHOST | NI_NUMERICSERV) == 0)
    snprintf(g.addrtext, sizeof g.addrtext, "%s:%s", h, s);
  freeaddrinfo(res);
}

static void print_result(double setup_s) {
  const struct opts *o = &g.o;
  int ok = g.errors == 0 && g.wrong == 0;
  double p50 = hist_pct_us(0.50), p99 = hist_pct_us(0.99), p999 = hist_pct_us(0.999);
  double maxus = (double)g.hmax / 1000.0;
  double rate = g.ops / o->duration, bps = g.bytes / o->duration;
  FILE *h = o->json ? stderr : stdout; /* human-readable part */

  fprintf(h, "%s to %s: %d connections", mode_names[o->mode], g.addrtext, o->conns);
  if (o->mode == MODE_BULK)
    fprintf(h, ", %zu-byte writes, window %zu\n", o->wsize, o->window);
  else
    fprintf(h, ", %zu-byte messages%s, %d in flight\n", o->size,
            o->packet ? " (framed)" : "", o->k);
  if (o->mode == MODE_IDLE) {
    fprintf(h, "  opened %d in %.2f s, %d echoed again after the hold\n", g.ready,
            setup_s, g.verified);
  } else {
    const char *unit = o->mode == MODE_CONNRATE ? "connections"
                       : o->mode == MODE_BULK   ? "chunks echoed"
                                                : "round trips";
    fprintf(h, "  %s: %" PRIu64 " in %.2f s (after %.2f s warm-up) = %.1f/s, %.2f MiB/s echoed\n",
            unit, g.ops, o->duration, o->warmup, rate, bps / 1048576.0);
    fprintf(h, "  latency us: p50 %.1f  p99 %.1f  p999 %.1f  max %.1f\n", p50, p99, p999, maxus);
  }
  fprintf(h, "  errors: %" PRIu64 ", wrong bytes: %" PRIu64 " -> %s\n", g.errors, g.wrong,
          ok ? "OK" : "FAILED");

  if (o->json) {
    if (o->mode == MODE_IDLE)
      printf("{\"mode\":\"idle\",\"conns\":%d,\"open\":%d,\"verified\":%d,\"setup_s\":%.3f,"
             "\"errors\":%" PRIu64 ",\"wrong_bytes\":%" PRIu64 ",\"ok\":%s}\n",
             o->conns, g.ready, g.verified, setup_s, g.errors, g.wrong, ok ? "true" : "false");
    else
      printf("{\"mode\":\"%s\",\"conns\":%d,\"size\":%zu,\"k\":%d,\"wsize\":%zu,\"packet\":%d,"
             "\"duration\":%.3f,\"ops\":%" PRIu64 ",\"rate\":%.1f,\"bytes\":%" PRIu64
             ",\"bps\":%.1f,\"p50_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f,"
             "\"errors\":%" PRIu64 ",\"wrong_bytes\":%" PRIu64 ",\"ok\":%s}\n",
             mode_names[o->mode], o->conns, o->size, o->k, o->wsize, o->packet, o->duration,
             g.ops, rate, g.bytes, bps, p50, p99, p999, maxus, g.errors, g.wrong,
             ok ? "true" : "false");
  } else if (o->mode == MODE_IDLE) {
    printf("result mode=idle conns=%d open=%d verified=%d setup_s=%.3f errors=%" PRIu64
           " wrong_bytes=%" PRIu64 " ok=%d\n",
           o->conns, g.ready, g.verified, setup_s, g.errors, g.wrong, ok);
  } else {
    printf("result mode=%s conns=%d size=%zu k=%d wsize=%zu packet=%d duration=%.3f ops=%" PRIu64
           " rate=%.1f bytes=%" PRIu64 " bps=%.1f p50_us=%.1f p99_us=%.1f p999_us=%.1f"
           " max_us=%.1f errors=%" PRIu64 " wrong_bytes=%" PRIu64 " ok=%d\n",
           mode_names[o->mode], o->conns, o->size, o->k, o->wsize, o->packet, o->duration,
           g.ops, rate, g.bytes, bps, p50, p99, p999, maxus, g.errors, g.wrong, ok);
  }
  fflush(stdout);
}

static void usage(FILE *f) {
  fprintf(f,
    "usage: loadgen --port PORT [options]\n"
    "  --host HOST          server address (default 127.0.0.1)\n"
    "  --port PORT          server port (required)\n"
    "  --mode MODE          pingpong | pipeline | bulk | connrate | idle (default pingpong)\n"
    "  -c N                 connections (default 50)\n"
    "  -s BYTES             message size (default 64)\n"
    "  -k N                 messages in flight per connection, pipeline (default 16)\n"
    "  -w BYTES             bulk: bytes per write (default 65536)\n"
    "  --window BYTES       bulk: most unechoed bytes per connection (default 262144)\n"
    "  --packet N           add an N-byte (1, 2 or 4) big-endian length header to each\n"
    "                       message and expect the same framing back\n"
    "  --duration SEC       measurement time (default 5)\n"
    "  --warmup SEC         time before measuring (default 1)\n"
    "  --connect-timeout SEC  time allowed to open all connections (default 60)\n"
    "  --drain-timeout SEC  time allowed for the last echoes (default 10)\n"
    "  --max-connecting N   connections set up at once (default 100)\n"
    "  --hold SEC           idle: hold SEC seconds instead of waiting on stdin\n"
    "  --hold-timeout SEC   idle: longest wait for stdin (default 600)\n"
    "  --src-addrs N        spread connections over source addresses 127.0.0.2 ..\n"
    "                       127.0.0.(N+1) (loopback IPv4 only; default: 64 in\n"
    "                       connrate mode towards 127.x, otherwise 0 = kernel's choice)\n"
    "  --no-nodelay         leave Nagle's algorithm on\n"
    "  --json               one JSON line on stdout (summary goes to stderr)\n"
    "idle mode prints 'idle: N connections open' on stdout once every connection\n"
    "has echoed one message, holds until a line or EOF arrives on stdin, then checks\n"
    "every connection still echoes. Exit status 0 only with no error and no wrong byte.\n");
}

static double num(const char *s, const char *name, double lo, double hi) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || !(v >= lo && v <= hi))
    die("bad value for %s: '%s' (allowed %g..%g)", name, s, lo, hi);
  return v;
}

static void parse(int argc, char **argv) {
  struct opts *o = &g.o;
  *o = (struct opts){.host = "127.0.0.1", .mode = MODE_PINGPONG, .conns = 50, .k = -1,
                     .size = 64, .wsize = 65536, .window = 256 << 10, .duration = 5,
                     .warmup = 1, .connect_timeout = 60, .drain_timeout = 10,
                     .max_connecting = 100, .hold_secs = -1, .hold_timeout = 600,
                     .nodelay = 1, .src_addrs = -1};
  enum { O_HOST = 256, O_PORT, O_MODE, O_DUR, O_WARM, O_PACKET, O_JSON, O_WINDOW, O_CTO,
         O_DTO, O_MAXC, O_HOLD, O_HTO, O_NONODELAY, O_SRC };
  static const struct option lo[] = {
      {"host", 1, 0, O_HOST},          {"port", 1, 0, O_PORT},
      {"mode", 1, 0, O_MODE},          {"duration", 1, 0, O_DUR},
      {"warmup", 1, 0, O_WARM},        {"packet", 1, 0, O_PACKET},
      {"json", 0, 0, O_JSON},          {"window", 1, 0, O_WINDOW},
      {"connect-timeout", 1, 0, O_CTO}, {"drain-timeout", 1, 0, O_DTO},
      {"max-connecting", 1, 0, O_MAXC}, {"hold", 1, 0, O_HOLD},
      {"hold-timeout", 1, 0, O_HTO},   {"no-nodelay", 0, 0, O_NONODELAY},
      {"src-addrs", 1, 0, O_SRC},      {"help", 0, 0, 'h'},             {0, 0, 0, 0}};
  int ch;
  while ((ch = getopt_long(argc, argv, "c:s:k:w:h", lo, NULL)) != -1) {
    switch (ch) {
    case O_HOST: o->host = optarg; break;
    case O_PORT: o->port = optarg; break;
    case O_MODE: {
      int found = 0;
      for (int m = 0; m <= MODE_IDLE; m++)
        if (strcmp(optarg, mode_names[m]) == 0) o->mode = (enum mode)m, found = 1;
      if (!found) die("unknown mode '%s'", optarg);
      break;
    }
    case 'c': o->conns = (int)num(optarg, "-c", 1, 1000000); break;
    case 's': o->size = (size_t)num(optarg, "-s", 1, 16 << 20); break;
    case 'k': o->k = (int)num(optarg, "-k", 1, 65536); break;
    case 'w': o->wsize = (size_t)num(optarg, "-w", 1, 16 << 20); break;
    case O_WINDOW: o->window = (size_t)num(optarg, "--window", 1, 1 << 30); break;
    case O_PACKET: o->packet = (int)num(optarg, "--packet", 0, 4); break;
    case O_DUR: o->duration = num(optarg, "--duration", 0.01, 86400); break;
    case O_WARM: o->warmup = num(optarg, "--warmup", 0, 86400); break;
    case O_CTO: o->connect_timeout = num(optarg, "--connect-timeout", 0.1, 86400); break;
    case O_DTO: o->drain_timeout = num(optarg, "--drain-timeout", 0.1, 86400); break;
    case O_MAXC: o->max_connecting = (int)num(optarg, "--max-connecting", 1, 1000000); break;
    case O_HOLD: o->hold_secs = num(optarg, "--hold", 0, 86400); break;
    case O_HTO: o->hold_timeout = num(optarg, "--hold-timeout", 0, 86400); break;
    case O_NONODELAY: o->nodelay = 0; break;
    case O_SRC: o->src_addrs = (int)num(optarg, "--src-addrs", 0, 65000); break;
    case O_JSON: o->json = 1; break;
    case 'h': usage(stdout); exit(0);
    default: usage(stderr); exit(2);
    }
  }
  if (optind < argc) die("unexpected argument '%s'", argv[optind]);
  if (!o->port) die("--port is required (see --help)");
  if (o->packet == 3) die("--packet must be 0, 1, 2 or 4");
  if (o->packet && o->size >= (1ull << (8 * o->packet)))
    die("-s %zu does not fit a %d-byte length header", o->size, o->packet);
  if (o->k < 0) o->k = o->mode == MODE_PIPELINE ? 16 : 1;
  if (o->mode != MODE_PIPELINE) o->k = 1;
}

int main(int argc, char **argv) {
  parse(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  raise_nofile(g.o.conns + 16);
  resolve();
  int loop4 = g.addr.ss_family == AF_INET &&
              (ntohl(((struct sockaddr_in *)&g.addr)->sin_addr.s_addr) >> 24) == 127;
  if (g.o.src_addrs < 0) g.o.src_addrs = g.o.mode == MODE_CONNRATE && loop4 ? 64 : 0;
  if (g.o.src_addrs && !loop4) die("--src-addrs needs a 127.x.x.x server address");
  fill_pattern();
  g.hdrlen = (size_t)g.o.packet;
  for (size_t i = 0; i < g.hdrlen; i++)
    g.hdr[i] = (unsigned char)(g.o.size >> (8 * (g.hdrlen - 1 - i)));
  g.msglen = g.hdrlen + g.o.size;
  g.rbuf = xcalloc(RBUF_SIZE, 1);
  g.ep = epoll_create1(EPOLL_CLOEXEC);
  if (g.ep < 0) die("epoll_create1: %s", strerror(errno));
  g.conns = xcalloc((size_t)g.o.conns, sizeof *g.conns);
  for (int i = 0; i < g.o.conns; i++) {
    struct conn *c = &g.conns[i];
    c->fd = -1;
    c->id = (uint32_t)i;
    if (g.o.mode == MODE_BULK) {
      c->ring = xcalloc(BULK_RING, sizeof *c->ring);
    } else {
      c->stamps = xcalloc((size_t)g.o.k, sizeof *c->stamps);
      c->out = xcalloc((size_t)g.o.k, g.msglen);
    }
  }

  double setup = 0;
  if (g.o.mode == MODE_IDLE)
    setup = run_idle();
  else
    run_timed();
  for (int i = 0; i < g.o.conns; i++) conn_close(&g.conns[i]);
  print_result(setup);
  return g.errors || g.wrong ? 1 : 0;
}
