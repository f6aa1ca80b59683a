/*
 * fuzz_manifest.c - libFuzzer target for the manifest reader, recipes/lib/manifest.lua
 * (manifest.parse, through dkjson), on arbitrary bytes.
 *
 * Build and run: scripts/fuzz.sh manifest [SECONDS] (or make fuzz for every target).
 * fuzz-sources: */
/*
 * A manifest comes from a repository someone else may have written. What callers rely on:
 * manifest.parse never raises, whatever the bytes; it returns either a table, or nil, a
 * message and the kind "corrupt"; and it finishes in bounded time (libFuzzer's -timeout).
 * The Lua runs in a plain Lua state with the project's recipes on package.path, as bkr
 * runs it (the module uses no native binding).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

static lua_State *L;
static int parse_ref = LUA_NOREF;

static void fail(const char *what)
{
    fprintf(stderr, "fuzz_manifest: %s\n", what);
    abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    L = luaL_newstate();
    luaL_openlibs(L);
    /* scripts/fuzz.sh runs from the project's root; dkjson is Debian's lua-dkjson */
    if (luaL_dostring(L, "package.path = 'recipes/?.lua;/usr/share/lua/5.4/?.lua;' .. package.path\n"
                         "return require('lib.manifest').parse") != LUA_OK)
        fail(lua_tostring(L, -1));
    parse_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_settop(L, 0);
    lua_rawgeti(L, LUA_REGISTRYINDEX, parse_ref);
    lua_pushlstring(L, (const char *)data, size);
    lua_pushliteral(L, "fuzz.json");
    if (lua_pcall(L, 2, 3, 0) != LUA_OK)
        fail(lua_tostring(L, -1) ? lua_tostring(L, -1) : "raised a non-string error");
    if (lua_istable(L, 1)) {
        if (!lua_isnil(L, 2))
            fail("a manifest and an error together");
    } else {
        if (!lua_isnil(L, 1) || !lua_isstring(L, 2))
            fail("neither a manifest nor nil, message");
        if (!lua_isstring(L, 3) || strcmp(lua_tostring(L, 3), "corrupt") != 0)
            fail("an error without the kind 'corrupt'");
    }
    lua_settop(L, 0);
    lua_gc(L, LUA_GCSTEP, 0);
    return 0;
}
