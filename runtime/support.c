/*
 * support.c - small helpers the host offers every binding (declared in bkr.h): one
 * monotonic clock, and one way to create a userdata's metatable. Linked alone by the fuzz
 * targets that need them.
 */
#include <time.h>

#include <lua.h>
#include <lauxlib.h>

#include "bkr.h"

double bkr_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void bkr_createmeta(lua_State *L, const char *name, const luaL_Reg *metamethods, const luaL_Reg *methods)
{
    if (luaL_newmetatable(L, name)) {
        luaL_setfuncs(L, metamethods, 0);
        if (methods != NULL) {
            lua_newtable(L);
            luaL_setfuncs(L, methods, 0);
            lua_setfield(L, -2, "__index");
        }
    }
    lua_pop(L, 1);
}
