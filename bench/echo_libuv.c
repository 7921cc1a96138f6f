/*
 * echo_libuv: the libuv baseline for luaecho's benchmarks.
 *
 * Idiomatic libuv echo, shaped like libuv's own test/echo-server.c: each
 * read callback hands its buffer straight to uv_write and frees it in the
 * write callback; on EOF the stream is shut down (pending writes finish
 * first) and then closed. No Lua, no framing, no backpressure beyond what
 * the client imposes.
 *
 * usage: echo_libuv --listen 127.0.0.1:PORT [--no-nodelay]
 * Prints "listening on HOST:PORT" on stderr once bound (PORT 0 picks a free
 * port and the real one is printed); SIGTERM or SIGINT stops it cleanly.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* uv.h needs POSIX types under -std=c11 */
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

typedef struct {
  uv_write_t req;
  uv_buf_t buf;
} write_req_t;

static uv_loop_t *loop;
static uv_tcp_t server;
static uv_signal_t sig_term, sig_int;
static int nodelay = 1;

static int is_static(const uv_handle_t *h) {
  return h == (uv_handle_t *)&server || h == (uv_handle_t *)&sig_term ||
         h == (uv_handle_t *)&sig_int;
}

static void on_close(uv_handle_t *h) {
  if (!is_static(h)) free(h);
}

static void close_stream(uv_stream_t *s) {
  if (!uv_is_closing((uv_handle_t *)s)) uv_close((uv_handle_t *)s, on_close);
}

static void after_shutdown(uv_shutdown_t *req, int status) {
  (void)status;
  close_stream(req->handle);
  free(req);
}

static void after_write(uv_write_t *req, int status) {
  write_req_t *wr = (write_req_t *)req;
  uv_stream_t *s = req->handle;
  free(wr->buf.base);
  free(wr);
  if (status == 0 || status == UV_ECANCELED) return;
  fprintf(stderr, "echo_libuv: write error: %s\n", uv_strerror(status));
  close_stream(s);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  buf->base = malloc(suggested);
  buf->len = buf->base ? suggested : 0;
}

static void after_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  if (nread <= 0) {
    free(buf->base);
    if (nread == 0) return; /* EAGAIN */
    if (nread == UV_EOF) {
      uv_shutdown_t *req = malloc(sizeof *req);
      if (req && uv_shutdown(req, s, after_shutdown) == 0) return;
      free(req);
    }
    close_stream(s);
    return;
  }
  write_req_t *wr = malloc(sizeof *wr);
  if (!wr) {
    free(buf->base);
    close_stream(s);
    return;
  }
  wr->buf = uv_buf_init(buf->base, (unsigned)nread);
  if (uv_write(&wr->req, s, &wr->buf, 1, after_write)) {
    free(wr->buf.base);
    free(wr);
    close_stream(s);
  }
}

static void on_connection(uv_stream_t *srv, int status) {
  if (status) {
    fprintf(stderr, "echo_libuv: connection error: %s\n", uv_strerror(status));
    return;
  }
  uv_tcp_t *client = malloc(sizeof *client);
  if (!client) return;
  uv_tcp_init(loop, client);
  if (uv_accept(srv, (uv_stream_t *)client) ||
      uv_read_start((uv_stream_t *)client, on_alloc, after_read)) {
    uv_close((uv_handle_t *)client, on_close);
    return;
  }
  if (nodelay) uv_tcp_nodelay(client, 1);
}

static void close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, on_close);
}

static void on_signal(uv_signal_t *s, int signum) {
  (void)s, (void)signum;
  uv_walk(loop, close_walk, NULL); /* the loop ends once all are closed */
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

int main(int argc, char **argv) {
  const char *listen_arg = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
      listen_arg = argv[++i];
    } else if (strcmp(argv[i], "--no-nodelay") == 0) {
      nodelay = 0;
    } else {
      fprintf(stderr, "usage: echo_libuv --listen HOST:PORT [--no-nodelay]\n");
      return 2;
    }
  }
  char host[64];
  int port;
  struct sockaddr_in addr;
  if (!listen_arg || parse_listen(listen_arg, host, sizeof host, &port) ||
      uv_ip4_addr(host, port, &addr)) {
    fprintf(stderr, "echo_libuv: --listen needs IPV4:PORT\n");
    return 2;
  }

  loop = uv_default_loop();
  uv_tcp_init(loop, &server);
  int rc = uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0);
  if (!rc) rc = uv_listen((uv_stream_t *)&server, 4096, on_connection);
  if (rc) {
    fprintf(stderr, "echo_libuv: cannot listen on %s: %s\n", listen_arg, uv_strerror(rc));
    return 1;
  }
  struct sockaddr_in bound;
  int len = sizeof bound;
  uv_tcp_getsockname(&server, (struct sockaddr *)&bound, &len);
  fprintf(stderr, "listening on %s:%d\n", host, ntohs(bound.sin_port));

  uv_signal_init(loop, &sig_term);
  uv_signal_start(&sig_term, on_signal, SIGTERM);
  uv_signal_init(loop, &sig_int);
  uv_signal_start(&sig_int, on_signal, SIGINT);

  uv_run(loop, UV_RUN_DEFAULT);
  uv_loop_close(loop);
  return 0;
}
