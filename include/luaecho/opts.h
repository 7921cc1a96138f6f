/* Connection options: one table (src/opts.c) describes every option a
 * listener, a config file, conn:setopts() and luaecho.connect can set: its
 * name, kind, range, default, field in le_opts and documentation. The
 * defaults, the validation and its messages, the Lua form getopts returns
 * and the list of names all come from that table, so the config file and
 * setopts accept exactly the same values and reject them with the same
 * words, and tests/test_opts.c checks docs/config.md against it.
 *
 * Adding an option: a field in le_opts (as narrow as its kind allows) and
 * one row in the table in opts.c; then a row in the options tables of
 * docs/config.md and docs/api.md, which tests/test_opts.c compares with
 * it. Code that acts on the option reads the field directly.
 */
#ifndef LUAECHO_OPTS_H
#define LUAECHO_OPTS_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "luaecho/framing.h"

#define LE_MAX_SIZE_OPT (1024 * 1024 * 1024) /* 1 GiB bound for size options \
                                              */
#define LE_MAX_TIMEOUT 1e9 /* seconds (about 31 years); longer ones are cut */

/* Every connection carries a copy, so fields are as narrow as their
 * values allow. The hot path (recv, send) reads them directly. */
typedef struct le_opts {
  double recv_timeout; /* seconds; < 0: none (recv's default) */
  double send_timeout; /* seconds a send may wait to queue; < 0: none */
  double idle_timeout; /* seconds without traffic before closing; < 0: none */
  double cpu_limit;    /* seconds a handler may compute without
                        * waiting; < 0: none */
  /* Sizes are at most LE_MAX_SIZE_OPT (1 GiB). */
  uint32_t packet_size;       /* largest message recv accepts in framed modes */
  uint32_t recv_buffer;       /* input buffered for a handler not in recv */
  uint32_t send_buffer;       /* queued output above which send waits */
  uint32_t keepalive;         /* TCP keepalive delay in seconds, 0: off */
  uint32_t trace_bytes;       /* bytes of each read a trace line shows */
  uint32_t sndbuf, rcvbuf;    /* SO_SNDBUF/SO_RCVBUF as the kernel set them;
                               * 0: its default */
  uint32_t read_size;         /* most bytes one read takes from the kernel */
  uint8_t packet;             /* le_packet: framing of recv and send */
  uint8_t send_timeout_close; /* close the connection after a send timeout */
  uint8_t nodelay;            /* TCP_NODELAY */
  uint8_t trace;              /* write a trace line per socket event */
  uint8_t trace_hex;          /* show traced bytes as hex */
  uint8_t conn_summary;       /* log one line when the connection ends */
} le_opts;

/* How an option's value is read, stored and shown. Each kind has one C
 * type for its field (opts.c checks a row's field against it at compile
 * time) and one "expected ..." message. */
typedef enum {
  LE_OPTK_PACKET,  /* uint8_t le_packet: "raw", "line", 0, 1, 2 or 4 */
  LE_OPTK_SIZE,    /* uint32_t: an integer in min..max */
  LE_OPTK_SECONDS, /* double: seconds > 0 (cut at LE_MAX_TIMEOUT), or
                    * false, stored as -1, for none */
  LE_OPTK_BOOL,    /* uint8_t: a boolean, stored as 0 or 1 */
  LE_OPTK_BYTES,   /* uint32_t: an integer in min..max, or false, stored
                    * as 0, for the kernel's default */
  LE_OPTK_DELAY    /* uint32_t: integer seconds in min..max, true for `on`
                    * seconds, or false, stored as 0, for off */
} le_opt_kind;

/* Row flags. */
#define LE_OPTF_SOCKET \
  1u /* a socket option: setopts applies it to the socket */

/* One option: one row of the table in opts.c. */
typedef struct le_opt_def {
  const char *name; /* as in config files, setopts and getopts */
  le_opt_kind kind;
  size_t offset;       /* of its field in le_opts */
  int64_t min, max;    /* the accepted range of SIZE and DELAY */
  double def;          /* the default, as stored in the field */
  double on;           /* DELAY: the seconds `true` stands for */
  unsigned flags;      /* LE_OPTF_* */
  const char *type;    /* the "type" column of docs/config.md */
  const char *meaning; /* the "meaning" column of docs/config.md */
} le_opt_def;

/* Returns the i-th option, in documentation order, or NULL when i is past
 * the last one. */
const le_opt_def *le_opts_at(size_t i);

/* Returns the i-th option's name, or NULL when i is past the last one. */
const char *le_opts_name(size_t i);

/* Returns how many options there are. */
size_t le_opts_count(void);

/* Returns the option called `name`, or NULL. */
const le_opt_def *le_opts_find(const char *name);

/* Returns 1 when `name` is an option. */
int le_opts_known(const char *name);

/* Fills opts with the documented defaults. */
void le_opts_init(le_opts *opts);

/* The result of le_opts_set. */
typedef enum {
  LE_OPT_OK,
  LE_OPT_UNKNOWN, /* no option has that name */
  LE_OPT_INVALID  /* the value is wrong; the reason is in err */
} le_opt_status;

/* Sets option `name` from the Lua value at idx of L, leaving the stack as
 * it was. On LE_OPT_INVALID opts is unchanged and err holds
 * "expected ..., got ..." for the caller to prefix with the place. */
le_opt_status le_opts_set(le_opts *opts, const char *name, lua_State *L,
                          int idx, char *err, size_t errlen);

/* Pushes the Lua form of option `name` (what getopts returns; setting it
 * back gives the same value); returns 0, or -1 (nothing pushed) for an
 * unknown name. */
int le_opts_push(const le_opts *opts, const char *name, lua_State *L);

/* Returns 1 when a and b differ in an option whose flags include any of
 * `flags` (LE_OPTF_SOCKET: the socket must be updated), else 0. */
int le_opts_differ(const le_opts *a, const le_opts *b, unsigned flags);

/* Milliseconds in `seconds` (>= 0), rounded up, capped far from overflow
 * (1e15 ms is about 30,000 years: never, in practice). */
static inline uint64_t le_opts_ms(double seconds) {
  double ms = seconds * 1000.0;
  uint64_t whole = ms > 1e15 ? (uint64_t)1e15 : (uint64_t)ms;
  return (double)whole < ms ? whole + 1 : whole;
}

#endif
