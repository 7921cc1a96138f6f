/* The trace: see include/luaecho/trace.h. */
#include "luaecho/trace.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "luaecho/log.h"
#include "luaecho/preempt.h"

/* ---- the writer ---- */

static void write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return; /* a closed output: the lines are gone */
    p += w;
    n -= (size_t)w;
  }
}

/* Takes up to `room` contiguous bytes off the ring into out. Called with
 * the lock held. */
static size_t take(le_trace *t, char *out, size_t room) {
  size_t n = t->len < room ? t->len : room;
  size_t first = LE_TRACE_BUFFER - t->head;
  if (first > n) first = n;
  memcpy(out, t->buf + t->head, first);
  memcpy(out + first, t->buf, n - first);
  t->head = (t->head + n) % LE_TRACE_BUFFER;
  t->len -= n;
  return n;
}

static void *writer(void *arg) {
  le_trace *t = arg;
  char chunk[64 * 1024];
  pthread_mutex_lock(&t->lock);
  for (;;) {
    while (t->len == 0 && t->dropped == 0 && !t->stop)
      pthread_cond_wait(&t->more, &t->lock);
    if (t->len == 0 && t->dropped == 0) break; /* stopping, all written */
    size_t n = take(t, chunk, sizeof chunk);
    uint64_t dropped = t->len == 0 ? t->dropped : 0;
    t->dropped -= dropped;
    if (t->len == 0) pthread_cond_broadcast(&t->drained);
    pthread_mutex_unlock(&t->lock);
    write_all(t->fd, chunk, n);
    if (dropped > 0) {
      char note[160];
      int k = 0;
      if (t->log_prefix) k = le_log_prefix(note, sizeof note, "trace");
      k += snprintf(note + k, sizeof note - (size_t)k,
                    "trace: %llu lines dropped (the output fell behind)\n",
                    (unsigned long long)dropped);
      write_all(t->fd, note, (size_t)k);
    }
    pthread_mutex_lock(&t->lock);
  }
  pthread_cond_broadcast(&t->drained);
  pthread_mutex_unlock(&t->lock);
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
  t->buf = malloc(LE_TRACE_BUFFER);
  if (t->buf == NULL) return -ENOMEM;
  pthread_mutex_init(&t->lock, NULL);
  pthread_cond_init(&t->more, NULL);
  pthread_cond_init(&t->drained, NULL);
  int r = t->buf ? pthread_create(&t->writer, NULL, writer, t) : ENOMEM;
  if (r != 0) {
    free(t->buf);
    t->buf = NULL;
    t->failed = 1; /* no trace rather than a retry on every event */
    return -1;
  }
  t->started = 1;
  return 0;
}

int le_trace_flush(le_trace *t, int timeout_ms) {
  if (!t->started) return 1;
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += timeout_ms / 1000;
  until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
  if (until.tv_nsec >= 1000000000L) {
    until.tv_sec++;
    until.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&t->lock);
  int r = 0;
  while ((t->len > 0 || t->dropped > 0) && r == 0)
    r = pthread_cond_timedwait(&t->drained, &t->lock, &until);
  int empty = t->len == 0;
  pthread_mutex_unlock(&t->lock);
  return empty;
}

void le_trace_close(le_trace *t) {
  if (!t->started) return;
  int flushed = le_trace_flush(t, 1000);
  pthread_mutex_lock(&t->lock);
  t->stop = 1;
  if (!flushed) t->len = 0; /* a stuck output: give up on what is left */
  pthread_cond_signal(&t->more);
  pthread_mutex_unlock(&t->lock);
  if (flushed) {
    pthread_join(t->writer, NULL);
  } else {
    /* The writer may be stuck in write(); it is left to the process's
     * exit rather than hold up the shutdown. */
    pthread_detach(t->writer);
    t->started = 0;
    return;
  }
  pthread_mutex_destroy(&t->lock);
  pthread_cond_destroy(&t->more);
  pthread_cond_destroy(&t->drained);
  free(t->buf);
  t->buf = NULL;
  t->started = 0;
}

uint64_t le_trace_dropped(le_trace *t) {
  if (!t->started) return 0;
  pthread_mutex_lock(&t->lock);
  uint64_t n = t->dropped_total;
  pthread_mutex_unlock(&t->lock);
  return n;
}

/* ---- lines ---- */

static void put(le_trace *t, const char *line, size_t n) {
  pthread_mutex_lock(&t->lock);
  if (LE_TRACE_BUFFER - t->len < n) {
    t->dropped++;
    t->dropped_total++;
  } else {
    size_t tail = (t->head + t->len) % LE_TRACE_BUFFER;
    size_t first = LE_TRACE_BUFFER - tail;
    if (first > n) first = n;
    memcpy(t->buf + tail, line, first);
    memcpy(t->buf, line + first, n - first);
    t->len += n;
    t->lines++;
  }
  pthread_cond_signal(&t->more);
  pthread_mutex_unlock(&t->lock);
}

void le_trace_event(le_trace *t, uint64_t id, const char *fmt, ...) {
  char line[1024];
  int n = 0;
  if (t == NULL || (!t->started && start(t) != 0)) return;
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
  put(t, line, (size_t)n);
}

char *le_trace_preview(char *out, size_t outlen, const char *data, size_t len,
                       size_t max, int hex) {
  size_t n = len < max ? len : max, o = 0;
  if (outlen == 0) return out;
  if (!hex && o + 1 < outlen) out[o++] = '"';
  for (size_t i = 0; i < n && o + 8 < outlen; i++) {
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
  if (n < len && o + 4 < outlen) {
    memcpy(out + o, "...", 3);
    o += 3;
  }
  out[o < outlen ? o : outlen - 1] = '\0';
  return out;
}
