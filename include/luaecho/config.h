/* The server's configuration: built-in defaults, a config.lua file evaluated
 * in its own environment, and command-line overrides, validated into plain C
 * data that the server reads and never changes.
 *
 * A config file is a Lua chunk; the globals it assigns are the keys. It runs
 * in a separate, short-lived Lua state with the standard libraries visible,
 * so it may compute values (os.getenv, string.format, loops), always under
 * the sandbox (sandbox.h) whatever its `sandbox` key says. Every error
 * names the file, the key and what was expected, on one line.
 */
#ifndef LUAECHO_CONFIG_H
#define LUAECHO_CONFIG_H

#include <stddef.h>

#include "luaecho/addr.h"
#include "luaecho/log.h"
#include "luaecho/opts.h"

#define LE_DEFAULT_LISTEN "127.0.0.1:7000"
#define LE_DEFAULT_BACKLOG 511
#define LE_DEFAULT_SHUTDOWN_TIMEOUT 10.0

/* max_connections: the default, derived from the descriptor limit when the
 * server starts (see le_config_max_connections), and the largest value a
 * file may give. */
#define LE_MAX_CONNECTIONS_AUTO (-1)
#define LE_MAX_CONNECTIONS_MAX 1000000000

typedef struct le_listener_conf {
  char *address;        /* as written, for messages */
  le_addr addr;         /* parsed form */
  char *handler;        /* handler file, or NULL to use the top-level handler */
  int backlog;          /* listen(2) backlog */
  int max_connections;  /* its connections open at once; 0 for no cap */
  le_opts opts;         /* options of its connections */
  unsigned builtin : 1; /* the default listener, not named by any file */
} le_listener_conf;

typedef struct le_config {
  char *path;                  /* config file, or NULL for built-in defaults */
  le_listener_conf *listeners; /* at least one */
  size_t nlisteners;
  char *handler;           /* default handler file, NULL for built-in echo */
  char *trace_file;        /* where trace lines go; NULL: the log */
  int backlog;             /* default backlog for listeners */
  int max_connections;     /* accepted connections open at once across
                              listeners: 0 for no cap, or
                              LE_MAX_CONNECTIONS_AUTO */
  le_opts opts;            /* default connection options */
  double shutdown_timeout; /* seconds connections may drain at shutdown */
  le_log_level log_level;
  int watch;         /* reload handlers when their files change */
  int sandbox;       /* handlers run sandboxed (sandbox.h) */
  size_t max_memory; /* cap on the Lua state's memory; 0 none */
  /* The admin listener (docs/admin.md), or NULL when off (the default).
   * Its connections take the default options, not the file's. */
  le_listener_conf *admin;
} le_config;

/* Fills cfg with the built-in defaults. Returns 0, or -1 when out of memory. */
int le_config_init(le_config *cfg);

/* Evaluates the config file at `path` on top of cfg's current values.
 * Relative handler paths are resolved against the file's directory.
 * Returns 0, or -1 with the complete message in err
 * (for example "c.lua: key 'backlog': expected integer, got string"). */
int le_config_load_file(le_config *cfg, const char *path, char *err,
                        size_t errlen);

/* Same as le_config_load_file for a chunk held in memory; `name` stands for
 * the file in messages and `dir` (may be NULL) resolves relative paths. */
int le_config_load_string(le_config *cfg, const char *chunk, const char *name,
                          const char *dir, char *err, size_t errlen);

/* Replaces the listeners with the given addresses (the --listen option).
 * Returns 0, or -1 with a message in err. */
int le_config_set_listen(le_config *cfg, const char *const *addrs, size_t n,
                         char *err, size_t errlen);

/* Replaces the top-level handler (the --handler option). Returns 0 or -1. */
int le_config_set_handler(le_config *cfg, const char *path);

/* Returns the handler a listener runs: its own, else the top-level one;
 * NULL means the built-in echo handler. */
const char *le_config_listener_handler(const le_config *cfg,
                                       const le_listener_conf *l);

/* Returns the cap on accepted connections open at once across listeners:
 * cfg's max_connections, or when that is LE_MAX_CONNECTIONS_AUTO, the
 * descriptor limit fd_limit less one eighth of it (at least 32 descriptors)
 * kept for the server's own files and outbound connections, and at least 1.
 * 0 means no cap (also for AUTO when fd_limit is 0: unknown or unlimited). */
size_t le_config_max_connections(const le_config *cfg, size_t fd_limit);

/* Releases everything cfg holds. */
void le_config_free(le_config *cfg);

/* The smallest max_memory accepted: below it the server cannot start. */
#define LE_MIN_MAX_MEMORY (4 * 1024 * 1024)

/* Turns the `trace` option on for every listener (--trace). */
void le_config_trace_all(le_config *cfg);

/* Seconds of CPU evaluating config.lua may take. */
#define LE_CONFIG_CPU_LIMIT 5.0

#endif
