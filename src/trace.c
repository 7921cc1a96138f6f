/* The trace: see include/luaecho/trace.h. */
#include "luaecho/trace.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "luaecho/log.h"
#include "luaecho/preempt.h"

/* ---- the writer ---- */

struct le__trace_ring {
  int fd;
  int log_prefix;
  char *buf;              /* a ring of LE_TRACE_BUFFER bytes */
  size_t head, len;       /* the bytes waiting for the writer */
  uint64_t dropped;       /* lines dropped since the last report */
  uint64_t dropped_total; /* lines dropped in all */
  pthread_mutex_t lock;
  pthread_cond_t more;    /* the writer has lines to write, or must stop */
  pthread_cond_t drained; /* the buffer became empty */
  pthread_t writer;
  int writing;   /* the writer holds bytes taken, not yet written */
  int stop;      /* the writer ends once the ring is empty */
  int abandoned; /* nobody waits for the writer: it frees the ring */
};

/* Writes the n bytes at p; returns how many lines (newlines) of them the
 * output refused (a full disk, a pipe whose reader left): they are gone. */
static uint64_t write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;
    p += w;
    n -= (size_t)w;
  }
  uint64_t lost = 0;
  for (size_t i = 0; i < n; i++) lost += p[i] == '\n';
  return lost;
}

/* Takes up to `room` contiguous bytes off the ring into out. Called with
 * the lock held. */
static size_t take(le__trace_ring *r, char *out, size_t room) {
  size_t n = r->len < room ? r->len : room;
  size_t first = LE_TRACE_BUFFER - r->head;
  if (first > n) first = n;
  memcpy(out, r->buf + r->head, first);
  memcpy(out + first, r->buf, n - first);
  r->head = (r->head + n) % LE_TRACE_BUFFER;
  r->len -= n;
  return n;
}

static void free_ring(le__trace_ring *r) {
  pthread_mutex_destroy(&r->lock);
  pthread_cond_destroy(&r->more);
  pthread_cond_destroy(&r->drained);
  free(r->buf);
  free(r);
}

static void report_dropped(le__trace_ring *r, uint64_t dropped) {
  char note[160];
  int k = 0;
  if (r->log_prefix) k = le_log_prefix(note, sizeof note, "trace");
  k += snprintf(note + k, sizeof note - (size_t)k,
                "trace: %llu lines dropped (the output fell behind)\n",
                (unsigned long long)dropped);
  write_all(r->fd, note, (size_t)k);
}

static void *writer(void *arg) {
  le__trace_ring *r = arg;
  char chunk[64 * 1024];
  pthread_mutex_lock(&r->lock);
  for (;;) {
    while (r->len == 0 && r->dropped == 0 && !r->stop)
      pthread_cond_wait(&r->more, &r->lock);
    if (r->len == 0 && r->dropped == 0) break; /* stopping, all written */
    size_t n = take(r, chunk, sizeof chunk);
    uint64_t dropped = r->len == 0 ? r->dropped : 0;
    r->dropped -= dropped;
    r->writing = 1;
    pthread_mutex_unlock(&r->lock);
    uint64_t lost = write_all(r->fd, chunk, n);
    if (dropped > 0) report_dropped(r, dropped);
    pthread_mutex_lock(&r->lock);
    /* Counted in the total only: a report would go to the same output. */
    r->dropped_total += lost;
    r->writing = 0;
    /* Drained only once what was taken is written, so that a flush means
     * "in the output". */
    if (r->len == 0) pthread_cond_broadcast(&r->drained);
    if (r->abandoned) break;
  }
  int abandoned = r->abandoned;
  pthread_cond_broadcast(&r->drained);
  pthread_mutex_unlock(&r->lock);
  if (abandoned) free_ring(r);
  return NULL;
}

void le_trace_init(le_trace *t, int fd, int log_prefix) {
  memset(t, 0, sizeof *t);
  t->fd = fd;
  t->log_prefix = log_prefix;
  t->start_ns = le_preempt_now_ns();
}

/* Starts the writer on the first line: a server that traces nothing has
 * no buffer and no thread. */
static int start(le_trace *t) {
  if (t->failed) return -1;
  le__trace_ring *r = calloc(1, sizeof *r);
  if (r != NULL) r->buf = malloc(LE_TRACE_BUFFER);
  if (r == NULL || r->buf == NULL) {
    if (r) free(r);
    t->failed = 1; /* no trace rather than a retry on every event */
    return -1;
  }
  r->fd = t->fd;
  r->log_prefix = t->log_prefix;
  pthread_mutex_init(&r->lock, NULL);
  pthread_cond_init(&r->more, NULL);
  pthread_cond_init(&r->drained, NULL);
  if (pthread_create(&r->writer, NULL, writer, r) != 0) {
    free_ring(r);
    t->failed = 1;
    return -1;
  }
  t->ring = r;
  return 0;
}

int le_trace_flush(le_trace *t, int timeout_ms) {
  le__trace_ring *r = t->ring;
  if (r == NULL) return 1;
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += timeout_ms / 1000;
  until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&r->lock);
  int rc = 0;
  while ((r->len > 0 || r->dropped > 0 || r->writing) && rc == 0)
    rc = pthread_cond_timedwait(&r->drained, &r->lock, &until);
  int empty = r->len == 0 && !r->writing;
  pthread_mutex_unlock(&r->lock);
  return empty;
}

void le_trace_close(le_trace *t) {
  le__trace_ring *r = t->ring;
  if (r == NULL) return;
  int flushed = le_trace_flush(t, 1000);
  t->ring = NULL;
  pthread_mutex_lock(&r->lock);
  r->stop = 1;
  if (!flushed) {
    /* A stuck output: what is left is given up, and the writer, which may
     * be blocked in write(), is left to free the ring when it returns, so
     * that the shutdown is not held up. */
    r->len = 0;
    r->abandoned = 1;
  }
  pthread_cond_signal(&r->more);
  pthread_mutex_unlock(&r->lock);
  if (flushed) {
    pthread_join(r->writer, NULL);
    free_ring(r);
  } else {
    pthread_detach(r->writer);
  }
}

uint64_t le_trace_dropped(le_trace *t) {
  le__trace_ring *r = t->ring;
  if (r == NULL) return 0;
  pthread_mutex_lock(&r->lock);
  uint64_t n = r->dropped_total;
  pthread_mutex_unlock(&r->lock);
  return n;
}

/* ---- lines ---- */

static void put(le__trace_ring *r, const char *line, size_t n) {
  pthread_mutex_lock(&r->lock);
  if (LE_TRACE_BUFFER - r->len < n) {
    r->dropped++;
    r->dropped_total++;
  } else {
    size_t tail = (r->head + r->len) % LE_TRACE_BUFFER;
    size_t first = LE_TRACE_BUFFER - tail;
    if (first > n) first = n;
    memcpy(r->buf + tail, line, first);
    memcpy(r->buf, line + first, n - first);
    r->len += n;
  }
  pthread_cond_signal(&r->more);
  pthread_mutex_unlock(&r->lock);
}

void le_trace_event(le_trace *t, uint64_t id, const char *fmt, ...) {
  char line[1024];
  int n = 0;
  if (t == NULL || (t->ring == NULL && start(t) != 0)) return;
  if (t->log_prefix) n = le_log_prefix(line, sizeof line, "trace");
  uint64_t us = (le_preempt_now_ns() - t->start_ns) / 1000;
  n += snprintf(line + n, sizeof line - (size_t)n, "%lluus conn %llu ",
                (unsigned long long)us, (unsigned long long)id);
  va_list ap;
  va_start(ap, fmt);
  int body = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  va_end(ap);
  if (body < 0) body = 0;
  if (t->tap != NULL) t->tap(t->tap_arg, id, us, line + n);
  n += body;
  if ((size_t)n > sizeof line - 2) n = (int)sizeof line - 2;
  line[n++] = '\n';
  put(t->ring, line, (size_t)n);
}

char *le_trace_preview(char *out, size_t outlen, const char *data, size_t len,
                       size_t max, int hex) {
  size_t n = len < max ? len : max, o = 0, i;
  if (outlen == 0) return out;
  if (!hex && o + 1 < outlen) out[o++] = '"';
  /* Each byte takes at most 4 characters; 10 left before one leaves room
   * for it, the closing quote, "..." and the terminator. */
  for (i = 0; i < n && o + 9 < outlen; i++) {
    unsigned char ch = (unsigned char)data[i];
    if (hex) {
      o += (size_t)snprintf(out + o, outlen - o, i ? " %02x" : "%02x", ch);
    } else if (ch == '\n') {
      out[o++] = '\\', out[o++] = 'n';
    } else if (ch == '\r') {
      out[o++] = '\\', out[o++] = 'r';
    } else if (ch == '\t') {
      out[o++] = '\\', out[o++] = 't';
    } else if (ch == '"' || ch == '\\') {
      out[o++] = '\\', out[o++] = (char)ch;
    } else if (ch < 0x20 || ch >= 0x7f) {
      o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", ch);
    } else {
      out[o++] = (char)ch;
    }
  }
  if (!hex && o + 1 < outlen) out[o++] = '"';
  if ((i < n || n < len) && o + 4 < outlen) {
    memcpy(out + o, "...", 3);
    o += 3;
  }
  out[o < outlen ? o : outlen - 1] = '\0';
  return out;
}
