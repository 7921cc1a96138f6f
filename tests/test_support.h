/* What every unit test program shares: cmocka with the headers it needs
 * first, assertions on strings, and small file helpers. Include it first.
 *
 * The assertions are macros so that a failure names the test's own file
 * and line, as cmocka's do.
 */
#ifndef LUAECHO_TEST_SUPPORT_H
#define LUAECHO_TEST_SUPPORT_H

/* cmocka.h needs these before it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fails unless string s (which may be NULL) contains needle. */
#define assert_contains(s, needle)                                   \
  do {                                                               \
    const char *s_ = (s);                                            \
    if (s_ == NULL || strstr(s_, (needle)) == NULL)                  \
      fail_msg("\"%s\" does not contain \"%s\"", s_ ? s_ : "(null)", \
               (needle));                                            \
  } while (0)

/* Fails unless string s (which may be NULL) starts with prefix. */
#define assert_starts_with(s, prefix)                                   \
  do {                                                                  \
    const char *s_ = (s);                                               \
    if (s_ == NULL || strncmp(s_, (prefix), strlen(prefix)) != 0)       \
      fail_msg("\"%s\" does not start with \"%s\"", s_ ? s_ : "(null)", \
               (prefix));                                               \
  } while (0)

/* Writes text to path, replacing the file; fails the test on any error. */
static inline void write_file(const char *path, const char *text) {
  FILE *fp = fopen(path, "w");
  assert_non_null(fp);
  assert_true(fputs(text, fp) >= 0);
  assert_int_equal(fclose(fp), 0);
}

/* Returns the contents of path as a malloc'd, NUL-terminated string; fails
 * the test if it cannot be read. */
static inline char *read_file(const char *path) {
  FILE *fp = fopen(path, "rb");
  if (fp == NULL) fail_msg("cannot open %s", path);
  size_t cap = 4096, len = 0, n;
  char *text = malloc(cap);
  assert_non_null(text);
  while ((n = fread(text + len, 1, cap - len - 1, fp)) > 0) {
    len += n;
    if (cap - len - 1 == 0) {
      text = realloc(text, cap *= 2);
      assert_non_null(text);
    }
  }
  assert_int_equal(ferror(fp), 0);
  fclose(fp);
  text[len] = '\0';
  return text;
}

#endif
