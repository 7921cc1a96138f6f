/* Unit tests for address text (include/luaecho/addr.h). */
#include "test_support.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>

#include "luaecho/addr.h"

#define USAGE "expected host:port, [ipv6]:port or unix:/path"
#define BAD_PORT "the port must be a number from 0 to 65535"

/* Parses text that must be a valid TCP address, and checks host and port. */
static void assert_tcp(const char *text, const char *host, int port) {
  le_addr a;
  char err[256] = "";
  if (le_addr_parse(text, &a, err, sizeof err) != 0)
    fail_msg("\"%s\" rejected: %s", text, err);
  assert_int_equal(a.kind, LE_ADDR_TCP);
  assert_string_equal(a.host, host);
  assert_int_equal(a.port, port);
}

/* Parses text that must be rejected, and checks the message. */
static void assert_rejected(const char *text, const char *message) {
  le_addr a;
  char err[256] = "";
  if (le_addr_parse(text, &a, err, sizeof err) != -1)
    fail_msg("\"%s\" accepted", text);
  assert_string_equal(err, message);
}

/* Returns a unix: address whose path is `pathlen` bytes long. */
static const char *unix_address(size_t pathlen) {
  static char text[256];
  assert_true(pathlen + 6 < sizeof text);
  memcpy(text, "unix:/", 6);
  memset(text + 6, 'p', pathlen - 1);
  text[5 + pathlen] = '\0';
  return text;
}

static void test_parse_ipv4(void **state) {
  (void)state;
  assert_tcp("127.0.0.1:7000", "127.0.0.1", 7000);
  assert_tcp("0.0.0.0:0", "0.0.0.0", 0);
  assert_tcp("10.1.2.3:65535", "10.1.2.3", 65535);
}

static void test_parse_ipv6(void **state) {
  (void)state;
  assert_tcp("[::1]:7000", "::1", 7000);
  assert_tcp("[fe80::1:2]:80", "fe80::1:2", 80);
}

static void test_parse_host_name(void **state) {
  (void)state;
  assert_tcp("localhost:7000", "localhost", 7000);
}

static void test_parse_star_means_every_ipv4_interface(void **state) {
  (void)state;
  assert_tcp("*:80", "0.0.0.0", 80);
}

static void test_parse_unix(void **state) {
  (void)state;
  le_addr a;
  char err[256];
  assert_int_equal(le_addr_parse("unix:/tmp/x.sock", &a, err, sizeof err), 0);
  assert_int_equal(a.kind, LE_ADDR_UNIX);
  assert_string_equal(a.path, "/tmp/x.sock");
}

static void test_parse_unix_path_of_107_bytes(void **state) {
  (void)state;
  le_addr a;
  char err[256];
  const char *text = unix_address(107);
  assert_int_equal(le_addr_parse(text, &a, err, sizeof err), 0);
  assert_int_equal(strlen(a.path), 107);
  assert_string_equal(a.path, text + 5);
}

static void test_reject_missing_port(void **state) {
  (void)state;
  assert_rejected("127.0.0.1", USAGE);
  assert_rejected("127.0.0.1:", BAD_PORT);
  assert_rejected("[::1]:", BAD_PORT);
}

static void test_reject_bad_port(void **state) {
  (void)state;
  assert_rejected("127.0.0.1:65536", BAD_PORT);
  assert_rejected("127.0.0.1:99999", BAD_PORT);
  assert_rejected("127.0.0.1:123456", BAD_PORT);
  assert_rejected("127.0.0.1:http", BAD_PORT);
  assert_rejected("127.0.0.1:-1", BAD_PORT);
  assert_rejected("127.0.0.1:80x", BAD_PORT);
  assert_rejected("127.0.0.1: 80", BAD_PORT);
}

static void test_reject_empty_host(void **state) {
  (void)state;
  assert_rejected(":7000", USAGE);
  assert_rejected("", USAGE);
}

static void test_reject_unbracketed_ipv6(void **state) {
  (void)state;
  assert_rejected("::1:7000",
                  "an IPv6 host must be written in brackets, as [::1]:7000");
}

static void test_reject_bad_bracket_host(void **state) {
  (void)state;
  assert_rejected("[zz]:1", "the host in brackets is not an IPv6 address");
  assert_rejected("[127.0.0.1]:1",
                  "the host in brackets is not an IPv6 address");
  assert_rejected("[::1]7000", USAGE);
  assert_rejected("[::1", USAGE);
}

static void test_reject_empty_unix_path(void **state) {
  (void)state;
  assert_rejected("unix:", "the unix socket path is empty");
}

static void test_reject_unix_path_of_108_bytes(void **state) {
  (void)state;
  const char *msg = "the unix socket path is longer than 107 bytes";
  assert_rejected(unix_address(108), msg);
  assert_rejected(unix_address(200), msg);
}

static void test_format(void **state) {
  (void)state;
  const char *texts[] = {"127.0.0.1:7000", "[::1]:7000", "localhost:0",
                         "unix:/tmp/x.sock"};
  for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
    le_addr a;
    char err[256], out[300];
    assert_int_equal(le_addr_parse(texts[i], &a, err, sizeof err), 0);
    assert_ptr_equal(le_addr_format(&a, out, sizeof out), out);
    assert_string_equal(out, texts[i]);
  }
}

static void test_format_star_as_parsed(void **state) {
  (void)state;
  le_addr a;
  char err[256], out[300];
  assert_int_equal(le_addr_parse("*:80", &a, err, sizeof err), 0);
  assert_string_equal(le_addr_format(&a, out, sizeof out), "0.0.0.0:80");
}

/* ---- socket addresses ---- */

static socklen_t make_ipv4(struct sockaddr_storage *ss, const char *ip,
                           int port) {
  struct sockaddr_in *in = (struct sockaddr_in *)ss;
  memset(ss, 0, sizeof *ss);
  in->sin_family = AF_INET;
  in->sin_port = htons((uint16_t)port);
  assert_int_equal(inet_pton(AF_INET, ip, &in->sin_addr), 1);
  return sizeof *in;
}

static socklen_t make_ipv6(struct sockaddr_storage *ss, const char *ip,
                           int port) {
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
  memset(ss, 0, sizeof *ss);
  in6->sin6_family = AF_INET6;
  in6->sin6_port = htons((uint16_t)port);
  assert_int_equal(inet_pton(AF_INET6, ip, &in6->sin6_addr), 1);
  return sizeof *in6;
}

/* path NULL makes an unnamed socket address (family only). */
static socklen_t make_unix(struct sockaddr_storage *ss, const char *path) {
  struct sockaddr_un *un = (struct sockaddr_un *)ss;
  memset(ss, 0, sizeof *ss);
  un->sun_family = AF_UNIX;
  if (path == NULL) return sizeof un->sun_family;
  strcpy(un->sun_path, path);
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
}

static const char *format_sa(const struct sockaddr_storage *ss, socklen_t len) {
  static char out[300];
  return le_addr_format_sockaddr((const struct sockaddr *)ss, len, out,
                                 sizeof out);
}

static void assert_split(const struct sockaddr_storage *ss, socklen_t len,
                         const char *host, int port) {
  char got[LE_ADDR_HOST_MAX] = "unset";
  int got_port = 12345;
  assert_int_equal(le_addr_split_sockaddr((const struct sockaddr *)ss, len, got,
                                          sizeof got, &got_port),
                   0);
  assert_string_equal(got, host);
  assert_int_equal(got_port, port);
}

static void test_sockaddr_ipv4(void **state) {
  (void)state;
  struct sockaddr_storage ss;
  socklen_t len = make_ipv4(&ss, "192.168.1.20", 41234);
  assert_string_equal(format_sa(&ss, len), "192.168.1.20:41234");
  assert_split(&ss, len, "192.168.1.20", 41234);
}

static void test_sockaddr_ipv6(void **state) {
  (void)state;
  struct sockaddr_storage ss;
  socklen_t len = make_ipv6(&ss, "::1", 7000);
  assert_string_equal(format_sa(&ss, len), "[::1]:7000");
  assert_split(&ss, len, "::1", 7000);
  len = make_ipv6(&ss, "2001:db8::5", 1);
  assert_string_equal(format_sa(&ss, len), "[2001:db8::5]:1");
}

static void test_sockaddr_unix(void **state) {
  (void)state;
  struct sockaddr_storage ss;
  socklen_t len = make_unix(&ss, "/tmp/x.sock");
  assert_string_equal(format_sa(&ss, len), "unix:/tmp/x.sock");
  assert_split(&ss, len, "/tmp/x.sock", -1);
}

static void test_sockaddr_unnamed_unix(void **state) {
  (void)state;
  struct sockaddr_storage ss;
  socklen_t len = make_unix(&ss, NULL);
  assert_string_equal(format_sa(&ss, len), "unix:");
  assert_split(&ss, len, "", -1);
}

/* A client picks its own socket's path: a newline or an escape byte in it
 * must not split or rewrite the log line that names the peer. */
static void test_sockaddr_unix_control_bytes_escaped(void **state) {
  (void)state;
  struct sockaddr_storage ss;
  socklen_t len = make_unix(&ss, "/tmp/a\nb\033[31m");
  assert_string_equal(format_sa(&ss, len), "unix:/tmp/a\\nb\\x1b[31m");
  assert_split(&ss, len, "/tmp/a\nb\033[31m", -1);
}

/* A full-length sun_path has no terminating NUL; only salen bounds it. */
static void test_sockaddr_unix_path_without_nul(void **state) {
  (void)state;
  struct sockaddr_storage ss;
  struct sockaddr_un *un = (struct sockaddr_un *)&ss;
  memset(&ss, 'z', sizeof ss);
  un->sun_family = AF_UNIX;
  memset(un->sun_path, 'p', sizeof un->sun_path);
  char host[LE_ADDR_HOST_MAX];
  int port;
  assert_int_equal(le_addr_split_sockaddr((struct sockaddr *)&ss, sizeof *un,
                                          host, sizeof host, &port),
                   0);
  assert_int_equal(strlen(host), sizeof un->sun_path);
  assert_null(strchr(host, 'z'));
}

static void test_sockaddr_unknown_family(void **state) {
  (void)state;
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  ss.ss_family = AF_UNSPEC;
  char host[64];
  int port;
  assert_int_equal(le_addr_split_sockaddr((struct sockaddr *)&ss, sizeof ss,
                                          host, sizeof host, &port),
                   -1);
  char expected[64];
  snprintf(expected, sizeof expected, "(unknown address family %d)", AF_UNSPEC);
  assert_string_equal(format_sa(&ss, sizeof ss), expected);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_ipv4),
      cmocka_unit_test(test_parse_ipv6),
      cmocka_unit_test(test_parse_host_name),
      cmocka_unit_test(test_parse_star_means_every_ipv4_interface),
      cmocka_unit_test(test_parse_unix),
      cmocka_unit_test(test_parse_unix_path_of_107_bytes),
      cmocka_unit_test(test_reject_missing_port),
      cmocka_unit_test(test_reject_bad_port),
      cmocka_unit_test(test_reject_empty_host),
      cmocka_unit_test(test_reject_unbracketed_ipv6),
      cmocka_unit_test(test_reject_bad_bracket_host),
      cmocka_unit_test(test_reject_empty_unix_path),
      cmocka_unit_test(test_reject_unix_path_of_108_bytes),
      cmocka_unit_test(test_format),
      cmocka_unit_test(test_format_star_as_parsed),
      cmocka_unit_test(test_sockaddr_ipv4),
      cmocka_unit_test(test_sockaddr_ipv6),
      cmocka_unit_test(test_sockaddr_unix),
      cmocka_unit_test(test_sockaddr_unnamed_unix),
      cmocka_unit_test(test_sockaddr_unix_control_bytes_escaped),
      cmocka_unit_test(test_sockaddr_unix_path_without_nul),
      cmocka_unit_test(test_sockaddr_unknown_family),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
