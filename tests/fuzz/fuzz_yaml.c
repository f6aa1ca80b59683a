/*
 * fuzz_yaml.c - libFuzzer target for bkr.yaml: yaml.decode and yaml.scalars on arbitrary bytes.
 *
 * Build and run: scripts/fuzz.sh yaml [SECONDS] (or make fuzz for every target).
 * fuzz-sources: bindings/yaml.c runtime/fail.c runtime/support.c */
/*
 *
 * Beyond the sanitizers, it checks what callers rely on: a call never raises for a string; a
 * failure is nil plus "yaml: line L, column C: ..."; decode and scalars agree on success; every
 * scalar's span lies inside the input, and quoted scalars' spans begin and end with their quote;
 * walking a decoded document (aliased tables once per alias, as callers do) visits no more than
 * a few nodes per input byte plus yaml.max_alias_nodes (each key and value counted).
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "bkr.h"
#include "modules.h"

/* The fuzzer is never interrupted (the host's signal flag lives in runtime/main.c). */
int bkr_interrupted(void)
{
    return 0;
}

static void check(int ok, const char *what, lua_State *L)
{
    if (!ok) {
        fprintf(stderr, "fuzz_yaml: %s (top: %s)\n", what, lua_gettop(L) > 0 ? luaL_typename(L, -1) : "-");
        abort();
    }
}

/* Call yaml[name](data) under pcall; leaves (result, message) on the stack; returns success. */
static int call(lua_State *L, const char *name, const uint8_t *data, size_t size)
{
    lua_settop(L, 1); /* the module */
    lua_getfield(L, 1, name);
    lua_pushlstring(L, (const char *)data, size);
    check(lua_pcall(L, 1, 2, 0) == LUA_OK, "raised for a string argument", L);
    if (lua_isnil(L, -2)) {
        size_t len;
        const char *msg = lua_tolstring(L, -1, &len);
        check(msg != NULL && strncmp(msg, "yaml: line ", 11) == 0, "failure without a positioned message", L);
        return 0;
    }
    check(lua_isnil(L, -1), "a message with a result", L);
    return 1;
}

static void check_scalars(lua_State *L, const uint8_t *data, size_t size)
{
    int list = lua_absindex(L, -2);
    check(lua_istable(L, list), "scalars did not return a table", L);
    lua_Integer n = luaL_len(L, list);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, list, i);
        lua_getfield(L, -1, "start");
        lua_getfield(L, -2, "stop");
        lua_getfield(L, -3, "style");
        lua_getfield(L, -4, "line");
        lua_Integer start = lua_tointeger(L, -4), stop = lua_tointeger(L, -3), line = lua_tointeger(L, -1);
        const char *style = lua_tostring(L, -2);
        check(style != NULL, "scalar without style", L);
        check(0 <= start && start <= stop && (size_t)stop <= size, "scalar span outside the input", L);
        check(line >= 1, "scalar line below 1", L);
        if (strcmp(style, "single") == 0 || strcmp(style, "double") == 0) {
            char quote = style[0] == 's' ? '\'' : '"';
            check(stop - start >= 2 && data[start] == quote && data[stop - 1] == quote,
                  "quoted scalar span without its quotes", L);
        }
        lua_pop(L, 5);
    }
}

/* Count the nodes of the value at the top, an aliased table once per reference, as a caller
 * walking the tree would; stops counting past `limit`. */
static long long walk_count(lua_State *L, long long count, long long limit)
{
    count++;
    if (count > limit || !lua_istable(L, -1))
        return count;
    check(lua_checkstack(L, 4), "stack", L);
    lua_pushnil(L);
    while (count <= limit && lua_next(L, -2) != 0) {
        count = walk_count(L, count, limit); /* the value */
        lua_pop(L, 1);
        count++; /* the key (a scalar) */
    }
    if (count > limit)
        lua_pop(L, 1); /* the key lua_next left */
    return count;
}

static void check_expansion(lua_State *L, size_t size)
{
    lua_getfield(L, 1, "max_alias_nodes");
    long long max_alias = lua_tointeger(L, -1);
    lua_pop(L, 1);
    /* nodes: a few per input byte at most, plus what aliases add; the walk counts keys too */
    long long limit = 2 * (4 * (long long)size + 8 + max_alias);
    lua_pushvalue(L, -2);
    check(walk_count(L, 0, limit) <= limit, "a decoded document expands beyond yaml.max_alias_nodes", L);
    lua_pop(L, 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_State *L = luaL_newstate();
    if (L == NULL)
        return 0;
    luaL_requiref(L, "bkr.yaml", luaopen_bkr_yaml, 0);
    int decoded = call(L, "decode", data, size);
    if (decoded)
        check_expansion(L, size);
    int listed = call(L, "scalars", data, size);
    check(decoded == listed, "decode and scalars disagree", L);
    if (listed)
        check_scalars(L, data, size);
    lua_close(L);
    return 0;
}
