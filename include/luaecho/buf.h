/* A growable byte buffer with a read offset: append at the end, peek and
 * consume at the front. No libuv, no Lua.
 *
 * An empty buffer holds no memory: storage is allocated on the first append
 * and released when consume empties the buffer, so thousands of idle
 * connections cost nothing here.
 */
#ifndef LUAECHO_BUF_H
#define LUAECHO_BUF_H

#include <stddef.h>

typedef struct le_buf {
  char *data; /* storage, NULL while empty */
  size_t off; /* index of the first unread byte */
  size_t len; /* number of unread bytes */
  size_t cap; /* size of storage */
} le_buf;

#define LE_BUF_INIT \
  { NULL, 0, 0, 0 }

void le_buf_init(le_buf *b);

/* Releases the storage; the buffer is empty and usable afterwards. */
void le_buf_free(le_buf *b);

/* Appends n bytes. Returns 0, or -ENOMEM with the buffer unchanged. */
int le_buf_append(le_buf *b, const void *data, size_t n);

/* Returns the number of unread bytes. */
static inline size_t le_buf_size(const le_buf *b) { return b->len; }

/* Returns a pointer to the first unread byte (valid until the next append
 * or consume), or NULL when the buffer is empty. */
static inline const char *le_buf_peek(const le_buf *b) {
  return b->len ? b->data + b->off : NULL;
}

/* Drops the first n unread bytes (n is clamped to the size). */
void le_buf_consume(le_buf *b, size_t n);

/* Returns the index of the first byte equal to c at or after `from`, or
 * (size_t)-1 when there is none. */
size_t le_buf_find(const le_buf *b, size_t from, char c);

#endif
