/* spec_proc: process control for luaecho's busted specs (Lua 5.4, Linux).
 *
 *   local proc = require "spec_proc"
 *   local p = proc.spawn({ "sh", "-c", "echo hi; exit 3" }, { cwd = "/tmp" })
 *   p:readline(5)   --> "hi"
 *   p:wait(5)       --> 3
 *
 * A spawned child writes stdout and stderr into one pipe that the parent
 * reads line by line; every line handed out is also kept in a log table
 * (p:lines_so_far()).  No call blocks longer than the timeout it is given.
 *
 * The child runs in its own process group with every signal at its default
 * disposition (a Lua process that loaded LuaSocket ignores SIGPIPE, and an
 * ignored signal survives exec: the server under test must not inherit that).
 * It is sent SIGKILL if the spec process dies (PR_SET_PDEATHSIG), and the
 * handle's __gc kills and reaps it if it is still running, so no spec leaves
 * a process behind.
 *
 * Misuse (a bad argument, an unknown signal name) raises; a runtime failure
 * (exec fails, the process is gone) returns nil and a message.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#define PROC_MT "spec_proc.process"
#define PROC_PIPE_SIZE (1024 * 1024) /* room for a chatty server's log */
#define PROC_READ_CHUNK 4096
#define PROC_WAIT_SLICE_MS 10 /* poll slice while waiting for exit */

extern char **environ;

typedef struct {
  pid_t pid;  /* child pid; stays set after reaping, for p.pid */
  int fd;     /* read end of the output pipe, -1 once closed */
  int reaped; /* 1 once waitpid() has collected the child */
  int status; /* waitpid() status, valid when reaped */
  int eof;    /* 1 once read() on fd returned 0 */
  char *buf;  /* bytes read but not yet handed out as lines */
  size_t len; /* used bytes in buf */
  size_t cap; /* allocated bytes in buf */
} proc_t;

/* Signal names without the SIG prefix, as :kill() takes and :wait() gives. */
static const struct {
  const char *name;
  int signo;
} proc_signals[] = {{"HUP", SIGHUP},   {"INT", SIGINT},   {"QUIT", SIGQUIT},
                    {"ILL", SIGILL},   {"ABRT", SIGABRT}, {"FPE", SIGFPE},
                    {"KILL", SIGKILL}, {"SEGV", SIGSEGV}, {"PIPE", SIGPIPE},
                    {"ALRM", SIGALRM}, {"TERM", SIGTERM}, {"USR1", SIGUSR1},
                    {"USR2", SIGUSR2}, {"BUS", SIGBUS},   {"CONT", SIGCONT},
                    {"STOP", SIGSTOP}, {NULL, 0}};

/* ---- time ------------------------------------------------------------ */

/* Returns CLOCK_MONOTONIC in seconds. */
static double proc_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Returns the milliseconds left until deadline, clamped to 0..INT_MAX. */
static int proc_ms_left(double deadline) {
  double ms = (deadline - proc_now()) * 1000.0;
  if (ms <= 0) return 0;
  if (ms > INT_MAX) return INT_MAX;
  return (int)(ms + 0.999);
}

/* Sleeps for s seconds, resuming after signals. */
static void proc_nap(double s) {
  struct timespec ts;
  if (s <= 0) return;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
  }
}

static double proc_checktimeout(lua_State *L, int arg) {
  double t = (double)luaL_checknumber(L, arg);
  luaL_argcheck(L, t >= 0, arg, "timeout must be >= 0");
  return t;
}

/* ---- signal names ------------------------------------------------------ */

static const char *proc_signame(int signo) {
  int i;
  for (i = 0; proc_signals[i].name != NULL; i++)
    if (proc_signals[i].signo == signo) return proc_signals[i].name;
  return NULL;
}

/* Pushes the name of signo ("TERM", or "SIG37" for an unnamed one). */
static void proc_pushsigname(lua_State *L, int signo) {
  const char *name = proc_signame(signo);
  if (name != NULL)
    lua_pushstring(L, name);
  else
    lua_pushfstring(L, "SIG%d", signo);
}

/* Returns the signal number named at arg ("TERM" or "SIGTERM"); raises if
 * unknown. */
static int proc_checksignal(lua_State *L, int arg) {
  const char *name = luaL_checkstring(L, arg);
  int i;
  if (strncmp(name, "SIG", 3) == 0) name += 3;
  for (i = 0; proc_signals[i].name != NULL; i++)
    if (strcmp(proc_signals[i].name, name) == 0) return proc_signals[i].signo;
  return luaL_argerror(L, arg, lua_pushfstring(L, "unknown signal '%s'", name));
}

/* ---- the child --------------------------------------------------------- */

/* Runs in the forked child: wires fds, resets signals, execs; never returns.
 * On failure writes errno to errfd (close-on-exec, so success closes it). */
static void proc_child(char **argv, char **envp, const char *cwd, int outfd,
                       int errfd, int stdin_null, pid_t parent) {
  sigset_t all;
  int signo, err;
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(127); /* the parent died before prctl */
  for (signo = 1; signo < NSIG; signo++)
    if (signo != SIGKILL && signo != SIGSTOP) signal(signo, SIG_DFL);
  sigemptyset(&all);
  sigprocmask(SIG_SETMASK, &all, NULL);
  if (dup2(outfd, STDOUT_FILENO) == -1 || dup2(outfd, STDERR_FILENO) == -1)
    goto fail;
  if (stdin_null) {
    int nul = open("/dev/null", O_RDONLY);
    if (nul == -1 || dup2(nul, STDIN_FILENO) == -1) goto fail;
  }
  if (cwd != NULL && chdir(cwd) == -1) goto fail;
  environ = envp;
  execvp(argv[0], argv);
fail:
  err = errno;
  while (write(errfd, &err, sizeof err) == -1 && errno == EINTR) {
  }
  _exit(127);
}

/* ---- building argv and envp ------------------------------------------- */

/* Returns a NULL-terminated array of the strings (or numbers) in the sequence
 * at arg.  The strings are anchored in a table and the array is a userdata,
 * both left on the stack, so nothing leaks if an error is raised. */
static char **proc_checkargv(lua_State *L, int arg) {
  lua_Integer n, i;
  char **argv;
  int anchors;
  luaL_checktype(L, arg, LUA_TTABLE);
  n = luaL_len(L, arg);
  luaL_argcheck(L, n >= 1, arg, "argv must hold at least the program name");
  lua_createtable(L, (int)n, 0);
  anchors = lua_gettop(L);
  argv = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof *argv, 0);
  for (i = 1; i <= n; i++) {
    lua_geti(L, arg, i);
    if (!lua_isstring(L, -1))
      luaL_error(L, "argv[%d] must be a string", (int)i);
    argv[i - 1] = (char *)lua_tostring(L, -1); /* converts a number in place */
    lua_rawseti(L, anchors, i);
  }
  argv[n] = NULL;
  return argv;
}

/* Returns environ plus "NAME=value" for each pair in the table at envidx
 * (those replace same-named entries).  Strings are anchored in a table left
 * on the stack; the array is a userdata left on the stack above it. */
static char **proc_buildenv(lua_State *L, int envidx) {
  size_t nenv = 0, nextra = 0, k = 0, i;
  char **envp;
  int anchors;
  while (environ[nenv] != NULL) nenv++;
  lua_newtable(L);
  anchors = lua_gettop(L);
  if (envidx != 0) {
    lua_pushnil(L);
    while (lua_next(L, envidx) != 0) {
      if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1))
        luaL_error(L, "opts.env must map names to strings");
      lua_pushfstring(L, "%s=%s", lua_tostring(L, -2), lua_tostring(L, -1));
      lua_rawseti(L, anchors, (lua_Integer)++nextra);
      lua_pop(L, 1);
    }
  }
  envp = lua_newuserdatauv(L, (nenv + nextra + 1) * sizeof *envp, 0);
  for (i = 0; i < nenv; i++) {
    const char *eq = strchr(environ[i], '=');
    size_t namelen = eq ? (size_t)(eq - environ[i]) + 1 : strlen(environ[i]);
    size_t j;
    int replaced = 0;
    for (j = 1; j <= nextra && !replaced; j++) {
      lua_rawgeti(L, anchors, (lua_Integer)j);
      replaced = strncmp(lua_tostring(L, -1), environ[i], namelen) == 0;
      lua_pop(L, 1);
    }
    if (!replaced) envp[k++] = environ[i];
  }
  for (i = 1; i <= nextra; i++) {
    lua_rawgeti(L, anchors, (lua_Integer)i);
    envp[k++] = (char *)lua_tostring(L, -1); /* anchored in the table */
    lua_pop(L, 1);
  }
  envp[k] = NULL;
  return envp;
}

/* ---- spawn ------------------------------------------------------------- */

static int proc_fail(lua_State *L, const char *what, int err) {
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s", what, strerror(err));
  return 2;
}

/* Reads the exec status pipe: returns 0 if exec succeeded, else the child's
 * errno. */
static int proc_execstatus(int errfd) {
  int err = 0;
  ssize_t n;
  do n = read(errfd, &err, sizeof err);
  while (n == -1 && errno == EINTR);
  return n == (ssize_t)sizeof err ? err : 0;
}

/* spawn(argv [, opts]) -> process | nil, message */
static int proc_spawn(lua_State *L) {
  char **argv, **envp;
  const char *cwd = NULL;
  int stdin_null = 0, envidx = 0, out[2], errp[2], err;
  pid_t parent = getpid(), pid;
  proc_t *p;

  luaL_checktype(L, 1, LUA_TTABLE);
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    if (lua_getfield(L, 2, "cwd") != LUA_TNIL) cwd = luaL_checkstring(L, -1);
    if (lua_getfield(L, 2, "stdin_null") != LUA_TNIL)
      stdin_null = lua_toboolean(L, -1);
    if (lua_getfield(L, 2, "env") != LUA_TNIL) {
      luaL_checktype(L, -1, LUA_TTABLE);
      envidx = lua_gettop(L);
    }
  }
  argv = proc_checkargv(L, 1);
  envp = proc_buildenv(L, envidx);

  p = lua_newuserdatauv(L, sizeof *p, 1);
  memset(p, 0, sizeof *p);
  p->fd = -1;
  p->reaped = 1; /* nothing to reap until fork succeeds */
  luaL_setmetatable(L, PROC_MT);
  lua_newtable(L); /* the log of lines handed out */
  lua_setiuservalue(L, -2, 1);

  if (pipe2(out, O_CLOEXEC) == -1) return proc_fail(L, "pipe", errno);
  if (pipe2(errp, O_CLOEXEC) == -1) {
    err = errno;
    close(out[0]);
    close(out[1]);
    return proc_fail(L, "pipe", err);
  }
  (void)fcntl(out[0], F_SETPIPE_SZ, PROC_PIPE_SIZE); /* best effort */
  fflush(NULL);
  pid = fork();
  if (pid == 0) {
    close(out[0]);
    close(errp[0]);
    proc_child(argv, envp, cwd, out[1], errp[1], stdin_null, parent);
  }
  err = errno;
  close(out[1]);
  close(errp[1]);
  if (pid == -1) {
    close(out[0]);
    close(errp[0]);
    return proc_fail(L, "fork", err);
  }
  p->pid = pid;
  p->fd = out[0];
  p->reaped = 0;
  err = proc_execstatus(errp[0]);
  close(errp[0]);
  if (err != 0) {
    while (waitpid(pid, &p->status, 0) == -1 && errno == EINTR) {
    }
    p->reaped = 1;
    return proc_fail(L, lua_pushfstring(L, "cannot run %s", argv[0]), err);
  }
  return 1;
}

/* ---- reading lines ----------------------------------------------------- */

static proc_t *proc_check(lua_State *L) {
  return luaL_checkudata(L, 1, PROC_MT);
}

/* Reads once from the pipe into buf.  Returns 1 on data, 0 on EOF or if the
 * read would block (sets p->eof on EOF), -1 on a read error (also eof).
 * Raises if the buffer cannot grow. */
static int proc_fill(lua_State *L, proc_t *p) {
  ssize_t n;
  if (p->cap - p->len < PROC_READ_CHUNK) {
    size_t cap = p->cap ? p->cap * 2 : 2 * PROC_READ_CHUNK;
    char *buf = realloc(p->buf, cap);
    if (buf == NULL) return luaL_error(L, "spec_proc: out of memory");
    p->buf = buf;
    p->cap = cap;
  }
  do n = read(p->fd, p->buf + p->len, p->cap - p->len);
  while (n == -1 && errno == EINTR);
  if (n > 0) {
    p->len += (size_t)n;
    return 1;
  }
  if (n == -1 && errno == EAGAIN) return 0;
  p->eof = 1;
  close(p->fd);
  p->fd = -1;
  return n == 0 ? 0 : -1;
}

/* Waits up to ms for output and reads it.  Returns as proc_fill, or 0 on
 * timeout. */
static int proc_pump(lua_State *L, proc_t *p, int ms) {
  struct pollfd pfd;
  int r;
  if (p->fd == -1) return 0;
  pfd.fd = p->fd;
  pfd.events = POLLIN;
  pfd.revents = 0;
  do r = poll(&pfd, 1, ms);
  while (r == -1 && errno == EINTR);
  if (r <= 0) return 0;
  return proc_fill(L, p);
}

/* Pushes the first len bytes of buf, logs them as a line and consumes them
 * plus skip bytes (the newline). */
static void proc_takeline(lua_State *L, proc_t *p, size_t len, size_t skip) {
  lua_pushlstring(L, p->buf, len);
  lua_getiuservalue(L, 1, 1);
  lua_pushvalue(L, -2);
  lua_rawseti(L, -2, luaL_len(L, -2) + 1);
  lua_pop(L, 1);
  p->len -= len + skip;
  memmove(p->buf, p->buf + len + skip, p->len);
}

/* p:readline(timeout) -> line | nil, "timeout" | nil, "eof"
 * A last line without a newline is returned once the pipe reaches EOF. */
static int proc_readline(lua_State *L) {
  proc_t *p = proc_check(L);
  double deadline = proc_now() + proc_checktimeout(L, 2);
  size_t scanned = 0;
  for (;;) {
    char *nl = memchr(p->buf + scanned, '\n', p->len - scanned);
    if (nl != NULL) {
      proc_takeline(L, p, (size_t)(nl - p->buf), 1);
      return 1;
    }
    scanned = p->len;
    if (p->eof) {
      if (p->len > 0) {
        proc_takeline(L, p, p->len, 0);
        return 1;
      }
      lua_pushnil(L);
      lua_pushliteral(L, "eof");
      return 2;
    }
    if (proc_pump(L, p, proc_ms_left(deadline)) == 0 && !p->eof &&
        proc_ms_left(deadline) == 0) {
      lua_pushnil(L);
      lua_pushliteral(L, "timeout");
      return 2;
    }
  }
}

/* p:lines_so_far() -> a new table holding every line readline returned */
static int proc_lines(lua_State *L) {
  lua_Integer i, n;
  proc_check(L);
  lua_getiuservalue(L, 1, 1);
  n = luaL_len(L, -1);
  lua_createtable(L, (int)n, 0);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, -2, i);
    lua_rawseti(L, -2, i);
  }
  return 1;
}

/* ---- signals and exit -------------------------------------------------- */

/* Collects the child if it has exited.  Returns 1 once reaped. */
static int proc_reap(proc_t *p, int block) {
  pid_t r;
  if (p->reaped) return 1;
  do r = waitpid(p->pid, &p->status, block ? 0 : WNOHANG);
  while (r == -1 && errno == EINTR);
  if (r == p->pid || (r == -1 && errno == ECHILD)) p->reaped = 1;
  return p->reaped;
}

/* p:kill(signame) -> true | nil, message */
static int proc_kill(lua_State *L) {
  proc_t *p = proc_check(L);
  int signo = proc_checksignal(L, 2);
  if (proc_reap(p, 0)) {
    lua_pushnil(L);
    lua_pushliteral(L, "process has exited");
    return 2;
  }
  if (kill(p->pid, signo) == -1) return proc_fail(L, "kill", errno);
  lua_pushboolean(L, 1);
  return 1;
}

/* Pushes the results of :wait() for a reaped child. */
static int proc_pushstatus(lua_State *L, const proc_t *p) {
  if (WIFSIGNALED(p->status)) {
    lua_pushinteger(L, 128 + WTERMSIG(p->status));
    proc_pushsigname(L, WTERMSIG(p->status));
    return 2;
  }
  lua_pushinteger(L, WEXITSTATUS(p->status));
  return 1;
}

/* p:wait(timeout) -> exit_code | 128+signo, signame | nil, "timeout"
 * Output arriving meanwhile is buffered for readline, so a child blocked
 * writing to a full pipe cannot stall its own exit. */
static int proc_wait(lua_State *L) {
  proc_t *p = proc_check(L);
  double deadline = proc_now() + proc_checktimeout(L, 2);
  while (!proc_reap(p, 0)) {
    int ms = proc_ms_left(deadline);
    if (ms == 0) {
      lua_pushnil(L);
      lua_pushliteral(L, "timeout");
      return 2;
    }
    if (ms > PROC_WAIT_SLICE_MS) ms = PROC_WAIT_SLICE_MS;
    if (p->fd == -1)
      proc_nap(ms / 1000.0);
    else
      proc_pump(L, p, ms); /* sleeps up to ms, buffering output */
  }
  return proc_pushstatus(L, p);
}

/* Kills the child's whole process group if it still runs, reaps it and
 * releases the pipe and buffer.  Idempotent; used by __gc and __close. */
static void proc_release(proc_t *p) {
  if (!proc_reap(p, 0)) {
    kill(-p->pid, SIGKILL);
    kill(p->pid, SIGKILL);
    proc_reap(p, 1);
  }
  if (p->fd != -1) {
    close(p->fd);
    p->fd = -1;
  }
  p->eof = 1;
  free(p->buf);
  p->buf = NULL;
  p->len = p->cap = 0;
}

static int proc_gc(lua_State *L) {
  proc_release(proc_check(L));
  return 0;
}

/* p:close() -> true: kills and reaps if still running, closes the pipe. */
static int proc_close(lua_State *L) {
  proc_release(proc_check(L));
  lua_pushboolean(L, 1);
  return 1;
}

static int proc_index_pid(lua_State *L) {
  proc_t *p = proc_check(L);
  lua_pushinteger(L, p->pid);
  return 1;
}

static int proc_tostring(lua_State *L) {
  proc_t *p = proc_check(L);
  lua_pushfstring(L, "spec_proc.process (pid %d%s)", (int)p->pid,
                  p->reaped ? ", exited" : "");
  return 1;
}

/* __index: p.pid, then the methods. */
static int proc_index(lua_State *L) {
  const char *key = lua_tostring(L, 2);
  if (key != NULL && strcmp(key, "pid") == 0) return proc_index_pid(L);
  luaL_getmetafield(L, 1, "methods");
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  return 1;
}

/* ---- module functions -------------------------------------------------- */

/* rss_kib(pid) -> VmRSS in KiB | nil, message */
static int proc_rss_kib(lua_State *L) {
  char path[64], line[256];
  lua_Integer pid = luaL_checkinteger(L, 1);
  FILE *f;
  snprintf(path, sizeof path, "/proc/%lld/status", (long long)pid);
  f = fopen(path, "r");
  if (f == NULL) return proc_fail(L, path, errno);
  while (fgets(line, sizeof line, f) != NULL) {
    long long kib;
    if (sscanf(line, "VmRSS: %lld kB", &kib) == 1) {
      fclose(f);
      lua_pushinteger(L, (lua_Integer)kib);
      return 1;
    }
  }
  fclose(f);
  lua_pushnil(L);
  lua_pushfstring(L, "%s: no VmRSS line", path);
  return 2;
}

/* sleep(s): for pacing bounded loops only, never to wait for readiness. */
static int proc_sleep(lua_State *L) {
  proc_nap(proc_checktimeout(L, 1));
  return 0;
}

/* now() -> monotonic seconds, for deadlines. */
static int proc_now_l(lua_State *L) {
  lua_pushnumber(L, (lua_Number)proc_now());
  return 1;
}

/* mkdtemp(prefix) -> path of a new private directory | nil, message */
static int proc_mkdtemp(lua_State *L) {
  const char *prefix = luaL_optstring(L, 1, "/tmp/spec_proc.");
  char *tmpl = lua_newuserdatauv(L, strlen(prefix) + 7, 0);
  strcpy(tmpl, prefix);
  strcat(tmpl, "XXXXXX");
  if (mkdtemp(tmpl) == NULL) return proc_fail(L, "mkdtemp", errno);
  lua_pushstring(L, tmpl);
  return 1;
}

/* getcwd() -> absolute path of the current directory */
static int proc_getcwd(lua_State *L) {
  char buf[PATH_MAX];
  if (getcwd(buf, sizeof buf) == NULL) return proc_fail(L, "getcwd", errno);
  lua_pushstring(L, buf);
  return 1;
}

static const luaL_Reg proc_methods[] = {
    {"readline", proc_readline}, {"lines_so_far", proc_lines},
    {"kill", proc_kill},         {"wait", proc_wait},
    {"close", proc_close},       {NULL, NULL}};

static const luaL_Reg proc_metamethods[] = {{"__index", proc_index},
                                            {"__gc", proc_gc},
                                            {"__close", proc_gc},
                                            {"__tostring", proc_tostring},
                                            {NULL, NULL}};

static const luaL_Reg proc_funcs[] = {
    {"spawn", proc_spawn}, {"rss_kib", proc_rss_kib}, {"sleep", proc_sleep},
    {"now", proc_now_l},   {"mkdtemp", proc_mkdtemp}, {"getcwd", proc_getcwd},
    {NULL, NULL}};

int luaopen_spec_proc(lua_State *L) {
  luaL_newmetatable(L, PROC_MT);
  luaL_setfuncs(L, proc_metamethods, 0);
  luaL_newlib(L, proc_methods);
  lua_setfield(L, -2, "methods");
  lua_pop(L, 1);
  luaL_newlib(L, proc_funcs);
  return 1;
}
