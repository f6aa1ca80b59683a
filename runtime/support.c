/*
 * support.c - small helpers the host offers every binding (declared in bkr.h): one
 * monotonic clock, and one way to create a userdata's metatable. Linked alone by the fuzz
 * targets that need them.
 */
#include <string.h>
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

void bkr_check_option_keys(lua_State *L, int opts, const char *fn, const char *const *allowed)
{
    opts = lua_absindex(L, opts);
    lua_pushnil(L);
    while (lua_next(L, opts)) {
        lua_pop(L, 1);
        int ok = 0;
        if (lua_type(L, -1) == LUA_TSTRING) {
            const char *k = lua_tostring(L, -1);
            for (int i = 0; allowed[i]; i++)
                if (strcmp(k, allowed[i]) == 0)
                    ok = 1;
        }
        if (!ok)
            luaL_error(L, "%s: unknown option '%s'", fn, luaL_tolstring(L, -1, NULL));
    }
}
