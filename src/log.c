/* Levelled log lines: see include/luaecho/log.h. */
#include "luaecho/log.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void le_log_init(le_log *log, le_log_level level, FILE *out) {
  log->level = level;
  log->out = out;
}

int le_log_enabled(const le_log *log, le_log_level level) {
  return log != NULL && level >= log->level;
}

size_t le_log_escape(unsigned char ch, char out[5]) {
  static const char named[] = {'\n', 'n', '\r', 'r', '\t', 't'};
  if (ch >= 0x20 && ch != 0x7f) return 0;
  for (size_t i = 0; i < sizeof named; i += 2) {
    if (ch == (unsigned char)named[i]) {
      out[0] = '\\', out[1] = named[i + 1], out[2] = '\0';
      return 2;
    }
  }
  snprintf(out, 5, "\\x%02x", ch);
  return 4;
}

size_t le_log_escape_into(char *out, size_t outlen, const char *src,
                          size_t len) {
  size_t n = 0;
  if (outlen == 0) return 0;
  for (size_t i = 0; i < len; i++) {
    char esc[5];
    unsigned char ch = (unsigned char)src[i];
    size_t k = le_log_escape(ch, esc);
    if (n + (k ? k : 1) >= outlen) break;
    if (k == 0)
      out[n++] = (char)ch;
    else
      memcpy(out + n, esc, k), n += k;
  }
  out[n] = '\0';
  return n;
}

const char *le_log_level_name(le_log_level level) { return level_names[level]; }

int le_log_level_parse(const char *name, le_log_level *out) {
  for (int i = 0; i <= LE_LOG_ERROR; i++) {
    if (strcmp(name, level_names[i]) == 0) {
      *out = (le_log_level)i;
      return 0;
    }
  }
  return -1;
}

int le_log_prefix(char *out, size_t size, const char *label) {
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  localtime_r(&ts.tv_sec, &tm);
  return snprintf(out, size, "%04d-%02d-%02d %02d:%02d:%02d.%03ld [%s] ",
                  tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                  tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L, label);
}

void le_logv(const le_log *log, le_log_level level, const char *fmt,
             va_list ap) {
  char small[512];
  char *line = small;
  va_list again;
  if (!le_log_enabled(log, level)) return;
  int prefix = le_log_prefix(small, sizeof small, level_names[level]);
  va_copy(again, ap);
  int body = vsnprintf(small + prefix, sizeof small - (size_t)prefix, fmt, ap);
  if (body < 0) body = 0;
  size_t total = (size_t)prefix + (size_t)body;
  /* A message that does not fit (a traceback) gets a buffer of its own so
   * the record still goes out in one write. */
  if (total + 1 >= sizeof small) {
    line = malloc(total + 2);
    if (line != NULL) {
      memcpy(line, small, (size_t)prefix);
      vsnprintf(line + prefix, (size_t)body + 1, fmt, again);
    } else {
      line = small;
      total = sizeof small - 2;
    }
  }
  va_end(again);
  line[total] = '\n';
  fwrite(line, 1, total + 1, log->out);
  fflush(log->out);
  if (line != small) free(line);
}

void le_logf(const le_log *log, le_log_level level, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  le_logv(log, level, fmt, ap);
  va_end(ap);
}
