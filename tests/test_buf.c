/* Unit tests for the byte buffer (include/luaecho/buf.h). */
#include "test_support.h"

#include <errno.h>
#include <string.h>

#include "luaecho/buf.h"

#define NOT_FOUND ((size_t)-1)

/* Appends a C string and checks that the append succeeded. */
static void append(le_buf *b, const char *s) {
  assert_int_equal(le_buf_append(b, s, strlen(s)), 0);
}

/* Checks that the unread bytes are exactly `expected`. */
static void assert_contents(const le_buf *b, const char *expected) {
  assert_int_equal(le_buf_size(b), strlen(expected));
  assert_memory_equal(le_buf_peek(b), expected, strlen(expected));
}

static void assert_released(const le_buf *b) {
  assert_null(b->data);
  assert_int_equal(b->cap, 0);
  assert_int_equal(b->off, 0);
  assert_int_equal(le_buf_size(b), 0);
  assert_null(le_buf_peek(b));
}

static void test_init_is_empty_and_holds_no_memory(void **state) {
  (void)state;
  le_buf b = LE_BUF_INIT;
  assert_released(&b);
  le_buf_init(&b);
  assert_released(&b);
}

static void test_append_then_peek(void **state) {
  (void)state;
  le_buf b = LE_BUF_INIT;
  append(&b, "hello");
  assert_non_null(b.data);
  assert_contents(&b, "hello");
  append(&b, " world");
  assert_contents(&b, "hello world");
  le_buf_free(&b);
  assert_released(&b);
}

static void test_zero_length_append_allocates_nothing(void **state) {
  (void)state;
  le_buf b = LE_BUF_INIT;
  assert_int_equal(le_buf_append(&b, NULL, 0), 0);
  assert_released(&b);
  append(&b, "ab");
  assert_int_equal(le_buf_append(&b, "zz", 0), 0);
  assert_contents(&b, "ab");
  le_buf_free(&b);
}

static void test_consume_drops_from_the_front(void **state) {
  (void)state;
  le_buf b = LE_BUF_INIT;
  append(&b, "abcdef");
  le_buf_consume(&b, 2);
  assert_contents(&b, "cdef");
  le_buf_consume(&b, 0);
  assert_contents(&b, "cdef");
  append(&b, "gh");
  assert_contents(&b, "cdefgh");
  le_buf_free(&b);
}

static void test_consume_to_empty_releases_storage(void **state) {
  (void)state;
  le_buf b = LE_BUF_INIT;
  append(&b, "abc");
  le_buf_consume(&b, 1);
  le_buf_consume(&b, 2);
  assert_released(&b);
  /* Usable again afterwards. */
  append(&b, "x");
  assert_contents(&b, "x");
  le_buf_free(&b);
}

static void test_consume_more_than_size_is_clamped(void **state) {
  (void)state;
  le_buf b = LE_BUF_INIT;
  append(&b, "abc");
  le_buf_consume(&b, 1000);
  assert_released(&b);
  le_buf_consume(&b, 5); /* on an empty buffer too */
  assert_released(&b);
}

static void test_growth_across_many_appends(void **state) {
  (void)state;
  enum { N = 100000 };
  le_buf b = LE_BUF_INIT;
  for (size_t i = 0; i < N; i++) {
    char c = (char)('a' + i % 26);
    assert_int_equal(le_buf_append(&b, &c, 1), 0);
  }
  assert_int_equal(le_buf_size(&b), N);
  assert_true(b.cap >= N);
  for (size_t i = 0; i < N; i++)
    assert_int_equal(le_buf_peek(&b)[i], 'a' + i % 26);
  le_buf_free(&b);
}

static void test_one_large_append_grows_at_once(void **state) {
  (void)state;
  static char big[70000];
  memset(big, 'q', sizeof big);
  le_buf b = LE_BUF_INIT;
  append(&b, "x");
  assert_int_equal(le_buf_append(&b, big, sizeof big), 0);
  assert_int_equal(le_buf_size(&b), sizeof big + 1);
  assert_true(b.cap >= sizeof big + 1);
  assert_int_equal(le_buf_peek(&b)[0], 'x');
  assert_memory_equal(le_buf_peek(&b) + 1, big, sizeof big);
  le_buf_free(&b);
}

/* With most of the storage consumed, an append that does not fit at the end
 * moves the unread bytes to the front instead of growing. */
static void test_compaction_reuses_storage(void **state) {
  (void)state;
  static char fill[4096];
  memset(fill, '.', sizeof fill);
  le_buf b = LE_BUF_INIT;
  assert_int_equal(le_buf_append(&b, fill, 3000), 0);
  append(&b, "KEEP");
  const char *storage = b.data;
  size_t cap = b.cap;
  assert_true(cap - 100 <= sizeof fill);
  le_buf_consume(&b, 3000);
  assert_int_equal(le_buf_append(&b, fill, cap - 100), 0);
  assert_ptr_equal(b.data, storage);
  assert_int_equal(b.cap, cap);
  assert_int_equal(b.off, 0);
  assert_memory_equal(le_buf_peek(&b), "KEEP", 4);
  assert_memory_equal(le_buf_peek(&b) + 4, fill, cap - 100);
  le_buf_free(&b);
}

/* Unread bytes that fill more than half the storage are not moved in place;
 * the append still keeps every byte in order. */
static void test_append_when_mostly_full_keeps_order(void **state) {
  (void)state;
  le_buf b = LE_BUF_INIT;
  char one = '1';
  assert_int_equal(le_buf_append(&b, &one, 1), 0);
  size_t cap = b.cap;
  for (size_t i = 1; i < cap; i++)
    assert_int_equal(le_buf_append(&b, &one, 1), 0);
  assert_int_equal(b.cap, cap);
  le_buf_consume(&b, 1);
  append(&b, "2");
  assert_true(b.cap >= cap);
  assert_int_equal(b.off, 0);
  assert_int_equal(le_buf_size(&b), cap);
  assert_int_equal(le_buf_peek(&b)[cap - 1], '2');
  assert_int_equal(le_buf_peek(&b)[0], '1');
  le_buf_free(&b);
}

static void test_append_too_large_fails_unchanged(void **state) {
  (void)state;
  le_buf b = LE_BUF_INIT;
  append(&b, "abc");
  const char *storage = b.data;
  assert_int_equal(le_buf_append(&b, "x", SIZE_MAX / 2 + 1), -ENOMEM);
  assert_ptr_equal(b.data, storage);
  assert_contents(&b, "abc");
  le_buf_free(&b);
}

static void test_find(void **state) {
  (void)state;
  le_buf b = LE_BUF_INIT;
  assert_int_equal(le_buf_find(&b, 0, 'a'), NOT_FOUND);
  append(&b, "a\nbb\nc");
  assert_int_equal(le_buf_find(&b, 0, '\n'), 1);
  assert_int_equal(le_buf_find(&b, 1, '\n'), 1);
  assert_int_equal(le_buf_find(&b, 2, '\n'), 4);
  assert_int_equal(le_buf_find(&b, 5, '\n'), NOT_FOUND);
  assert_int_equal(le_buf_find(&b, 0, 'c'), 5);
  assert_int_equal(le_buf_find(&b, 6, 'c'), NOT_FOUND);
  assert_int_equal(le_buf_find(&b, 1000, 'c'), NOT_FOUND);
  assert_int_equal(le_buf_find(&b, 0, 'z'), NOT_FOUND);
  le_buf_free(&b);
}

/* Indexes count from the first unread byte, not from the storage. */
static void test_find_after_consume(void **state) {
  (void)state;
  le_buf b = LE_BUF_INIT;
  append(&b, "xx\nyy\n");
  le_buf_consume(&b, 3);
  assert_int_equal(le_buf_find(&b, 0, '\n'), 2);
  assert_int_equal(le_buf_find(&b, 0, 'x'), NOT_FOUND);
  le_buf_free(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_init_is_empty_and_holds_no_memory),
      cmocka_unit_test(test_append_then_peek),
      cmocka_unit_test(test_zero_length_append_allocates_nothing),
      cmocka_unit_test(test_consume_drops_from_the_front),
      cmocka_unit_test(test_consume_to_empty_releases_storage),
      cmocka_unit_test(test_consume_more_than_size_is_clamped),
      cmocka_unit_test(test_growth_across_many_appends),
      cmocka_unit_test(test_one_large_append_grows_at_once),
      cmocka_unit_test(test_compaction_reuses_storage),
      cmocka_unit_test(test_append_when_mostly_full_keeps_order),
      cmocka_unit_test(test_append_too_large_fails_unchanged),
      cmocka_unit_test(test_find),
      cmocka_unit_test(test_find_after_consume),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
