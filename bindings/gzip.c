/*
 * gzip.c - bkr.gzip: gzip (RFC 1952) through zlib, as pipeline filters and whole-string helpers.
 *
 * Lua API
 *   gzip.compress([{level = 0..9 (default 6), name = ...}])  filter stage: one gzip member
 *   gzip.decompress([{name = ...}])   filter stage: any number of concatenated members
 *                                     (as pigz and `cat a.gz b.gz` make them); corrupt or
 *                                     truncated input, or anything after the last member
 *                                     that is not another member, fails the run
 *   gzip.compress_string(s[, level]) -> gzip bytes
 *   gzip.decompress_string(s)        -> bytes, or nil, msg for corrupt/truncated input
 * Results of the filter stages: none (their byte counts are in result.stages).
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <zlib.h>

#include "bkr.h"
#include "stream.h"

typedef struct gz {
    z_stream z;
    int compress;
    int finished;   /* compress: Z_STREAM_END seen */
    int boundary;   /* decompress: between members (nothing of the next one read yet) */
    long members;   /* decompress: members completed */
} gz;

static uInt clamp_uint(size_t n)
{
    return n > UINT_MAX ? UINT_MAX : (uInt)n;
}

/* ================================================================ compress */

static int deflate_process(void *self, const unsigned char *in, size_t in_len, size_t *consumed,
                           unsigned char *out, size_t out_cap, size_t *produced, int *done,
                           bkr_error *err)
{
    gz *g = self;
    g->z.next_in = (Bytef *)in;
    g->z.avail_in = in ? clamp_uint(in_len) : 0;
    g->z.next_out = out;
    g->z.avail_out = clamp_uint(out_cap);
    uInt avail_in = g->z.avail_in, avail_out = g->z.avail_out;
    int rc = deflate(&g->z, in ? Z_NO_FLUSH : Z_FINISH);
    if (rc == Z_STREAM_ERROR)
        return bkr_error_set(err, "deflate failed: %s", g->z.msg ? g->z.msg : "stream error");
    *consumed = avail_in - g->z.avail_in;
    *produced = avail_out - g->z.avail_out;
    if (rc == Z_STREAM_END) {
        g->finished = 1;
        *done = 1;
    }
    return 0;
}

/* ================================================================ decompress */

static int inflate_process(void *self, const unsigned char *in, size_t in_len, size_t *consumed,
                           unsigned char *out, size_t out_cap, size_t *produced, int *done,
                           bkr_error *err)
{
    gz *g = self;
    g->z.next_in = (Bytef *)in;
    g->z.avail_in = in ? clamp_uint(in_len) : 0;
    g->z.next_out = out;
    g->z.avail_out = clamp_uint(out_cap);
    uInt avail_in = g->z.avail_in, avail_out = g->z.avail_out;

    int was_boundary = g->boundary;
    int rc = Z_OK;
    if (in != NULL || !g->boundary)
        rc = inflate(&g->z, Z_NO_FLUSH);
    *consumed = avail_in - g->z.avail_in;
    *produced = avail_out - g->z.avail_out;
    if (*consumed > 0)
        g->boundary = 0;

    switch (rc) {
    case Z_STREAM_END:
        /* One member ends; whatever follows must be another member. */
        g->members++;
        g->boundary = 1;
        inflateReset(&g->z);
        break;
    case Z_OK:
    case Z_BUF_ERROR:
        break;
    case Z_NEED_DICT:
    case Z_DATA_ERROR:
        if (g->members > 0 && was_boundary)
            return bkr_error_kind(err, BKR_KIND_CORRUPT, "trailing data after gzip member %ld is not gzip: %s",
                                 g->members, g->z.msg ? g->z.msg : "invalid header");
        return bkr_error_kind(err, BKR_KIND_CORRUPT, "corrupt gzip data: %s", g->z.msg ? g->z.msg : "data error");
    case Z_MEM_ERROR:
        return bkr_error_set(err, "out of memory");
    default:
        return bkr_error_set(err, "inflate failed (%d)", rc);
    }

    if (in == NULL && *produced == 0) {
        if (g->boundary && g->members > 0)
            *done = 1;
        else if (g->members == 0 && g->z.total_in == 0 && avail_in == 0)
            return bkr_error_kind(err, BKR_KIND_TRUNCATED, "no gzip data (empty input)");
        else
            return bkr_error_kind(err, BKR_KIND_TRUNCATED, "truncated gzip data: unexpected end of input");
    }
    return 0;
}

/* ================================================================ stages */

static void gz_free(void *self)
{
    gz *g = self;
    if (g->compress)
        deflateEnd(&g->z);
    else
        inflateEnd(&g->z);
    free(g);
}

static const bkr_stage_ops deflate_ops = {
    .type = "gzip", .kind = BKR_FILTER, .process = deflate_process, .free = gz_free,
};

static const bkr_stage_ops inflate_ops = {
    .type = "gunzip", .kind = BKR_FILTER, .process = inflate_process, .free = gz_free,
};

/* A zlib stream set up for gzip, or NULL (out of memory / bad level). */
static gz *gz_new(int compress, int level)
{
    gz *g = calloc(1, sizeof *g);
    if (g == NULL)
        return NULL;
    g->compress = compress;
    int rc = compress ? deflateInit2(&g->z, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY)
                      : inflateInit2(&g->z, 15 + 16);
    if (rc != Z_OK) {
        free(g);
        return NULL;
    }
    return g;
}

static int opt_level(lua_State *L, int opts)
{
    lua_Integer level = 6;
    if (lua_istable(L, opts)) {
        lua_getfield(L, opts, "level");
        level = luaL_optinteger(L, -1, 6);
        lua_pop(L, 1);
    }
    luaL_argcheck(L, level >= 0 && level <= 9, opts, "gzip level must be 0 to 9");
    return (int)level;
}

static int gzip_compress(lua_State *L)
{
    int level = opt_level(L, 1);
    const char *name = bkr_stage_optname(L, 1);
    bkr_stage *st = bkr_stage_new(L, &deflate_ops);
    gz *g = gz_new(1, level);
    if (g == NULL)
        return luaL_error(L, "gzip.compress: out of memory");
    bkr_stage_open(st, g, name);
    return 1;
}

static int gzip_decompress(lua_State *L)
{
    const char *name = bkr_stage_optname(L, 1);
    bkr_stage *st = bkr_stage_new(L, &inflate_ops);
    gz *g = gz_new(0, 0);
    if (g == NULL)
        return luaL_error(L, "gzip.decompress: out of memory");
    bkr_stage_open(st, g, name);
    return 1;
}

/* ================================================================ whole strings */

/* Run one filter over a whole string. Output collects in malloc'd memory and becomes a
 * Lua string only after g and the buffer are freed: nothing can raise while C holds them. */
static int whole_string(lua_State *L, gz *g, const char *data, size_t len, const char *fname)
{
    bkr_error err;
    int failed = 0, done = 0;
    size_t pos = 0, used = 0, cap = len / 2 + BKR_CHUNK;
    unsigned char *out = malloc(cap);
    int (*process)(void *, const unsigned char *, size_t, size_t *, unsigned char *, size_t,
                   size_t *, int *, bkr_error *) = g->compress ? deflate_process : inflate_process;
    if (out == NULL)
        failed = bkr_error_set(&err, "out of memory");
    while (!failed && !done) {
        if (cap - used < BKR_CHUNK) {
            unsigned char *grown = realloc(out, cap * 2);
            if (grown == NULL) {
                failed = bkr_error_set(&err, "out of memory");
                break;
            }
            out = grown;
            cap *= 2;
        }
        size_t consumed = 0, produced = 0;
        const unsigned char *in = pos == len ? NULL : (const unsigned char *)data + pos;
        if (process(g, in, len - pos, &consumed, out + used, cap - used, &produced, &done, &err) != 0)
            failed = 1;
        pos += consumed;
        used += produced;
    }
    gz_free(g);
    if (failed) {
        free(out);
        return bkr_pushfail(L, NULL, "%s: %s", fname, err.msg);
    }
    /* Only a memory error can raise here; it would leak `out`, and it ends the run anyway. */
    lua_pushlstring(L, (const char *)out, used);
    free(out);
    return 1;
}

static int gzip_compress_string(lua_State *L)
{
    size_t len;
    const char *data = luaL_checklstring(L, 1, &len);
    lua_Integer level = luaL_optinteger(L, 2, 6);
    luaL_argcheck(L, level >= 0 && level <= 9, 2, "gzip level must be 0 to 9");
    gz *g = gz_new(1, (int)level);
    if (g == NULL)
        return luaL_error(L, "gzip.compress_string: out of memory");
    return whole_string(L, g, data, len, "gzip.compress_string");
}

static int gzip_decompress_string(lua_State *L)
{
    size_t len;
    const char *data = luaL_checklstring(L, 1, &len);
    gz *g = gz_new(0, 0);
    if (g == NULL)
        return luaL_error(L, "gzip.decompress_string: out of memory");
    return whole_string(L, g, data, len, "gzip.decompress_string");
}

static const luaL_Reg gzip_functions[] = {
    {"compress", gzip_compress},
    {"decompress", gzip_decompress},
    {"compress_string", gzip_compress_string},
    {"decompress_string", gzip_decompress_string},
    {NULL, NULL},
};

int luaopen_bkr_gzip(lua_State *L)
{
    luaL_newlib(L, gzip_functions);
    return 1;
}
