/*
 * hash.c - bkr.hash: SHA-256 through OpenSSL's EVP interface.
 *
 * Lua API
 *   hash.sha256([{name = ..., expect = hex}])
 *                                 pass-through filter stage; result: lowercase hex digest of
 *                                 every byte that went through (under "sha256" by default).
 *                                 With expect (64 hex digits, either case), the run fails at
 *                                 the end of input, kind "corrupt", when the digest differs:
 *                                 before the sink commits, so a copy that does not match what
 *                                 was verified never lands under its final name
 *   hash.sha256_string(s)         -> hex digest
 *   hash.sha256_file(path[, opts]) -> hex digest, bytes; or nil, msg, kind when it cannot be read;
 *                                   only a regular file, as stream.from_file (opts.follow)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>
#include <openssl/err.h>
#include <openssl/evp.h>

#include "atomic_file.h"
#include "bkr.h"
#include "openssl_util.h"
#include "stream.h"

typedef struct sha256 {
    EVP_MD_CTX *ctx;
    unsigned char digest[EVP_MAX_MD_SIZE];
    int finished;
    int has_expected;
    char expected[2 * 32 + 1]; /* lowercase hex */
} sha256;

static int sha256_init(sha256 *h)
{
    h->ctx = EVP_MD_CTX_new();
    return h->ctx != NULL && EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) == 1 ? 0 : -1;
}

/* ================================================================ filter stage */

static int sha256_observe(void *self, const unsigned char *data, size_t len, bkr_error *err)
{
    sha256 *h = self;
    char reason[256];
    if (data == NULL) {
        if (EVP_DigestFinal_ex(h->ctx, h->digest, NULL) != 1)
            return bkr_error_set(err, "digest failed: %s", bkr_openssl_reason(reason, sizeof reason));
        h->finished = 1;
        if (h->has_expected) {
            char got[2 * 32 + 1];
            bkr_hex(h->digest, 32, got);
            if (strcmp(got, h->expected) != 0)
                return bkr_error_kind(err, BKR_KIND_CORRUPT, "checksum mismatch: read %s, expected %s", got,
                                      h->expected);
        }
        return 0;
    }
    if (EVP_DigestUpdate(h->ctx, data, len) != 1)
        return bkr_error_set(err, "digest failed: %s", bkr_openssl_reason(reason, sizeof reason));
    return 0;
}

static int sha256_result(void *self, lua_State *L)
{
    sha256 *h = self;
    char out[2 * 32 + 1];
    if (!h->finished)
        return 0;
    bkr_hex(h->digest, 32, out);
    lua_pushstring(L, out);
    return 1;
}

static void sha256_free(void *self)
{
    sha256 *h = self;
    EVP_MD_CTX_free(h->ctx);
    free(h);
}

static const bkr_stage_ops sha256_ops = {
    .type = "sha256", .kind = BKR_FILTER, .observe = sha256_observe, .result = sha256_result,
    .free = sha256_free,
};

/* opts.expect: 64 hex digits, kept in lower case; raises on anything else. */
static int opt_expected(lua_State *L, int opts, char out[2 * 32 + 1])
{
    if (!lua_istable(L, opts))
        return 0;
    lua_getfield(L, opts, "expect");
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    size_t len = 0;
    const char *hex = lua_tolstring(L, -1, &len);
    luaL_argcheck(L, hex != NULL && len == 64 && strspn(hex, "0123456789abcdefABCDEF") == 64, opts,
                  "expect must be a SHA-256 in 64 hex digits");
    for (size_t i = 0; i < 64; i++)
        out[i] = (char)(hex[i] >= 'A' && hex[i] <= 'F' ? hex[i] - 'A' + 'a' : hex[i]);
    out[64] = '\0';
    lua_pop(L, 1);
    return 1;
}

static int hash_sha256(lua_State *L)
{
    const char *name = bkr_stage_optname(L, 1);
    char expected[2 * 32 + 1] = {0};
    int has_expected = opt_expected(L, 1, expected);
    bkr_stage *st = bkr_stage_new(L, &sha256_ops);
    sha256 *h = calloc(1, sizeof *h);
    if (h == NULL || sha256_init(h) != 0) {
        if (h != NULL)
            sha256_free(h);
        return luaL_error(L, "hash.sha256: cannot set up SHA-256");
    }
    h->has_expected = has_expected;
    memcpy(h->expected, expected, sizeof expected);
    bkr_stage_open(st, h, name);
    return 1;
}

/* ================================================================ helpers */

static int hash_sha256_string(lua_State *L)
{
    size_t len;
    const char *data = luaL_checklstring(L, 1, &len);
    unsigned char digest[EVP_MAX_MD_SIZE];
    char out[2 * 32 + 1];
    if (EVP_Digest(data, len, digest, NULL, EVP_sha256(), NULL) != 1) {
        ERR_clear_error();
        return luaL_error(L, "hash.sha256_string: SHA-256 failed");
    }
    bkr_hex(digest, 32, out);
    lua_pushstring(L, out);
    return 1;
}

static int hash_sha256_file(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    int follow = bkr_opt_follow(L, 2);
    int fd = bkr_open_regular(path, follow);
    if (fd < 0)
        return bkr_push_open_failure(L, "hash.sha256_file", path, follow);
    sha256 h = {0};
    unsigned char *buf = malloc(BKR_CHUNK);
    int saved = 0, ok = buf != NULL && sha256_init(&h) == 0;
    lua_Integer total = 0;
    while (ok) {
        ssize_t n = read(fd, buf, BKR_CHUNK);
        if (n < 0 && errno == EINTR && !bkr_interrupted())
            continue;
        if (n < 0) {
            saved = errno;
            ok = 0;
        } else if (n == 0) {
            ok = EVP_DigestFinal_ex(h.ctx, h.digest, NULL) == 1;
            break;
        } else {
            total += n;
            ok = EVP_DigestUpdate(h.ctx, buf, (size_t)n) == 1;
        }
    }
    free(buf);
    EVP_MD_CTX_free(h.ctx);
    close(fd);
    ERR_clear_error();
    if (!ok)
        return saved ? bkr_pusherrno(L, saved, "hash.sha256_file: %s", path)
                     : bkr_pushfail(L, NULL, "hash.sha256_file: %s: SHA-256 failed", path);
    char out[2 * 32 + 1];
    bkr_hex(h.digest, 32, out);
    lua_pushstring(L, out);
    lua_pushinteger(L, total);
    return 2;
}

static const luaL_Reg hash_functions[] = {
    {"sha256", hash_sha256},
    {"sha256_string", hash_sha256_string},
    {"sha256_file", hash_sha256_file},
    {NULL, NULL},
};

int luaopen_bkr_hash(lua_State *L)
{
    luaL_newlib(L, hash_functions);
    return 1;
}
