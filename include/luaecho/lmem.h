/* The Lua state's allocator, with a cap: max_memory.
 *
 * Every allocation of the state goes through le_mem_alloc, which counts the
 * bytes in use and refuses one that would go past the limit. Lua then runs
 * a full collection and tries once more; if that fails too, the code that
 * asked gets Lua's "not enough memory" error, in the coroutine that asked,
 * and the rest of the server goes on. Memory freed by a connection that
 * ended is back under the cap at once.
 */
#ifndef LUAECHO_LMEM_H
#define LUAECHO_LMEM_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>

/* The default cap. See docs/operations.md for why this figure. */
#define LE_DEFAULT_MAX_MEMORY ((size_t)1 << 30)

typedef struct le_mem {
  size_t used;                /* bytes Lua has allocated and not freed */
  size_t limit;               /* cap on `used`; 0 for none */
  size_t peak;                /* highest `used` seen */
  uint64_t refused;           /* allocations refused for the cap */
  uint64_t refused_collected; /* `refused` at the last le_mem_collect */
} le_mem;

/* The lua_Alloc function; its ud is a le_mem. */
void *le_mem_alloc(void *ud, void *ptr, size_t osize, size_t nsize);

/* Creates a state whose memory m counts and caps at `limit` bytes (0: no
 * cap). Returns NULL when even that fails. */
lua_State *le_mem_newstate(le_mem *m, size_t limit);

/* Returns the counter of L's allocator, or NULL when L uses another. */
le_mem *le_mem_of(lua_State *L);

/* Returns 1 when `n` more bytes fit under L's cap (always, without one). */
int le_mem_fits(lua_State *L, size_t n);

/* Runs a full collection of L when its allocator refused an allocation
 * since the last one. Lua's core collects and tries again before it gives
 * up on an allocation, but the auxiliary library's buffers (string.rep,
 * table.concat, string.format, luaL_Buffer in general) call the allocator
 * directly and fail at once: after a coroutine that took the memory up to
 * the cap has ended, its garbage would make the next coroutine's
 * string.rep fail although the memory is free for the taking. Call it
 * where no Lua code runs on L's behalf (a coroutine just ended). */
void le_mem_collect(lua_State *L);

#endif
