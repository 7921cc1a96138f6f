/* Byte buffer: see include/luaecho/buf.h. */
#include "luaecho/buf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define LE_BUF_MIN_CAP 4096

void le_buf_init(le_buf *b) {
  b->data = NULL;
  b->off = b->len = b->cap = 0;
}

void le_buf_free(le_buf *b) {
  free(b->data);
  le_buf_init(b);
}

/* Makes room for n more bytes at the end, first by moving unread bytes to the
 * front when that frees enough, else by growing geometrically. Returns 0 or
 * -ENOMEM. */
static int reserve(le_buf *b, size_t n) {
  if (b->cap - b->off - b->len >= n) return 0;
  if (b->cap - b->len >= n) {
    memmove(b->data, b->data + b->off, b->len);
    b->off = 0;
    return 0;
  }
  if (n > (size_t)-1 / 2 - b->len) return -ENOMEM;
  size_t need = b->len + n;
  size_t cap = b->cap ? b->cap : LE_BUF_MIN_CAP;
  while (cap < need) cap *= 2;
  char *data = malloc(cap);
  if (data == NULL) return -ENOMEM;
  if (b->len) memcpy(data, b->data + b->off, b->len);
  free(b->data);
  b->data = data;
  b->off = 0;
  b->cap = cap;
  return 0;
}

int le_buf_append(le_buf *b, const void *data, size_t n) {
  if (n == 0) return 0;
  int r = reserve(b, n);
  if (r != 0) return r;
  memcpy(b->data + b->off + b->len, data, n);
  b->len += n;
  return 0;
}

void le_buf_consume(le_buf *b, size_t n) {
  if (n >= b->len) {
    le_buf_free(b);
    return;
  }
  b->off += n;
  b->len -= n;
}

size_t le_buf_find(const le_buf *b, size_t from, char c) {
  if (from >= b->len) return (size_t)-1;
  const char *start = b->data + b->off;
  const char *hit = memchr(start + from, c, b->len - from);
  return hit ? (size_t)(hit - start) : (size_t)-1;
}
