/* The luaecho command: options -> configuration -> server -> run ->
 * orderly shutdown. Exit status: 0 normal, 1 configuration, handler or bind
 * errors, 2 usage errors. */
#include <lua.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <uv.h>

#include "luaecho/config.h"
#include "luaecho/server.h"

#define EXIT_CONFIG 1
#define EXIT_USAGE 2

static const char usage_text[] =
    "Usage: luaecho [options] [config.lua]\n"
    "       luaecho [options] --connect ADDR [-c N] client.lua [args...]\n"
    "\n"
    "A scriptable TCP server: every connection runs a Lua handler.\n"
    "With no config file, ./config.lua is used if present, else the\n"
    "built-in defaults (listen on " LE_DEFAULT_LISTEN
    " with the echo handler).\n"
    "\n"
    "Options:\n"
    "  --listen ADDR      listen on ADDR instead of the config's addresses\n"
    "                     (repeatable): 127.0.0.1:7000, [::1]:7000,\n"
    "                     0.0.0.0:0 (any free port), unix:/path/to.sock\n"
    "  --handler FILE     run FILE as the default handler\n"
    "  --log-level LEVEL  debug, info, warn or error\n"
    "  --trace            trace every connection's socket events (see\n"
    "                     docs/observability.md)\n"
    "  --connect ADDR     client mode: connect to ADDR (host:port or\n"
    "                     unix:/path) and run client.lua on the connection\n"
    "                     as a handler, with args; exit with its status\n"
    "  -c N               client mode: run N clients at once (default 1)\n"
    "  --check            load and validate the config and handlers, print\n"
    "                     what would listen, and exit\n"
    "  --version          print the version and exit\n"
    "  --help             print this help and exit\n"
    "\n"
    "Example handlers: " LE_DATADIR
    "/examples\n"
    "Documentation: man luaecho, " LE_DOCDIR "\n";

typedef struct options {
  const char *config;
  const char **listen;
  size_t nlisten;
  const char *handler;
  const char *log_level;
  le_log_level level; /* log_level parsed */
  int check;
  int trace;                      /* --trace: every connection is traced */
  const char *connect;            /* --connect: client mode, to this address */
  const char *nclients;           /* -c N */
  const char *const *client_args; /* after the client script */
  int nclient_args;
  int sandbox; /* the sandbox setting the server started with */
} options;

static int usage_error(const char *fmt, const char *arg) {
  fprintf(stderr, "luaecho: ");
  fprintf(stderr, fmt, arg);
  fprintf(stderr, "\nTry 'luaecho --help'.\n");
  return EXIT_USAGE;
}

/* Returns the value of an option given as "--name VALUE" or "--name=VALUE",
 * advancing *i past it, or NULL when argv[*i] is not that option. Sets
 * *missing when the option is there without a value. */
static const char *option_value(char **argv, int argc, int *i, const char *name,
                                int *missing) {
  size_t n = strlen(name);
  if (strncmp(argv[*i], name, n) != 0) return NULL;
  if (argv[*i][n] == '=') return argv[*i] + n + 1;
  if (argv[*i][n] != '\0') return NULL;
  if (*i + 1 >= argc) {
    *missing = 1;
    return NULL;
  }
  return argv[++*i];
}

/* Returns the -c figure, or 0 when it is not a number 1..100000. */
static size_t client_count(const char *text) {
  char *end;
  long n = strtol(text, &end, 10);
  return *text != '\0' && *end == '\0' && n >= 1 && n <= 100000 ? (size_t)n : 0;
}

/* Parses argv into o. Returns -1 to go on, or an exit status. */
static int parse_args(int argc, char **argv, options *o) {
  static const char *const valued[] = {"--listen", "--handler", "--log-level",
                                       "--connect", "-c"};
  o->listen = calloc((size_t)argc, sizeof *o->listen);
  if (o->listen == NULL) return EXIT_CONFIG;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = NULL;
    int missing = 0, k = 0;
    for (; k < 5 && !v && !missing; k++)
      v = option_value(argv, argc, &i, valued[k], &missing);
    if (missing) return usage_error("option '%s' requires a value", a);
    if (v && k == 1)
      o->listen[o->nlisten++] = v;
    else if (v && k == 2)
      o->handler = v;
    else if (v && k == 3)
      o->log_level = v;
    else if (v && k == 4)
      o->connect = v;
    else if (v)
      o->nclients = v;
    else if (strcmp(a, "--check") == 0)
      o->check = 1;
    else if (strcmp(a, "--trace") == 0)
      o->trace = 1;
    else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      fputs(usage_text, stdout);
      return 0;
    } else if (strcmp(a, "--version") == 0) {
      printf("luaecho %s (%s, libuv %s)\n", LE_VERSION, LUA_RELEASE,
             uv_version_string());
      return 0;
    } else if (a[0] == '-' && a[1] != '\0') {
      return usage_error("unknown option '%s'", a);
    } else if (o->connect != NULL) {
      /* Client mode: the script, then its own arguments, untouched. */
      o->config = a;
      o->client_args = (const char *const *)argv + i + 1;
      o->nclient_args = argc - i - 1;
      break;
    } else if (o->config != NULL)
      return usage_error("unexpected argument '%s' (one config file only)", a);
    else
      o->config = a;
  }
  if (o->connect != NULL && o->config == NULL)
    return usage_error("%s",
                       "--connect needs a client script: luaecho "
                       "--connect ADDR client.lua [args...]");
  if (o->nclients != NULL && o->connect == NULL)
    return usage_error("%s", "-c goes with --connect");
  if (o->nclients != NULL && client_count(o->nclients) == 0)
    return usage_error("-c: expected a number of clients 1..100000, got '%s'",
                       o->nclients);
  if (o->log_level != NULL && le_log_level_parse(o->log_level, &o->level) != 0)
    return usage_error(
        "--log-level: expected debug, info, warn or error, got '%s'",
        o->log_level);
  return -1;
}

static int file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

/* Builds the configuration: defaults, then the file, then the options. */
static int configure(const options *o, le_config *cfg, char *err,
                     size_t errlen) {
  if (le_config_init(cfg) != 0) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  /* In client mode the positional argument is the client script; the
   * configuration is the built-in one with the command-line options. */
  const char *path = o->connect != NULL ? NULL : o->config;
  if (path == NULL && o->connect == NULL && file_exists("config.lua"))
    path = "config.lua";
  if (path != NULL && le_config_load_file(cfg, path, err, errlen) != 0)
    return -1;
  if (o->nlisten > 0 &&
      le_config_set_listen(cfg, o->listen, o->nlisten, err, errlen) != 0)
    return -1;
  if (o->handler != NULL && le_config_set_handler(cfg, o->handler) != 0) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  if (o->log_level != NULL) cfg->log_level = o->level;
  if (o->trace) le_config_trace_all(cfg);
  return 0;
}

/* le_config_loader for SIGHUP: the same file and options as at start. The
 * handlers' Lua state is made once, sandboxed or not, so a config that
 * changes `sandbox` cannot be applied while the server runs. */
static int reload_config(void *arg, le_config *cfg, char *err, size_t errlen) {
  const options *o = arg;
  if (configure(o, cfg, err, errlen) != 0) return -1;
  if (cfg->sandbox == o->sandbox) return 0;
  snprintf(err, errlen,
           "%s: key 'sandbox': changing it needs a restart (the server runs "
           "with sandbox = %s)",
           cfg->path ? cfg->path : "config", o->sandbox ? "true" : "false");
  return -1;
}

/* Raises the soft descriptor limit to the hard one: every connection holds
 * a descriptor, and the soft limit (often 1024) is a default, not a
 * decision. On failure the old limit stays; the server logs the figure in
 * force either way. */
static void raise_fd_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == rl.rlim_max) return;
  rl.rlim_cur = rl.rlim_max;
  (void)setrlimit(RLIMIT_NOFILE, &rl);
}

/* Runs the server on cfg, which it takes over. */
static int serve(le_config *cfg, options *o) {
  char err[1024];
  le_server server;
  int status = EXIT_CONFIG;
  raise_fd_limit();
  if (le_server_init(&server, cfg, err, sizeof err) == 0 &&
      (o->connect != NULL
           ? le_server_connect(&server, o->connect, o->config,
                               o->nclients ? client_count(o->nclients) : 1,
                               o->client_args, o->nclient_args, err, sizeof err)
           : le_server_listen(&server, err, sizeof err)) == 0) {
    server.reload_config = reload_config;
    server.reload_arg = o;
    status = le_server_run(&server);
  } else {
    fprintf(stderr, "luaecho: %s\n", err);
  }
  le_server_free(&server);
  return status;
}

int main(int argc, char **argv) {
  options o;
  memset(&o, 0, sizeof o);
  int status = parse_args(argc, argv, &o);
  if (status >= 0) {
    free(o.listen);
    return status;
  }
  /* A peer that goes away while we write must cost one connection, never
   * the process: write errors come back as EPIPE instead. */
  signal(SIGPIPE, SIG_IGN);
  le_config *cfg = calloc(1, sizeof *cfg);
  char err[1024];
  if (cfg == NULL || configure(&o, cfg, err, sizeof err) != 0) {
    fprintf(stderr, "luaecho: %s\n", cfg ? err : "out of memory");
    status = EXIT_CONFIG;
  } else if (o.check) {
    status =
        le_server_check(cfg, stdout, err, sizeof err) == 0 ? 0 : EXIT_CONFIG;
    if (status != 0) fprintf(stderr, "luaecho: %s\n", err);
  } else {
    o.sandbox = cfg->sandbox;
    status = serve(cfg, &o);
    cfg = NULL; /* the server freed it */
  }
  if (cfg != NULL) le_config_free(cfg);
  free(cfg);
  free(o.listen);
  return status;
}
