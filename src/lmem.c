/* The Lua state's allocator: see include/luaecho/lmem.h. */
#include "luaecho/lmem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *le_mem_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  le_mem *m = ud;
  /* For a new block Lua passes the object's type in osize, not a size. */
  size_t old = ptr != NULL ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    m->used -= old;
    return NULL;
  }
  if (nsize > old && m->limit != 0 &&
      (nsize - old > m->limit || m->used > m->limit - (nsize - old))) {
    m->refused++;
    return NULL;
  }
  void *p = realloc(ptr, nsize);
  if (p == NULL) return NULL;
  m->used = m->used - old + nsize;
  if (m->used > m->peak) m->peak = m->used;
  return p;
}

/* Lua's own panic function only prints; this one says what happened to
 * the whole process, which is the least a server owes its operator. */
static int on_panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  fprintf(stderr, "luaecho: PANIC: unprotected error in call to Lua API (%s)\n",
          msg ? msg : "?");
  return 0;
}

lua_State *le_mem_newstate(le_mem *m, size_t limit) {
  memset(m, 0, sizeof *m);
  m->limit = limit;
  lua_State *L = lua_newstate(le_mem_alloc, m);
  if (L != NULL) lua_atpanic(L, on_panic);
  return L;
}

le_mem *le_mem_of(lua_State *L) {
  void *ud;
  return lua_getallocf(L, &ud) == le_mem_alloc ? ud : NULL;
}

int le_mem_fits(lua_State *L, size_t n) {
  le_mem *m = le_mem_of(L);
  if (m == NULL || m->limit == 0) return 1;
  /* A string costs its header and terminator besides its bytes. */
  n += 64;
  return n <= m->limit && m->used <= m->limit - n;
}

void le_mem_collect(lua_State *L) {
  le_mem *m = le_mem_of(L);
  if (m == NULL || m->refused == m->refused_collected) return;
  m->refused_collected = m->refused;
  lua_gc(L, LUA_GCCOLLECT);
}
