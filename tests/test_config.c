/* Unit tests for configuration loading (include/luaecho/config.h). */
#include "test_support.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "luaecho/config.h"

#define USAGE "expected host:port, [ipv6]:port or unix:/path"

typedef struct fixture {
  le_config cfg;
  char err[1024];
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  if (f == NULL || le_config_init(&f->cfg) != 0) return -1;
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  le_config_free(&f->cfg);
  free(f);
  return 0;
}

/* Loads `chunk` as the file "c.lua" with relative paths kept as written. */
static int load(fixture *f, const char *chunk) {
  f->err[0] = '\0';
  return le_config_load_string(&f->cfg, chunk, "c.lua", NULL, f->err,
                               sizeof f->err);
}

#define assert_loads(f, chunk)                             \
  do {                                                     \
    if (load((f), (chunk)) != 0) fail_msg("%s", (f)->err); \
  } while (0)

#define assert_load_error(f, chunk, message)  \
  do {                                        \
    assert_int_equal(load((f), (chunk)), -1); \
    assert_string_equal((f)->err, (message)); \
  } while (0)

static const le_listener_conf *listener(const fixture *f, size_t i) {
  assert_true(i < f->cfg.nlisteners);
  return &f->cfg.listeners[i];
}

/* Checks listener i; handler NULL means "no handler of its own". */
static void assert_listener(const fixture *f, size_t i, const char *address,
                            const char *handler, int backlog) {
  const le_listener_conf *l = listener(f, i);
  const char *h = l->handler ? l->handler : "(none)";
  if (strcmp(l->address, address) != 0)
    fail_msg("listener %zu: address '%s', expected '%s'", i, l->address,
             address);
  if (strcmp(h, handler ? handler : "(none)") != 0)
    fail_msg("listener %zu: handler '%s', expected '%s'", i, h,
             handler ? handler : "(none)");
  if (l->backlog != backlog)
    fail_msg("listener %zu: backlog %d, expected %d", i, l->backlog, backlog);
}

/* ---- defaults ---- */

static void test_init_defaults(void **state) {
  fixture *f = *state;
  assert_null(f->cfg.path);
  assert_int_equal(f->cfg.nlisteners, 1);
  assert_listener(f, 0, "127.0.0.1:7000", NULL, 511);
  assert_int_equal(listener(f, 0)->addr.kind, LE_ADDR_TCP);
  assert_string_equal(listener(f, 0)->addr.host, "127.0.0.1");
  assert_int_equal(listener(f, 0)->addr.port, 7000);
  assert_null(f->cfg.handler);
  assert_int_equal(f->cfg.backlog, 511);
  assert_true(f->cfg.shutdown_timeout == 10.0);
  assert_int_equal(f->cfg.log_level, LE_LOG_INFO);
  assert_int_equal(f->cfg.watch, 1);
  assert_int_equal(f->cfg.sandbox, 1);
}

static void test_empty_file_keeps_defaults(void **state) {
  fixture *f = *state;
  assert_loads(f, "-- nothing set\n");
  assert_listener(f, 0, "127.0.0.1:7000", NULL, 511);
  assert_null(f->cfg.path); /* only load_file records a path */
}

/* ---- every key ---- */

static void test_every_key(void **state) {
  fixture *f = *state;
  assert_loads(f,
               "listen = 'unix:/tmp/le.sock'\n"
               "handler = 'h.lua'\n"
               "backlog = 64\n"
               "shutdown_timeout = 2.5\n"
               "log_level = 'debug'\n");
  assert_int_equal(f->cfg.nlisteners, 1);
  assert_listener(f, 0, "unix:/tmp/le.sock", NULL, 64);
  assert_int_equal(listener(f, 0)->addr.kind, LE_ADDR_UNIX);
  assert_string_equal(listener(f, 0)->addr.path, "/tmp/le.sock");
  assert_string_equal(f->cfg.handler, "h.lua");
  assert_int_equal(f->cfg.backlog, 64);
  assert_true(f->cfg.shutdown_timeout == 2.5);
  assert_int_equal(f->cfg.log_level, LE_LOG_DEBUG);
}

static void test_log_levels(void **state) {
  fixture *f = *state;
  static const struct {
    const char *chunk;
    le_log_level level;
  } cases[] = {{"log_level = 'debug'", LE_LOG_DEBUG},
               {"log_level = 'info'", LE_LOG_INFO},
               {"log_level = 'warn'", LE_LOG_WARN},
               {"log_level = 'error'", LE_LOG_ERROR}};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    assert_loads(f, cases[i].chunk);
    assert_int_equal(f->cfg.log_level, cases[i].level);
  }
}

static void test_log_level_rejected(void **state) {
  fixture *f = *state;
  assert_load_error(f, "log_level = 'verbose'",
                    "c.lua: key 'log_level': expected one of \"debug\", "
                    "\"info\", \"warn\", \"error\", got \"verbose\"");
  assert_load_error(f, "log_level = 3",
                    "c.lua: key 'log_level': expected one of \"debug\", "
                    "\"info\", \"warn\", \"error\", got number");
}

static void test_shutdown_timeout_zero_and_integer(void **state) {
  fixture *f = *state;
  assert_loads(f, "shutdown_timeout = 0");
  assert_true(f->cfg.shutdown_timeout == 0.0);
  assert_loads(f, "shutdown_timeout = 30");
  assert_true(f->cfg.shutdown_timeout == 30.0);
}

static void test_shutdown_timeout_rejected(void **state) {
  fixture *f = *state;
  const char *range =
      "c.lua: key 'shutdown_timeout': expected a finite "
      "number of seconds >= 0, got ";
  char expected[256];
  snprintf(expected, sizeof expected, "%s-1", range);
  assert_load_error(f, "shutdown_timeout = -1", expected);
  snprintf(expected, sizeof expected, "%sinf", range);
  assert_load_error(f, "shutdown_timeout = math.huge", expected);
  assert_int_equal(load(f, "shutdown_timeout = 0/0"), -1);
  assert_starts_with(f->err, range);
  assert_contains(f->err + strlen(range), "nan");
  assert_load_error(f, "shutdown_timeout = '5'",
                    "c.lua: key 'shutdown_timeout': expected number of "
                    "seconds, got string");
  assert_true(f->cfg.shutdown_timeout == 10.0);
}

static void test_backlog_accepted(void **state) {
  fixture *f = *state;
  assert_loads(f, "backlog = 1");
  assert_int_equal(f->cfg.backlog, 1);
  assert_loads(f, "backlog = 65535");
  assert_int_equal(f->cfg.backlog, 65535);
  assert_loads(f, "backlog = 128.0"); /* a float with an integer value */
  assert_int_equal(f->cfg.backlog, 128);
}

static void test_backlog_rejected(void **state) {
  fixture *f = *state;
  assert_load_error(f, "backlog = '5'",
                    "c.lua: key 'backlog': expected integer, got string");
  assert_load_error(
      f, "backlog = 0",
      "c.lua: key 'backlog': expected integer in 1..65535, got 0");
  assert_load_error(
      f, "backlog = 65536",
      "c.lua: key 'backlog': expected integer in 1..65535, got 65536");
  assert_load_error(f, "backlog = 1.5",
                    "c.lua: key 'backlog': expected integer, got number");
  assert_int_equal(f->cfg.backlog, 511);
}

static void test_unknown_key(void **state) {
  fixture *f = *state;
  assert_load_error(f, "lisen = '127.0.0.1:7000'",
                    "c.lua: unknown key 'lisen'");
}

static void test_global_helper_is_an_unknown_key(void **state) {
  fixture *f = *state;
  assert_load_error(f, "base = 7000\nlisten = '127.0.0.1:' .. base",
                    "c.lua: unknown key 'base'");
}

static void test_local_helpers_are_not_keys(void **state) {
  fixture *f = *state;
  assert_loads(f,
               "local base = 7000\n"
               "local function addr(p) return '127.0.0.1:' .. p end\n"
               "listen = { addr(base), addr(base + 1) }\n");
  assert_int_equal(f->cfg.nlisteners, 2);
  assert_listener(f, 0, "127.0.0.1:7000", NULL, 511);
  assert_listener(f, 1, "127.0.0.1:7001", NULL, 511);
}

static void test_computed_values(void **state) {
  fixture *f = *state;
  assert_int_equal(setenv("LE_TEST_PORT", "7123", 1), 0);
  assert_loads(f,
               "listen = string.format('[::1]:%d', "
               "tonumber(os.getenv('LE_TEST_PORT')))\n"
               "backlog = 2 * 50\n");
  assert_listener(f, 0, "[::1]:7123", NULL, 100);
  assert_string_equal(listener(f, 0)->addr.host, "::1");
  assert_int_equal(listener(f, 0)->addr.port, 7123);
}

/* ---- Lua errors ---- */

static void test_syntax_error(void **state) {
  fixture *f = *state;
  assert_int_equal(load(f, "listen = = 1"), -1);
  assert_starts_with(f->err, "c.lua:1:");
  assert_contains(f->err, "near '='");
  assert_int_equal(load(f, "backlog = 5\nlisten = = 1"), -1);
  assert_starts_with(f->err, "c.lua:2:");
  assert_int_equal(f->cfg.backlog, 511);
}

static void test_runtime_error(void **state) {
  fixture *f = *state;
  assert_load_error(f, "backlog = 5\nerror('boom')", "c.lua:2: boom");
  assert_int_equal(f->cfg.backlog, 511);
  /* A value that is not a string gets the line that raised it. */
  assert_load_error(f, "error({})", "c.lua:1: (error object is a table value)");
  assert_load_error(f, "\nerror(nil)", "c.lua:2: (error object is a nil value)");
}

static void test_error_on_one_line_naming_the_file(void **state) {
  fixture *f = *state;
  assert_load_error(f, "error('first\\n\\tsecond', 0)", "c.lua: first second");
}

/* ---- sandbox ---- */

static void test_sandbox_key(void **state) {
  fixture *f = *state;
  assert_int_equal(f->cfg.sandbox, 1);
  assert_loads(f, "sandbox = false\n");
  assert_int_equal(f->cfg.sandbox, 0);
  assert_loads(f, "sandbox = true\n");
  assert_int_equal(f->cfg.sandbox, 1);
  assert_load_error(f, "sandbox = 'no'\n",
                    "c.lua: key 'sandbox': expected boolean, got string");
}

static void test_admin_key(void **state) {
  fixture *f = *state;
  assert_null(f->cfg.admin);
  assert_loads(f, "admin = 'unix:/run/a.sock'\nidle_timeout = 5");
  assert_non_null(f->cfg.admin);
  assert_string_equal(f->cfg.admin->address, "unix:/run/a.sock");
  assert_int_equal(f->cfg.admin->addr.kind, LE_ADDR_UNIX);
  /* The admin's connections keep the default options. */
  assert_true(f->cfg.admin->opts.idle_timeout != 5);
  assert_loads(f, "admin = '127.0.0.1:7001'");
  assert_int_equal(f->cfg.admin->addr.port, 7001);
  assert_loads(f, "admin = false");
  assert_null(f->cfg.admin);
}

static void test_admin_key_rejected(void **state) {
  fixture *f = *state;
  assert_load_error(f, "admin = true",
                    "c.lua: key 'admin': expected address string (or false "
                    "for none), got boolean");
  assert_load_error(f, "admin = '127.0.0.1'",
                    "c.lua: key 'admin': invalid address '127.0.0.1': " USAGE);
  assert_null(f->cfg.admin);
}

static void test_config_always_runs_sandboxed(void **state) {
  fixture *f = *state;
  assert_load_error(f, "sandbox = false\nos.exit(3)\n",
                    "c.lua:2: os.exit is disabled by the sandbox (a config "
                    "file always runs in the sandbox)");
  assert_load_error(f, "local line = io.read()\n",
                    "c.lua:1: io.read: reading standard input is disabled by "
                    "the sandbox (a config file always runs in the sandbox)");
  assert_load_error(f, "\x1bLua",
                    "c.lua: binary (precompiled) chunks are disabled by the "
                    "sandbox (a config file always runs in the sandbox)");
  assert_int_equal(f->cfg.sandbox, 1);
}

/* ---- listen ---- */

static void test_listen_single_address(void **state) {
  fixture *f = *state;
  assert_loads(f, "listen = '*:80'");
  assert_int_equal(f->cfg.nlisteners, 1);
  assert_listener(f, 0, "*:80", NULL, 511);
  assert_string_equal(listener(f, 0)->addr.host, "0.0.0.0");
}

static void test_listen_single_listener_table(void **state) {
  fixture *f = *state;
  assert_loads(f,
               "listen = { address = '127.0.0.1:0', handler = 'h.lua', "
               "backlog = 7 }");
  assert_int_equal(f->cfg.nlisteners, 1);
  assert_listener(f, 0, "127.0.0.1:0", "h.lua", 7);
}

static void test_listen_list_mixing_strings_and_tables(void **state) {
  fixture *f = *state;
  assert_loads(f,
               "listen = {\n"
               "  '127.0.0.1:7000',\n"
               "  { address = '127.0.0.1:7001', handler = 'upper.lua', "
               "backlog = 64 },\n"
               "  { address = 'unix:/tmp/le.sock' },\n"
               "}\n");
  assert_int_equal(f->cfg.nlisteners, 3);
  assert_listener(f, 0, "127.0.0.1:7000", NULL, 511);
  assert_listener(f, 1, "127.0.0.1:7001", "upper.lua", 64);
  assert_listener(f, 2, "unix:/tmp/le.sock", NULL, 511);
  assert_int_equal(listener(f, 2)->addr.kind, LE_ADDR_UNIX);
}

static void test_listen_empty_list(void **state) {
  fixture *f = *state;
  assert_load_error(f, "listen = {}",
                    "c.lua: key 'listen': expected at least one address, got "
                    "an empty list");
}

static void test_listen_wrong_types(void **state) {
  fixture *f = *state;
  assert_load_error(f, "listen = 7000",
                    "c.lua: key 'listen': expected address string or list of "
                    "addresses, got number");
  assert_load_error(f, "listen = { '127.0.0.1:1', true }",
                    "c.lua: key 'listen[2]': expected address string or "
                    "listener table, got boolean");
  assert_load_error(f, "listen = { { address = 7000 } }",
                    "c.lua: key 'listen[1].address': expected address string, "
                    "got number");
}

static void test_listen_invalid_address(void **state) {
  fixture *f = *state;
  assert_load_error(f, "listen = { 'foo' }",
                    "c.lua: key 'listen[1]': invalid address 'foo': " USAGE);
  assert_load_error(f, "listen = 'foo'",
                    "c.lua: key 'listen': invalid address 'foo': " USAGE);
  assert_load_error(f, "listen = { '127.0.0.1:1', { address = '::1:80' } }",
                    "c.lua: key 'listen[2].address': invalid address '::1:80': "
                    "an IPv6 host must be written in brackets, as [::1]:7000");
}

/* Values and keys the file gives are quoted with their control bytes
 * escaped, so that the error stays the one line the log and the fuzzer
 * expect. */
static void test_error_quotes_control_bytes_escaped(void **state) {
  fixture *f = *state;
  assert_load_error(f, "listen = '\\n'",
                    "c.lua: key 'listen': invalid address '\\n': " USAGE);
  assert_load_error(
      f, "listen = 'a\\tb\\1'",
      "c.lua: key 'listen': invalid address 'a\\tb\\x01': " USAGE);
  char err[256];
  const char *bad[] = {"x\ny"};
  assert_int_equal(le_config_set_listen(&f->cfg, bad, 1, err, sizeof err), -1);
  assert_string_equal(err, "--listen: invalid address 'x\\ny': " USAGE);
}

/* A rejected list leaves the listeners as they were. */
static void test_listen_error_keeps_previous_listeners(void **state) {
  fixture *f = *state;
  assert_int_equal(load(f, "listen = { '127.0.0.1:1', 'foo' }"), -1);
  assert_int_equal(f->cfg.nlisteners, 1);
  assert_listener(f, 0, "127.0.0.1:7000", NULL, 511);
}

static void test_listener_keys_rejected(void **state) {
  fixture *f = *state;
  assert_load_error(f,
                    "listen = { '127.0.0.1:1', { address = '127.0.0.1:2', "
                    "backlog = true } }",
                    "c.lua: key 'listen[2].backlog': expected integer, got "
                    "boolean");
  assert_load_error(f, "listen = { { address = '127.0.0.1:2', port = 2 } }",
                    "c.lua: unknown key 'listen[1].port'");
  assert_load_error(f, "listen = { address = '127.0.0.1:2', port = 2 }",
                    "c.lua: unknown key 'listen.port'");
  assert_load_error(f, "listen = { { address = '127.0.0.1:2', handler = 5 } }",
                    "c.lua: key 'listen[1].handler': expected string (a file "
                    "path), got number");
  assert_load_error(
      f, "listen = { { address = '127.0.0.1:2', backlog = 0 } }",
      "c.lua: key 'listen[1].backlog': expected integer in 1..65535, got 0");
}

/* docs/config.md, "Errors": a listener table without `address`. */
static void test_listener_missing_address(void **state) {
  fixture *f = *state;
  assert_load_error(f, "listen = { { handler = 'h.lua' } }",
                    "c.lua: key 'listen[1].address': missing (every listener "
                    "needs one)");
}

static void test_top_level_backlog_inherited(void **state) {
  fixture *f = *state;
  assert_loads(f,
               "listen = { '127.0.0.1:1', { address = '127.0.0.1:2', "
               "backlog = 64 } }\n"
               "backlog = 100\n");
  assert_int_equal(f->cfg.backlog, 100);
  assert_listener(f, 0, "127.0.0.1:1", NULL, 100);
  assert_listener(f, 1, "127.0.0.1:2", NULL, 64);
}

/* A file that sets only `backlog` changes the listeners already there. */
static void test_backlog_alone_applies_to_existing_listeners(void **state) {
  fixture *f = *state;
  assert_loads(f, "backlog = 42");
  assert_listener(f, 0, "127.0.0.1:7000", NULL, 42);
}

/* Loading applies on top of the current values: a file that sets neither
 * `listen` nor `backlog` leaves the listeners exactly as they were. */
static void test_second_load_keeps_earlier_values(void **state) {
  fixture *f = *state;
  assert_loads(f,
               "listen = { '127.0.0.1:1', { address = '127.0.0.1:2', "
               "handler = 'own.lua', backlog = 64 } }");
  assert_loads(f, "log_level = 'warn'");
  assert_int_equal(f->cfg.log_level, LE_LOG_WARN);
  assert_int_equal(f->cfg.nlisteners, 2);
  assert_listener(f, 0, "127.0.0.1:1", NULL, 511);
  assert_listener(f, 1, "127.0.0.1:2", "own.lua", 64);
}

/* ---- connection options (opts.h) at both levels ---- */

static void test_connection_options(void **state) {
  fixture *f = *state;
  assert_loads(
      f,
      "recv_timeout = 5\n"
      "packet = 'line'\n"
      "listen = { '127.0.0.1:1',\n"
      "  { address = '127.0.0.1:2', packet = 2, recv_buffer = 4096 } }");
  assert_true(f->cfg.opts.recv_timeout == 5.0);
  assert_int_equal(f->cfg.opts.packet, LE_PACKET_LINE);
  const le_listener_conf *inherits = listener(f, 0), *own = listener(f, 1);
  assert_true(inherits->opts.recv_timeout == 5.0);
  assert_int_equal(inherits->opts.packet, LE_PACKET_LINE);
  assert_true(own->opts.recv_timeout == 5.0);
  assert_int_equal(own->opts.packet, LE_PACKET_2);
  assert_int_equal(own->opts.recv_buffer, 4096);
}

static void test_connection_options_rejected(void **state) {
  fixture *f = *state;
  assert_load_error(f, "recv_buffer = 0",
                    "c.lua: key 'recv_buffer': expected an integer byte count "
                    "in 1..1073741824, got 0");
  assert_load_error(f, "listen = { { address = '127.0.0.1:1', packet = 3 } }",
                    "c.lua: key 'listen[1].packet': expected \"raw\", "
                    "\"line\", 0, 1, 2 or 4, got 3");
  assert_load_error(f, "idle_timeout = 0",
                    "c.lua: key 'idle_timeout': expected a number of seconds "
                    "> 0, or false for none, got 0");
}

/* The default listener takes a file's top-level options; --listen
 * listeners take the top-level ones too. */
static void test_connection_options_inherited(void **state) {
  fixture *f = *state;
  const char *addrs[] = {"127.0.0.1:9"};
  assert_loads(f, "send_buffer = 1000");
  assert_int_equal(listener(f, 0)->opts.send_buffer, 1000);
  assert_int_equal(
      le_config_set_listen(&f->cfg, addrs, 1, f->err, sizeof f->err), 0);
  assert_int_equal(listener(f, 0)->opts.send_buffer, 1000);
}

static void test_listen_other_keys(void **state) {
  fixture *f = *state;
  assert_load_error(f, "listen = { '127.0.0.1:1', x = 2 }",
                    "c.lua: key 'listen': expected a list of addresses (keys "
                    "1..n), got other keys");
  assert_load_error(f, "_ENV[1] = true", "c.lua: unknown key '[1]'");
}

/* ---- handler paths ---- */

static void test_handler_rejected(void **state) {
  fixture *f = *state;
  assert_load_error(f, "handler = true",
                    "c.lua: key 'handler': expected string (a file path), got "
                    "boolean");
  assert_load_error(f, "handler = ''",
                    "c.lua: key 'handler': the path is empty");
  assert_null(f->cfg.handler);
}

static void test_handler_paths_resolved_against_dir(void **state) {
  fixture *f = *state;
  const char *chunk =
      "handler = 'h.lua'\n"
      "listen = { { address = '127.0.0.1:1', handler = 'sub/u.lua' },\n"
      "           { address = '127.0.0.1:2', handler = '/abs/a.lua' },\n"
      "           '127.0.0.1:3' }\n";
  assert_int_equal(le_config_load_string(&f->cfg, chunk, "c.lua", "/etc/le",
                                         f->err, sizeof f->err),
                   0);
  assert_string_equal(f->cfg.handler, "/etc/le/h.lua");
  assert_listener(f, 0, "127.0.0.1:1", "/etc/le/sub/u.lua", 511);
  assert_listener(f, 1, "127.0.0.1:2", "/abs/a.lua", 511);
  assert_listener(f, 2, "127.0.0.1:3", NULL, 511);
}

static void test_handler_paths_with_dot_dir_kept(void **state) {
  fixture *f = *state;
  assert_int_equal(le_config_load_string(&f->cfg, "handler = 'h.lua'", "c.lua",
                                         ".", f->err, sizeof f->err),
                   0);
  assert_string_equal(f->cfg.handler, "h.lua");
}

static void test_listener_handler(void **state) {
  fixture *f = *state;
  assert_loads(f,
               "listen = { '127.0.0.1:1', { address = '127.0.0.1:2', "
               "handler = 'own.lua' } }");
  assert_null(le_config_listener_handler(&f->cfg, listener(f, 0)));
  assert_string_equal(le_config_listener_handler(&f->cfg, listener(f, 1)),
                      "own.lua");
  assert_int_equal(le_config_set_handler(&f->cfg, "top.lua"), 0);
  assert_string_equal(f->cfg.handler, "top.lua");
  assert_string_equal(le_config_listener_handler(&f->cfg, listener(f, 0)),
                      "top.lua");
  assert_string_equal(le_config_listener_handler(&f->cfg, listener(f, 1)),
                      "own.lua");
  assert_int_equal(le_config_set_handler(&f->cfg, "again.lua"), 0);
  assert_string_equal(f->cfg.handler, "again.lua");
}

/* ---- --listen ---- */

static void test_set_listen(void **state) {
  fixture *f = *state;
  const char *addrs[] = {"[::1]:9000", "unix:/tmp/s.sock"};
  assert_loads(f,
               "backlog = 50\nlisten = { { address = '127.0.0.1:1', "
               "handler = 'own.lua' } }");
  assert_int_equal(
      le_config_set_listen(&f->cfg, addrs, 2, f->err, sizeof f->err), 0);
  assert_int_equal(f->cfg.nlisteners, 2);
  assert_listener(f, 0, "[::1]:9000", NULL, 50);
  assert_string_equal(listener(f, 0)->addr.host, "::1");
  assert_listener(f, 1, "unix:/tmp/s.sock", NULL, 50);
  assert_string_equal(listener(f, 1)->addr.path, "/tmp/s.sock");
}

static void test_set_listen_rejected(void **state) {
  fixture *f = *state;
  const char *addrs[] = {"127.0.0.1:1", "foo"};
  assert_int_equal(
      le_config_set_listen(&f->cfg, addrs, 2, f->err, sizeof f->err), -1);
  assert_string_equal(f->err, "--listen: invalid address 'foo': " USAGE);
  assert_int_equal(f->cfg.nlisteners, 1);
  assert_listener(f, 0, "127.0.0.1:7000", NULL, 511);
}

/* ---- files ---- */

static void test_load_missing_file(void **state) {
  fixture *f = *state;
  assert_int_equal(
      le_config_load_file(&f->cfg, "/nonexistent/c.lua", f->err, sizeof f->err),
      -1);
  assert_string_equal(f->err,
                      "cannot open /nonexistent/c.lua: No such file or "
                      "directory");
  assert_null(f->cfg.path);
}

static void test_load_real_file(void **state) {
  fixture *f = *state;
  char dir[] = "/tmp/le-config-XXXXXX";
  char path[64], expected[96];
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/c.lua", dir);
  write_file(path,
             "listen = { { address = '127.0.0.1:0', handler = 'h.lua' } }\n"
             "backlog = 9\n"
             "backlog = backlog + 1\n");
  int r = le_config_load_file(&f->cfg, path, f->err, sizeof f->err);
  unlink(path);
  rmdir(dir);
  if (r != 0) fail_msg("%s", f->err);
  assert_string_equal(f->cfg.path, path);
  snprintf(expected, sizeof expected, "%s/h.lua", dir);
  assert_listener(f, 0, "127.0.0.1:0", expected, 10);
}

static void test_load_real_file_error_names_file(void **state) {
  fixture *f = *state;
  char dir[] = "/tmp/le-config-XXXXXX";
  char path[64], expected[128];
  assert_non_null(mkdtemp(dir));
  snprintf(path, sizeof path, "%s/c.lua", dir);
  write_file(path, "\nbacklog = 'x'\n");
  int r = le_config_load_file(&f->cfg, path, f->err, sizeof f->err);
  unlink(path);
  rmdir(dir);
  assert_int_equal(r, -1);
  snprintf(expected, sizeof expected,
           "%s: key 'backlog': expected integer, got string", path);
  assert_string_equal(f->err, expected);
  assert_null(f->cfg.path);
}

/* Validation reads raw fields only, so metamethods in a file never run
 * during it: a file using them loads exactly as one without them. (Were
 * a metamethod's error raised unprotected, Lua would panic and abort this
 * program, which fails the test too.) */

/* The "strict" idiom: a metatable on _ENV that raises for undefined names.
 * Validation looks up every key, set or not; the unset ones keep their
 * defaults instead of failing with "undefined variable". */
static void test_strict_env_loads(void **state) {
  fixture *f = *state;
  assert_loads(f,
               "local G, error = _G, error\n"
               "setmetatable(_ENV, { __index = function(_, k)\n"
               "  local v = G[k]\n"
               "  if v == nil then error('undefined variable ' .. k, 2) end\n"
               "  return v\n"
               "end })\n"
               "listen = '127.0.0.1:7001'\n"
               "backlog = 64\n"
               "packet = 'line'\n");
  assert_int_equal(f->cfg.nlisteners, 1);
  assert_listener(f, 0, "127.0.0.1:7001", NULL, 64);
  assert_int_equal(listener(f, 0)->opts.packet, LE_PACKET_LINE);
  assert_null(f->cfg.handler);
  assert_true(f->cfg.shutdown_timeout == 10.0);
  assert_int_equal(f->cfg.watch, 1);
  assert_true(f->cfg.opts.recv_timeout < 0);
  assert_int_equal(f->cfg.opts.recv_buffer, 256 * 1024);
}

/* A listen list whose __len raises and a listener table whose __index
 * raises: the list's raw length and the table's raw fields count. */
static void test_listen_metamethods_not_called(void **state) {
  fixture *f = *state;
  assert_loads(f,
               "local boom = function() error('metamethod called') end\n"
               "listen = setmetatable({ '127.0.0.1:1',\n"
               "  setmetatable({ address = '127.0.0.1:2', backlog = 7 },\n"
               "               { __index = boom }) },\n"
               "  { __len = boom, __index = boom })\n");
  assert_int_equal(f->cfg.nlisteners, 2);
  assert_listener(f, 0, "127.0.0.1:1", NULL, 511);
  assert_listener(f, 1, "127.0.0.1:2", NULL, 7);
  assert_true(listener(f, 1)->opts.idle_timeout == 300.0);
}

/* ---- max_connections ---- */

static void test_max_connections_defaults(void **state) {
  fixture *f = *state;
  assert_int_equal(f->cfg.max_connections, LE_MAX_CONNECTIONS_AUTO);
  assert_int_equal(listener(f, 0)->max_connections, 0);
}

static void test_max_connections_accepted(void **state) {
  fixture *f = *state;
  assert_loads(f, "max_connections = 100");
  assert_int_equal(f->cfg.max_connections, 100);
  assert_loads(f, "max_connections = 2.0");
  assert_int_equal(f->cfg.max_connections, 2);
  assert_loads(f, "max_connections = false");
  assert_int_equal(f->cfg.max_connections, 0);
}

/* The top-level key caps every listener together; it is not a default for
 * each listener, which has none unless its table sets one. */
static void test_max_connections_per_listener(void **state) {
  fixture *f = *state;
  assert_loads(f,
               "max_connections = 50\n"
               "listen = { { address = '127.0.0.1:1', max_connections = 3 },"
               " '127.0.0.1:2',"
               " { address = '127.0.0.1:3', max_connections = false } }");
  assert_int_equal(f->cfg.max_connections, 50);
  assert_int_equal(listener(f, 0)->max_connections, 3);
  assert_int_equal(listener(f, 1)->max_connections, 0);
  assert_int_equal(listener(f, 2)->max_connections, 0);
}

static void test_max_connections_rejected(void **state) {
  fixture *f = *state;
  assert_load_error(f, "max_connections = true",
                    "c.lua: key 'max_connections': expected positive integer "
                    "or false, got boolean");
  assert_load_error(f, "max_connections = '10'",
                    "c.lua: key 'max_connections': expected positive integer "
                    "or false, got string");
  assert_load_error(f, "max_connections = 0",
                    "c.lua: key 'max_connections': expected integer in "
                    "1..1000000000, got 0");
  assert_load_error(f, "max_connections = 2.5",
                    "c.lua: key 'max_connections': expected integer, got "
                    "number");
  assert_load_error(f,
                    "listen = { { address = '127.0.0.1:2', "
                    "max_connections = -1 } }",
                    "c.lua: key 'listen[1].max_connections': expected integer "
                    "in 1..1000000000, got -1");
  assert_int_equal(f->cfg.max_connections, LE_MAX_CONNECTIONS_AUTO);
}

static void test_max_connections_derived(void **state) {
  fixture *f = *state;
  /* One eighth of the limit is kept back, at least 32 descriptors. */
  assert_int_equal(le_config_max_connections(&f->cfg, 1024), 896);
  assert_int_equal(le_config_max_connections(&f->cfg, 20000), 17500);
  assert_int_equal(le_config_max_connections(&f->cfg, 100), 68);
  assert_int_equal(le_config_max_connections(&f->cfg, 32), 1);
  assert_int_equal(le_config_max_connections(&f->cfg, 0), 0);
  /* A value from the file is taken as it is. */
  assert_loads(f, "max_connections = 5000");
  assert_int_equal(le_config_max_connections(&f->cfg, 1024), 5000);
  assert_loads(f, "max_connections = false");
  assert_int_equal(le_config_max_connections(&f->cfg, 1024), 0);
}

#define TEST(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      TEST(test_init_defaults),
      TEST(test_empty_file_keeps_defaults),
      TEST(test_every_key),
      TEST(test_log_levels),
      TEST(test_log_level_rejected),
      TEST(test_shutdown_timeout_zero_and_integer),
      TEST(test_shutdown_timeout_rejected),
      TEST(test_backlog_accepted),
      TEST(test_backlog_rejected),
      TEST(test_unknown_key),
      TEST(test_global_helper_is_an_unknown_key),
      TEST(test_local_helpers_are_not_keys),
      TEST(test_computed_values),
      TEST(test_syntax_error),
      TEST(test_runtime_error),
      TEST(test_error_on_one_line_naming_the_file),
      TEST(test_sandbox_key),
      TEST(test_admin_key),
      TEST(test_admin_key_rejected),
      TEST(test_config_always_runs_sandboxed),
      TEST(test_listen_single_address),
      TEST(test_listen_single_listener_table),
      TEST(test_listen_list_mixing_strings_and_tables),
      TEST(test_listen_empty_list),
      TEST(test_listen_wrong_types),
      TEST(test_listen_invalid_address),
      TEST(test_error_quotes_control_bytes_escaped),
      TEST(test_listen_error_keeps_previous_listeners),
      TEST(test_listener_keys_rejected),
      TEST(test_listener_missing_address),
      TEST(test_top_level_backlog_inherited),
      TEST(test_backlog_alone_applies_to_existing_listeners),
      TEST(test_second_load_keeps_earlier_values),
      TEST(test_connection_options),
      TEST(test_connection_options_rejected),
      TEST(test_connection_options_inherited),
      TEST(test_listen_other_keys),
      TEST(test_handler_rejected),
      TEST(test_handler_paths_resolved_against_dir),
      TEST(test_handler_paths_with_dot_dir_kept),
      TEST(test_listener_handler),
      TEST(test_set_listen),
      TEST(test_set_listen_rejected),
      TEST(test_load_missing_file),
      TEST(test_load_real_file),
      TEST(test_load_real_file_error_names_file),
      TEST(test_strict_env_loads),
      TEST(test_listen_metamethods_not_called),
      TEST(test_max_connections_defaults),
      TEST(test_max_connections_accepted),
      TEST(test_max_connections_per_listener),
      TEST(test_max_connections_rejected),
      TEST(test_max_connections_derived),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
