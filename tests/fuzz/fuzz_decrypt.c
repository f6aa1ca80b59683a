/*
 * fuzz_decrypt.c - libFuzzer target for bkr.crypto's decrypt filter (the chunked AES-256-GCM
 * format of docs/format.md), driven through its stage callbacks in random chunkings.
 *
 * Build and run (from the repository root): scripts/fuzz.sh decrypt [SECONDS], or by hand:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
 *       -std=c11 -D_GNU_SOURCE $(pkg-config --cflags lua5.4) -Iruntime -Ibindings \
 *       tests/fuzz/fuzz_decrypt.c bindings/crypto.c bindings/stream.c -o /tmp/fuzz_decrypt \
 *       -llua5.4 -lcrypto -lm
 *   mkdir -p /tmp/fuzz_decrypt_corpus && /tmp/fuzz_decrypt -max_total_time=60 /tmp/fuzz_decrypt_corpus
 *
 * The first input byte chooses a mode:
 *   raw (even):  the rest is fed to the decrypt filter as a file, twice, in two different
 *                random chunkings: both runs must agree (success or failure, and the bytes
 *                produced), and a failed run may only have produced whole chunks of the
 *                header's chunk size. (The seed tests/fuzz/seeds/decrypt-valid-file is a valid
 *                file under the fixed key, so mutations reach every chunk's checks.)
 *   sealed (odd): the rest (after a few control bytes) is plaintext, encrypted with the fixed
 *                key by the encrypt filter (small chunk size, random chunking), then damaged
 *                in one of several ways (or not), then decrypted. An intact file must decrypt
 *                to the plaintext; a damaged one must fail; and in every case what the filter
 *                produced must be whole authenticated chunks: a prefix of the plaintext whose
 *                length is a multiple of the chunk size.
 * Beyond the sanitizers (leaks included), each call must make progress as stream.h demands.
 * Seeds: tests/fuzz/seeds/decrypt-* (a valid file under the fixed key, and sealed-mode inputs).
 */
/* fuzz-sources: bindings/crypto.c bindings/stream.c bindings/stream_stages.c bindings/atomic_file.c bindings/openssl_util.c runtime/error.c runtime/fail.c runtime/support.c */
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
#include "stream.h"

/* The fuzzer is never interrupted (the host's signal flag lives in runtime/main.c). */
int bkr_interrupted(void)
{
    return 0;
}

void bkr_interrupt_delivered(lua_State *L)
{
    (void)L;
}

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_decrypt: %s\n", what);
        abort();
    }
}

/* A small deterministic generator for the chunkings, seeded from the input. */
static uint32_t rng_state;
static uint32_t rnd(uint32_t bound)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return bound ? rng_state % bound : 0;
}

static const unsigned char KEY[32] = "bkr fuzz key: 32 bytes exactly!";

typedef struct buf {
    unsigned char *data;
    size_t len, cap;
} buf;

static void buf_add(buf *b, const unsigned char *p, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->data = realloc(b->data, b->cap);
        check(b->data != NULL, "out of memory");
    }
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
}

/* Run a filter stage's process callback over in[0..len) in random pieces with random output
 * room, then flush. Everything produced (even by a failing call) lands in out. Returns 0 for
 * success, -1 when the filter reported an error. */
static int drive(bkr_stage *st, const unsigned char *in, size_t len, buf *out)
{
    unsigned char room[4096];
    bkr_error err;
    size_t pos = 0;
    while (pos < len) {
        size_t piece = 1 + rnd(rnd(2) ? 64 : 3000);
        if (piece > len - pos)
            piece = len - pos;
        const unsigned char *p = in + pos;
        size_t left = piece;
        while (left > 0) {
            size_t consumed = 0, produced = 0, cap = 1 + rnd(sizeof room);
            int done = 0;
            int rc = st->ops->process(st->self, p, left, &consumed, room, cap, &produced, &done, &err);
            check(consumed <= left && produced <= cap, "consumed or produced more than allowed");
            buf_add(out, room, produced);
            if (rc != 0)
                return -1;
            check(consumed > 0 || produced > 0, "no progress");
            p += consumed;
            left -= consumed;
        }
        pos += piece;
    }
    for (;;) {
        size_t consumed = 0, produced = 0, cap = 1 + rnd(sizeof room);
        int done = 0;
        int rc = st->ops->process(st->self, NULL, 0, &consumed, room, cap, &produced, &done, &err);
        check(produced <= cap, "produced more than allowed");
        buf_add(out, room, produced);
        if (rc != 0)
            return -1;
        if (done)
            return 0;
        check(produced > 0, "no progress while flushing");
    }
}

/* A new stage from crypto[fname]{ key = KEY, chunk_size = cs }, left on the stack. */
static bkr_stage *new_stage(lua_State *L, const char *fname, lua_Integer chunk_size)
{
    lua_getfield(L, 1, fname);
    lua_createtable(L, 0, 2);
    lua_pushlstring(L, (const char *)KEY, sizeof KEY);
    lua_setfield(L, -2, "key");
    lua_pushinteger(L, chunk_size);
    lua_setfield(L, -2, "chunk_size");
    check(lua_pcall(L, 1, 1, 0) == LUA_OK, "constructor raised");
    return (bkr_stage *)luaL_checkudata(L, -1, BKR_STAGE);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    lua_State *L = luaL_newstate();
    if (L == NULL)
        return 0;
    luaL_requiref(L, "bkr.crypto", luaopen_bkr_crypto, 0);
    rng_state = 0x9e3779b9u;
    for (size_t i = 0; i < size && i < 16; i++)
        rng_state = rng_state * 31 + data[i] + 1;

    buf out = {0}, sealed = {0};
    if ((data[0] & 1) == 0) {
        buf again = {0};
        bkr_stage *dec = new_stage(L, "decrypt", 0);
        int rc = drive(dec, data + 1, size - 1, &out);
        lua_pop(L, 1);
        rng_state = rng_state * 2654435761u + 1;
        dec = new_stage(L, "decrypt", 0);
        int rc2 = drive(dec, data + 1, size - 1, &again);
        check((rc == 0) == (rc2 == 0), "the result depends on the chunking");
        if (rc == 0)
            check(out.len == again.len && (out.len == 0 || memcmp(out.data, again.data, out.len) == 0),
                  "the plaintext depends on the chunking");
        if (rc != 0 && out.len > 0) {
            uint32_t chunk_size = (uint32_t)data[9] << 24 | (uint32_t)data[10] << 16 | (uint32_t)data[11] << 8 | data[12];
            check(out.len % chunk_size == 0, "a failed run produced part of a chunk");
        }
        free(again.data);
    } else if (size >= 5) {
        size_t chunk_size = 1 + data[1] % 64;
        int damage = data[2] % 5;
        uint32_t where = (uint32_t)data[3] << 8 | data[4];
        const unsigned char *plain = data + 5;
        size_t plain_len = size - 5;

        bkr_stage *enc = new_stage(L, "encrypt", (lua_Integer)chunk_size);
        check(drive(enc, plain, plain_len, &sealed) == 0, "encryption failed");
        size_t chunks = plain_len == 0 ? 1 : (plain_len + chunk_size - 1) / chunk_size;
        check(sealed.len == 27 + plain_len + 16 * chunks, "unexpected encrypted size");

        int intact = 0;
        size_t full = chunk_size + 16;
        switch (damage) {
        case 0:
            intact = 1;
            break;
        case 1: /* one flipped bit */
            sealed.data[where % sealed.len] ^= (unsigned char)(1u << (data[3] % 8));
            break;
        case 2: /* cut short */
            sealed.len = where % sealed.len;
            break;
        case 3: /* two chunks swapped (intact when there are not two full ones) */
            if (chunks >= 3) {
                size_t a = where % (chunks - 1), b = (a + 1 + data[3] % (chunks - 1)) % (chunks - 1);
                if (a == b) {
                    intact = 1;
                } else {
                    unsigned char *tmp = malloc(full);
                    check(tmp != NULL, "out of memory");
                    memcpy(tmp, sealed.data + 27 + a * full, full);
                    memcpy(sealed.data + 27 + a * full, sealed.data + 27 + b * full, full);
                    memcpy(sealed.data + 27 + b * full, tmp, full);
                    free(tmp);
                }
            } else {
                intact = 1;
            }
            break;
        default: /* bytes appended */
            buf_add(&sealed, data + 3, 1 + data[3] % 2);
            break;
        }
        lua_pop(L, 1);
        bkr_stage *dec = new_stage(L, "decrypt", 0);
        int rc = drive(dec, sealed.data, sealed.len, &out);
        if (intact) {
            check(rc == 0, "an intact file failed to decrypt");
            check(out.len == plain_len && (plain_len == 0 || memcmp(out.data, plain, plain_len) == 0),
                  "decrypted bytes differ from the plaintext");
        } else {
            check(rc != 0, "a damaged file decrypted");
            check(out.len % chunk_size == 0 && out.len <= plain_len, "output is not whole chunks");
            check(out.len == 0 || memcmp(out.data, plain, out.len) == 0, "output differs from the plaintext");
        }
    }
    free(out.data);
    free(sealed.data);
    lua_close(L);
    return 0;
}
