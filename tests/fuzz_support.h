/* What the fuzz targets (tests/fuzz_*.c) and their smoke drivers share: a
 * CHECK that aborts, so that libFuzzer and the drivers both stop on a
 * broken invariant; the size of a framing header; and one pseudo-random
 * generator, so that a smoke run makes the same inputs everywhere. */
#ifndef LUAECHO_FUZZ_SUPPORT_H
#define LUAECHO_FUZZ_SUPPORT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "luaecho/framing.h"

/* Set by a target that has more to say when a check fails (a log). */
static void (*fuzz_on_failure)(void);

static inline void fuzz_check_failed(const char *file, int line,
                                     const char *cond) {
  fprintf(stderr, "%s:%d: check failed: %s\n", file, line, cond);
  if (fuzz_on_failure != NULL) fuzz_on_failure();
  abort();
}

#define CHECK(cond)                                            \
  do {                                                         \
    if (!(cond)) fuzz_check_failed(__FILE__, __LINE__, #cond); \
  } while (0)

/* Bytes of the length header in a framing mode: 1, 2, 4, else 0. */
static inline size_t fuzz_header_size(le_packet mode) {
  return mode == LE_PACKET_1 || mode == LE_PACKET_2 || mode == LE_PACKET_4
             ? (size_t)mode
             : 0;
}

/* xorshift64*: good enough, and the same sequence everywhere. The state
 * must not be 0. */
static inline uint32_t fuzz_rnd(uint64_t *state) {
  *state ^= *state >> 12;
  *state ^= *state << 25;
  *state ^= *state >> 27;
  return (uint32_t)((*state * 2685821657736338717ull) >> 32);
}

#endif
