/* Listen and connect addresses as users write them, and socket addresses as
 * logs show them. Pure text work: no libuv, no Lua, no name resolution.
 *
 *   "127.0.0.1:7000"   IPv4 host and port
 *   "[::1]:7000"       IPv6 host in brackets and port
 *   "localhost:7000"   a host name, resolved when the listener is bound
 *   "*:7000"           every IPv4 interface (same as "0.0.0.0:7000")
 *   "unix:/path.sock"  a Unix domain socket
 * A port is 0..65535; 0 asks the kernel for a free port.
 */
#ifndef LUAECHO_ADDR_H
#define LUAECHO_ADDR_H

#include <stddef.h>
#include <sys/socket.h>

typedef enum { LE_ADDR_TCP, LE_ADDR_UNIX } le_addr_kind;

#define LE_ADDR_HOST_MAX 256
#define LE_ADDR_PATH_MAX 108 /* sizeof(sockaddr_un.sun_path) on Linux */
/* Room for any address as le_addr_format* writes it. */
#define LE_ADDR_TEXT_MAX (LE_ADDR_HOST_MAX + 16)

typedef struct le_addr {
  le_addr_kind kind;
  char host[LE_ADDR_HOST_MAX]; /* TCP: host without brackets */
  int port;                    /* TCP: 0..65535 */
  char path[LE_ADDR_PATH_MAX]; /* UNIX: file system path */
} le_addr;

/* Parses `text`. Returns 0, or -1 with a sentence in err saying what is
 * wrong (without repeating the text itself). */
int le_addr_parse(const char *text, le_addr *out, char *err, size_t errlen);

/* Writes the address as users write it ("1.2.3.4:5", "[::1]:5",
 * "unix:/p") into out. Returns out. */
char *le_addr_format(const le_addr *addr, char *out, size_t len);

/* Writes host and port as "1.2.3.4:5", "[::1]:5" (a host with a colon),
 * "unix:PATH" (port < 0; control bytes in PATH written as "\x0a"), or
 * "unix" (port < 0 and no path). Returns out. */
char *le_addr_format_host_port(const char *host, int port, char *out,
                               size_t len);

/* Writes a socket address as "1.2.3.4:5" or "[::1]:5" (AF_UNIX: "unix:PATH",
 * or "unix:" for an unnamed peer). Returns out. */
char *le_addr_format_sockaddr(const struct sockaddr *sa, socklen_t salen,
                              char *out, size_t len);

/* Splits a socket address into host text and port (port -1 for AF_UNIX).
 * Returns 0, or -1 for an address family it does not know. */
int le_addr_split_sockaddr(const struct sockaddr *sa, socklen_t salen,
                           char *host, size_t hostlen, int *port);

/* Sets the port of an IPv4 or IPv6 socket address (a resolver's answer
 * carries none). */
void le_addr_set_port(struct sockaddr *sa, int port);

/* Returns how many leading bytes of a file path name its directory: 0
 * without a '/', 1 for a file at the root, else up to its last '/'. */
size_t le_addr_dir_len(const char *path);

/* Returns a malloc'd copy of the directory of a file path ("." without a
 * '/', "/" at the root), or NULL when out of memory. Handler files, config
 * files and unix socket paths all use it. */
char *le_addr_dir(const char *path);

#endif
