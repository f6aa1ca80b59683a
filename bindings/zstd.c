/*
 * zstd.c - bkr.zstd: Zstandard (RFC 8878) through libzstd's streaming API, as pipeline filters.
 *
 * Lua API
 *   zstd.compress([{level = 1..19 (default 3), threads = N (default 0), name = ...}])
 *                                     filter stage: one zstd frame with a content checksum
 *                                     (XXH64, ZSTD_c_checksumFlag); threads >= 1 compresses
 *                                     on that many worker threads (ZSTD_c_nbWorkers), 0 in
 *                                     the calling thread
 *   zstd.decompress([{name = ...}])   filter stage: any number of concatenated frames (as
 *                                     `cat a.zst b.zst` and pzstd make them); corrupt input
 *                                     (kind "corrupt") or input that ends inside a frame
 *                                     (kind "truncated") fails the run, as gzip's does
 *   zstd.MAX_LEVEL                    19: the highest level bkr offers (libzstd's --ultra
 *                                     levels need much more memory to decompress)
 * Results of the filter stages: none (their byte counts are in result.stages).
 */
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "bkr.h"
#include "stream.h"

#define ZSTD_BKR_MAX_LEVEL 19
/* More workers than this is a typo, not a machine. */
#define ZSTD_BKR_MAX_THREADS 256

typedef struct zs {
    ZSTD_CCtx *cctx;   /* compress */
    ZSTD_DCtx *dctx;   /* decompress */
    int frame_end;     /* decompress: the last call ended a frame (nothing of the next one read) */
    long frames;       /* decompress: frames completed */
    unsigned long long total_in;
} zs;

/* libzstd's error as a kind: its allocation failures are the environment's, everything
 * else it reports about its input means the bytes are not a valid zstd stream. */
static int zstd_fail(bkr_error *err, size_t rc, const char *what)
{
    if (ZSTD_getErrorCode(rc) == ZSTD_error_memory_allocation)
        return bkr_error_set(err, "%s: out of memory", what);
    return bkr_error_kind(err, BKR_KIND_CORRUPT, "%s: %s", what, ZSTD_getErrorName(rc));
}

/* ================================================================ compress */

static int compress_process(void *self, const unsigned char *in, size_t in_len, size_t *consumed,
                            unsigned char *out, size_t out_cap, size_t *produced, int *done,
                            bkr_error *err)
{
    zs *z = self;
    ZSTD_inBuffer input = { in, in ? in_len : 0, 0 };
    ZSTD_outBuffer output = { out, out_cap, 0 };
    ZSTD_EndDirective mode = in ? ZSTD_e_continue : ZSTD_e_end;
    size_t remaining;
    /* With worker threads a call may hand input to a job and flush nothing yet; the core
     * wants progress on every call, and libzstd guarantees it over a few calls (it blocks
     * when it can do nothing else), so call again until there is some. */
    do {
        remaining = ZSTD_compressStream2(z->cctx, &output, &input, mode);
        if (ZSTD_isError(remaining))
            return bkr_error_set(err, "zstd compression failed: %s", ZSTD_getErrorName(remaining));
    } while (input.pos == 0 && output.pos == 0 && (in ? in_len > 0 : remaining != 0) && output.size > 0);
    *consumed = input.pos;
    *produced = output.pos;
    if (in == NULL && remaining == 0)
        *done = 1;
    return 0;
}

/* ================================================================ decompress */

static int decompress_process(void *self, const unsigned char *in, size_t in_len, size_t *consumed,
                              unsigned char *out, size_t out_cap, size_t *produced, int *done,
                              bkr_error *err)
{
    zs *z = self;
    ZSTD_inBuffer input = { in, in ? in_len : 0, 0 };
    ZSTD_outBuffer output = { out, out_cap, 0 };
    size_t rc = 0;
    int called = 0;
    /* At the end of input, a decoder between frames has nothing left to give. */
    if (in != NULL || !z->frame_end) {
        rc = ZSTD_decompressStream(z->dctx, &output, &input);
        called = 1;
    }
    *consumed = input.pos;
    *produced = output.pos;
    z->total_in += input.pos;
    if (called && ZSTD_isError(rc)) {
        if (z->frames > 0 && z->frame_end)
            return zstd_fail(err, rc, "trailing data after the last zstd frame is not zstd");
        return zstd_fail(err, rc, "corrupt zstd data");
    }
    if (called) {
        if (rc == 0) {
            /* 0: a frame is complete and all of it was flushed (libzstd starts the next
             * frame on the next input by itself). */
            if (!z->frame_end && (input.pos > 0 || output.pos > 0))
                z->frames++;
            z->frame_end = 1;
        } else if (input.pos > 0 || output.pos > 0) {
            z->frame_end = 0;
        }
    }
    if (in == NULL && *produced == 0) {
        if (z->frame_end && z->frames > 0)
            *done = 1;
        else if (z->total_in == 0)
            return bkr_error_kind(err, BKR_KIND_TRUNCATED, "no zstd data (empty input)");
        else
            return bkr_error_kind(err, BKR_KIND_TRUNCATED, "truncated zstd data: unexpected end of input");
    }
    return 0;
}

/* ================================================================ stages */

static void zs_free(void *self)
{
    zs *z = self;
    ZSTD_freeCCtx(z->cctx);
    ZSTD_freeDCtx(z->dctx);
    free(z);
}

static const bkr_stage_ops compress_ops = {
    .type = "zstd", .kind = BKR_FILTER, .process = compress_process, .free = zs_free,
};

static const bkr_stage_ops decompress_ops = {
    .type = "unzstd", .kind = BKR_FILTER, .process = decompress_process, .free = zs_free,
};

static lua_Integer opt_integer(lua_State *L, int opts, const char *key, lua_Integer dflt)
{
    lua_Integer value = dflt;
    if (lua_istable(L, opts)) {
        lua_getfield(L, opts, key);
        value = luaL_optinteger(L, -1, dflt);
        lua_pop(L, 1);
    }
    return value;
}

/* A compressing context, or NULL with *why set (out of memory, or a parameter libzstd
 * refused: a build without threads refuses nbWorkers >= 1). */
static zs *zs_new_compress(int level, int threads, const char **why)
{
    zs *z = calloc(1, sizeof *z);
    if (z == NULL || (z->cctx = ZSTD_createCCtx()) == NULL) {
        free(z);
        *why = "out of memory";
        return NULL;
    }
    size_t rc = ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_compressionLevel, level);
    if (!ZSTD_isError(rc))
        rc = ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_checksumFlag, 1);
    if (!ZSTD_isError(rc) && threads > 0)
        rc = ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_nbWorkers, threads);
    if (ZSTD_isError(rc)) {
        *why = ZSTD_getErrorName(rc); /* static storage */
        zs_free(z);
        return NULL;
    }
    return z;
}

static int zstd_compress(lua_State *L)
{
    lua_Integer level = opt_integer(L, 1, "level", 3);
    lua_Integer threads = opt_integer(L, 1, "threads", 0);
    luaL_argcheck(L, level >= 1 && level <= ZSTD_BKR_MAX_LEVEL, 1, "zstd level must be 1 to 19");
    luaL_argcheck(L, threads >= 0 && threads <= ZSTD_BKR_MAX_THREADS, 1, "zstd threads must be 0 to 256");
    const char *name = bkr_stage_optname(L, 1);
    bkr_stage *st = bkr_stage_new(L, &compress_ops);
    const char *why = NULL;
    zs *z = zs_new_compress((int)level, (int)threads, &why);
    if (z == NULL)
        return luaL_error(L, "zstd.compress: %s", why);
    bkr_stage_open(st, z, name);
    return 1;
}

static int zstd_decompress(lua_State *L)
{
    const char *name = bkr_stage_optname(L, 1);
    bkr_stage *st = bkr_stage_new(L, &decompress_ops);
    zs *z = calloc(1, sizeof *z);
    if (z == NULL || (z->dctx = ZSTD_createDCtx()) == NULL) {
        free(z);
        return luaL_error(L, "zstd.decompress: out of memory");
    }
    bkr_stage_open(st, z, name);
    return 1;
}

static const luaL_Reg zstd_functions[] = {
    {"compress", zstd_compress},
    {"decompress", zstd_decompress},
    {NULL, NULL},
};

int luaopen_bkr_zstd(lua_State *L)
{
    luaL_newlib(L, zstd_functions);
    lua_pushinteger(L, ZSTD_BKR_MAX_LEVEL);
    lua_setfield(L, -2, "MAX_LEVEL");
    return 1;
}
