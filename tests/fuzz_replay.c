/* A main for a libFuzzer target where libFuzzer is not available (gcc
 * builds), so every build checks the target's invariants: it runs
 * LLVMFuzzerTestOneInput on every input of a seed corpus, then on mutants
 * of those inputs made by a fixed pseudo-random generator, the same ones on
 * every run.
 *
 *   fuzz_<target>_smoke [-n COUNT] [-s SEED] PATH...
 *
 * PATH is a file or a directory (its files are read). COUNT mutants
 * (default 2000) follow the inputs; -n 0 just replays them, e.g. a crash
 * input libFuzzer left behind. A mutant is an input with a few edits:
 * bytes flipped, inserted, deleted or repeated, a cut, or a splice of two
 * inputs. */
#include <dirent.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_support.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define INPUT_MAX (64 * 1024)
#define MAX_INPUTS 1024

typedef struct input {
  uint8_t *data;
  size_t size;
} input;

static input inputs[MAX_INPUTS];
static size_t ninputs;
static uint64_t rng_state = 1;

static uint32_t rnd(void) { return fuzz_rnd(&rng_state); }

static size_t below(size_t n) { return n ? rnd() % n : 0; }

static int add_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    perror(path);
    return -1;
  }
  uint8_t *buf = malloc(INPUT_MAX);
  size_t n = buf ? fread(buf, 1, INPUT_MAX, f) : 0;
  fclose(f);
  if (buf == NULL || ninputs == MAX_INPUTS) {
    fprintf(stderr, "%s: too many inputs or out of memory\n", path);
    free(buf);
    return -1;
  }
  inputs[ninputs++] = (input){buf, n};
  return 0;
}

static int add_path(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) {
    perror(path);
    return -1;
  }
  if (!S_ISDIR(st.st_mode)) return add_file(path);
  DIR *d = opendir(path);
  if (d == NULL) {
    perror(path);
    return -1;
  }
  int r = 0;
  struct dirent *e;
  while (r == 0 && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char full[4096];
    snprintf(full, sizeof full, "%s/%s", path, e->d_name);
    r = add_file(full);
  }
  closedir(d);
  return r;
}

/* Applies one edit to buf (n bytes, room for INPUT_MAX); returns the size. */
static size_t edit(uint8_t *buf, size_t n) {
  size_t at = below(n + 1), len = 1 + below(8);
  switch (below(6)) {
  case 0: /* flip a bit */
    if (n > 0) buf[below(n)] ^= (uint8_t)(1u << below(8));
    return n;
  case 1: /* a random byte */
    if (n > 0) buf[below(n)] = (uint8_t)rnd();
    return n;
  case 2: /* insert random bytes */
    if (n + len > INPUT_MAX) return n;
    memmove(buf + at + len, buf + at, n - at);
    for (size_t i = 0; i < len; i++) buf[at + i] = (uint8_t)rnd();
    return n + len;
  case 3: /* delete bytes */
    if (len > n - at) len = n - at;
    memmove(buf + at, buf + at + len, n - at - len);
    return n - len;
  case 4: { /* repeat a piece of the input */
    len = 1 + below(n < 64 ? n + 1 : 64);
    if (at + len > n || n + len > INPUT_MAX) return n;
    memmove(buf + at + len, buf + at, n - at);
    return n + len;
  }
  default: { /* splice in a piece of another input */
    const input *o = &inputs[below(ninputs)];
    size_t from = below(o->size + 1);
    len = below(o->size - from + 1);
    if (n + len > INPUT_MAX) return n;
    memmove(buf + at + len, buf + at, n - at);
    memcpy(buf + at, o->data + from, len);
    return n + len;
  }
  }
}

int main(int argc, char **argv) {
  unsigned long count = 2000;
  int i = 1;
  for (; i + 1 < argc && argv[i][0] == '-'; i += 2) {
    if (strcmp(argv[i], "-n") == 0)
      count = strtoul(argv[i + 1], NULL, 10);
    else if (strcmp(argv[i], "-s") == 0)
      rng_state = strtoull(argv[i + 1], NULL, 10);
    else
      break;
  }
  if (rng_state == 0) rng_state = 1;
  if (i >= argc) {
    fprintf(stderr, "usage: %s [-n COUNT] [-s SEED] PATH...\n", argv[0]);
    return 2;
  }
  for (; i < argc; i++)
    if (add_path(argv[i]) != 0) return 1;
  if (ninputs == 0) {
    fprintf(stderr, "%s: no inputs\n", argv[0]);
    return 1;
  }
  for (size_t k = 0; k < ninputs; k++)
    LLVMFuzzerTestOneInput(inputs[k].data, inputs[k].size);
  static uint8_t buf[INPUT_MAX];
  for (unsigned long k = 0; k < count; k++) {
    const input *in = &inputs[below(ninputs)];
    size_t n = in->size;
    memcpy(buf, in->data, n);
    for (size_t e = 1 + below(4); e > 0; e--) n = edit(buf, n);
    LLVMFuzzerTestOneInput(buf, n);
  }
  printf("%zu inputs and %lu mutants ok\n", ninputs, count);
  for (size_t k = 0; k < ninputs; k++) free(inputs[k].data);
  return 0;
}
