/* Address text: see include/luaecho/addr.h. */
#include "luaecho/addr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "luaecho/log.h"

#define UNIX_PREFIX "unix:"

static int fail(char *err, size_t errlen, const char *msg) {
  snprintf(err, errlen, "%s", msg);
  return -1;
}

/* Parses a decimal port 0..65535 that must fill the whole string. */
static int parse_port(const char *s, int *port) {
  if (*s == '\0' || strlen(s) > 5) return -1;
  int value = 0;
  for (; *s; s++) {
    if (*s < '0' || *s > '9') return -1;
    value = value * 10 + (*s - '0');
  }
  if (value > 65535) return -1;
  *port = value;
  return 0;
}

static int parse_unix(const char *path, le_addr *out, char *err,
                      size_t errlen) {
  if (*path == '\0') return fail(err, errlen, "the unix socket path is empty");
  if (strlen(path) >= sizeof out->path)
    return fail(err, errlen, "the unix socket path is longer than 107 bytes");
  out->kind = LE_ADDR_UNIX;
  strcpy(out->path, path);
  return 0;
}

int le_addr_parse(const char *text, le_addr *out, char *err, size_t errlen) {
  static const char usage[] = "expected host:port, [ipv6]:port or unix:/path";
  memset(out, 0, sizeof *out);
  if (strncmp(text, UNIX_PREFIX, strlen(UNIX_PREFIX)) == 0)
    return parse_unix(text + strlen(UNIX_PREFIX), out, err, errlen);

  const char *host = text, *host_end, *colon;
  if (*text == '[') {
    host = text + 1;
    host_end = strchr(host, ']');
    if (host_end == NULL || host_end[1] != ':') return fail(err, errlen, usage);
    colon = host_end + 1;
    struct in6_addr probe;
    char tmp[LE_ADDR_HOST_MAX];
    size_t n = (size_t)(host_end - host);
    if (n >= sizeof tmp) return fail(err, errlen, usage);
    memcpy(tmp, host, n);
    tmp[n] = '\0';
    if (inet_pton(AF_INET6, tmp, &probe) != 1)
      return fail(err, errlen, "the host in brackets is not an IPv6 address");
  } else {
    colon = strrchr(text, ':');
    if (colon == NULL || colon == text) return fail(err, errlen, usage);
    host_end = colon;
    if (memchr(text, ':', (size_t)(colon - text)) != NULL)
      return fail(err, errlen,
                  "an IPv6 host must be written in brackets, as [::1]:7000");
  }
  size_t hostlen = (size_t)(host_end - host);
  if (hostlen == 0 || hostlen >= sizeof out->host)
    return fail(err, errlen, usage);
  if (parse_port(colon + 1, &out->port) != 0)
    return fail(err, errlen, "the port must be a number from 0 to 65535");
  out->kind = LE_ADDR_TCP;
  memcpy(out->host, host, hostlen);
  out->host[hostlen] = '\0';
  if (strcmp(out->host, "*") == 0) strcpy(out->host, "0.0.0.0");
  return 0;
}

/* Writes "unix:PATH" with every control byte of PATH escaped (log.h): a
 * client picks the path of its own socket, and a newline in it must not
 * split (nor an escape byte rewrite) the log line naming the peer. Cut at
 * len, never in the middle of an escape. */
static void format_unix(const char *path, char *out, size_t len) {
  size_t n = strlen(UNIX_PREFIX);
  if (len <= n) {
    if (len > 0) out[0] = '\0';
    return;
  }
  memcpy(out, UNIX_PREFIX, n);
  le_log_escape_into(out + n, len - n, path, strlen(path));
}

char *le_addr_format_host_port(const char *host, int port, char *out,
                               size_t len) {
  if (port < 0 && *host == '\0')
    snprintf(out, len, "unix");
  else if (port < 0)
    format_unix(host, out, len);
  else if (strchr(host, ':') != NULL)
    snprintf(out, len, "[%s]:%d", host, port);
  else
    snprintf(out, len, "%s:%d", host, port);
  return out;
}

char *le_addr_format(const le_addr *addr, char *out, size_t len) {
  if (addr->kind == LE_ADDR_UNIX)
    return le_addr_format_host_port(addr->path, -1, out, len);
  return le_addr_format_host_port(addr->host, addr->port, out, len);
}

int le_addr_split_sockaddr(const struct sockaddr *sa, socklen_t salen,
                           char *host, size_t hostlen, int *port) {
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
    inet_ntop(AF_INET, &in->sin_addr, host, (socklen_t)hostlen);
    *port = ntohs(in->sin_port);
    return 0;
  }
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    inet_ntop(AF_INET6, &in6->sin6_addr, host, (socklen_t)hostlen);
    *port = ntohs(in6->sin6_port);
    return 0;
  }
  if (sa->sa_family == AF_UNIX) {
    const struct sockaddr_un *un = (const struct sockaddr_un *)sa;
    size_t n = salen > offsetof(struct sockaddr_un, sun_path)
                   ? (size_t)salen - offsetof(struct sockaddr_un, sun_path)
                   : 0;
    n = strnlen(un->sun_path, n);
    snprintf(host, hostlen, "%.*s", (int)n, un->sun_path);
    *port = -1;
    return 0;
  }
  return -1;
}

char *le_addr_format_sockaddr(const struct sockaddr *sa, socklen_t salen,
                              char *out, size_t len) {
  char host[LE_ADDR_HOST_MAX];
  int port;
  if (le_addr_split_sockaddr(sa, salen, host, sizeof host, &port) != 0) {
    snprintf(out, len, "(unknown address family %d)", sa->sa_family);
    return out;
  }
  if (sa->sa_family == AF_UNIX && *host == '\0') {
    snprintf(out, len, UNIX_PREFIX); /* an unnamed peer, as documented */
    return out;
  }
  return le_addr_format_host_port(host, port, out, len);
}

void le_addr_set_port(struct sockaddr *sa, int port) {
  if (sa->sa_family == AF_INET)
    ((struct sockaddr_in *)sa)->sin_port = htons((uint16_t)port);
  else if (sa->sa_family == AF_INET6)
    ((struct sockaddr_in6 *)sa)->sin6_port = htons((uint16_t)port);
}

size_t le_addr_dir_len(const char *path) {
  const char *slash = strrchr(path, '/');
  if (slash == NULL) return 0;
  return slash == path ? 1 : (size_t)(slash - path);
}

char *le_addr_dir(const char *path) {
  size_t n = le_addr_dir_len(path);
  const char *from = n == 0 ? "." : path;
  if (n == 0) n = 1;
  char *dir = malloc(n + 1);
  if (dir != NULL) {
    memcpy(dir, from, n);
    dir[n] = '\0';
  }
  return dir;
}
