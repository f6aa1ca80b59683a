/*
 * curl_global.c - libcurl's global setup, once per Lua state, for bkr.curl and bkr.s3
 * (curl_global.h). Not a Lua module.
 */
#include <curl/curl.h>
#include <lua.h>
#include <lauxlib.h>

#include "curl_global.h"

#define BKR_CURL_GLOBAL "bkr.curl.global"

static int curl_global_gc(lua_State *L)
{
    curl_global_cleanup();
    return 0;
}

void bkr_curl_global_init(lua_State *L)
{
    if (lua_getfield(L, LUA_REGISTRYINDEX, BKR_CURL_GLOBAL) != LUA_TNIL) {
        lua_pop(L, 1);
        return;
    }
    lua_pop(L, 1);
    lua_newuserdatauv(L, 1, 0);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, curl_global_gc);
    lua_setfield(L, -2, "__gc");
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        luaL_error(L, "curl_global_init failed");
    lua_setmetatable(L, -2); /* only once it succeeded: a failed init is not cleaned up */
    lua_setfield(L, LUA_REGISTRYINDEX, BKR_CURL_GLOBAL);
}
