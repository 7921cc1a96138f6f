/*
 * stress_client: the client side of spec/stress_spec.lua.
 *
 * One thread, one epoll set, non-blocking sockets, libc only, loopback only.
 * It holds --echo connections (default 10,000) open at once, each echoing a
 * payload of its own cut from a pseudo-random pattern, sent in pieces and
 * verified byte for byte; meanwhile hostile clients of five kinds run:
 *
 *   reset  connect, write a chunk, then close with SO_LINGER 0 (a reset)
 *          while the chunk or its echo is still in flight;
 *   stall  connect to the line-framed port, send part of a line, then
 *          neither read nor write until the end of the run;
 *   flood  write up to --flood-cap bytes and never read, so only the
 *          server's backpressure can stop them;
 *   churn  connect and close at once (some after a few bytes or a
 *          half-close), again and again;
 *   spin   connect to the port whose handler never waits, once every echo
 *          connection is open, and wait for the server to close it.
 *
 * Every echo connection first exchanges one piece, then waits until all of
 * them have (the line "echo: all open=N" says so; the spec samples the
 * server's memory there), then finishes its payload and closes. Reset and
 * churn cycles stop when the echo phase ends or their count is reached.
 *
 * It prints one summary line per kind and a result line; the exit status is
 * 0 when every echo connection was byte-exact and the run ended within
 * --time-limit, 1 otherwise, 2 for a usage or setup error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <getopt.h>
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

#define PAT_LEN 1048573u     /* pattern period: odd, not a power of two */
#define PAT_EXTRA (1u << 20) /* pattern tail so any span this long is flat */
#define RBUF_SIZE (64 * 1024)
#define FLOOD_WRITE (64 * 1024)
#define MAX_EVENTS 1024
#define MAX_CONNECTING 128 /* connects in flight: stay under the backlog */
#define RESET_SLOTS 16
#define CHURN_SLOTS 8
#define STALL_BYTES 100
#define MAX_REPORTS 10

enum kind { K_ECHO, K_RESET, K_STALL, K_FLOOD, K_CHURN, K_SPIN, K_COUNT };
static const char *const kind_names[K_COUNT] = {"echo",  "reset", "stall",
                                                "flood", "churn", "spin"};

enum state { S_IDLE, S_CONNECTING, S_OPEN, S_PARKED, S_DONE };

struct client {
  enum kind kind;
  enum state state;
  int fd;
  uint32_t id;      /* index among the clients of its kind */
  uint32_t cycles;  /* reset and churn: sockets this slot has opened */
  uint32_t events;  /* the epoll interest registered for fd */
  uint64_t rng;     /* xorshift state: piece sizes, chunk sizes */
  size_t start;     /* pattern offset of the first payload byte */
  size_t len;       /* echo: payload bytes; reset: chunk bytes */
  size_t sent;      /* bytes the kernel took */
  size_t recvd;     /* echo: bytes received and verified */
  size_t piece_end; /* echo: end of the piece in flight */
  int blocked;      /* flood: a write found the socket full */
  uint64_t t_open;  /* spin: when the connection was established */
};

struct opts {
  int port, line_port, spin_port;
  int echo, stalls, floods, resets, churns;
  size_t max_bytes, piece_max, flood_cap;
  double time_limit;
  uint64_t seed;
};

struct tally {
  int started, done, failed, mismatched;
};

static struct {
  struct opts o;
  int ep;
  unsigned char *pat;
  unsigned char rbuf[RBUF_SIZE];
  struct client *clients[K_COUNT];
  int count[K_COUNT]; /* client slots of each kind */
  struct tally t[K_COUNT];
  int connecting;           /* connects in flight, every kind */
  int next_echo;            /* next echo client to open */
  int echo_open, echo_peak; /* echo sockets open now, at most */
  int parked;               /* echo clients waiting at the barrier */
  int barrier;              /* every echo client has exchanged a piece */
  int reports;
  uint64_t echo_bytes;      /* echo bytes verified */
  uint64_t pieces;          /* echo pieces completed */
  uint64_t pieces_spinning; /* ... while the spin connection was open */
  double spin_secs;
  uint64_t t0;
} g;

/* ---- small helpers ---------------------------------------------------- */

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double since(uint64_t t) { return (double)(now_ns() - t) / 1e9; }

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("stress_client: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(2);
}

/* Prints one diagnostic line about client c, the first MAX_REPORTS only. */
static void report(const struct client *c, const char *fmt, ...) {
  if (g.reports++ >= MAX_REPORTS) return;
  va_list ap;
  va_start(ap, fmt);
  printf("stress_client: %s %u: ", kind_names[c->kind], c->id);
  vprintf(fmt, ap);
  putchar('\n');
  fflush(stdout);
  va_end(ap);
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

/* Returns a number in 1..max from c's own generator. */
static size_t rnd(struct client *c, size_t max) {
  c->rng ^= c->rng << 13, c->rng ^= c->rng >> 7, c->rng ^= c->rng << 17;
  return 1 + (size_t)(c->rng % max);
}

static void fill_pattern(void) {
  g.pat = xcalloc(PAT_LEN + PAT_EXTRA, 1);
  uint64_t s = mix64(g.o.seed) | 1;
  for (size_t i = 0; i < PAT_LEN; i++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    g.pat[i] = (unsigned char)(s >> 24);
  }
  for (size_t i = PAT_LEN; i < PAT_LEN + PAT_EXTRA; i++)
    g.pat[i] = g.pat[i - PAT_LEN];
}

/* The payload byte of c at stream offset off. */
static const unsigned char *payload(const struct client *c, size_t off) {
  return g.pat + (c->start + off) % PAT_LEN;
}

/* ---- sockets ---------------------------------------------------------- */

static void set_events(struct client *c, uint32_t events) {
  if (events == c->events) return;
  struct epoll_event ev = {.events = events, .data.ptr = c};
  if (epoll_ctl(g.ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
    die("epoll_ctl: %s", strerror(errno));
  c->events = events;
}

/* Closes c's socket; with rst, by a reset (SO_LINGER 0) instead of a FIN. */
static void drop(struct client *c, int rst) {
  if (c->fd < 0) return;
  if (rst) {
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  }
  if (c->state == S_CONNECTING) g.connecting--;
  if (c->state == S_PARKED) g.parked--; /* it counts as failed instead */
  if (c->kind == K_ECHO && c->state != S_CONNECTING) g.echo_open--;
  close(c->fd);
  c->fd = -1;
}

static void finish(struct client *c, int rst) {
  drop(c, rst);
  c->state = S_DONE;
}

static void fail(struct client *c, const char *what, int err) {
  report(c, "%s: %s", what, err ? strerror(err) : "connection closed");
  g.t[c->kind].failed++;
  finish(c, 0);
  /* A failed cycle frees its slot for the next one. */
  if (c->kind == K_RESET || c->kind == K_CHURN) c->state = S_IDLE;
}

/* Opens c's socket and starts a non-blocking connect to 127.0.0.1:port. */
static void start_connect(struct client *c, int port) {
  struct sockaddr_in sin = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int one = 1;
  c->sent = c->recvd = c->piece_end = 0;
  c->blocked = 0;
  c->state = S_CONNECTING;
  c->cycles++;
  g.t[c->kind].started++;
  g.connecting++;
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0) die("socket: %s (raise the open-file limit)", strerror(errno));
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(c->fd, (struct sockaddr *)&sin, sizeof sin) < 0 &&
      errno != EINPROGRESS) {
    fail(c, "connect", errno);
    return;
  }
  c->events = EPOLLOUT;
  struct epoll_event ev = {.events = c->events, .data.ptr = c};
  if (epoll_ctl(g.ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
    die("epoll_ctl: %s", strerror(errno));
}

/* Writes c's bytes [sent, upto) from its payload.  Returns 0, or -1 after
 * failing c. */
static int write_upto(struct client *c, size_t upto) {
  while (c->sent < upto) {
    size_t n = upto - c->sent;
    if (n > PAT_EXTRA) n = PAT_EXTRA;
    ssize_t w = send(c->fd, payload(c, c->sent), n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        c->blocked = 1;
        return 0;
      }
      fail(c, "send", errno);
      return -1;
    }
    c->sent += (size_t)w;
  }
  return 0;
}

/* ---- echo clients ----------------------------------------------------- */

/* Sends the next piece of c's payload, or closes c when all came back. */
static void echo_next_piece(struct client *c) {
  if (c->piece_end == c->len) {
    g.t[K_ECHO].done++;
    finish(c, 0);
    return;
  }
  c->piece_end += rnd(c, g.o.piece_max);
  if (c->piece_end > c->len) c->piece_end = c->len;
  c->state = S_OPEN;
  if (write_upto(c, c->piece_end) < 0) return;
  set_events(c, EPOLLIN | (c->sent < c->piece_end ? EPOLLOUT : 0));
}

/* Verifies n received bytes against c's payload.  Returns 0, or -1 after
 * failing c. */
static int echo_verify(struct client *c, const unsigned char *buf, size_t n) {
  if (c->recvd + n > c->sent) {
    report(c, "%zu bytes came back, only %zu were sent", c->recvd + n, c->sent);
    g.t[K_ECHO].mismatched++;
    fail(c, "echo mismatch", EPROTO);
    return -1;
  }
  const unsigned char *want = payload(c, c->recvd);
  if (memcmp(buf, want, n) != 0) {
    size_t i = 0;
    while (buf[i] == want[i]) i++;
    report(c, "byte %zu of %zu: expected 0x%02x, got 0x%02x", c->recvd + i,
           c->len, want[i], buf[i]);
    g.t[K_ECHO].mismatched++;
    fail(c, "echo mismatch", EPROTO);
    return -1;
  }
  c->recvd += n;
  g.echo_bytes += n;
  return 0;
}

/* Parks c after its first piece until every echo client has exchanged
 * one (nothing else completes a piece before the barrier); afterwards sends
 * the next piece. */
static void echo_piece_done(struct client *c) {
  g.pieces++;
  if (g.clients[K_SPIN][0].state == S_OPEN) g.pieces_spinning++;
  if (!g.barrier) {
    c->state = S_PARKED;
    g.parked++;
    set_events(c, EPOLLIN);
    return;
  }
  echo_next_piece(c);
}

static void on_echo(struct client *c, uint32_t ev) {
  if (ev & EPOLLOUT) {
    if (write_upto(c, c->piece_end) < 0) return;
    set_events(c, EPOLLIN | (c->sent < c->piece_end ? EPOLLOUT : 0));
  }
  if (!(ev & (EPOLLIN | EPOLLERR | EPOLLHUP))) return;
  ssize_t n = recv(c->fd, g.rbuf, RBUF_SIZE, 0);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) {
    fail(c, "recv", n < 0 ? errno : 0);
    return;
  }
  if (echo_verify(c, g.rbuf, (size_t)n) < 0) return;
  if (c->state == S_OPEN && c->recvd == c->piece_end) echo_piece_done(c);
}

static void on_echo_connected(struct client *c) {
  g.echo_open++;
  if (g.echo_open > g.echo_peak) g.echo_peak = g.echo_open;
  echo_next_piece(c);
}

/* Releases the parked echo clients once every one has exchanged a piece. */
static void check_barrier(void) {
  if (g.barrier || g.parked + g.t[K_ECHO].failed < g.o.echo) return;
  g.barrier = 1;
  printf("echo: all open=%d\n", g.echo_open);
  fflush(stdout);
  for (int i = 0; i < g.o.echo; i++) {
    struct client *c = &g.clients[K_ECHO][i];
    if (c->state != S_PARKED) continue;
    c->state = S_OPEN;
    g.parked--;
    echo_next_piece(c);
  }
}

/* ---- hostile clients -------------------------------------------------- */

/* A reset client writes its chunk; on even cycles it resets at once, on odd
 * ones after the first echoed bytes arrive, so the server is mid-transfer
 * either way. */
static void on_reset(struct client *c, uint32_t ev) {
  if (ev & EPOLLOUT) {
    if (write_upto(c, c->len) < 0) return;
    if (c->cycles % 2 == 0) {
      g.t[K_RESET].done++;
      drop(c, 1);
      c->state = S_IDLE;
      return;
    }
    set_events(c, EPOLLIN);
  }
  if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
    ssize_t n = recv(c->fd, g.rbuf, 512, 0);
    if (n <= 0 && !(n < 0 && (errno == EAGAIN || errno == EINTR))) {
      fail(c, "recv", n < 0 ? errno : 0);
      return;
    }
    if (n > 0) {
      g.t[K_RESET].done++;
      drop(c, 1);
      c->state = S_IDLE;
    }
  }
}

/* A churn client closes as soon as it is connected: plainly, after a few
 * bytes, or after a half-close, in turn. */
static void on_churn_connected(struct client *c) {
  if (c->cycles % 3 == 1) send(c->fd, "churn\n", 6, MSG_NOSIGNAL);
  if (c->cycles % 3 == 2) shutdown(c->fd, SHUT_WR);
  g.t[K_CHURN].done++;
  drop(c, 0);
  c->state = S_IDLE;
}

static void on_flood(struct client *c, uint32_t ev) {
  if (ev & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)) {
    fail(c, "flood", ECONNRESET);
    return;
  }
  if (write_upto(c, g.o.flood_cap) < 0) return;
  if (c->sent == g.o.flood_cap) set_events(c, EPOLLRDHUP);
}

/* Sends part of a line (no "\n") and then only watches the socket. */
static void stall_send(struct client *c) {
  char line[STALL_BYTES];
  memset(line, 'x', sizeof line);
  if (send(c->fd, line, sizeof line, MSG_NOSIGNAL) != (ssize_t)sizeof line) {
    fail(c, "send", errno);
    return;
  }
  set_events(c, EPOLLRDHUP);
}

/* Stall clients only watch for the server giving up on them. */
static void on_stall(struct client *c, uint32_t ev) {
  if (ev & (EPOLLERR | EPOLLHUP | EPOLLRDHUP))
    fail(c, "closed by the server", 0);
}

static void on_spin(struct client *c, uint32_t ev) {
  (void)ev;
  ssize_t n = recv(c->fd, g.rbuf, RBUF_SIZE, 0);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n > 0) {
    report(c, "the spinning handler sent %zd bytes", n);
    return;
  }
  g.spin_secs = since(c->t_open);
  g.t[K_SPIN].done++;
  finish(c, 0);
}

/* The connection of c completed (or failed) its connect. */
static void on_connected(struct client *c) {
  int err = 0;
  socklen_t len = sizeof err;
  getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
  if (err) {
    fail(c, "connect", err);
    return;
  }
  g.connecting--;
  c->state = S_OPEN;
  switch (c->kind) {
  case K_ECHO: on_echo_connected(c); break;
  case K_RESET: set_events(c, EPOLLOUT); break;
  case K_CHURN: on_churn_connected(c); break;
  case K_FLOOD: set_events(c, EPOLLOUT | EPOLLRDHUP); break;
  case K_STALL: stall_send(c); break;
  case K_SPIN:
    c->t_open = now_ns();
    send(c->fd, "spin\n", 5, MSG_NOSIGNAL);
    set_events(c, EPOLLIN | EPOLLRDHUP);
    break;
  default: break;
  }
}

static void on_event(struct client *c, uint32_t ev) {
  if (c->state == S_CONNECTING) {
    on_connected(c);
    return;
  }
  switch (c->kind) {
  case K_ECHO: on_echo(c, ev); break;
  case K_RESET: on_reset(c, ev); break;
  case K_FLOOD: on_flood(c, ev); break;
  case K_STALL: on_stall(c, ev); break;
  case K_SPIN: on_spin(c, ev); break;
  default: break;
  }
}

/* ---- the run ---------------------------------------------------------- */

static int echo_phase_over(void) {
  return g.t[K_ECHO].done + g.t[K_ECHO].failed == g.o.echo;
}

/* Starts a new cycle on an idle reset or churn slot, if one remains. */
static int start_cycle(enum kind k, int limit) {
  if (echo_phase_over() || g.t[k].started >= limit) return 0;
  for (int i = 0; i < g.count[k]; i++) {
    struct client *c = &g.clients[k][i];
    if (c->state != S_IDLE) continue;
    if (k == K_RESET) c->len = rnd(c, 128 * 1024) + 4096;
    start_connect(c, g.o.port);
    return 1;
  }
  return 0;
}

/* Opens what may be opened now, at most MAX_CONNECTING connects at a time. */
static void start_more(void) {
  int progress = 1;
  if (g.barrier && g.clients[K_SPIN][0].state == S_IDLE)
    start_connect(&g.clients[K_SPIN][0], g.o.spin_port);
  while (progress && g.connecting < MAX_CONNECTING) {
    progress = 0;
    if (g.next_echo < g.o.echo) {
      start_connect(&g.clients[K_ECHO][g.next_echo++], g.o.port);
      progress = 1;
    }
    progress |= start_cycle(K_RESET, g.o.resets);
    progress |= start_cycle(K_CHURN, g.o.churns);
  }
}

static int all_idle(enum kind k) {
  for (int i = 0; i < g.count[k]; i++)
    if (g.clients[k][i].state != S_IDLE && g.clients[k][i].state != S_DONE)
      return 0;
  return 1;
}

static int run_over(void) {
  return echo_phase_over() && all_idle(K_RESET) && all_idle(K_CHURN) &&
         g.clients[K_SPIN][0].state == S_DONE;
}

static struct client *make_clients(enum kind k, int n) {
  struct client *cs = xcalloc((size_t)n, sizeof *cs);
  for (int i = 0; i < n; i++) {
    cs[i] = (struct client){.kind = k, .fd = -1, .id = (uint32_t)i};
    cs[i].rng = mix64(g.o.seed ^ ((uint64_t)k << 56) ^ (uint64_t)i) | 1;
    cs[i].start = (size_t)(mix64(cs[i].rng) % PAT_LEN);
    if (k == K_ECHO) cs[i].len = rnd(&cs[i], g.o.max_bytes);
  }
  g.clients[k] = cs;
  g.count[k] = n;
  return cs;
}

/* Returns 1 when the run ended in time, 0 when --time-limit passed. */
static int run(void) {
  struct epoll_event evs[MAX_EVENTS];
  uint64_t deadline = g.t0 + (uint64_t)(g.o.time_limit * 1e9);
  for (int i = 0; i < g.o.stalls; i++)
    start_connect(&g.clients[K_STALL][i], g.o.line_port);
  for (int i = 0; i < g.o.floods; i++)
    start_connect(&g.clients[K_FLOOD][i], g.o.port);
  while (!run_over()) {
    if (now_ns() > deadline) return 0;
    start_more();
    int n = epoll_wait(g.ep, evs, MAX_EVENTS, 100);
    if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
    for (int i = 0; i < n; i++) {
      struct client *c = evs[i].data.ptr;
      if (c->fd >= 0) on_event(c, evs[i].events);
    }
    check_barrier();
  }
  return 1;
}

/* ---- setup and output ------------------------------------------------- */

static void raise_nofile(rlim_t need) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0) die("getrlimit: %s", strerror(errno));
  if (rl.rlim_cur >= need) return;
  rl.rlim_cur = need;
  if (rl.rlim_max < need) rl.rlim_max = need; /* allowed when privileged */
  if (setrlimit(RLIMIT_NOFILE, &rl) == 0) return;
  getrlimit(RLIMIT_NOFILE, &rl);
  die("the open-file limit is %llu (hard %llu) and %llu descriptors are "
      "needed: "
      "raise it (ulimit -n) or lower --echo",
      (unsigned long long)rl.rlim_cur, (unsigned long long)rl.rlim_max,
      (unsigned long long)need);
}

static void usage(void) {
  fprintf(
      stderr,
      "usage: stress_client --port P --line-port P --spin-port P [options]\n"
      "  --echo N          echo connections held open at once (10000)\n"
      "  --max-bytes N     largest echo payload (32768)\n"
      "  --piece-max N     largest piece sent before waiting for its echo "
      "(4096)\n"
      "  --stalls N        stalling clients (100)\n"
      "  --floods N        flooding clients (4)\n"
      "  --flood-cap N     bytes a flooder writes at most (134217728)\n"
      "  --resets N        reset cycles at most (1000)\n"
      "  --churns N        connect-and-close cycles at most (3000)\n"
      "  --time-limit SEC  the whole run (120)\n"
      "  --seed N          pattern and sizes (1)\n");
  exit(2);
}

static long long num_arg(const char *s, long long min) {
  char *end;
  long long v = strtoll(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v < min) usage();
  return v;
}

static void parse(int argc, char **argv) {
  static const struct option longs[] = {
      {"port", 1, 0, 'p'},      {"line-port", 1, 0, 'l'},
      {"spin-port", 1, 0, 's'}, {"echo", 1, 0, 'e'},
      {"max-bytes", 1, 0, 'b'}, {"piece-max", 1, 0, 'i'},
      {"stalls", 1, 0, 'S'},    {"floods", 1, 0, 'F'},
      {"flood-cap", 1, 0, 'c'}, {"resets", 1, 0, 'R'},
      {"churns", 1, 0, 'C'},    {"time-limit", 1, 0, 't'},
      {"seed", 1, 0, 'x'},      {0, 0, 0, 0}};
  struct opts *o = &g.o;
  *o = (struct opts){.echo = 10000,
                     .max_bytes = 32768,
                     .piece_max = 4096,
                     .stalls = 100,
                     .floods = 4,
                     .flood_cap = 128u << 20,
                     .resets = 1000,
                     .churns = 3000,
                     .time_limit = 120,
                     .seed = 1};
  int ch;
  while ((ch = getopt_long(argc, argv, "", longs, NULL)) != -1) {
    switch (ch) {
    case 'p': o->port = (int)num_arg(optarg, 1); break;
    case 'l': o->line_port = (int)num_arg(optarg, 1); break;
    case 's': o->spin_port = (int)num_arg(optarg, 1); break;
    case 'e': o->echo = (int)num_arg(optarg, 0); break;
    case 'b': o->max_bytes = (size_t)num_arg(optarg, 1); break;
    case 'i': o->piece_max = (size_t)num_arg(optarg, 1); break;
    case 'S': o->stalls = (int)num_arg(optarg, 0); break;
    case 'F': o->floods = (int)num_arg(optarg, 0); break;
    case 'c': o->flood_cap = (size_t)num_arg(optarg, 1); break;
    case 'R': o->resets = (int)num_arg(optarg, 0); break;
    case 'C': o->churns = (int)num_arg(optarg, 0); break;
    case 't': o->time_limit = (double)num_arg(optarg, 1); break;
    case 'x': o->seed = (uint64_t)num_arg(optarg, 0); break;
    default: usage();
    }
  }
  if (optind != argc || !o->port || !o->line_port || !o->spin_port) usage();
}

/* Names, after the time limit, the clients that were still waiting. */
static void report_stuck(void) {
  static const char *const states[] = {"idle", "connecting", "open", "parked",
                                       "done"};
  for (int k = 0; k < K_COUNT; k++) {
    if (k == K_STALL || k == K_FLOOD) continue; /* they wait by design */
    for (int i = 0; i < g.count[k]; i++) {
      const struct client *c = &g.clients[k][i];
      if (c->state == S_IDLE || c->state == S_DONE) continue;
      report(c, "still %s at the time limit: %zu bytes sent, %zu came back",
             states[c->state], c->sent, c->recvd);
    }
  }
}

static void print_summary(int in_time) {
  struct tally *t = g.t;
  size_t fmax = 0, fmin = g.o.flood_cap;
  int at_cap = 0, blocked = 0, held = 0;
  for (int i = 0; i < g.o.floods; i++) {
    const struct client *c = &g.clients[K_FLOOD][i];
    if (c->sent > fmax) fmax = c->sent;
    if (c->sent < fmin) fmin = c->sent;
    at_cap += c->sent == g.o.flood_cap;
    blocked += c->blocked;
  }
  for (int i = 0; i < g.o.stalls; i++)
    held += g.clients[K_STALL][i].state == S_OPEN;
  printf(
      "echo: conns=%d verified=%d failed=%d mismatched=%d peak_open=%d "
      "bytes=%llu "
      "pieces=%llu\n",
      g.o.echo, t[K_ECHO].done, t[K_ECHO].failed, t[K_ECHO].mismatched,
      g.echo_peak, (unsigned long long)g.echo_bytes,
      (unsigned long long)g.pieces);
  printf("reset: cycles=%d done=%d failed=%d\n", t[K_RESET].started,
         t[K_RESET].done, t[K_RESET].failed);
  printf("stall: conns=%d held=%d failed=%d\n", g.o.stalls, held,
         t[K_STALL].failed);
  printf(
      "flood: conns=%d failed=%d blocked=%d at_cap=%d min_bytes=%zu "
      "max_bytes=%zu "
      "cap=%zu\n",
      g.o.floods, t[K_FLOOD].failed, blocked, at_cap, g.o.floods ? fmin : 0,
      fmax, g.o.flood_cap);
  printf("churn: cycles=%d done=%d failed=%d\n", t[K_CHURN].started,
         t[K_CHURN].done, t[K_CHURN].failed);
  printf(
      "spin: conns=%d closed_by_server=%d seconds=%.2f "
      "echo_pieces_meanwhile=%llu\n",
      t[K_SPIN].started, t[K_SPIN].done, g.spin_secs,
      (unsigned long long)g.pieces_spinning);
  int ok = in_time && t[K_ECHO].done == g.o.echo && t[K_ECHO].failed == 0 &&
           t[K_ECHO].mismatched == 0;
  printf("result: %s seconds=%.2f%s\n", ok ? "ok" : "FAILED", since(g.t0),
         in_time ? "" : " time_limit_exceeded");
  fflush(stdout);
}

int main(int argc, char **argv) {
  parse(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  raise_nofile((rlim_t)g.o.echo + g.o.stalls + g.o.floods + RESET_SLOTS +
               CHURN_SLOTS + 64);
  g.t0 = now_ns();
  fill_pattern();
  g.ep = epoll_create1(EPOLL_CLOEXEC);
  if (g.ep < 0) die("epoll_create1: %s", strerror(errno));
  make_clients(K_ECHO, g.o.echo);
  make_clients(K_RESET, RESET_SLOTS);
  make_clients(K_STALL, g.o.stalls);
  make_clients(K_FLOOD, g.o.floods);
  make_clients(K_CHURN, CHURN_SLOTS);
  make_clients(K_SPIN, 1);
  printf("start: echo=%d stalls=%d floods=%d resets=%d churns=%d\n", g.o.echo,
         g.o.stalls, g.o.floods, g.o.resets, g.o.churns);
  fflush(stdout);
  int in_time = run();
  if (!in_time) report_stuck();
  print_summary(in_time);
  return g.t[K_ECHO].done == g.o.echo && g.t[K_ECHO].failed == 0 && in_time ? 0
                                                                            : 1;
}
