/* Unit tests for log lines (include/luaecho/log.h): level filtering, the
 * record format, long messages kept whole, level names. */
#include "test_support.h"

#include <regex.h>

#include "luaecho/log.h"

typedef struct sink {
  le_log log;
  FILE *fp;
  char *text;
  size_t len;
} sink;

static void open_sink(sink *s, le_log_level level) {
  s->text = NULL;
  s->fp = open_memstream(&s->text, &s->len);
  assert_non_null(s->fp);
  le_log_init(&s->log, level, s->fp);
}

static const char *sink_text(sink *s) {
  fflush(s->fp);
  return s->text ? s->text : "";
}

static void close_sink(sink *s) {
  fclose(s->fp);
  free(s->text);
}

/* Fails unless every line of text matches the extended regex re. */
static void assert_lines_match(const char *text, const char *re) {
  regex_t rx;
  assert_int_equal(regcomp(&rx, re, REG_EXTENDED | REG_NOSUB), 0);
  char *copy = strdup(text);
  char *save = NULL;
  for (char *line = strtok_r(copy, "\n", &save); line != NULL;
       line = strtok_r(NULL, "\n", &save))
    if (regexec(&rx, line, 0, NULL, 0) != 0)
      fail_msg("\"%s\" does not match /%s/", line, re);
  free(copy);
  regfree(&rx);
}

static void test_levels_filter(void **state) {
  (void)state;
  sink s;
  open_sink(&s, LE_LOG_WARN);
  assert_false(le_log_enabled(&s.log, LE_LOG_DEBUG));
  assert_false(le_log_enabled(&s.log, LE_LOG_INFO));
  assert_true(le_log_enabled(&s.log, LE_LOG_WARN));
  assert_true(le_log_enabled(&s.log, LE_LOG_ERROR));
  le_logf(&s.log, LE_LOG_DEBUG, "debug %d", 1);
  le_logf(&s.log, LE_LOG_INFO, "info %d", 2);
  le_logf(&s.log, LE_LOG_WARN, "warn %d", 3);
  le_logf(&s.log, LE_LOG_ERROR, "error %s", "four");
  const char *text = sink_text(&s);
  assert_null(strstr(text, "debug 1"));
  assert_null(strstr(text, "info 2"));
  assert_contains(text, "[warn] warn 3\n");
  assert_contains(text, "[error] error four\n");
  assert_true(strstr(text, "warn 3") < strstr(text, "error four"));
  close_sink(&s);
}

static void test_record_format(void **state) {
  (void)state;
  sink s;
  open_sink(&s, LE_LOG_DEBUG);
  le_logf(&s.log, LE_LOG_DEBUG, "a %s", "b");
  le_logf(&s.log, LE_LOG_INFO, "listening on %s:%d", "127.0.0.1", 7);
  assert_lines_match(sink_text(&s),
                     "^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}"
                     "\\.[0-9]{3} \\[(debug|info)\\] (a b|listening on "
                     "127\\.0\\.0\\.1:7)$");
  /* Exactly two records, each one line. */
  const char *text = sink_text(&s);
  int lines = 0;
  for (const char *p = text; *p; p++) lines += *p == '\n';
  assert_int_equal(lines, 2);
  close_sink(&s);
}

static void test_long_message_kept_whole(void **state) {
  (void)state;
  sink s;
  open_sink(&s, LE_LOG_DEBUG);
  char big[5000];
  memset(big, 'y', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  le_logf(&s.log, LE_LOG_ERROR, "start %s end", big);
  const char *text = sink_text(&s);
  assert_contains(text, "[error] start yyy");
  assert_contains(text, "yyy end\n");
  assert_int_equal(strlen(text),
                   24 + strlen("[error] start ") + 4999 + strlen(" end\n"));
  close_sink(&s);
}

static void test_no_log_writes_nothing(void **state) {
  (void)state;
  assert_false(le_log_enabled(NULL, LE_LOG_ERROR));
  le_logf(NULL, LE_LOG_ERROR, "dropped %d", 1); /* must not crash */
}

static void test_level_names(void **state) {
  (void)state;
  const char *names[] = {"debug", "info", "warn", "error"};
  for (int i = 0; i < 4; i++) {
    le_log_level level = LE_LOG_ERROR;
    assert_string_equal(le_log_level_name((le_log_level)i), names[i]);
    assert_int_equal(le_log_level_parse(names[i], &level), 0);
    assert_int_equal(level, i);
  }
  le_log_level level = LE_LOG_INFO;
  assert_int_equal(le_log_level_parse("loud", &level), -1);
  assert_int_equal(le_log_level_parse("", &level), -1);
  assert_int_equal(le_log_level_parse("WARN", &level), -1);
  assert_int_equal(level, LE_LOG_INFO);
}

/* Control bytes are escaped, everything else (UTF-8 included) kept. */
static void test_escape(void **state) {
  (void)state;
  char esc[5], out[64];
  assert_int_equal(le_log_escape('a', esc), 0);
  assert_int_equal(le_log_escape(0xc3, esc), 0);
  assert_int_equal(le_log_escape('\n', esc), 2);
  assert_string_equal(esc, "\\n");
  assert_int_equal(le_log_escape(0x1b, esc), 4);
  assert_string_equal(esc, "\\x1b");
  assert_int_equal(le_log_escape(0x7f, esc), 4);
  assert_string_equal(esc, "\\x7f");
  const char src[] = "a\nb\0c\t\xc3\xa9";
  assert_int_equal(le_log_escape_into(out, sizeof out, src, sizeof src - 1),
                   13);
  assert_string_equal(out, "a\\nb\\x00c\\t\xc3\xa9");
}

/* Cut at the buffer, never in the middle of an escape. */
static void test_escape_cut(void **state) {
  (void)state;
  char out[6];
  assert_int_equal(le_log_escape_into(out, sizeof out, "ab\001cd", 5), 2);
  assert_string_equal(out, "ab");
  assert_int_equal(le_log_escape_into(out, sizeof out, "abcdefg", 7), 5);
  assert_string_equal(out, "abcde");
  assert_int_equal(le_log_escape_into(out, 0, "abc", 3), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_levels_filter),
      cmocka_unit_test(test_record_format),
      cmocka_unit_test(test_long_message_kept_whole),
      cmocka_unit_test(test_no_log_writes_nothing),
      cmocka_unit_test(test_level_names),
      cmocka_unit_test(test_escape),
      cmocka_unit_test(test_escape_cut),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
