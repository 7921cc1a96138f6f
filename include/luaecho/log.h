/* Levelled log lines on one stream.
 *
 * Every record is one line "YYYY-MM-DD HH:MM:SS.mmm [level] message" written
 * with a single fwrite, so records from different places never interleave.
 * A logger is plain data owned by whoever runs a loop; there is no global one.
 */
#ifndef LUAECHO_LOG_H
#define LUAECHO_LOG_H

#include <stdarg.h>
#include <stdio.h>

typedef enum {
  LE_LOG_DEBUG,
  LE_LOG_INFO,
  LE_LOG_WARN,
  LE_LOG_ERROR
} le_log_level;

typedef struct le_log {
  le_log_level level; /* records below this level are dropped */
  FILE *out;          /* where records go; stderr in the server */
} le_log;

void le_log_init(le_log *log, le_log_level level, FILE *out);

/* Returns 1 when a record at `level` would be written. */
int le_log_enabled(const le_log *log, le_log_level level);

/* Formats and writes one record. Long messages (tracebacks) are kept whole. */
void le_logf(const le_log *log, le_log_level level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
void le_logv(const le_log *log, le_log_level level, const char *fmt,
             va_list ap);

/* Writes a record's "YYYY-MM-DD HH:MM:SS.mmm [label] " prefix into out and
 * returns its length (the trace writes "[trace]" records this way). */
int le_log_prefix(char *out, size_t size, const char *label);

/* Text that may come from a client, a script or a file (a message, a
 * path, a key) is escaped before it joins a record, so that every record
 * stays one line and no byte reaches a terminal raw: a newline, a carriage
 * return and a tab become backslash-n, -r and -t, other control bytes and
 * DEL backslash-x and two hex digits; every other byte stands for itself.
 *
 * le_log_escape writes the escape of ch into out and returns its length,
 * or returns 0 when ch stands for itself. */
size_t le_log_escape(unsigned char ch, char out[5]);

/* Copies src (len bytes) into out with control bytes escaped, NUL-
 * terminated, cut at outlen but never in the middle of an escape. Returns
 * the length written. */
size_t le_log_escape_into(char *out, size_t outlen, const char *src,
                          size_t len);

/* Returns the level's name ("debug", "info", "warn", "error"). */
const char *le_log_level_name(le_log_level level);

/* Parses a level name. Returns 0 and sets *out, or -1 for an unknown name. */
int le_log_level_parse(const char *name, le_log_level *out);

#endif
