/* Unit tests for the trace (include/luaecho/trace.h): the preview of read
 * bytes, lines reaching the output in order, flushing, and an output that
 * falls behind (lines dropped and counted, never a blocked caller). */
#define _GNU_SOURCE /* F_SETPIPE_SZ */
#include "test_support.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include "luaecho/trace.h"

/* ---- helpers ---- */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A pipe whose read end does not block; its capacity made as small as the
 * kernel allows, so a test fills it with little data. */
static void small_pipe(int fds[2]) {
  assert_int_equal(pipe(fds), 0);
  fcntl(fds[0], F_SETPIPE_SZ, 4096);
  assert_int_equal(fcntl(fds[0], F_SETFL, O_NONBLOCK), 0);
}

/* Reads what the pipe holds, waiting up to timeout_s for more while it
 * keeps coming, until `until` appears in it (or the time is up). Returns a
 * malloc'd string. */
static char *drain(int fd, const char *until, double timeout_s) {
  size_t cap = 1 << 16, len = 0;
  char *out = malloc(cap);
  assert_non_null(out);
  double deadline = now_s() + timeout_s;
  for (;;) {
    out[len] = '\0';
    if (until != NULL && strstr(out, until) != NULL) break;
    double left = deadline - now_s();
    if (left <= 0) break;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, (int)(left * 1000) + 1) <= 0) break;
    if (cap - len < 4097) {
      cap *= 2;
      out = realloc(out, cap);
      assert_non_null(out);
    }
    ssize_t n = read(fd, out + len, 4096);
    if (n <= 0) break;
    len += (size_t)n;
  }
  return out;
}

/* Counts the lines of text. */
static size_t count_lines(const char *text) {
  size_t n = 0;
  for (const char *p = text; (p = strchr(p, '\n')) != NULL; p++) n++;
  return n;
}

static char *preview(const char *data, size_t len, size_t max, int hex) {
  static char out[256];
  return le_trace_preview(out, sizeof out, data, len, max, hex);
}

/* ---- le_trace_preview ---- */

static void test_preview_quotes_and_escapes(void **state) {
  (void)state;
  assert_string_equal(preview("hello\n", 6, 32, 0), "\"hello\\n\"");
  assert_string_equal(preview("a\tb\r\"c\\", 7, 32, 0),
                      "\"a\\tb\\r\\\"c\\\\\"");
  assert_string_equal(preview("\x01\x7f\xff", 3, 32, 0), "\"\\x01\\x7f\\xff\"");
  assert_string_equal(preview("", 0, 32, 0), "\"\"");
}

static void test_preview_hex(void **state) {
  (void)state;
  assert_string_equal(preview("hello\n", 6, 32, 1), "68 65 6c 6c 6f 0a");
  assert_string_equal(preview("\x00\xff", 2, 32, 1), "00 ff");
}

static void test_preview_cut_at_max_ends_with_dots(void **state) {
  (void)state;
  assert_string_equal(preview("abcdef", 6, 3, 0), "\"abc\"...");
  assert_string_equal(preview("abcdef", 6, 3, 1), "61 62 63...");
  assert_string_equal(preview("abc", 3, 3, 0), "\"abc\"");
  assert_string_equal(preview("abcdef", 6, 0, 0), "\"\"...");
}

/* Every output size from 0 to 80, with data whose bytes expand the most,
 * in both forms: nothing is written past outlen and the result is a
 * terminated string that fits. */
static void test_preview_never_overflows_small_buffers(void **state) {
  (void)state;
  char data[64];
  memset(data, 0xff, sizeof data);
  for (int hex = 0; hex <= 1; hex++) {
    for (size_t outlen = 0; outlen <= 80; outlen++) {
      char buf[80 + 32];
      memset(buf, 'Z', sizeof buf);
      char *r = le_trace_preview(buf, outlen, data, sizeof data, 48, hex);
      assert_ptr_equal(r, buf);
      for (size_t i = outlen; i < sizeof buf; i++)
        if (buf[i] != 'Z')
          fail_msg("outlen %zu hex %d: byte %zu written", outlen, hex, i);
      if (outlen > 0) assert_true(strnlen(buf, outlen) < outlen);
    }
  }
}

/* A preview cut short by its buffer says so with "..." like one cut at
 * max, and shows a prefix of the full preview. */
static void test_preview_cut_by_its_buffer_ends_with_dots(void **state) {
  (void)state;
  const char *data = "0123456789abcdefghij";
  char full[256], small[24];
  le_trace_preview(full, sizeof full, data, 20, 32, 0);
  assert_string_equal(full, "\"0123456789abcdefghij\"");
  le_trace_preview(small, sizeof small, data, 20, 32, 0);
  size_t n = strlen(small);
  assert_true(n > 5);
  assert_string_equal(small + n - 4, "\"...");
  assert_memory_equal(small, full, n - 4);
  le_trace_preview(small, sizeof small, data, 20, 32, 1);
  n = strlen(small);
  assert_string_equal(small + n - 3, "...");
}

/* ---- lines ---- */

static void test_lines_reach_the_fd_in_order(void **state) {
  (void)state;
  int fds[2];
  small_pipe(fds);
  le_trace t;
  le_trace_init(&t, fds[1], 0);
  for (int i = 0; i < 200; i++) le_trace_event(&t, 7, "event %d", i);
  char *text = drain(fds[0], "event 199\n", 10);
  assert_true(le_trace_flush(&t, 5000));
  assert_int_equal(count_lines(text), 200);
  const char *p = text;
  unsigned long long last_us = 0;
  for (int i = 0; i < 200; i++) {
    unsigned long long us;
    int id, ev, used = 0;
    assert_int_equal(
        sscanf(p, "%lluus conn %d event %d\n%n", &us, &id, &ev, &used), 3);
    assert_int_equal(id, 7);
    assert_int_equal(ev, i);
    assert_true(us >= last_us);
    last_us = us;
    p += used;
  }
  assert_int_equal(le_trace_dropped(&t), 0);
  le_trace_close(&t);
  free(text);
  close(fds[0]);
  close(fds[1]);
}

/* An output that refuses the lines (/dev/full: ENOSPC; a pipe whose
 * reader left: EPIPE) loses them; they are counted as dropped, not lost
 * without a trace in luaecho.stats(). */
static void test_lines_an_output_refuses_are_counted(void **state) {
  (void)state;
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  close(fds[0]); /* writes now fail with EPIPE (SIGPIPE is ignored) */
  le_trace t;
  le_trace_init(&t, fds[1], 0);
  for (int i = 0; i < 50; i++) le_trace_event(&t, 7, "event %d", i);
  assert_true(le_trace_flush(&t, 5000));
  assert_int_equal(le_trace_dropped(&t), 50);
  le_trace_close(&t);
  close(fds[1]);
}

static void test_log_prefix_comes_first(void **state) {
  (void)state;
  int fds[2];
  small_pipe(fds);
  le_trace t;
  le_trace_init(&t, fds[1], 1);
  le_trace_event(&t, 3, "read %d bytes", 5);
  char *text = drain(fds[0], "\n", 10);
  int y, mo, d, h, mi, s, ms, used = 0;
  assert_int_equal(sscanf(text, "%4d-%2d-%2d %2d:%2d:%2d.%3d [trace] %n", &y,
                          &mo, &d, &h, &mi, &s, &ms, &used),
                   7);
  assert_true(used > 0);
  unsigned long long us;
  int rest = 0;
  assert_int_equal(
      sscanf(text + used, "%lluus conn 3 read 5 bytes\n%n", &us, &rest), 1);
  assert_int_equal(text[used + rest], '\0');
  le_trace_close(&t);
  free(text);
  close(fds[0]);
  close(fds[1]);
}

static void test_flush_waits_until_written(void **state) {
  (void)state;
  int fds[2];
  small_pipe(fds);
  le_trace t;
  le_trace_init(&t, fds[1], 0);
  assert_true(le_trace_flush(&t, 10)); /* nothing traced: nothing to wait */
  le_trace_event(&t, 1, "one");
  assert_true(le_trace_flush(&t, 5000));
  /* Flushed means in the pipe already, so a read without waiting sees it. */
  char buf[128];
  ssize_t n = read(fds[0], buf, sizeof buf - 1);
  assert_true(n > 0);
  buf[n] = '\0';
  assert_contains(buf, "conn 1 one\n");
  le_trace_close(&t);
  close(fds[0]);
  close(fds[1]);
}

static void test_close_without_lines_is_safe(void **state) {
  (void)state;
  le_trace t;
  le_trace_init(&t, -1, 0);
  assert_int_equal(le_trace_dropped(&t), 0);
  le_trace_close(&t);
  le_trace_close(&t);
}

/* Lines of about 1000 bytes until more than the trace's buffer and the
 * pipe hold; returns how long the slowest call took, in seconds. */
static double fill(le_trace *t, int lines) {
  char pad[1000];
  memset(pad, 'p', sizeof pad - 1);
  pad[sizeof pad - 1] = '\0';
  double slowest = 0;
  for (int i = 0; i < lines; i++) {
    double t0 = now_s();
    le_trace_event(t, 9, "%d %s", i, pad);
    double took = now_s() - t0;
    if (took > slowest) slowest = took;
  }
  return slowest;
}

#define FILL_LINES (LE_TRACE_BUFFER / 1000 + 400)

static void test_a_stuck_output_drops_and_counts_lines(void **state) {
  (void)state;
  int fds[2];
  small_pipe(fds);
  le_trace t;
  le_trace_init(&t, fds[1], 0);
  double slowest = fill(&t, FILL_LINES);
  /* Never blocked on the pipe: a blocked call would wait for the reader,
   * which is this thread. The bound is loose for a loaded machine. */
  assert_true(slowest < 0.5);
  uint64_t dropped = le_trace_dropped(&t);
  assert_true(dropped > 0);
  assert_false(le_trace_flush(&t, 50)); /* nobody reads: not written */
  /* Once the output is read, the writer catches up and reports the count. */
  char note[128];
  snprintf(note, sizeof note,
           "trace: %llu lines dropped (the output fell behind)\n",
           (unsigned long long)dropped);
  char *text = drain(fds[0], note, 20);
  assert_contains(text, note);
  assert_int_equal(count_lines(text), FILL_LINES - dropped + 1);
  assert_true(le_trace_flush(&t, 5000));
  assert_int_equal(le_trace_dropped(&t), dropped);
  le_trace_close(&t);
  free(text);
  close(fds[0]);
  close(fds[1]);
}

static void test_close_gives_up_on_a_stuck_output(void **state) {
  (void)state;
  /* Static: the writer, stuck in write(), is left running by close and
   * still uses the struct until the pipe is read below. */
  static le_trace t;
  int fds[2];
  small_pipe(fds);
  le_trace_init(&t, fds[1], 0);
  fill(&t, 200);
  double t0 = now_s();
  le_trace_close(&t);
  double took = now_s() - t0;
  assert_true(took >= 0.5); /* it did wait for the output a while */
  assert_true(took < 3.0);  /* ~1 s, loosely */
  /* Unblock the writer so it ends. */
  free(drain(fds[0], NULL, 0.5));
  close(fds[0]);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_preview_quotes_and_escapes),
      cmocka_unit_test(test_preview_hex),
      cmocka_unit_test(test_preview_cut_at_max_ends_with_dots),
      cmocka_unit_test(test_preview_never_overflows_small_buffers),
      cmocka_unit_test(test_preview_cut_by_its_buffer_ends_with_dots),
      cmocka_unit_test(test_lines_reach_the_fd_in_order),
      cmocka_unit_test(test_lines_an_output_refuses_are_counted),
      cmocka_unit_test(test_log_prefix_comes_first),
      cmocka_unit_test(test_flush_waits_until_written),
      cmocka_unit_test(test_close_without_lines_is_safe),
      cmocka_unit_test(test_a_stuck_output_drops_and_counts_lines),
      cmocka_unit_test(test_close_gives_up_on_a_stuck_output),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
