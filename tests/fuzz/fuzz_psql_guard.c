/*
 * fuzz_psql_guard.c - libFuzzer target for bindings/psql_guard.c (scripts/fuzz.sh psql_guard).
 *
 * The input is the "dump"; a hash of it seeds the random chunking. It goes through the guard
 * three times: in one piece, one byte at a time, and in random chunks (1 byte to a few KiB).
 * Besides crashes, leaks and undefined behaviour, it checks that chunking changes nothing
 * (same verdict, same message, same counts), that every refusal is kind corrupt with a
 * "line N: " message whose line is one the input has, and one property that needs no lexer:
 * text with no quote, comment, dollar, newline or carriage return in it and a backslash
 * anywhere is refused.
 *
 * psql_guard.c is included whole so that its static callbacks can be called without the
 * pipeline core. fuzz-sources: runtime/error.c runtime/fail.c */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lualib.h>
#include <lauxlib.h>

#include "../../bindings/psql_guard.c"
#include "stage_harness.h"

static lua_State *L;

typedef struct outcome {
    int failed;
    char msg[sizeof ((bkr_error *)0)->msg];
    uint64_t meta, copies;
} outcome;

/* mode 0: whole; 1: byte by byte; 2: random chunks from seed. */
static void run(const unsigned char *data, size_t len, int mode, uint64_t seed, outcome *o)
{
    guard *g = guard_new();
    bkr_error err;
    if (g == NULL)
        abort();
    memset(o, 0, sizeof *o);
    size_t pos = 0;
    while (pos < len && !o->failed) {
        size_t n = mode == 0 ? len : mode == 1 ? 1 : 1 + next_random(&seed) % (next_random(&seed) % 4 ? 16 : 4096);
        if (n > len - pos)
            n = len - pos;
        o->failed = guard_observe(g, data + pos, n, &err) != 0;
        pos += n;
    }
    if (!o->failed)
        o->failed = guard_observe(g, NULL, 0, &err) != 0;
    if (o->failed) {
        if (strcmp(err.kind, BKR_KIND_CORRUPT) != 0)
            abort();
        snprintf(o->msg, sizeof o->msg, "%s", err.msg);
        unsigned long long line;
        if (sscanf(o->msg, "line %llu: ", &line) != 1 || line < 1)
            abort();
        size_t lines = 1;
        for (size_t i = 0; i < len; i++)
            lines += data[i] == '\n';
        if (line > lines)
            abort();
        /* never a control byte in a message */
        for (const char *p = o->msg; *p; p++)
            if ((unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f)
                abort();
    } else {
        if (guard_result(g, L) != 1)
            abort();
        lua_settop(L, 0);
        o->meta = g->meta_commands;
        o->copies = g->copy_sections;
    }
    guard_free(g);
}

static void same(const outcome *a, const outcome *b)
{
    if (a->failed != b->failed || strcmp(a->msg, b->msg) != 0 || a->meta != b->meta || a->copies != b->copies)
        abort();
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

    outcome whole, bytes, chunks;
    run(data, size, 0, 0, &whole);
    run(data, size, 1, 0, &bytes);
    run(data, size, 2, seed, &chunks);
    same(&whole, &bytes);
    same(&whole, &chunks);

    int plain = 1, backslash = 0;
    for (size_t i = 0; i < size; i++) {
        if (memchr("'\"$-/\n\r", data[i], 7) != NULL)
            plain = 0;
        backslash |= data[i] == '\\';
    }
    if (plain && backslash && !whole.failed)
        abort();
    return 0;
}
