/* Unit tests for message framing (include/luaecho/framing.h). */
#include "test_support.h"

#include <stdlib.h>
#include <string.h>

#include "luaecho/framing.h"

#define MIB (1024 * 1024)

/* The sentinel written over le_frame and header bytes that must stay put. */
#define POISON 0xAA

/* Decodes data[0..n) from a heap copy of exactly n bytes, so that a build
 * with a sanitizer catches a read past the end. An empty input is passed as
 * NULL, as lconn.c does with an empty, released buffer. */
static le_frame_status decode(le_packet mode, size_t max, const void *data,
                              size_t n, size_t *scanned, le_frame *out) {
  char *copy = NULL;
  if (n > 0) {
    copy = malloc(n);
    assert_non_null(copy);
    memcpy(copy, data, n);
  }
  memset(out, POISON, sizeof *out);
  le_frame_status st = le_frame_decode(mode, max, copy, n, scanned, out);
  free(copy);
  return st;
}

static void assert_frame(const le_frame *f, size_t off, size_t len,
                         size_t used) {
  assert_int_equal(f->off, off);
  assert_int_equal(f->len, len);
  assert_int_equal(f->used, used);
}

/* The header size of a length-prefixed mode, 0 for line and raw. */
static size_t header_size(le_packet mode) {
  return mode == LE_PACKET_1 || mode == LE_PACKET_2 || mode == LE_PACKET_4
             ? (size_t)mode
             : 0;
}

/* Writes the frame for a `len`-byte payload into out and returns its size:
 * the big-endian length header built here by hand, so that the decoder's
 * tests do not depend on le_frame_header, then the payload. In line mode
 * the payload is the whole line, its '\n' included. */
static size_t build(le_packet mode, const void *payload, size_t len,
                    unsigned char *out) {
  size_t h = header_size(mode);
  for (size_t i = 0; i < h; i++)
    out[i] = (unsigned char)((uint64_t)len >> (8 * (h - 1 - i)));
  if (len > 0) memcpy(out + h, payload, len);
  return h + len;
}

/* Feeds a frame one more byte at a time, with and without `scanned`: every
 * proper prefix needs more, the whole frame is one message. */
static void check_every_prefix(le_packet mode, size_t max,
                               const unsigned char *frame, size_t n, size_t off,
                               size_t len) {
  le_frame f;
  size_t scanned = 0;
  for (size_t k = 0; k < n; k++) {
    assert_int_equal(decode(mode, max, frame, k, &scanned, &f), LE_FRAME_MORE);
    assert_int_equal(decode(mode, max, frame, k, NULL, &f), LE_FRAME_MORE);
    assert_true(scanned <= k);
  }
  assert_int_equal(decode(mode, max, frame, n, &scanned, &f), LE_FRAME_OK);
  assert_frame(&f, off, len, n);
  assert_int_equal(decode(mode, max, frame, n, NULL, &f), LE_FRAME_OK);
  assert_frame(&f, off, len, n);
}

/* A connection's view of the decoder, as in lconn.c: bytes are appended as
 * they arrive, decoded while whole messages are at the front, and each
 * message's `used` bytes are consumed. `scanned` is kept across calls the
 * way lconn.c keeps it, and is NULL when use_scanned is 0. */
typedef struct conn {
  le_packet mode;
  size_t max;
  int use_scanned;
  size_t scanned;
  unsigned char buf[512]; /* unconsumed input */
  size_t n;               /* bytes in buf */
  size_t count;           /* messages decoded */
  unsigned char msg[4][128];
  size_t msg_len[4];
} conn;

static void conn_drain(conn *c) {
  for (;;) {
    le_frame f;
    size_t *scanned = c->use_scanned ? &c->scanned : NULL;
    le_frame_status st = decode(c->mode, c->max, c->buf, c->n, scanned, &f);
    if (st == LE_FRAME_MORE) return;
    assert_int_equal(st, LE_FRAME_OK);
    assert_true(f.off + f.len <= f.used && f.used <= c->n && f.used > 0);
    assert_true(c->count < 4 && f.len <= sizeof c->msg[0]);
    memcpy(c->msg[c->count], c->buf + f.off, f.len);
    c->msg_len[c->count++] = f.len;
    memmove(c->buf, c->buf + f.used, c->n - f.used);
    c->n -= f.used;
  }
}

static void conn_feed(conn *c, const unsigned char *data, size_t n) {
  assert_true(c->n + n <= sizeof c->buf);
  memcpy(c->buf + c->n, data, n);
  c->n += n;
  conn_drain(c);
}

/* Sends the frames of payloads a and b back to back in three reads, split
 * at every pair of points, and checks that both messages come out whole,
 * in order, with nothing left over. */
static void check_coalesced(le_packet mode, size_t max, const char *a,
                            size_t alen, const char *b, size_t blen) {
  unsigned char stream[256];
  size_t total = build(mode, a, alen, stream);
  total += build(mode, b, blen, stream + total);
  for (int use_scanned = 0; use_scanned <= 1; use_scanned++) {
    for (size_t s1 = 0; s1 <= total; s1++) {
      for (size_t s2 = s1; s2 <= total; s2++) {
        conn c = {.mode = mode, .max = max, .use_scanned = use_scanned};
        conn_feed(&c, stream, s1);
        conn_feed(&c, stream + s1, s2 - s1);
        conn_feed(&c, stream + s2, total - s2);
        assert_int_equal(c.count, 2);
        assert_int_equal(c.n, 0);
        assert_int_equal(c.msg_len[0], alen);
        assert_memory_equal(c.msg[0], a, alen);
        assert_int_equal(c.msg_len[1], blen);
        assert_memory_equal(c.msg[1], b, blen);
      }
    }
  }
}

/* Payloads for length-prefixed modes hold every troublesome byte. */
static const char binary[] = "\0\n\xff\r\n\x80 payload\n";
#define BINARY_LEN (sizeof binary - 1)

static void check_packet_splits(le_packet mode) {
  size_t h = header_size(mode);
  unsigned char frame[300];
  const size_t lens[] = {0, 1, BINARY_LEN};
  for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
    size_t n = build(mode, binary, lens[i], frame);
    check_every_prefix(mode, MIB, frame, n, h, lens[i]);
  }
  /* A long payload: for packet 1 the largest that fits the header. */
  char big[255];
  for (size_t i = 0; i < sizeof big; i++) big[i] = (char)(i * 7);
  size_t n = build(mode, big, sizeof big, frame);
  check_every_prefix(mode, MIB, frame, n, h, sizeof big);

  check_coalesced(mode, MIB, binary, BINARY_LEN, "second", 6);
  check_coalesced(mode, MIB, "", 0, "x", 1);
  check_coalesced(mode, MIB, "x", 1, "", 0);
  check_coalesced(mode, MIB, "", 0, "", 0);
}

static void test_packet1_every_split(void **state) {
  (void)state;
  check_packet_splits(LE_PACKET_1);
}

static void test_packet2_every_split(void **state) {
  (void)state;
  check_packet_splits(LE_PACKET_2);
}

static void test_packet4_every_split(void **state) {
  (void)state;
  check_packet_splits(LE_PACKET_4);
}

static void test_line_every_split(void **state) {
  (void)state;
  static const char *const lines[] = {"\n", "a\n", "hello world\r\n",
                                      "\0nul\xff\n"};
  static const size_t lens[] = {1, 2, 13, 6};
  for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++)
    check_every_prefix(LE_PACKET_LINE, MIB, (const unsigned char *)lines[i],
                       lens[i], 0, lens[i]);
  check_coalesced(LE_PACKET_LINE, MIB, "hello\r\n", 7, "world\n", 6);
  check_coalesced(LE_PACKET_LINE, MIB, "\n", 1, "x\n", 2);
  check_coalesced(LE_PACKET_LINE, MIB, "x\n", 2, "\n", 1);
  check_coalesced(LE_PACKET_LINE, MIB, "\n", 1, "\n", 1);
}

/* A zero-length payload is a message of its own, found from its header. */
static void test_packet_zero_length(void **state) {
  (void)state;
  static const unsigned char zeros[8] = {0};
  const le_packet modes[] = {LE_PACKET_1, LE_PACKET_2, LE_PACKET_4};
  for (size_t i = 0; i < 3; i++) {
    size_t h = header_size(modes[i]);
    le_frame f;
    check_every_prefix(modes[i], MIB, zeros, h, h, 0);
    /* Followed by more zero-length frames, only the first is taken. */
    assert_int_equal(decode(modes[i], MIB, zeros, sizeof zeros, NULL, &f),
                     LE_FRAME_OK);
    assert_frame(&f, h, 0, h);
    /* A max of 0 still admits an empty payload. */
    assert_int_equal(decode(modes[i], 0, zeros, h, NULL, &f), LE_FRAME_OK);
    assert_frame(&f, h, 0, h);
  }
}

static void test_line_empty(void **state) {
  (void)state;
  le_frame f;
  size_t scanned = 0;
  assert_int_equal(decode(LE_PACKET_LINE, MIB, "\n", 1, &scanned, &f),
                   LE_FRAME_OK);
  assert_frame(&f, 0, 1, 1);
  assert_int_equal(decode(LE_PACKET_LINE, MIB, "\n\nx\n", 4, NULL, &f),
                   LE_FRAME_OK);
  assert_frame(&f, 0, 1, 1);
  /* The smallest max that holds a line. */
  assert_int_equal(decode(LE_PACKET_LINE, 1, "\n", 1, NULL, &f), LE_FRAME_OK);
  assert_frame(&f, 0, 1, 1);
}

/* No bytes yet is never a message in any mode; lconn.c passes NULL then. */
static void test_nothing_buffered_needs_more(void **state) {
  (void)state;
  const le_packet modes[] = {LE_PACKET_RAW, LE_PACKET_1, LE_PACKET_2,
                             LE_PACKET_4, LE_PACKET_LINE};
  for (size_t i = 0; i < 5; i++) {
    le_frame f;
    size_t scanned = 0;
    assert_int_equal(le_frame_decode(modes[i], MIB, NULL, 0, &scanned, &f),
                     LE_FRAME_MORE);
    assert_int_equal(le_frame_decode(modes[i], MIB, NULL, 0, NULL, &f),
                     LE_FRAME_MORE);
  }
}

/* A payload of exactly max bytes is a message; max + 1 is refused as soon
 * as the header is in, with none of the payload buffered. */
static void check_packet_max(le_packet mode, size_t max) {
  size_t h = header_size(mode);
  unsigned char *frame = malloc(h + max + 1);
  char *payload = malloc(max + 1);
  assert_non_null(frame);
  assert_non_null(payload);
  memset(payload, 'p', max + 1);
  le_frame f;

  size_t n = build(mode, payload, max, frame);
  assert_int_equal(decode(mode, max, frame, n - 1, NULL, &f), LE_FRAME_MORE);
  assert_int_equal(decode(mode, max, frame, n, NULL, &f), LE_FRAME_OK);
  assert_frame(&f, h, max, n);

  n = build(mode, payload, max + 1, frame);
  assert_int_equal(decode(mode, max, frame, h - 1, NULL, &f), LE_FRAME_MORE);
  assert_int_equal(decode(mode, max, frame, h, NULL, &f), LE_FRAME_TOOBIG);
  assert_int_equal(decode(mode, max, frame, h + 1, NULL, &f), LE_FRAME_TOOBIG);
  assert_int_equal(decode(mode, max, frame, n, NULL, &f), LE_FRAME_TOOBIG);
  free(payload);
  free(frame);
}

static void test_packet_max(void **state) {
  (void)state;
  check_packet_max(LE_PACKET_1, 0);
  check_packet_max(LE_PACKET_1, 10);
  check_packet_max(LE_PACKET_1, 254);
  check_packet_max(LE_PACKET_2, 0);
  check_packet_max(LE_PACKET_2, 255);
  check_packet_max(LE_PACKET_2, 1000);
  check_packet_max(LE_PACKET_2, 65534);
  check_packet_max(LE_PACKET_4, 0);
  check_packet_max(LE_PACKET_4, 65535);
  check_packet_max(LE_PACKET_4, 70000);
}

/* When max is at least what the header can say, every header is allowed. */
static void test_packet_max_beyond_header_range(void **state) {
  (void)state;
  le_frame f;
  unsigned char frame[256] = {0xff};
  memset(frame + 1, 'p', 255);
  assert_int_equal(decode(LE_PACKET_1, 255, frame, 256, NULL, &f), LE_FRAME_OK);
  assert_frame(&f, 1, 255, 256);
  assert_int_equal(decode(LE_PACKET_1, MIB, frame, 1, NULL, &f), LE_FRAME_MORE);
  static const unsigned char hdr2[2] = {0xff, 0xff};
  assert_int_equal(decode(LE_PACKET_2, 65535, hdr2, 2, NULL, &f),
                   LE_FRAME_MORE);
}

/* A header announcing 4 GiB against a 1 MiB max is refused at once,
 * however little or much follows it. */
static void test_packet_garbage_header(void **state) {
  (void)state;
  le_frame f;
  unsigned char garbage[64];
  memset(garbage, 0xff, sizeof garbage);
  assert_int_equal(decode(LE_PACKET_4, MIB, garbage, 3, NULL, &f),
                   LE_FRAME_MORE);
  assert_int_equal(decode(LE_PACKET_4, MIB, garbage, 4, NULL, &f),
                   LE_FRAME_TOOBIG);
  assert_int_equal(decode(LE_PACKET_4, MIB, garbage, sizeof garbage, NULL, &f),
                   LE_FRAME_TOOBIG);
  assert_int_equal(decode(LE_PACKET_2, 1000, garbage, 2, NULL, &f),
                   LE_FRAME_TOOBIG);
  assert_int_equal(decode(LE_PACKET_1, 254, garbage, 1, NULL, &f),
                   LE_FRAME_TOOBIG);
  /* Only max decides: with no limit the decoder waits, without overflow. */
  assert_int_equal(
      decode(LE_PACKET_4, SIZE_MAX, garbage, sizeof garbage, NULL, &f),
      LE_FRAME_MORE);
  /* Big-endian: 00 10 00 01 is 1 MiB + 1, 01 00 10 00 would be 16 MiB. */
  static const unsigned char over[4] = {0x00, 0x10, 0x00, 0x01};
  assert_int_equal(decode(LE_PACKET_4, MIB, over, 4, NULL, &f),
                   LE_FRAME_TOOBIG);
  static const unsigned char exact[4] = {0x00, 0x10, 0x00, 0x00};
  assert_int_equal(decode(LE_PACKET_4, MIB, exact, 4, NULL, &f), LE_FRAME_MORE);
}

/* Big-endian headers: the first byte is the most significant. */
static void test_packet_header_byte_order(void **state) {
  (void)state;
  le_frame f;
  unsigned char frame[0x0104];
  memset(frame, 'p', sizeof frame);
  frame[0] = 0x01;
  frame[1] = 0x02;
  assert_int_equal(decode(LE_PACKET_2, MIB, frame, 2 + 0x0102, NULL, &f),
                   LE_FRAME_OK);
  assert_frame(&f, 2, 0x0102, 2 + 0x0102);
  frame[0] = frame[1] = 0x00;
  frame[2] = 0x01;
  frame[3] = 0x00;
  assert_int_equal(decode(LE_PACKET_4, MIB, frame, 4 + 0x0100, NULL, &f),
                   LE_FRAME_OK);
  assert_frame(&f, 4, 0x0100, 4 + 0x0100);
}

/* Line mode: a line of max bytes with its '\n' is a message; max bytes
 * with no '\n' are an error, without waiting for a '\n' that cannot make
 * the line fit. */
static void test_line_max(void **state) {
  (void)state;
  le_frame f;
  assert_int_equal(decode(LE_PACKET_LINE, 8, "1234567\n", 8, NULL, &f),
                   LE_FRAME_OK);
  assert_frame(&f, 0, 8, 8);
  assert_int_equal(decode(LE_PACKET_LINE, 8, "1234567", 7, NULL, &f),
                   LE_FRAME_MORE);
  assert_int_equal(decode(LE_PACKET_LINE, 8, "12345678", 8, NULL, &f),
                   LE_FRAME_TOOBIG);
  assert_int_equal(decode(LE_PACKET_LINE, 8, "12345678\n", 9, NULL, &f),
                   LE_FRAME_TOOBIG);
  assert_int_equal(decode(LE_PACKET_LINE, 1, "a", 1, NULL, &f),
                   LE_FRAME_TOOBIG);
  /* Only the line at the front counts: a long one behind it is not read. */
  assert_int_equal(
      decode(LE_PACKET_LINE, 8, "abc\nxxxxxxxxxxxxxxxx", 20, NULL, &f),
      LE_FRAME_OK);
  assert_frame(&f, 0, 4, 4);

  /* Growing one byte at a time, with and without scanned. */
  static const char longline[] = "0123456789abcdef\n";
  size_t scanned = 0;
  for (size_t k = 0; k < 8; k++) {
    assert_int_equal(decode(LE_PACKET_LINE, 8, longline, k, &scanned, &f),
                     LE_FRAME_MORE);
    assert_int_equal(decode(LE_PACKET_LINE, 8, longline, k, NULL, &f),
                     LE_FRAME_MORE);
  }
  for (size_t k = 8; k < sizeof longline; k++) {
    assert_int_equal(decode(LE_PACKET_LINE, 8, longline, k, &scanned, &f),
                     LE_FRAME_TOOBIG);
    assert_int_equal(decode(LE_PACKET_LINE, 8, longline, k, NULL, &f),
                     LE_FRAME_TOOBIG);
  }
}

/* `scanned` grows while bytes are appended, and never changes a result. */
static void test_line_scanned_grows(void **state) {
  (void)state;
  char line[101];
  memset(line, 'x', 100);
  line[100] = '\n';
  le_frame f;
  size_t scanned = 0;
  size_t last = 0;
  for (size_t k = 0; k < 100; k++) {
    assert_int_equal(decode(LE_PACKET_LINE, 1000, line, k, &scanned, &f),
                     LE_FRAME_MORE);
    assert_true(scanned >= last && scanned <= k);
    last = scanned;
  }
  assert_int_equal(last, 99);
  assert_int_equal(decode(LE_PACKET_LINE, 1000, line, 101, &scanned, &f),
                   LE_FRAME_OK);
  assert_frame(&f, 0, 101, 101);
  /* Not in the header, but lconn.c keeps its scanned across messages and
   * depends on the decoder starting the next one from 0. */
  assert_int_equal(scanned, 0);
}

/* Decoding a stream of several lines through a connection, with scanned
 * and without, gives the same messages for every split into two reads. */
static void test_line_scanned_same_results(void **state) {
  (void)state;
  static const char stream[] = "ab\n\ncdefgh\r\nij";
  const size_t n = sizeof stream - 1;
  for (size_t max = 1; max <= n + 1; max++) {
    for (size_t s = 0; s <= n; s++) {
      size_t scanned = 0;
      size_t pos[2] = {0, 0}; /* consumed so far */
      le_frame_status end[2] = {LE_FRAME_MORE, LE_FRAME_MORE};
      size_t got[2][8], count[2] = {0, 0};
      for (int with = 0; with <= 1; with++) {
        size_t avail_steps[2] = {s, n};
        for (int step = 0; step < 2 && end[with] != LE_FRAME_TOOBIG; step++) {
          for (;;) {
            le_frame f;
            le_frame_status st = decode(LE_PACKET_LINE, max, stream + pos[with],
                                        avail_steps[step] - pos[with],
                                        with ? &scanned : NULL, &f);
            if (st == LE_FRAME_MORE) break;
            end[with] = st;
            if (st == LE_FRAME_TOOBIG) break;
            assert_true(count[with] < 8);
            got[with][count[with]++] = f.len;
            pos[with] += f.used;
          }
        }
      }
      assert_int_equal(end[0], end[1]);
      assert_int_equal(count[0], count[1]);
      assert_int_equal(pos[0], pos[1]);
      for (size_t i = 0; i < count[0]; i++)
        assert_int_equal(got[0][i], got[1][i]);
    }
  }
}

/* Raw mode hands over every buffered byte; max and '\n' do not matter. */
static void test_raw(void **state) {
  (void)state;
  le_frame f;
  assert_int_equal(decode(LE_PACKET_RAW, MIB, "abc", 3, NULL, &f), LE_FRAME_OK);
  assert_frame(&f, 0, 3, 3);
  assert_int_equal(decode(LE_PACKET_RAW, MIB, "a\nb\n", 4, NULL, &f),
                   LE_FRAME_OK);
  assert_frame(&f, 0, 4, 4);
  assert_int_equal(decode(LE_PACKET_RAW, 4, "0123456789", 10, NULL, &f),
                   LE_FRAME_OK);
  assert_frame(&f, 0, 10, 10);
  assert_int_equal(decode(LE_PACKET_RAW, MIB, "", 0, NULL, &f), LE_FRAME_MORE);
}

/* Calls le_frame_header on a poisoned buffer and checks its result and
 * the bytes written; no byte past the header may change. */
static void check_header(le_packet mode, size_t len, int want,
                         const unsigned char *bytes) {
  unsigned char hdr[8];
  memset(hdr, POISON, sizeof hdr);
  assert_int_equal(le_frame_header(mode, len, hdr), want);
  size_t written = want > 0 ? (size_t)want : 0;
  if (written > 0) assert_memory_equal(hdr, bytes, written);
  for (size_t i = written; i < sizeof hdr; i++)
    assert_int_equal(hdr[i], POISON);
}

static void test_header_packet1(void **state) {
  (void)state;
  check_header(LE_PACKET_1, 0, 1, (const unsigned char *)"\x00");
  check_header(LE_PACKET_1, 7, 1, (const unsigned char *)"\x07");
  check_header(LE_PACKET_1, 255, 1, (const unsigned char *)"\xff");
  check_header(LE_PACKET_1, 256, -1, NULL);
  check_header(LE_PACKET_1, SIZE_MAX, -1, NULL);
}

static void test_header_packet2(void **state) {
  (void)state;
  check_header(LE_PACKET_2, 0, 2, (const unsigned char *)"\x00\x00");
  check_header(LE_PACKET_2, 0x1234, 2, (const unsigned char *)"\x12\x34");
  check_header(LE_PACKET_2, 256, 2, (const unsigned char *)"\x01\x00");
  check_header(LE_PACKET_2, 65535, 2, (const unsigned char *)"\xff\xff");
  check_header(LE_PACKET_2, 65536, -1, NULL);
  check_header(LE_PACKET_2, SIZE_MAX, -1, NULL);
}

static void test_header_packet4(void **state) {
  (void)state;
  check_header(LE_PACKET_4, 0, 4, (const unsigned char *)"\0\0\0\0");
  check_header(LE_PACKET_4, 0x01020304, 4,
               (const unsigned char *)"\x01\x02\x03\x04");
  check_header(LE_PACKET_4, 65536, 4, (const unsigned char *)"\0\x01\0\0");
  check_header(LE_PACKET_4, 0xffffffffu, 4,
               (const unsigned char *)"\xff\xff\xff\xff");
#if SIZE_MAX > 0xffffffffu
  check_header(LE_PACKET_4, (size_t)0xffffffffu + 1, -1, NULL);
  check_header(LE_PACKET_4, SIZE_MAX, -1, NULL);
#endif
}

/* Raw and line frames have no header, whatever the length. */
static void test_header_raw_and_line(void **state) {
  (void)state;
  const size_t lens[] = {0, 1, 256, 65536, SIZE_MAX};
  for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
    check_header(LE_PACKET_RAW, lens[i], 0, NULL);
    check_header(LE_PACKET_LINE, lens[i], 0, NULL);
  }
}

/* A header from le_frame_header decodes back to the same length. */
static void test_header_decodes_back(void **state) {
  (void)state;
  const le_packet modes[] = {LE_PACKET_1, LE_PACKET_2, LE_PACKET_4};
  const size_t lens[] = {0, 1, 255, 256, 65535, 65536, 0xffffffffu};
  for (size_t m = 0; m < 3; m++) {
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
      unsigned char hdr[4];
      int h = le_frame_header(modes[m], lens[i], hdr);
      if (h < 0) continue;
      assert_int_equal(h, header_size(modes[m]));
      le_frame f;
      le_frame_status st = decode(modes[m], SIZE_MAX, hdr, (size_t)h, NULL, &f);
      if (lens[i] == 0) {
        assert_int_equal(st, LE_FRAME_OK);
        assert_frame(&f, (size_t)h, 0, (size_t)h);
      } else {
        assert_int_equal(st, LE_FRAME_MORE);
        /* One byte short of max proves the header said exactly lens[i]. */
        assert_int_equal(
            decode(modes[m], lens[i] - 1, hdr, (size_t)h, NULL, &f),
            LE_FRAME_TOOBIG);
      }
    }
  }
}

static void check_parse(const char *text, long number, le_packet want) {
  le_packet p = (le_packet)POISON;
  assert_int_equal(le_packet_parse(text, number, &p), 0);
  assert_int_equal(p, want);
}

/* A refused mode leaves *out alone: opts.c parses straight into its
 * options. */
static void check_parse_fails(const char *text, long number) {
  le_packet p = (le_packet)POISON;
  assert_int_equal(le_packet_parse(text, number, &p), -1);
  assert_int_equal(p, POISON);
}

static void test_packet_parse(void **state) {
  (void)state;
  check_parse(NULL, 0, LE_PACKET_RAW);
  check_parse(NULL, 1, LE_PACKET_1);
  check_parse(NULL, 2, LE_PACKET_2);
  check_parse(NULL, 4, LE_PACKET_4);
  check_parse("raw", 0, LE_PACKET_RAW);
  check_parse("line", 0, LE_PACKET_LINE);
  /* With text given, the number is not looked at. */
  check_parse("raw", 4, LE_PACKET_RAW);
  check_parse("line", 3, LE_PACKET_LINE);
}

static void test_packet_parse_rejects(void **state) {
  (void)state;
  check_parse_fails(NULL, 3);
  check_parse_fails(NULL, 5); /* LE_PACKET_LINE's value is not a number */
  check_parse_fails(NULL, 8);
  check_parse_fails(NULL, -1);
  check_parse_fails(NULL, 1024);
  check_parse_fails("LINE", 0);
  check_parse_fails("Raw", 0);
  check_parse_fails("", 0);
  check_parse_fails("line ", 0);
  check_parse_fails("lines", 0);
  /* Numbers are numbers: the text "4" is not packet 4. */
  check_parse_fails("4", 4);
  check_parse_fails("0", 0);
}

static void test_packet_name(void **state) {
  (void)state;
  assert_string_equal(le_packet_name(LE_PACKET_RAW), "raw");
  assert_string_equal(le_packet_name(LE_PACKET_1), "1");
  assert_string_equal(le_packet_name(LE_PACKET_2), "2");
  assert_string_equal(le_packet_name(LE_PACKET_4), "4");
  assert_string_equal(le_packet_name(LE_PACKET_LINE), "line");
}

/* Every mode survives name then parse, the numeric names as numbers the
 * way opts.c hands them over. */
static void test_packet_name_parse_round_trip(void **state) {
  (void)state;
  const le_packet modes[] = {LE_PACKET_RAW, LE_PACKET_1, LE_PACKET_2,
                             LE_PACKET_4, LE_PACKET_LINE};
  for (size_t i = 0; i < 5; i++) {
    const char *name = le_packet_name(modes[i]);
    le_packet p = (le_packet)POISON;
    char *end;
    long number = strtol(name, &end, 10);
    if (*end == '\0')
      assert_int_equal(le_packet_parse(NULL, number, &p), 0);
    else
      assert_int_equal(le_packet_parse(name, 0, &p), 0);
    assert_int_equal(p, modes[i]);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_packet1_every_split),
      cmocka_unit_test(test_packet2_every_split),
      cmocka_unit_test(test_packet4_every_split),
      cmocka_unit_test(test_line_every_split),
      cmocka_unit_test(test_packet_zero_length),
      cmocka_unit_test(test_line_empty),
      cmocka_unit_test(test_nothing_buffered_needs_more),
      cmocka_unit_test(test_packet_max),
      cmocka_unit_test(test_packet_max_beyond_header_range),
      cmocka_unit_test(test_packet_garbage_header),
      cmocka_unit_test(test_packet_header_byte_order),
      cmocka_unit_test(test_line_max),
      cmocka_unit_test(test_line_scanned_grows),
      cmocka_unit_test(test_line_scanned_same_results),
      cmocka_unit_test(test_raw),
      cmocka_unit_test(test_header_packet1),
      cmocka_unit_test(test_header_packet2),
      cmocka_unit_test(test_header_packet4),
      cmocka_unit_test(test_header_raw_and_line),
      cmocka_unit_test(test_header_decodes_back),
      cmocka_unit_test(test_packet_parse),
      cmocka_unit_test(test_packet_parse_rejects),
      cmocka_unit_test(test_packet_name),
      cmocka_unit_test(test_packet_name_parse_round_trip),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
