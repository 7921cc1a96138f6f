/* Connection options: one definition of every option a listener, a config
 * file and conn:setopts() can set, with its default, its validation and
 * its Lua form, so the config file and setopts accept exactly the same
 * values and reject them with the same words.
 */
#ifndef LUAECHO_OPTS_H
#define LUAECHO_OPTS_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "luaecho/framing.h"

#define LE_MAX_SIZE_OPT (1024 * 1024 * 1024) /* 1 GiB bound for size options */
#define LE_MAX_TIMEOUT 1e9 /* seconds (about 31 years); longer ones are cut */

typedef struct le_opts {
  double recv_timeout;      /* seconds; < 0: none (recv's default) */
  double send_timeout;      /* seconds a send may wait to queue; < 0: none */
  double idle_timeout;      /* seconds without traffic before closing; < 0: none */
  /* Narrow fields keep every connection's copy small; sizes are at most
   * LE_MAX_SIZE_OPT (1 GiB). */
  uint32_t packet_size;     /* largest message recv accepts in framed modes */
  uint32_t recv_buffer;     /* input buffered for a handler not in recv */
  uint32_t send_buffer;     /* queued output above which send waits */
  uint32_t keepalive;       /* TCP keepalive delay in seconds, 0: off */
  uint8_t packet;           /* le_packet: framing of recv and send */
  uint8_t send_timeout_close; /* close the connection after a send timeout */
  uint8_t nodelay;          /* TCP_NODELAY */
} le_opts;

/* Fills opts with the documented defaults. */
void le_opts_init(le_opts *opts);

/* The result of le_opts_set. */
typedef enum {
  LE_OPT_OK,
  LE_OPT_UNKNOWN, /* no option has that name */
  LE_OPT_INVALID  /* the value is wrong; the reason is in err */
} le_opt_status;

/* Sets option `name` from the Lua value at idx of L. On LE_OPT_INVALID err
 * holds "expected ..., got ..." for the caller to prefix with the place. */
le_opt_status le_opts_set(le_opts *opts, const char *name, lua_State *L,
                          int idx, char *err, size_t errlen);

/* Pushes the Lua form of option `name`; returns 0, or -1 (nothing pushed)
 * for an unknown name. */
int le_opts_push(const le_opts *opts, const char *name, lua_State *L);

/* Returns 1 when `name` is an option. */
int le_opts_known(const char *name);

/* The option names, NULL-terminated, in documentation order. */
extern const char *const le_opts_names[];

/* Milliseconds in `seconds` (>= 0), rounded up, capped far from overflow
 * (1e15 ms is about 30,000 years: never, in practice). */
static inline uint64_t le_opts_ms(double seconds) {
  double ms = seconds * 1000.0;
  uint64_t whole = ms > 1e15 ? (uint64_t)1e15 : (uint64_t)ms;
  return (double)whole < ms ? whole + 1 : whole;
}

#endif
