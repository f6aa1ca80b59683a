/*
 * fuzz_psql_restrict.c - libFuzzer target for bindings/psql_restrict.c (scripts/fuzz.sh
 * psql_restrict).
 *
 * The input is the "dump"; a hash of it seeds the random chunking and the output buffer sizes.
 * It goes through the stage in one piece, one byte at a time, and in random chunks into random
 * small output buffers. Besides crashes, leaks and undefined behaviour, it checks that the
 * chunking changes nothing (same output, same count), and what the stage may do at all: the
 * output is the input with whole "\restrict KEY" or "\unrestrict KEY" lines taken out (and
 * blank lines after the last one), and nothing else changed.
 *
 * psql_restrict.c is included whole so that its static callbacks can be called without the
 * pipeline core. fuzz-sources: runtime/error.c runtime/fail.c */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lualib.h>
#include <lauxlib.h>

#include "../../bindings/psql_restrict.c"
#include "stage_harness.h"

/* mode 0: whole; 1: byte by byte; 2: random chunks and output sizes from seed. Returns the
 * output (malloc'd) and its length, and the count of dropped lines. */
static unsigned char *run(const unsigned char *data, size_t len, int mode, uint64_t seed, size_t *out_len,
                          long *dropped)
{
    dropper *d = calloc(1, sizeof *d);
    if (d == NULL)
        abort();
    d->phase = HEAD;
    d->at_line_start = 1;
    unsigned char *out = malloc(len + 1);
    if (out == NULL)
        abort();
    size_t pos = 0, n_out = 0;
    bkr_error err;
    int done = 0;
    for (;;) {
        size_t n = pos == len ? 0 : mode == 0 ? len - pos : mode == 1 ? 1 : 1 + next_random(&seed) % 300;
        if (n > len - pos)
            n = len - pos;
        size_t cap = mode == 2 ? 1 + next_random(&seed) % 500 : 65536;
        unsigned char buf[65536];
        size_t consumed = 0, produced = 0;
        if (dropper_process(d, pos == len ? NULL : data + pos, n, &consumed, buf, cap, &produced, &done, &err) != 0)
            abort();
        if (n_out + produced > len)
            abort(); /* it never adds bytes */
        memcpy(out + n_out, buf, produced);
        n_out += produced;
        pos += consumed;
        if (pos == len && done)
            break;
        if (consumed == 0 && produced == 0 && pos < len)
            abort(); /* no progress */
    }
    *out_len = n_out;
    *dropped = d->dropped;
    dropper_free(d);
    return out;
}

/* The output is the input with exactly `dropped` whole key lines taken out (and, after the
 * last one, blank lines): walk both, a line at a time. (Identical lines are interchangeable,
 * so matching the first equal line is right.) */
static void check_only_key_lines_removed(const unsigned char *in, size_t in_len, const unsigned char *out,
                                         size_t out_len, long dropped)
{
    size_t i = 0, o = 0;
    long removed = 0;
    while (i < in_len) {
        size_t end = i;
        while (end < in_len && in[end] != '\n')
            end++;
        size_t line_len = end - i + (end < in_len);
        if (o + line_len <= out_len && memcmp(in + i, out + o, line_len) == 0) {
            i += line_len;
            o += line_len;
            continue;
        }
        if (is_key_line(in + i, line_len, "restrict", end == in_len)
            || is_key_line(in + i, line_len, "unrestrict", end == in_len))
            removed++;
        else if (!(o == out_len && line_len == 1 && in[i] == '\n'))
            abort(); /* only key lines, and blank lines once the output has ended, go */
        i += line_len;
    }
    if (o != out_len || removed != dropped)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t seed = 0xcbf29ce484222325u;
    for (size_t i = 0; i < size; i++)
        seed = (seed ^ data[i]) * 0x100000001b3u;
    if (seed == 0)
        seed = 1;
    size_t la, lb, lc;
    long da, db, dc;
    unsigned char *a = run(data, size, 0, 0, &la, &da);
    unsigned char *b = run(data, size, 1, 0, &lb, &db);
    unsigned char *c = run(data, size, 2, seed, &lc, &dc);
    if (la != lb || la != lc || da != db || da != dc || memcmp(a, b, la) != 0 || memcmp(a, c, la) != 0)
        abort();
    check_only_key_lines_removed(data, size, a, la, da);
    free(a);
    free(b);
    free(c);
    return 0;
}
