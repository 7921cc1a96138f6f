/* Unit tests for connection options (include/luaecho/opts.h): the
 * defaults, every option's accepted and rejected values with their
 * messages, the Lua form getopts returns, and the tables of options in
 * docs/config.md and docs/api.md against the option table. */
#include "test_support.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "luaecho/opts.h"

#ifndef LE_SOURCE_DIR
#error "tests/CMakeLists.txt defines LE_SOURCE_DIR, the repository root"
#endif

#define SIZE_WORDS "an integer byte count in 1..1073741824"
#define SECONDS_WORDS "a number of seconds > 0, or false for none"
#define PACKET_WORDS "\"raw\", \"line\", 0, 1, 2 or 4"
#define DELAY_WORDS "a boolean or a delay in seconds (1..86400)"

typedef struct fixture {
  lua_State *L;
  le_opts opts;
  char err[256];
  char shown[256];
} fixture;

static int setup(void **state) {
  fixture *f = calloc(1, sizeof *f);
  if (f == NULL || (f->L = luaL_newstate()) == NULL) return -1;
  luaL_openlibs(f->L);
  le_opts_init(&f->opts);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture *f = *state;
  lua_close(f->L);
  free(f);
  return 0;
}

/* Pushes the value of the Lua expression `expr`. */
static void push_expr(lua_State *L, const char *expr) {
  char src[256];
  snprintf(src, sizeof src, "return %s", expr);
  if (luaL_loadstring(L, src) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK)
    fail_msg("cannot evaluate %s: %s", expr, lua_tostring(L, -1));
}

/* Sets option `name` to the value of `expr`; the stack must be as before. */
static le_opt_status set(fixture *f, const char *name, const char *expr) {
  push_expr(f->L, expr);
  f->err[0] = '\0';
  le_opt_status st =
      le_opts_set(&f->opts, name, f->L, -1, f->err, sizeof f->err);
  assert_int_equal(lua_gettop(f->L), 1);
  lua_settop(f->L, 0);
  return st;
}

#define assert_sets(f, name, expr)                                \
  do {                                                            \
    if (set((f), (name), (expr)) != LE_OPT_OK)                    \
      fail_msg("%s = %s rejected: %s", (name), (expr), (f)->err); \
  } while (0)

/* `name = expr` is rejected with "expected <words>, got <got>" and leaves
 * every option as it was. */
static void assert_rejects(fixture *f, const char *name, const char *expr,
                           const char *words, const char *got) {
  char want[256];
  le_opts before = f->opts;
  snprintf(want, sizeof want, "expected %s, got %s", words, got);
  assert_int_equal(set(f, name, expr), LE_OPT_INVALID);
  assert_string_equal(f->err, want);
  assert_memory_equal(&f->opts, &before, sizeof before);
}

/* Returns the Lua form of option `name` as text: strings in quotes,
 * numbers as Lua prints them (60 and 60.0 differ), booleans. */
static const char *shown(fixture *f, const char *name) {
  assert_int_equal(le_opts_push(&f->opts, name, f->L), 0);
  assert_int_equal(lua_gettop(f->L), 1);
  if (lua_type(f->L, 1) == LUA_TSTRING)
    snprintf(f->shown, sizeof f->shown, "'%s'", lua_tostring(f->L, 1));
  else
    snprintf(f->shown, sizeof f->shown, "%s", luaL_tolstring(f->L, 1, NULL));
  lua_settop(f->L, 0);
  return f->shown;
}

/* ---- the table ---- */

static void test_defaults(void **state) {
  fixture *f = *state;
  le_opts o;
  memset(&o, 0xAB, sizeof o);
  le_opts_init(&o);
  assert_int_equal(o.packet, LE_PACKET_RAW);
  assert_int_equal(o.packet_size, 1024 * 1024);
  assert_int_equal(o.recv_buffer, 256 * 1024);
  assert_int_equal(o.send_buffer, 256 * 1024);
  assert_true(o.recv_timeout < 0);
  assert_true(o.send_timeout == 60.0);
  assert_true(o.idle_timeout == 300.0);
  assert_int_equal(o.send_timeout_close, 1);
  assert_int_equal(o.nodelay, 1);
  assert_int_equal(o.keepalive, 0);
  assert_memory_equal(&o, &f->opts, sizeof o);
}

/* The names, the rows by index and the rows by name agree. */
static void test_names(void **state) {
  (void)state;
  size_t n = le_opts_count();
  assert_true(n > 0);
  for (size_t i = 0; i < n; i++) {
    assert_non_null(le_opts_name(i));
    assert_ptr_equal(le_opts_name(i), le_opts_at(i)->name);
    assert_ptr_equal(le_opts_find(le_opts_name(i)), le_opts_at(i));
    assert_true(le_opts_known(le_opts_name(i)));
  }
  assert_null(le_opts_name(n));
  assert_null(le_opts_at(n));
  assert_string_equal(le_opts_name(0), "packet");
  assert_string_equal(le_opts_name(9), "keepalive");
}

/* Every row names a field of its own inside le_opts, its default is one
 * its own parser accepts, and every name is distinct. */
static void test_rows_are_consistent(void **state) {
  fixture *f = *state;
  for (size_t i = 0; i < le_opts_count(); i++) {
    const le_opt_def *d = le_opts_at(i);
    assert_true(d->offset < sizeof(le_opts));
    assert_non_null(d->type);
    assert_non_null(d->meaning);
    for (size_t j = 0; j < i; j++) {
      assert_true(le_opts_at(j)->offset != d->offset);
      assert_string_not_equal(le_opts_at(j)->name, d->name);
    }
    /* The default's Lua form is accepted and stores the default again. */
    le_opts o = f->opts;
    assert_int_equal(le_opts_push(&f->opts, d->name, f->L), 0);
    assert_int_equal(le_opts_set(&o, d->name, f->L, -1, f->err, sizeof f->err),
                     LE_OPT_OK);
    lua_settop(f->L, 0);
    assert_memory_equal(&o, &f->opts, sizeof o);
  }
}

static void test_unknown_name(void **state) {
  fixture *f = *state;
  le_opts before = f->opts;
  assert_int_equal(set(f, "colour", "'red'"), LE_OPT_UNKNOWN);
  assert_int_equal(set(f, "timeout", "5"), LE_OPT_UNKNOWN);
  assert_memory_equal(&f->opts, &before, sizeof before);
  assert_int_equal(le_opts_push(&f->opts, "colour", f->L), -1);
  assert_int_equal(lua_gettop(f->L), 0);
  assert_false(le_opts_known("colour"));
  assert_false(le_opts_known(""));
  assert_null(le_opts_find("Packet"));
}

/* ---- each option: accepted values, stored and shown ---- */

/* One Lua value and how it shows: getopts' form for an accepted value,
 * the "got ..." words for a rejected one. */
typedef struct value_case {
  const char *expr, *shown;
} value_case;

#define N(cases) (sizeof cases / sizeof *cases)

/* Sets option `name` to each accepted value and checks its Lua form, then
 * each rejected one and checks the message. The last accepted value stays. */
static void check_values(fixture *f, const char *name, const value_case *ok,
                         size_t nok, const value_case *bad, size_t nbad,
                         const char *words) {
  for (size_t i = 0; i < nbad; i++)
    assert_rejects(f, name, bad[i].expr, words, bad[i].shown);
  for (size_t i = 0; i < nok; i++) {
    assert_sets(f, name, ok[i].expr);
    assert_string_equal(shown(f, name), ok[i].shown);
  }
}

static void test_packet(void **state) {
  fixture *f = *state;
  static const value_case ok[] = {{"'line'", "'line'"}, {"1", "1"},
                                  {"4.0", "4"},         {"'raw'", "'raw'"},
                                  {"0", "'raw'"},       {"2", "2"}};
  static const value_case bad[] = {{"3", "3"},           {"-1", "-1"},
                                   {"8", "8"},           {"2.5", "2.5"},
                                   {"'RAW'", "\"RAW\""}, {"'2'", "\"2\""},
                                   {"true", "true"},     {"{}", "table"}};
  check_values(f, "packet", ok, N(ok), bad, N(bad), PACKET_WORDS);
  assert_int_equal(f->opts.packet, LE_PACKET_2);
  assert_sets(f, "packet", "'line'");
  assert_int_equal(f->opts.packet, LE_PACKET_LINE);
}

static void test_sizes(void **state) {
  fixture *f = *state;
  static const value_case ok[] = {{"1", "1"},
                                  {"1073741824", "1073741824"},
                                  {"2^20", "1048576"}, /* integral float */
                                  {"64 * 1024", "65536"}};
  static const value_case bad[] = {
      {"0", "0"},         {"-1", "-1"},   {"1073741825", "1073741825"},
      {"1.5", "1.5"},     {"1/0", "inf"}, {"'4096'", "\"4096\""},
      {"false", "false"}, {"{}", "table"}};
  check_values(f, "packet_size", ok, N(ok), bad, N(bad), SIZE_WORDS);
  check_values(f, "recv_buffer", ok, N(ok), bad, N(bad), SIZE_WORDS);
  check_values(f, "send_buffer", ok, N(ok), bad, N(bad), SIZE_WORDS);
  /* Each stored into its own field. */
  assert_int_equal(f->opts.packet_size, 65536);
  assert_int_equal(f->opts.recv_buffer, 65536);
  assert_int_equal(f->opts.send_buffer, 65536);
  assert_sets(f, "recv_buffer", "7");
  assert_int_equal(f->opts.packet_size, 65536);
  assert_int_equal(f->opts.recv_buffer, 7);
  assert_int_equal(f->opts.send_buffer, 65536);
}

/* NaN prints as "nan" or "-nan", as the C library has it. */
static void assert_rejects_nan(fixture *f, const char *name,
                               const char *words) {
  assert_int_equal(set(f, name, "0/0"), LE_OPT_INVALID);
  assert_starts_with(f->err, "expected ");
  assert_contains(f->err, words);
  assert_contains(f->err, ", got ");
  assert_contains(f->err, "nan");
}

static void test_timeouts(void **state) {
  fixture *f = *state;
  static const value_case ok[] = {{"0.25", "0.25"},
                                  {"1e12", "1000000000.0"}, /* cut */
                                  {"false", "false"},
                                  {"5", "5.0"}};
  static const value_case bad[] = {{"0", "0"},       {"-1", "-1"},
                                   {"1/0", "inf"},   {"true", "true"},
                                   {"'5'", "\"5\""}, {"print", "function"}};
  static const char *const names[] = {"recv_timeout", "send_timeout",
                                      "idle_timeout"};
  for (size_t i = 0; i < N(names); i++) {
    check_values(f, names[i], ok, N(ok), bad, N(bad), SECONDS_WORDS);
    assert_rejects_nan(f, names[i], SECONDS_WORDS);
  }
  assert_true(f->opts.recv_timeout == 5.0);
  assert_sets(f, "send_timeout", "false");
  assert_true(f->opts.recv_timeout == 5.0);
  assert_true(f->opts.send_timeout < 0);
  assert_true(f->opts.idle_timeout == 5.0);
}

static void test_booleans(void **state) {
  fixture *f = *state;
  static const value_case ok[] = {{"false", "false"}, {"true", "true"}};
  static const value_case bad[] = {
      {"1", "1"}, {"0", "0"}, {"'yes'", "\"yes\""}, {"{}", "table"}};
  check_values(f, "send_timeout_close", ok, N(ok), bad, N(bad), "a boolean");
  check_values(f, "nodelay", ok, N(ok), bad, N(bad), "a boolean");
  assert_sets(f, "nodelay", "false");
  assert_int_equal(f->opts.nodelay, 0);
  assert_int_equal(f->opts.send_timeout_close, 1);
}

static void test_keepalive(void **state) {
  fixture *f = *state;
  static const value_case ok[] = {
      {"false", "false"}, {"1", "1"}, {"86400", "86400"}, {"true", "60"}};
  static const value_case bad[] = {{"0", "0"},
                                   {"86401", "86401"},
                                   {"1.5", "1.5"},
                                   {"'60'", "\"60\""},
                                   {"{}", "table"}};
  check_values(f, "keepalive", ok, N(ok), bad, N(bad), DELAY_WORDS);
  assert_int_equal(f->opts.keepalive, 60);
}

/* Long strings are cut to the buffer, never overrun it. */
static void test_message_cut_to_buffer(void **state) {
  fixture *f = *state;
  char small[16];
  memset(small, 'x', sizeof small);
  lua_pushstring(f->L, "a very long string value that does not fit");
  assert_int_equal(le_opts_set(&f->opts, "nodelay", f->L, -1, small, 12),
                   LE_OPT_INVALID);
  assert_string_equal(small, "expected a ");
  assert_int_equal(small[12], 'x');
  lua_settop(f->L, 0);
}

/* ---- getopts and setopts agree ---- */

/* Writes into buf a Lua value, other than row d's default, that its kind
 * accepts: so every option, old or new, takes part in the round trip. */
static const char *other_value(const le_opt_def *d, char *buf, size_t len) {
  switch (d->kind) {
  case LE_OPTK_PACKET: return d->def == LE_PACKET_2 ? "4" : "2";
  case LE_OPTK_SECONDS: return d->def < 0 ? "1.5" : "false";
  case LE_OPTK_BOOL: return d->def ? "false" : "true";
  case LE_OPTK_DELAY: return d->def == 0 ? "true" : "false";
  case LE_OPTK_BYTES: return d->def == 0 ? "4096" : "false";
  case LE_OPTK_SIZE: break;
  }
  snprintf(buf, len, "%lld", (long long)(d->def == d->min ? d->max : d->min));
  return buf;
}

/* Sets option i of `to` from its Lua form in `from`. */
static le_opt_status copy_option(fixture *f, size_t i, const le_opts *from,
                                 le_opts *to) {
  assert_int_equal(le_opts_push(from, le_opts_name(i), f->L), 0);
  le_opt_status st =
      le_opts_set(to, le_opts_name(i), f->L, -1, f->err, sizeof f->err);
  lua_settop(f->L, 0);
  return st;
}

/* Every option, set to a value other than its default, shows a Lua form
 * (what getopts returns) that sets the same value again. */
static void test_round_trip(void **state) {
  fixture *f = *state;
  le_opts defaults = f->opts, copy = f->opts;
  char buf[32];
  for (size_t i = 0; i < le_opts_count(); i++) {
    le_opts before = f->opts;
    assert_sets(f, le_opts_name(i),
                other_value(le_opts_at(i), buf, sizeof buf));
    assert_memory_not_equal(&f->opts, &before, sizeof before);
  }
  for (size_t i = 0; i < le_opts_count(); i++) {
    le_opts one = defaults;
    assert_int_equal(copy_option(f, i, &f->opts, &one), LE_OPT_OK);
    assert_memory_not_equal(&one, &defaults, sizeof one);
    assert_int_equal(copy_option(f, i, &f->opts, &copy), LE_OPT_OK);
  }
  assert_memory_equal(&copy, &f->opts, sizeof copy);
}

/* Only socket options (nodelay, keepalive) make the socket change. */
static void test_differ(void **state) {
  fixture *f = *state;
  le_opts a = f->opts;
  assert_false(le_opts_differ(&a, &f->opts, LE_OPTF_SOCKET));
  assert_sets(f, "recv_buffer", "10");
  assert_sets(f, "packet", "'line'");
  assert_sets(f, "idle_timeout", "1");
  assert_false(le_opts_differ(&a, &f->opts, LE_OPTF_SOCKET));
  assert_sets(f, "nodelay", "false");
  assert_true(le_opts_differ(&a, &f->opts, LE_OPTF_SOCKET));
  a = f->opts;
  assert_sets(f, "keepalive", "30");
  assert_true(le_opts_differ(&a, &f->opts, LE_OPTF_SOCKET));
  a = f->opts;
  assert_sets(f, "keepalive", "30");
  assert_false(le_opts_differ(&a, &f->opts, LE_OPTF_SOCKET));
}

/* ---- the docs ---- */

/* A table of options in a docs file: config.md's is the reference and
 * repeats the table's type and meaning text word for word; api.md's gives
 * the same options and defaults in words of its own. */
typedef struct docs_table {
  const char *path;    /* below the repository root */
  const char *section; /* the heading the table follows */
  const char *header;  /* its header line */
  int same_text;       /* compare the type and meaning columns too */
} docs_table;

static const docs_table config_md = {"docs/config.md", "## Connection options",
                                     "| option | type | default | meaning |",
                                     1};
static const docs_table api_md = {"docs/api.md", "## Connection options",
                                  "| option | values | default | meaning |", 0};

/* Splits a table row "| a | b | c | d |" in place into cells. Returns how
 * many cells it found (at most max). */
static size_t split_row(char *row, char **cells, size_t max) {
  size_t n = 0, len = strlen(row);
  if (len < 4 || strncmp(row, "| ", 2) != 0 || strcmp(row + len - 2, " |"))
    return 0;
  row[len - 2] = '\0';
  char *cell = row + 2;
  while (n < max) {
    cells[n++] = cell;
    char *bar = strstr(cell, " | ");
    if (bar == NULL) break;
    *bar = '\0';
    cell = bar + 3;
  }
  return n;
}

/* Copies the value a default cell starts with into buf: its first `code`,
 * or else its first word ("1048576 (1 MiB)"). */
static const char *default_value(const char *cell, char *buf, size_t len) {
  const char *a = cell, *b;
  if (*cell == '`') {
    a = cell + 1;
    b = strchr(a, '`');
  } else {
    b = a + strcspn(a, " ");
  }
  if (b == NULL || b == a || (size_t)(b - a) >= len)
    fail_msg("no default value in \"%s\"", cell);
  memcpy(buf, a, (size_t)(b - a));
  buf[b - a] = '\0';
  return buf;
}

/* Checks row i of docs table t against option i: the name, the default
 * (a Lua value equal to what getopts returns for it) and, where the table
 * repeats them, the type and meaning text. */
static void check_docs_row(fixture *f, const docs_table *t, size_t i,
                           char *line) {
  char *cells[5], name[64], def[64];
  const le_opt_def *d = le_opts_at(i);
  if (split_row(line, cells, 5) != 4)
    fail_msg("%s: not a row of 4 cells: %s", t->path, line);
  if (d == NULL)
    fail_msg("%s lists %s, which is not in src/opts.c's table", t->path,
             cells[0]);
  snprintf(name, sizeof name, "`%s`", d->name);
  if (strcmp(cells[0], name) != 0)
    fail_msg("%s row %zu is %s; src/opts.c's row %zu is %s", t->path, i + 1,
             cells[0], i + 1, name);
  if (t->same_text) {
    assert_string_equal(cells[1], d->type);
    assert_string_equal(cells[3], d->meaning);
  }
  push_expr(f->L, default_value(cells[2], def, sizeof def));
  assert_int_equal(le_opts_push(&f->opts, d->name, f->L), 0);
  if (!lua_rawequal(f->L, -1, -2))
    fail_msg("%s documents %s's default as %s; it is %s", t->path, d->name, def,
             luaL_tolstring(f->L, -1, NULL));
  lua_settop(f->L, 0);
}

/* Docs table t lists exactly the options of the table, in its order, with
 * the defaults le_opts_init sets: an option added without its
 * documentation fails here. */
static void check_docs(fixture *f, const docs_table *t) {
  char path[512], section[128], header[128];
  snprintf(path, sizeof path, "%s/%s", LE_SOURCE_DIR, t->path);
  snprintf(section, sizeof section, "\n%s\n", t->section);
  snprintf(header, sizeof header, "\n%s\n", t->header);
  char *text = read_file(path);
  char *at = strstr(text, section);
  if (at == NULL) fail_msg("%s has no '%s'", t->path, t->section);
  at = strstr(at, header);
  if (at == NULL) fail_msg("%s: no table '%s'", t->path, t->header);
  char *line = strchr(at + 1, '\n') + 1; /* the "| --- |" line */
  line = strchr(line, '\n') + 1;
  size_t rows = 0;
  while (line[0] == '|') {
    char *end = strchr(line, '\n');
    assert_non_null(end);
    *end = '\0';
    check_docs_row(f, t, rows++, line);
    line = end + 1;
  }
  if (rows != le_opts_count())
    fail_msg(
        "%s lists %zu options; src/opts.c has %zu (the first missing is "
        "%s)",
        t->path, rows, le_opts_count(), le_opts_name(rows));
  free(text);
}

static void test_docs_config_md(void **state) {
  check_docs(*state, &config_md);
}

static void test_docs_api_md(void **state) { check_docs(*state, &api_md); }

#define TEST(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      TEST(test_defaults),
      TEST(test_names),
      TEST(test_rows_are_consistent),
      TEST(test_unknown_name),
      TEST(test_packet),
      TEST(test_sizes),
      TEST(test_timeouts),
      TEST(test_booleans),
      TEST(test_keepalive),
      TEST(test_message_cut_to_buffer),
      TEST(test_round_trip),
      TEST(test_differ),
      TEST(test_docs_config_md),
      TEST(test_docs_api_md),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
