/*
 * echo_epoll: the plain-epoll baseline for luaecho's benchmarks.
 *
 * Level-triggered epoll, non-blocking sockets, one read per readiness into
 * a shared buffer, written straight back. What the kernel does not take is
 * kept in the connection's pending buffer; while it is non-empty the
 * connection waits for EPOLLOUT and reads nothing (backpressure). An idle
 * connection holds only its small struct.
 *
 * usage: echo_epoll --listen 127.0.0.1:PORT [--no-nodelay]
 * Prints "listening on HOST:PORT" on stderr once bound (PORT 0 picks a free
 * port and the real one is printed); SIGTERM or SIGINT stops it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE 65536
#define MAX_EVENTS 256

struct conn {
  int fd;
  char *pend;       /* bytes read but not yet written back, or NULL */
  size_t poff, plen; /* unwritten bytes are pend[poff .. plen) */
};

static int ep, nodelay = 1;
static char buf[BUF_SIZE];
static int listen_tag, signal_tag; /* epoll data for the two special fds */

static void conn_close(struct conn *c) {
  close(c->fd); /* also removes it from the epoll set */
  free(c->pend);
  free(c);
}

static int set_events(struct conn *c, uint32_t events) {
  struct epoll_event ev = {.events = events, .data.ptr = c};
  return epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Writes p[0..n) and keeps what the kernel refuses; returns -1 on error. */
static int send_or_keep(struct conn *c, const char *p, size_t n) {
  ssize_t w = write(c->fd, p, n);
  if (w < 0) {
    if (errno != EAGAIN && errno != EINTR) return -1;
    w = 0;
  }
  if ((size_t)w == n) return 0;
  c->pend = malloc(n - (size_t)w);
  if (!c->pend) return -1;
  memcpy(c->pend, p + w, n - (size_t)w);
  c->poff = 0;
  c->plen = n - (size_t)w;
  return set_events(c, EPOLLOUT);
}

static void on_readable(struct conn *c) {
  ssize_t n = read(c->fd, buf, sizeof buf);
  if (n > 0) {
    if (send_or_keep(c, buf, (size_t)n) < 0) conn_close(c);
  } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
    conn_close(c);
  }
}

static void on_writable(struct conn *c) {
  ssize_t w = write(c->fd, c->pend + c->poff, c->plen - c->poff);
  if (w < 0) {
    if (errno != EAGAIN && errno != EINTR) conn_close(c);
    return;
  }
  c->poff += (size_t)w;
  if (c->poff < c->plen) return;
  free(c->pend);
  c->pend = NULL;
  if (set_events(c, EPOLLIN | EPOLLRDHUP) < 0) conn_close(c);
}

static void on_accept(int lfd) {
  for (int i = 0; i < 64; i++) {
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
        fprintf(stderr, "echo_epoll: accept: %s\n", strerror(errno));
      return;
    }
    int one = 1;
    if (nodelay) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct conn *c = calloc(1, sizeof *c);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
    if (!c || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
      close(fd);
      free(c);
      continue;
    }
    c->fd = fd;
  }
}

/* Splits "HOST:PORT" at its last colon; returns 0 or -1. */
static int parse_listen(const char *arg, char *host, size_t hostlen, int *port) {
  const char *colon = strrchr(arg, ':');
  if (!colon || colon == arg || (size_t)(colon - arg) >= hostlen) return -1;
  char *end;
  long p = strtol(colon + 1, &end, 10);
  if (end == colon + 1 || *end || p < 0 || p > 65535) return -1;
  memcpy(host, arg, (size_t)(colon - arg));
  host[colon - arg] = '\0';
  *port = (int)p;
  return 0;
}

static int open_listener(const char *host, int port) {
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) return -1;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  if (fd < 0) return -1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 4096) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

int main(int argc, char **argv) {
  const char *listen_arg = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
      listen_arg = argv[++i];
    } else if (strcmp(argv[i], "--no-nodelay") == 0) {
      nodelay = 0;
    } else {
      fprintf(stderr, "usage: echo_epoll --listen HOST:PORT [--no-nodelay]\n");
      return 2;
    }
  }
  char host[64];
  int port;
  if (!listen_arg || parse_listen(listen_arg, host, sizeof host, &port)) {
    fprintf(stderr, "echo_epoll: --listen needs IPV4:PORT\n");
    return 2;
  }
  int lfd = open_listener(host, port);
  if (lfd < 0) {
    fprintf(stderr, "echo_epoll: cannot listen on %s: %s\n", listen_arg, strerror(errno));
    return 1;
  }
  struct sockaddr_in bound;
  socklen_t len = sizeof bound;
  getsockname(lfd, (struct sockaddr *)&bound, &len);
  signal(SIGPIPE, SIG_IGN);

  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigprocmask(SIG_BLOCK, &mask, NULL);
  int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &listen_tag};
  struct epoll_event sev = {.events = EPOLLIN, .data.ptr = &signal_tag};
  if (sfd < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0 ||
      epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &sev) < 0) {
    fprintf(stderr, "echo_epoll: setup: %s\n", strerror(errno));
    return 1;
  }
  fprintf(stderr, "listening on %s:%d\n", host, ntohs(bound.sin_port));

  struct epoll_event evs[MAX_EVENTS];
  for (;;) {
    int n = epoll_wait(ep, evs, MAX_EVENTS, -1);
    if (n < 0 && errno != EINTR) {
      fprintf(stderr, "echo_epoll: epoll_wait: %s\n", strerror(errno));
      return 1;
    }
    for (int i = 0; i < n; i++) {
      void *p = evs[i].data.ptr;
      if (p == &signal_tag) return 0; /* the OS reclaims sockets and memory */
      if (p == &listen_tag) {
        on_accept(lfd);
      } else if (((struct conn *)p)->pend) {
        on_writable(p);
      } else {
        on_readable(p);
      }
    }
  }
}
