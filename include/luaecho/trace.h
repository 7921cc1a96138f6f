/* The trace: one readable line per socket event of a traced connection.
 *
 *   2026-12-01 11:28:07.406 [trace] 1234567us conn 7 read 6 bytes "hello\n"
 *
 * (in the log), or without the log's prefix in a trace file:
 *
 *   1234567us conn 7 read 6 bytes "hello\n"
 *
 * The number is the time since the trace was opened (the server's start)
 * in microseconds. docs/observability.md lists every event.
 *
 * Writing never blocks the event loop: lines go into a bounded buffer that
 * a writer thread empties into the output. When the output falls behind
 * (a slow terminal, a full pipe) and the buffer is full, lines are dropped
 * and counted, and the writer reports the count once it catches up.
 * Nothing here runs unless a connection is traced: the data path pays one
 * test of a flag per event.
 */
#ifndef LUAECHO_TRACE_H
#define LUAECHO_TRACE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* Bytes of trace lines held for the writer before lines are dropped. */
#define LE_TRACE_BUFFER (1024 * 1024)

/* What the writer thread shares with the loop. It is on the heap so that
 * a writer stuck on an output that never drains can be left behind at
 * close: it then frees this itself once its write returns. */
typedef struct le__trace_ring le__trace_ring;

typedef struct le_trace {
  int fd;               /* where lines go */
  int log_prefix;       /* prefix each line like a log record */
  uint64_t start_ns;    /* the time 0 of the lines */
  le__trace_ring *ring; /* made with the first line; NULL before */
  int failed;           /* it could not be made: lines are lost */
  /* When set, every line is also given to tap, on the loop's thread, as
   * its time (us), connection id and event text (the admin's live view,
   * linspect.c). */
  void (*tap)(void *arg, uint64_t id, uint64_t us, const char *event);
  void *tap_arg;
} le_trace;

/* Prepares a trace writing to fd (not closed here), with a log-style
 * prefix when log_prefix is set. The buffer and the writer thread are
 * made with the first line. */
void le_trace_init(le_trace *t, int fd, int log_prefix);

/* Writes what is buffered (waiting at most ~1 s for a stuck output) and
 * stops the writer. Safe on a trace never opened. */
void le_trace_close(le_trace *t);

/* Adds one line "<us>us conn <id> <formatted event>". Never blocks on the
 * output. */
void le_trace_event(le_trace *t, uint64_t id, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Waits (bounded by timeout_ms) until everything buffered was written;
 * returns 1 when it was. For tests and an orderly exit. */
int le_trace_flush(le_trace *t, int timeout_ms);

/* Writes a preview of data into out: at most `max` bytes of it, as a
 * double-quoted string with C escapes ("hello\n"), or as hex bytes
 * ("68 65 6c 6c 6f 0a") when `hex` is set, followed by "..." when cut.
 * Returns out. */
char *le_trace_preview(char *out, size_t outlen, const char *data, size_t len,
                       size_t max, int hex);

/* Returns the lines dropped so far: for want of room in the buffer, or
 * refused by the output (a write error such as ENOSPC or EPIPE). */
uint64_t le_trace_dropped(le_trace *t);

#endif
