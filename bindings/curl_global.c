/*
 * curl_global.c - process-wide library state once per Lua state (curl_global.h), for
 * bkr.curl and bkr.s3. Not a Lua module.
 */
#include <curl/curl.h>
#include <lua.h>
#include <lauxlib.h>

#include "curl_global.h"

#define BKR_CURL_GLOBAL "bkr.curl.global"

void bkr_global_once(lua_State *L, const char *name, int (*setup)(void), lua_CFunction cleanup, const char *what)
{
    if (lua_getfield(L, LUA_REGISTRYINDEX, name) != LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    lua_pop(L, 1);
    lua_newuserdatauv(L, 1, 0);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, cleanup);
    lua_setfield(L, -2, "__gc");
    if (setup() != 0)
        luaL_error(L, "%s failed", what);
    lua_setmetatable(L, -2); /* only once it succeeded: a failed setup is not cleaned up */
    lua_setfield(L, LUA_REGISTRYINDEX, name);
}

static int curl_setup(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

static int curl_cleanup(lua_State *L)
{
    (void)L;
    curl_global_cleanup();
    return 0;
}

void bkr_curl_global_init(lua_State *L)
{
    bkr_global_once(L, BKR_CURL_GLOBAL, curl_setup, curl_cleanup, "curl_global_init");
}
