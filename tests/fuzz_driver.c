/* A main for fuzz_framing.c where libFuzzer is not available (gcc builds):
 * runs LLVMFuzzerTestOneInput on pseudo-random inputs from a fixed seed, so
 * the framing invariants are checked in every CI build.
 *
 *   fuzz_framing_smoke [COUNT [SEED]]   COUNT inputs (default 20000)
 *   fuzz_framing_smoke FILE...          replay inputs, e.g. libFuzzer crashes
 *
 * Random bytes alone rarely make a valid length header, so most inputs are
 * built as the target reads them: a mode, a max, a split byte, then frames
 * whose lengths straddle max, with the odd byte corrupted or the stream cut
 * short. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_support.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define INPUT_MAX 2048

static uint64_t rng_state;

static uint32_t rnd(void) { return fuzz_rnd(&rng_state); }

static uint32_t below(uint32_t n) { return n ? rnd() % n : 0; }

/* Picks max: mostly small so that TOOBIG is common, sometimes no limit. */
static size_t pick_max(uint8_t *b1, uint8_t *b2) {
  switch (below(4)) {
  case 0:
    *b1 = 0;
    *b2 = (uint8_t)below(8);
    break;
  case 1:
    *b1 = 0;
    *b2 = (uint8_t)rnd();
    break;
  case 2:
    *b1 = (uint8_t)below(0xff);
    *b2 = (uint8_t)rnd();
    break;
  default:
    *b1 = 0xff;
    *b2 = (uint8_t)rnd();
    return SIZE_MAX;
  }
  return (size_t)*b1 << 8 | *b2;
}

/* Appends one frame for the mode (index into raw, 1, 2, 4, line) to buf. */
static size_t put_frame(uint8_t *buf, size_t room, unsigned mode, size_t max) {
  size_t limit = max < 300 ? max + 2 : 300;
  size_t len = below((uint32_t)limit + 1);
  static const size_t hlen[] = {0, 1, 2, 4, 0};
  size_t h = hlen[mode];
  if (mode == 1 && len > 255) len = 255;
  if (h + len > room) return 0;
  for (size_t i = 0; i < h; i++)
    buf[i] = (uint8_t)((uint64_t)len >> (8 * (h - 1 - i)));
  for (size_t i = 0; i < len; i++) buf[h + i] = (uint8_t)rnd();
  if (mode == 4) { /* a line: no '\n' inside, one at the end (mostly) */
    for (size_t i = 0; i < len; i++)
      if (buf[i] == '\n') buf[i] = 'x';
    if (len > 0 && below(8) != 0) buf[len - 1] = '\n';
  }
  return h + len;
}

static size_t generate(uint8_t *buf) {
  size_t size = 0;
  unsigned mode = below(5);
  buf[size++] = (uint8_t)mode;
  size_t max = pick_max(&buf[1], &buf[2]);
  size += 2;
  buf[size++] = below(4) == 0 ? 0 : (uint8_t)rnd();
  size_t want = below(INPUT_MAX - size + 1);
  if (below(4) == 0) { /* plain noise */
    for (; size < want; size++) buf[size] = (uint8_t)rnd();
    return size;
  }
  while (size < want) {
    size_t k = put_frame(buf + size, want - size, mode, max);
    if (k == 0) break;
    size += k;
  }
  if (size > 4 && below(4) == 0) /* corrupt one bit */
    buf[4 + below((uint32_t)(size - 4))] ^= (uint8_t)(1u << below(8));
  if (size > 4 && below(4) == 0) /* cut the stream short */
    size -= below((uint32_t)(size - 4));
  return size;
}

static int replay(int argc, char **argv) {
  static uint8_t buf[1 << 20];
  for (int i = 1; i < argc; i++) {
    FILE *f = fopen(argv[i], "rb");
    if (f == NULL) {
      perror(argv[i]);
      return 1;
    }
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    LLVMFuzzerTestOneInput(buf, n);
    printf("%s: %zu bytes ok\n", argv[i], n);
  }
  return 0;
}

static int is_number(const char *s) {
  return *s != '\0' && strspn(s, "0123456789") == strlen(s);
}

int main(int argc, char **argv) {
  if (argc > 1 && !is_number(argv[1])) return replay(argc, argv);
  unsigned long count = argc > 1 ? strtoul(argv[1], NULL, 10) : 20000;
  rng_state = argc > 2 ? strtoull(argv[2], NULL, 10) : 1;
  if (rng_state == 0) rng_state = 1;
  static uint8_t buf[INPUT_MAX];
  for (unsigned long i = 0; i < count; i++) {
    size_t n = generate(buf);
    LLVMFuzzerTestOneInput(buf, n);
  }
  printf("%lu inputs ok\n", count);
  return 0;
}
