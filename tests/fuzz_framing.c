/* libFuzzer target for message framing (include/luaecho/framing.h).
 *
 * An input is read as
 *   byte 0     the mode: raw, 1, 2, 4 or line (the byte modulo 5)
 *   bytes 1-2  max: bytes 1 and 2 as a big-endian number, or no limit
 *              (SIZE_MAX) when byte 1 is 0xff
 *   byte 3     how the stream is split into reads: 0 is one byte per read,
 *              k is reads of 1..k bytes at boundaries drawn from a
 *              generator seeded with k and the stream's length
 *   the rest   the byte stream a peer sends
 *
 * The stream is decoded three times the way a connection does it (append
 * each read to a buffer, decode while whole messages are at the front,
 * consume `used`, stop for good on TOOBIG): split with `scanned` kept
 * across calls as lconn.c keeps it, split with no `scanned`, and in one
 * piece. Every call is checked against a plain reference decoder and
 * against the invariants below; any failure calls abort().
 *
 *   off + len <= used <= available bytes, and used > 0
 *   len <= max, except in raw mode, which has no limit
 *   a line ends with '\n' and has no earlier '\n'
 *   on MORE in line mode, scanned only grows and covers no '\n'
 *   le_frame_header(len) followed by the payload is exactly the `used`
 *     input bytes: re-encoding the messages reproduces the input
 *   the three decodings give the same messages and the same end (for raw
 *     mode, where a message is whatever one read brought, the same bytes)
 *
 * Built with clang as a libFuzzer target, or with any compiler together
 * with fuzz_driver.c, which supplies main. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "luaecho/framing.h"
#include "fuzz_support.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const le_packet modes[] = {LE_PACKET_RAW, LE_PACKET_1, LE_PACKET_2,
                                  LE_PACKET_4, LE_PACKET_LINE};

/* The framing rules of framing.h written as plainly as possible. */
static le_frame_status reference(le_packet mode, size_t max,
                                 const unsigned char *p, size_t n,
                                 le_frame *out) {
  if (mode == LE_PACKET_RAW) {
    if (n == 0) return LE_FRAME_MORE;
    *out = (le_frame){0, n, n};
    return LE_FRAME_OK;
  }
  if (mode == LE_PACKET_LINE) {
    for (size_t i = 0; i < n; i++) {
      if (i == max) return LE_FRAME_TOOBIG; /* max bytes and no '\n' */
      if (p[i] == '\n') {
        *out = (le_frame){0, i + 1, i + 1};
        return LE_FRAME_OK;
      }
    }
    return n >= max ? LE_FRAME_TOOBIG : LE_FRAME_MORE;
  }
  size_t h = fuzz_header_size(mode);
  if (n < h) return LE_FRAME_MORE;
  uint64_t len = 0;
  for (size_t i = 0; i < h; i++) len = len << 8 | p[i];
  if (len > max) return LE_FRAME_TOOBIG;
  if (n - h < len) return LE_FRAME_MORE;
  *out = (le_frame){h, (size_t)len, h + (size_t)len};
  return LE_FRAME_OK;
}

/* One decoding of the stream, as a connection would do it. */
typedef struct decoder {
  le_packet mode;
  size_t max;
  const uint8_t *stream; /* the whole input stream, to compare against */
  int use_scanned;       /* pass &scanned, or NULL */
  size_t scanned;
  unsigned char *buf; /* unconsumed input, allocated to exactly n bytes */
  size_t n;
  size_t consumed;     /* stream bytes used by the messages so far */
  le_frame_status end; /* LE_FRAME_TOOBIG once the stream failed */
  unsigned char *out;  /* payloads of the messages, back to back */
  size_t out_n;
  size_t *lens; /* length of each message */
  size_t count;
} decoder;

static void decoder_init(decoder *d, le_packet mode, size_t max,
                         const uint8_t *stream, size_t total, int use_scanned) {
  memset(d, 0, sizeof *d);
  d->mode = mode;
  d->max = max;
  d->stream = stream;
  d->use_scanned = use_scanned;
  d->end = LE_FRAME_MORE;
  /* Every message uses at least one byte, and no payload byte twice. */
  d->out = malloc(total + 1);
  d->lens = malloc((total + 1) * sizeof *d->lens);
  CHECK(d->out != NULL && d->lens != NULL);
}

static void decoder_free(decoder *d) {
  free(d->buf);
  free(d->out);
  free(d->lens);
}

/* Resizes the buffer to exactly n bytes, so that AddressSanitizer sees a
 * read past the end; an empty buffer is NULL, as le_buf_peek returns. */
static void resize(decoder *d, size_t n) {
  if (n == 0) {
    free(d->buf);
    d->buf = NULL;
  } else {
    unsigned char *p = realloc(d->buf, n);
    CHECK(p != NULL);
    d->buf = p;
  }
  d->n = n;
}

static void check_message(decoder *d, const le_frame *f) {
  const unsigned char *p = d->buf;
  CHECK(f->off <= f->used && f->len <= f->used - f->off);
  CHECK(f->used <= d->n);
  CHECK(f->used > 0);
  if (d->mode != LE_PACKET_RAW) CHECK(f->len <= d->max);
  if (d->mode == LE_PACKET_LINE) {
    CHECK(f->len > 0 && p[f->off + f->len - 1] == '\n');
    CHECK(memchr(p + f->off, '\n', f->len - 1) == NULL);
  }
  /* Re-encoding gives back the very bytes the frame used. */
  unsigned char hdr[8];
  int h = le_frame_header(d->mode, f->len, hdr);
  CHECK(h >= 0 && (size_t)h == fuzz_header_size(d->mode));
  CHECK((size_t)h + f->len == f->used);
  const uint8_t *in = d->stream + d->consumed;
  CHECK(memcmp(in, hdr, (size_t)h) == 0);
  CHECK(memcmp(in + h, p + f->off, f->len) == 0);
}

/* Decodes and consumes messages until the front is incomplete or too big. */
static void drain(decoder *d) {
  while (d->end != LE_FRAME_TOOBIG) {
    size_t before = d->scanned;
    size_t *scanned = d->use_scanned ? &d->scanned : NULL;
    le_frame f, want;
    memset(&f, 0xAA, sizeof f);
    le_frame_status st = le_frame_decode(d->mode, d->max, (const char *)d->buf,
                                         d->n, scanned, &f);
    le_frame_status ref = reference(d->mode, d->max, d->buf, d->n, &want);
    if (st != ref) {
      fprintf(stderr,
              "mode %s max %zu n %zu scanned %zu: status %d, expected %d\n",
              le_packet_name(d->mode), d->max, d->n, before, (int)st, (int)ref);
      abort();
    }
    if (st == LE_FRAME_TOOBIG) {
      d->end = LE_FRAME_TOOBIG;
      return;
    }
    if (st == LE_FRAME_MORE) {
      if (d->mode == LE_PACKET_LINE && scanned) {
        CHECK(d->scanned >= before && d->scanned <= d->n);
        CHECK(d->scanned == 0 || memchr(d->buf, '\n', d->scanned) == NULL);
      }
      return;
    }
    CHECK(f.off == want.off && f.len == want.len && f.used == want.used);
    check_message(d, &f);
    memcpy(d->out + d->out_n, d->buf + f.off, f.len);
    d->out_n += f.len;
    d->lens[d->count++] = f.len;
    d->consumed += f.used;
    /* Like lconn.c, scanned is not touched here: the decoder restarts it
     * after a message (see test_line_scanned_grows). */
    memmove(d->buf, d->buf + f.used, d->n - f.used);
    resize(d, d->n - f.used);
  }
}

static void feed(decoder *d, const uint8_t *p, size_t k) {
  if (d->end == LE_FRAME_TOOBIG) return;
  size_t old = d->n;
  resize(d, old + k);
  if (k > 0) memcpy(d->buf + old, p, k);
  drain(d);
}

/* Reads of the stream: the next read's size, from a fixed generator. */
static size_t next_read(uint32_t *rng, unsigned split, size_t left) {
  if (split == 0) return 1;
  *rng = *rng * 1103515245u + 12345u;
  size_t k = 1 + (*rng >> 16) % split;
  return k < left ? k : left;
}

static void same_messages(const decoder *a, const decoder *b) {
  CHECK(a->end == b->end);
  CHECK(a->consumed == b->consumed);
  CHECK(a->out_n == b->out_n);
  CHECK(memcmp(a->out, b->out, a->out_n) == 0);
  if (a->mode == LE_PACKET_RAW) return; /* raw messages follow the reads */
  CHECK(a->count == b->count);
  CHECK(memcmp(a->lens, b->lens, a->count * sizeof *a->lens) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 4) return 0;
  le_packet mode = modes[data[0] % 5];
  size_t max = data[1] == 0xff ? SIZE_MAX : (size_t)data[1] << 8 | data[2];
  unsigned split = data[3];
  const uint8_t *stream = data + 4;
  size_t total = size - 4;

  decoder split_scanned, split_plain, whole;
  decoder_init(&split_scanned, mode, max, stream, total, 1);
  decoder_init(&split_plain, mode, max, stream, total, 0);
  decoder_init(&whole, mode, max, stream, total, 1);

  uint32_t rng = split * 2654435761u ^ (uint32_t)total;
  for (size_t pos = 0; pos < total;) {
    size_t k = next_read(&rng, split, total - pos);
    feed(&split_scanned, stream + pos, k);
    feed(&split_plain, stream + pos, k);
    pos += k;
  }
  feed(&whole, stream, total);
  /* No read at all (an empty stream) still asks the decoder once. */
  if (total == 0) {
    drain(&split_scanned);
    drain(&split_plain);
  }

  same_messages(&split_scanned, &split_plain);
  same_messages(&split_scanned, &whole);
  /* What is left is exactly the stream past the last message. */
  CHECK(whole.consumed + whole.n == total || whole.end == LE_FRAME_TOOBIG);

  decoder_free(&split_scanned);
  decoder_free(&split_plain);
  decoder_free(&whole);
  return 0;
}
