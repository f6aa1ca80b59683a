/*
 * fuzz_dump.c - libFuzzer target for bindings/dump.c (built and run by scripts/fuzz.sh dump).
 *
 * The input is the "dump"; a hash of it seeds the random chunking. It goes through the
 * table_digests filter and the row_digest sink twice: in one piece and in random chunks
 * (1 byte to a few KiB). Besides crashes, leaks and undefined behaviour, it checks that the
 * chunking changes nothing: same success or failure, same sections, rows and digests.
 * The results are also pushed into a Lua state, as stream.run would.
 *
 * dump.c is included whole so that its static callbacks can be called without the pipeline
 * core; the few core functions it uses are defined here, and the error helpers are linked.
 * fuzz-sources: runtime/error.c runtime/fail.c bindings/row_digest.c bindings/psql_guard.c bindings/psql_restrict.c */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lualib.h>
#include <lauxlib.h>

/* A small cap on kept header lines, so that short inputs reach the overflow paths. */
#define DUMP_HEADER_MAX 64
#include "../../bindings/dump.c"
#include "stage_harness.h"

static lua_State *L;

/* Feed data in chunks (seed 0: one piece). Returns the filter, or NULL if it failed. */
static tables *run_tables(const unsigned char *data, size_t len, uint64_t seed, int *failed)
{
    tables *t = tables_new();
    bkr_error err;
    if (t == NULL)
        abort();
    *failed = 0;
    size_t pos = 0;
    while (pos < len && !*failed) {
        size_t n = seed ? 1 + next_random(&seed) % (next_random(&seed) % 4 ? 16 : 4096) : len;
        if (n > len - pos)
            n = len - pos;
        *failed = tables_observe(t, data + pos, n, &err) != 0;
        pos += n;
    }
    if (!*failed)
        *failed = tables_observe(t, NULL, 0, &err) != 0;
    if (!*failed) {
        if (tables_result(t, L) != 1)
            abort();
        lua_settop(L, 0);
    }
    return t;
}

static void same_tables(const tables *a, const tables *b)
{
    if (a->ntabs != b->ntabs)
        abort();
    for (size_t i = 0; i < a->ntabs; i++) {
        const table *x = &a->tabs[i], *y = &b->tabs[i];
        if (x->rows != y->rows || x->ncols != y->ncols || memcmp(x->sum, y->sum, sizeof x->sum) != 0)
            abort();
        const char *p = x->names, *q = y->names;
        for (int k = 0; k < x->ncols + 2; k++) {
            if (strcmp(p, q) != 0)
                abort();
            p += strlen(p) + 1;
            q += strlen(q) + 1;
        }
    }
}

static rows *run_rows(const unsigned char *data, size_t len, uint64_t seed, int *failed)
{
    rows *r = calloc(1, sizeof *r);
    bkr_error err;
    if (r == NULL || rowsum_init(&r->sum) != 0)
        abort();
    *failed = 0;
    size_t pos = 0;
    while (pos < len && !*failed) {
        size_t n = seed ? 1 + next_random(&seed) % 64 : len;
        if (n > len - pos)
            n = len - pos;
        *failed = rows_write(r, data + pos, n, &err) != 0;
        pos += n;
    }
    if (!*failed)
        *failed = rows_finish(r, &err) != 0;
    if (!*failed) {
        if (rows_result(r, L) != 1)
            abort();
        lua_settop(L, 0);
    }
    return r;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    L = luaL_newstate();
    return L == NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t seed = 0xcbf29ce484222325u; /* FNV-1a */
    for (size_t i = 0; i < size; i++)
        seed = (seed ^ data[i]) * 0x100000001b3u;
    if (seed == 0)
        seed = 1;

    int failed_whole, failed_chunked;
    tables *whole = run_tables(data, size, 0, &failed_whole);
    tables *chunked = run_tables(data, size, seed, &failed_chunked);
    if (failed_whole != failed_chunked)
        abort();
    if (!failed_whole)
        same_tables(whole, chunked);
    tables_free(whole);
    tables_free(chunked);

    rows *r1 = run_rows(data, size, 0, &failed_whole);
    rows *r2 = run_rows(data, size, seed, &failed_chunked);
    if (failed_whole != failed_chunked)
        abort();
    if (!failed_whole && (r1->sum.count != r2->sum.count || memcmp(r1->sum.sum, r2->sum.sum, sizeof r1->sum.sum) != 0))
        abort();
    rows_free(r1);
    rows_free(r2);
    /* Free the results now: libFuzzer looks for leaks whenever an input's mallocs and
     * frees do not balance, and that scan is slow. */
    lua_gc(L, LUA_GCCOLLECT);
    return 0;
}
