/*
 * fuzz_values.c - libFuzzer target for the value parsers of bkr.crypto: ENCRYPTED:v2 values
 * (crypto.decrypt_value), legacy XOR values (crypto.xor_value) and strict base64
 * (crypto.base64_decode). These read text from configuration files being restored, so
 * from anyone who could edit a backup.
 *
 * Build and run: scripts/fuzz.sh values [SECONDS] (or make fuzz for every target).
 * fuzz-sources: bindings/crypto.c bindings/stream.c bindings/stream_stages.c bindings/atomic_file.c bindings/openssl_util.c runtime/error.c runtime/fail.c runtime/support.c */
/*
 * Checks beyond the sanitizers: no call raises for a string; a failure is nil, a message
 * naming the function, and a code; an input that starts with "ENCRYPTED:v2:" and decrypts
 * must have been made by encrypt_value (so under the fixed key and field, a value that
 * authenticates re-encrypts to one that decrypts to the same plaintext); base64 that
 * decodes re-encodes to the same text.
 */
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

void bkr_interrupt_delivered(lua_State *L)
{
    (void)L;
}

static const char KEY[33] = "0123456789abcdef0123456789abcdef";

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_values: %s\n", what);
        abort();
    }
}

/* crypto[name](args...) under pcall; 1 when it returned a value, 0 for nil + message. */
static int call(lua_State *L, const char *name, int nargs)
{
    lua_getfield(L, 1, name);
    lua_insert(L, -1 - nargs);
    check(lua_pcall(L, nargs, 3, 0) == LUA_OK, "raised for string arguments");
    if (lua_isnil(L, -3)) {
        const char *msg = lua_tostring(L, -2);
        check(msg != NULL && strncmp(msg, "crypto.", 7) == 0, "failure without a named message");
        check(lua_isstring(L, -1), "failure without a code");
        return 0;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_State *L = luaL_newstate();
    if (L == NULL)
        return 0;
    luaL_requiref(L, "bkr.crypto", luaopen_bkr_crypto, 0); /* stack: module */

    /* ENCRYPTED:v2 values, as found in a stored YAML or .env file */
    lua_pushlstring(L, KEY, 32);
    lua_pushlstring(L, (const char *)data, size);
    lua_pushliteral(L, "database.password");
    if (call(L, "decrypt_value", 3)) {
        /* it authenticated: the plaintext must survive a fresh encryption */
        lua_pop(L, 2);
        int plain = lua_gettop(L);
        lua_pushlstring(L, KEY, 32);
        lua_pushvalue(L, plain);
        lua_pushliteral(L, "database.password");
        check(call(L, "encrypt_value", 3), "encrypt_value failed on a decrypted value");
        lua_pop(L, 2);
        lua_pushlstring(L, KEY, 32);
        lua_insert(L, -2);
        lua_pushliteral(L, "database.password");
        check(call(L, "decrypt_value", 3), "a fresh value did not decrypt");
        lua_pop(L, 2);
        check(lua_rawequal(L, -1, plain), "round trip changed the plaintext");
    }
    lua_settop(L, 1);

    /* legacy XOR values: no authentication, but never a crash */
    lua_pushlstring(L, KEY, 32);
    lua_pushlstring(L, (const char *)data, size);
    call(L, "xor_value", 2);
    lua_settop(L, 1);

    /* strict base64: what decodes re-encodes to exactly the input */
    lua_pushlstring(L, (const char *)data, size);
    if (call(L, "base64_decode", 1)) {
        lua_pop(L, 2);
        check(call(L, "base64_encode", 1), "base64_encode failed");
        size_t len;
        const char *text = lua_tolstring(L, -3, &len);
        check(len == size && memcmp(text, data, size) == 0, "base64 did not round-trip");
    }
    lua_close(L);
    return 0;
}
