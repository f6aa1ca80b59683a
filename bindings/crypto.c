/*
 * crypto.c - bkr.crypto: AES-256-GCM through OpenSSL 3's EVP interface, for encrypted
 * backups (a chunked stream format, docs/format.md) and for single values in
 * configuration files; plus the legacy XOR scheme, kept only to read old backups.
 *
 * A key is always 32 raw bytes (a Lua string); passing anything else raises. Keys never
 * appear in a message: wrong keys are named by their key id.
 *
 * Lua API
 *   crypto.key_id(key)                   -> 16 lowercase hex chars: the first 8 bytes of
 *                                           SHA-256(key)
 *   crypto.random_bytes(n)               -> n bytes from OpenSSL's CSPRNG (0 <= n <= 1 MiB)
 *   crypto.base64_encode(s)              -> standard base64 with padding, one line
 *   crypto.base64_decode(s)              -> bytes; nil, msg for anything but canonical
 *                                           padded standard base64 (no whitespace)
 *   crypto.encrypt_value(key, plaintext, aad)
 *                                        -> "ENCRYPTED:v2:" .. base64(key_id(8) || nonce(12)
 *                                           || ciphertext || tag(16)); AES-256-GCM, a fresh
 *                                           random nonce, aad (the field's path) authenticated
 *   crypto.decrypt_value(key, text, aad) -> plaintext; or nil, msg, code with code
 *                                           "format" (not an ENCRYPTED:v2 value, bad base64,
 *                                           too short), "key" (encrypted with another key:
 *                                           both key ids in msg) or "auth" (tampered value or
 *                                           another field's aad)
 *   crypto.xor_encrypt_value(key, plaintext) -> "ENCRYPTED:" .. base64(plaintext XOR key
 *                                           repeated): the previous tool's scheme, NOT encryption
 *   crypto.xor_value(key, text)          -> plaintext; text is the base64 part, with or without
 *                                           the "ENCRYPTED:" prefix; nil, msg, "format" for bad
 *                                           base64. No authentication: a wrong key gives garbage
 *   crypto.encrypt{ key = k, chunk_size = 65536, name = ... }
 *                                        filter stage (type "encrypt"): the chunked format;
 *                                        result { key_id = hex, chunks = n }
 *   crypto.decrypt{ key = k, name = ... }
 *                                        filter stage (type "decrypt"): passes on only
 *                                        authenticated plaintext; result { key_id = hex,
 *                                        chunks = n, chunk_size = n }. Fails the run for a
 *                                        foreign file, another key, any damaged, reordered,
 *                                        missing or appended chunk.
 */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "bkr.h"
#include "openssl_util.h"
#include "stream.h"

#define KEY_LEN 32
#define KEY_ID_LEN 8
#define TAG_LEN 16
#define VALUE_NONCE_LEN 12

#define VALUE_PREFIX "ENCRYPTED:v2:"
#define LEGACY_PREFIX "ENCRYPTED:"

/* The chunked stream format (docs/format.md). */
#define MAGIC "BKRENC"
#define MAGIC_LEN 6
#define FORMAT_VERSION 1
#define PREFIX_LEN 7
#define HEADER_LEN (MAGIC_LEN + 2 + 4 + KEY_ID_LEN + PREFIX_LEN) /* 27 */
#define DEFAULT_CHUNK 65536
#define MAX_CHUNK (8 * 1024 * 1024) /* bounds a reader's memory whatever a header claims */

/* ================================================================ helpers */

static void put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* First 8 bytes of SHA-256(key). Returns 0, or -1 (error queue cleared). */
static int compute_key_id(const unsigned char *key, unsigned char id[KEY_ID_LEN])
{
    unsigned char digest[EVP_MAX_MD_SIZE];
    if (EVP_Digest(key, KEY_LEN, digest, NULL, EVP_sha256(), NULL) != 1) {
        ERR_clear_error();
        return -1;
    }
    memcpy(id, digest, KEY_ID_LEN);
    return 0;
}

/* The key argument at index i: exactly 32 bytes, else a misuse error. */
static const unsigned char *check_key(lua_State *L, int i)
{
    size_t len;
    const char *key = luaL_checklstring(L, i, &len);
    if (len != KEY_LEN)
        luaL_argerror(L, i, lua_pushfstring(L, "key must be %d raw bytes, got %d", KEY_LEN, (int)len));
    return (const unsigned char *)key;
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Decoded length of canonical padded base64 (no whitespace), or -1 if s is not that. */
static long b64_decoded_len(const char *s, size_t len)
{
    if (len % 4 != 0 || len / 4 * 3 > (size_t)INT_MAX)
        return -1;
    size_t pad = 0;
    if (len > 0 && s[len - 1] == '=') pad++;
    if (len > 1 && s[len - 2] == '=') pad++;
    for (size_t i = 0; i < len - pad; i++)
        if (b64_value((unsigned char)s[i]) < 0)
            return -1;
    /* Canonical: the bits the padding leaves unused are zero, so each byte string has exactly
     * one text ("Gss=", never also "Gsv="). Found by tests/fuzz/fuzz_values.c. */
    if (pad > 0 && (b64_value((unsigned char)s[len - pad - 1]) & (pad == 1 ? 0x03 : 0x0f)) != 0)
        return -1;
    return (long)(len / 4 * 3 - pad);
}

/* Decode canonical base64 into out (room for len/4*3 bytes). Returns the length or -1. */
static long b64_decode(const char *s, size_t len, unsigned char *out)
{
    long want = b64_decoded_len(s, len);
    if (want < 0)
        return -1;
    if (len == 0)
        return 0;
    /* EVP_DecodeBlock would skip surrounding whitespace and counts padding as zero bytes:
     * the check above makes its input strict, `want` drops the padding. */
    int n = EVP_DecodeBlock(out, (const unsigned char *)s, (int)len);
    if (n < 0 || (size_t)n != len / 4 * 3) {
        ERR_clear_error();
        return -1;
    }
    return want;
}

/* ================================================================ AES-256-GCM, one message */

/* Seal in[0..len) into out (len bytes) and tag. Returns 0 or -1 (reason in msg). */
static int gcm_seal(EVP_CIPHER_CTX *ctx, const unsigned char *nonce, const unsigned char *aad,
                    size_t aad_len, const unsigned char *in, size_t len, unsigned char *out,
                    unsigned char tag[TAG_LEN], char *msg, size_t msg_len)
{
    int n = 0;
    if (len > INT_MAX || aad_len > INT_MAX) {
        snprintf(msg, msg_len, "message too long");
        return -1;
    }
    if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1
        || (aad_len > 0 && EVP_EncryptUpdate(ctx, NULL, &n, aad, (int)aad_len) != 1)
        || (len > 0 && EVP_EncryptUpdate(ctx, out, &n, in, (int)len) != 1)
        || EVP_EncryptFinal_ex(ctx, out + (len > 0 ? (size_t)n : 0), &n) != 1
        || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, tag) != 1) {
        bkr_openssl_reason(msg, msg_len);
        return -1;
    }
    return 0;
}

/* Open in[0..len) with tag into out (len bytes). Returns 0, or 1 when authentication
 * failed (out wiped), or -1 for an OpenSSL failure (reason in msg). */
static int gcm_open(EVP_CIPHER_CTX *ctx, const unsigned char *nonce, const unsigned char *aad,
                    size_t aad_len, const unsigned char *in, size_t len, const unsigned char *tag,
                    unsigned char *out, char *msg, size_t msg_len)
{
    int n = 0;
    if (len > INT_MAX || aad_len > INT_MAX) {
        snprintf(msg, msg_len, "message too long");
        return -1;
    }
    if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1
        || (aad_len > 0 && EVP_DecryptUpdate(ctx, NULL, &n, aad, (int)aad_len) != 1)
        || (len > 0 && EVP_DecryptUpdate(ctx, out, &n, in, (int)len) != 1)
        || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN, (void *)tag) != 1) {
        bkr_openssl_reason(msg, msg_len);
        return -1;
    }
    if (EVP_DecryptFinal_ex(ctx, out + (len > 0 ? (size_t)n : 0), &n) != 1) {
        /* Not authentic: nothing of what Update wrote may be used. */
        ERR_clear_error();
        if (len > 0)
            OPENSSL_cleanse(out, len);
        return 1;
    }
    return 0;
}

/* A context with the key schedule set up for AES-256-GCM with 12-byte nonces; reused
 * for every message with that key (only the nonce changes). NULL on failure. */
static EVP_CIPHER_CTX *gcm_context(const unsigned char *key, int encrypt)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL)
        return NULL;
    if (EVP_CipherInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL, encrypt) != 1
        || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) != 1
        || EVP_CipherInit_ex(ctx, NULL, NULL, key, NULL, encrypt) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        ERR_clear_error();
        return NULL;
    }
    return ctx;
}

/* ================================================================ keys, random, base64 */

static int crypto_key_id(lua_State *L)
{
    const unsigned char *key = check_key(L, 1);
    unsigned char id[KEY_ID_LEN];
    char out[2 * KEY_ID_LEN + 1];
    if (compute_key_id(key, id) != 0)
        return luaL_error(L, "crypto.key_id: SHA-256 failed");
    bkr_hex(id, KEY_ID_LEN, out);
    lua_pushstring(L, out);
    return 1;
}

static int crypto_random_bytes(lua_State *L)
{
    lua_Integer n = luaL_checkinteger(L, 1);
    luaL_argcheck(L, n >= 0 && n <= 1024 * 1024, 1, "byte count must be 0 to 1048576");
    luaL_Buffer b;
    unsigned char *p = (unsigned char *)luaL_buffinitsize(L, &b, (size_t)n);
    if (n > 0 && RAND_bytes(p, (int)n) != 1) {
        char reason[256];
        bkr_openssl_reason(reason, sizeof reason);
        return luaL_error(L, "crypto.random_bytes: %s", reason);
    }
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

/* Push base64 of data (Lua-owned buffer: nothing to free if pushing raises). */
static void push_base64(lua_State *L, const unsigned char *data, size_t len)
{
    if (len > (size_t)INT_MAX / 4 * 3 - 3)
        luaL_error(L, "crypto.base64_encode: input too long");
    size_t out_len = (len + 2) / 3 * 4;
    luaL_Buffer b;
    unsigned char *p = (unsigned char *)luaL_buffinitsize(L, &b, out_len + 1);
    int n = len > 0 ? EVP_EncodeBlock(p, data, (int)len) : 0;
    luaL_pushresultsize(&b, (size_t)n);
}

static int crypto_base64_encode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    push_base64(L, (const unsigned char *)s, len);
    return 1;
}

static int crypto_base64_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    if (b64_decoded_len(s, len) < 0)
        return bkr_pushfail(L, "format", "crypto.base64_decode: invalid base64");
    luaL_Buffer b;
    unsigned char *p = (unsigned char *)luaL_buffinitsize(L, &b, len / 4 * 3 + 1);
    long n = b64_decode(s, len, p);
    if (n < 0) {
        luaL_pushresultsize(&b, 0);
        return bkr_pushfail(L, "format", "crypto.base64_decode: invalid base64");
    }
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

/* ================================================================ single values */

/* Blob layout inside the base64 of an ENCRYPTED:v2 value. */
#define VALUE_OVERHEAD (KEY_ID_LEN + VALUE_NONCE_LEN + TAG_LEN)

static int crypto_encrypt_value(lua_State *L)
{
    const unsigned char *key = check_key(L, 1);
    size_t len, aad_len;
    const unsigned char *plain = (const unsigned char *)luaL_checklstring(L, 2, &len);
    const unsigned char *aad = (const unsigned char *)luaL_checklstring(L, 3, &aad_len);
    luaL_argcheck(L, len <= 64 * 1024 * 1024, 2, "value longer than 64 MiB");

    /* The blob lives in a Lua userdata: the collector frees it whatever raises later. */
    size_t blob_len = VALUE_OVERHEAD + len;
    unsigned char *blob = lua_newuserdatauv(L, blob_len, 0);
    char msg[256];
    int failed = 0;
    EVP_CIPHER_CTX *ctx = NULL;
    if (compute_key_id(key, blob) != 0) {
        failed = 1;
        snprintf(msg, sizeof msg, "SHA-256 failed");
    } else if (RAND_bytes(blob + KEY_ID_LEN, VALUE_NONCE_LEN) != 1) {
        failed = 1;
        bkr_openssl_reason(msg, sizeof msg);
    } else if ((ctx = gcm_context(key, 1)) == NULL) {
        failed = 1;
        snprintf(msg, sizeof msg, "cannot set up AES-256-GCM");
    } else {
        unsigned char *nonce = blob + KEY_ID_LEN, *ct = nonce + VALUE_NONCE_LEN;
        failed = gcm_seal(ctx, nonce, aad, aad_len, plain, len, ct, ct + len, msg, sizeof msg) != 0;
    }
    EVP_CIPHER_CTX_free(ctx);
    if (failed)
        return luaL_error(L, "crypto.encrypt_value: %s", msg);
    lua_pushliteral(L, VALUE_PREFIX);
    push_base64(L, blob, blob_len);
    lua_concat(L, 2);
    return 1;
}

static int crypto_decrypt_value(lua_State *L)
{
    const unsigned char *key = check_key(L, 1);
    size_t len, aad_len;
    const char *text = luaL_checklstring(L, 2, &len);
    const unsigned char *aad = (const unsigned char *)luaL_checklstring(L, 3, &aad_len);
    const size_t plen = sizeof VALUE_PREFIX - 1;
    if (len < plen || memcmp(text, VALUE_PREFIX, plen) != 0)
        return bkr_pushfail(L, "format", "crypto.decrypt_value: not an ENCRYPTED:v2 value");
    text += plen;
    len -= plen;
    long blob_len = b64_decoded_len(text, len);
    if (blob_len < 0)
        return bkr_pushfail(L, "format", "crypto.decrypt_value: malformed ENCRYPTED:v2 value (invalid base64)");
    if (blob_len < VALUE_OVERHEAD)
        return bkr_pushfail(L, "format", "crypto.decrypt_value: malformed ENCRYPTED:v2 value (too short)");

    unsigned char *blob = lua_newuserdatauv(L, len / 4 * 3 + 1, 0);
    b64_decode(text, len, blob);
    unsigned char id[KEY_ID_LEN];
    if (compute_key_id(key, id) != 0)
        return luaL_error(L, "crypto.decrypt_value: SHA-256 failed");
    if (memcmp(id, blob, KEY_ID_LEN) != 0) {
        char want[2 * KEY_ID_LEN + 1], have[2 * KEY_ID_LEN + 1];
        bkr_hex(blob, KEY_ID_LEN, want);
        bkr_hex(id, KEY_ID_LEN, have);
        return bkr_pushfail(L, "key", "crypto.decrypt_value: encrypted with key %s, the key given is %s",
                            want, have);
    }
    size_t ct_len = (size_t)blob_len - VALUE_OVERHEAD;
    const unsigned char *nonce = blob + KEY_ID_LEN, *ct = nonce + VALUE_NONCE_LEN;
    unsigned char *plain = lua_newuserdatauv(L, ct_len + 1, 0);
    char msg[256];
    EVP_CIPHER_CTX *ctx = gcm_context(key, 0);
    int rc = ctx == NULL ? -1 : gcm_open(ctx, nonce, aad, aad_len, ct, ct_len, ct + ct_len, plain, msg, sizeof msg);
    if (ctx == NULL)
        snprintf(msg, sizeof msg, "cannot set up AES-256-GCM");
    EVP_CIPHER_CTX_free(ctx);
    if (rc < 0)
        return luaL_error(L, "crypto.decrypt_value: %s", msg);
    if (rc > 0)
        return bkr_pushfail(L, "auth",
                            "crypto.decrypt_value: authentication failed (tampered value or wrong field)");
    lua_pushlstring(L, (const char *)plain, ct_len);
    OPENSSL_cleanse(plain, ct_len);
    return 1;
}

/* ================================================================ legacy XOR */

static void xor_key(unsigned char *data, size_t len, const unsigned char *key)
{
    for (size_t i = 0; i < len; i++)
        data[i] ^= key[i % KEY_LEN];
}

static int crypto_xor_encrypt_value(lua_State *L)
{
    const unsigned char *key = check_key(L, 1);
    size_t len;
    const char *plain = luaL_checklstring(L, 2, &len);
    luaL_argcheck(L, len <= 64 * 1024 * 1024, 2, "value longer than 64 MiB");
    unsigned char *buf = lua_newuserdatauv(L, len + 1, 0);
    memcpy(buf, plain, len);
    xor_key(buf, len, key);
    lua_pushliteral(L, LEGACY_PREFIX);
    push_base64(L, buf, len);
    lua_concat(L, 2);
    return 1;
}

static int crypto_xor_value(lua_State *L)
{
    const unsigned char *key = check_key(L, 1);
    size_t len;
    const char *text = luaL_checklstring(L, 2, &len);
    const size_t plen = sizeof LEGACY_PREFIX - 1;
    if (len >= plen && memcmp(text, LEGACY_PREFIX, plen) == 0) {
        text += plen;
        len -= plen;
    }
    long n = b64_decoded_len(text, len);
    if (n < 0)
        return bkr_pushfail(L, "format", "crypto.xor_value: not a legacy ENCRYPTED: value (invalid base64)");
    unsigned char *buf = lua_newuserdatauv(L, len / 4 * 3 + 1, 0);
    b64_decode(text, len, buf);
    xor_key(buf, (size_t)n, key);
    lua_pushlstring(L, (const char *)buf, (size_t)n);
    return 1;
}

/* ================================================================ the chunked stream format */

/*
 * Both filters hold one chunk at a time, so memory is bounded by the chunk size:
 *   encrypt: plaintext accumulates in `in` (chunk_size bytes). A full buffer is sealed as
 *            a non-final chunk only once a further byte arrives; at end of input whatever
 *            is buffered (0..chunk_size bytes) is sealed as the final chunk.
 *   decrypt: stored bytes accumulate in `in` (chunk_size + 16). A full buffer is opened as
 *            non-final only once a further byte arrives (a full chunk may be the final
 *            one); at end of input what is buffered must open as the final chunk.
 * Output waits in `out` until the stream core takes it: the decrypt filter puts plaintext
 * there only after its tag verified, so nothing unauthenticated ever leaves the filter.
 */
typedef struct cipher_stream {
    int encrypt;
    EVP_CIPHER_CTX *ctx;
    unsigned char key[KEY_LEN];
    unsigned char key_id[KEY_ID_LEN];
    unsigned char header[HEADER_LEN];
    size_t header_fill;     /* decrypt: header bytes read so far */
    uint32_t chunk_size;    /* plaintext bytes per full chunk (decrypt: from the header) */
    unsigned char *in;      /* the chunk being gathered */
    size_t in_fill;
    unsigned char *out;     /* output waiting to be taken */
    size_t out_pos, out_len;
    uint64_t chunks;        /* chunks sealed / opened */
    int final_done;         /* the final chunk was sealed / opened */
    int finished;           /* flush completed: the result is valid */
} cipher_stream;

static void cipher_free(void *self)
{
    cipher_stream *c = self;
    EVP_CIPHER_CTX_free(c->ctx);
    if (c->in != NULL) {
        OPENSSL_cleanse(c->in, c->encrypt ? c->chunk_size : (size_t)c->chunk_size + TAG_LEN);
        free(c->in);
    }
    if (c->out != NULL) {
        size_t cap = c->encrypt ? (size_t)c->chunk_size + TAG_LEN + HEADER_LEN : c->chunk_size;
        OPENSSL_cleanse(c->out, cap);
        free(c->out);
    }
    OPENSSL_cleanse(c->key, sizeof c->key);
    free(c);
}

/* Nonce of chunk i: prefix(7) || uint32_be(i) || final flag. */
static void chunk_nonce(const cipher_stream *c, uint64_t i, int final, unsigned char nonce[12])
{
    memcpy(nonce, c->header + HEADER_LEN - PREFIX_LEN, PREFIX_LEN);
    put_be32(nonce + PREFIX_LEN, (uint32_t)i);
    nonce[11] = final ? 1 : 0;
}

/* Copy waiting output into the core's buffer. */
static void drain(cipher_stream *c, unsigned char *out, size_t out_cap, size_t *produced)
{
    size_t n = c->out_len - c->out_pos;
    if (n > out_cap - *produced)
        n = out_cap - *produced;
    memcpy(out + *produced, c->out + c->out_pos, n);
    *produced += n;
    c->out_pos += n;
    if (c->out_pos == c->out_len)
        c->out_pos = c->out_len = 0;
}

/* ---------------------------------------------------------------- encrypt */

static int seal_chunk(cipher_stream *c, int final, bkr_error *err)
{
    char msg[256];
    unsigned char nonce[12];
    if (c->chunks > UINT32_MAX)
        return bkr_error_set(err, "too much data for one file (2^32 chunks)");
    chunk_nonce(c, c->chunks, final, nonce);
    /* out is empty here (drained before sealing); the header may still be in it. */
    unsigned char *dst = c->out + c->out_len;
    if (gcm_seal(c->ctx, nonce, c->header, HEADER_LEN, c->in, c->in_fill, dst, dst + c->in_fill, msg,
                 sizeof msg) != 0)
        return bkr_error_set(err, "AES-256-GCM failed: %s", msg);
    c->out_len += c->in_fill + TAG_LEN;
    c->in_fill = 0;
    c->chunks++;
    if (final)
        c->final_done = 1;
    return 0;
}

static int encrypt_process(void *self, const unsigned char *in, size_t in_len, size_t *consumed,
                           unsigned char *out, size_t out_cap, size_t *produced, int *done, bkr_error *err)
{
    cipher_stream *c = self;
    *consumed = *produced = 0;
    for (;;) {
        if (c->out_len > c->out_pos) {
            drain(c, out, out_cap, produced);
            if (c->out_len > c->out_pos)
                return 0; /* the core's buffer is full */
        }
        if (in == NULL) {
            if (c->final_done) {
                c->finished = 1;
                *done = 1;
                return 0;
            }
            if (seal_chunk(c, 1, err) != 0)
                return -1;
            continue;
        }
        if (*consumed == in_len)
            return 0;
        if (c->in_fill == c->chunk_size) {
            /* More plaintext follows: the buffered full chunk is not the last one. */
            if (seal_chunk(c, 0, err) != 0)
                return -1;
            continue;
        }
        size_t n = in_len - *consumed;
        if (n > c->chunk_size - c->in_fill)
            n = c->chunk_size - c->in_fill;
        memcpy(c->in + c->in_fill, in + *consumed, n);
        c->in_fill += n;
        *consumed += n;
    }
}

static int cipher_result(void *self, lua_State *L)
{
    cipher_stream *c = self;
    char id[2 * KEY_ID_LEN + 1];
    if (!c->finished)
        return 0;
    bkr_hex(c->key_id, KEY_ID_LEN, id);
    lua_createtable(L, 0, 3);
    lua_pushstring(L, id);
    lua_setfield(L, -2, "key_id");
    lua_pushinteger(L, (lua_Integer)c->chunks);
    lua_setfield(L, -2, "chunks");
    if (!c->encrypt) {
        lua_pushinteger(L, (lua_Integer)c->chunk_size);
        lua_setfield(L, -2, "chunk_size");
    }
    return 1;
}

/* ---------------------------------------------------------------- decrypt */

static int parse_header(cipher_stream *c, bkr_error *err)
{
    const unsigned char *h = c->header;
    if (memcmp(h, MAGIC, MAGIC_LEN) != 0)
        return bkr_error_kind(err, BKR_KIND_CORRUPT, "not a bkr encrypted file (no BKRENC header)");
    if (h[MAGIC_LEN] != FORMAT_VERSION)
        return bkr_error_kind(err, BKR_KIND_CORRUPT, "not a bkr encrypted file: format version %d, this bkr reads %d",
                             h[MAGIC_LEN], FORMAT_VERSION);
    if (h[MAGIC_LEN + 1] != 0)
        return bkr_error_kind(err, BKR_KIND_CORRUPT, "not a bkr encrypted file: reserved header byte is %d, not 0",
                             h[MAGIC_LEN + 1]);
    uint32_t chunk_size = get_be32(h + MAGIC_LEN + 2);
    if (chunk_size == 0 || chunk_size > MAX_CHUNK)
        return bkr_error_kind(err, BKR_KIND_CORRUPT, "not a bkr encrypted file: chunk size %lu out of range 1..%d",
                             (unsigned long)chunk_size, MAX_CHUNK);
    const unsigned char *file_id = h + MAGIC_LEN + 2 + 4;
    if (memcmp(file_id, c->key_id, KEY_ID_LEN) != 0) {
        char want[2 * KEY_ID_LEN + 1], have[2 * KEY_ID_LEN + 1];
        bkr_hex(file_id, KEY_ID_LEN, want);
        bkr_hex(c->key_id, KEY_ID_LEN, have);
        return bkr_error_kind(err, BKR_KIND_KEY, "encrypted with key %s, the key given is %s", want, have);
    }
    c->chunk_size = chunk_size;
    c->in = malloc((size_t)chunk_size + TAG_LEN);
    c->out = malloc(chunk_size);
    if (c->in == NULL || c->out == NULL)
        return bkr_error_set(err, "out of memory");
    return 0;
}

/* Open the buffered chunk (in_fill >= 16) into out. Returns 0, 1 (not authentic), -1. */
static int try_open(cipher_stream *c, int final, bkr_error *err)
{
    char msg[256];
    unsigned char nonce[12];
    size_t len = c->in_fill - TAG_LEN;
    chunk_nonce(c, c->chunks, final, nonce);
    int rc = gcm_open(c->ctx, nonce, c->header, HEADER_LEN, c->in, len, c->in + len, c->out, msg, sizeof msg);
    if (rc < 0)
        return bkr_error_set(err, "AES-256-GCM failed: %s", msg);
    return rc;
}

static int open_chunk(cipher_stream *c, int final, bkr_error *err)
{
    if (c->chunks > UINT32_MAX)
        return bkr_error_kind(err, BKR_KIND_CORRUPT, "chunk %llu: more chunks than the format allows",
                             (unsigned long long)c->chunks);
    int rc = try_open(c, final, err);
    if (rc < 0)
        return -1;
    if (rc > 0) {
        /* Name the damage when it can be told apart from tampering. */
        int other = try_open(c, !final, err);
        if (other < 0)
            return -1;
        if (other == 0) {
            OPENSSL_cleanse(c->out, c->in_fill - TAG_LEN);
            if (final)
                return bkr_error_kind(err, BKR_KIND_TRUNCATED, "truncated: no final chunk (the file ends after chunk %llu)",
                                     (unsigned long long)c->chunks);
            return bkr_error_kind(err, BKR_KIND_CORRUPT, "data after the final chunk (chunk %llu)",
                                 (unsigned long long)c->chunks);
        }
        return bkr_error_kind(err, BKR_KIND_AUTH, "chunk %llu failed authentication (tampered, reordered or wrong key)",
                             (unsigned long long)c->chunks);
    }
    c->out_pos = 0;
    c->out_len = c->in_fill - TAG_LEN;
    c->in_fill = 0;
    c->chunks++;
    if (final)
        c->final_done = 1;
    return 0;
}

static int decrypt_process(void *self, const unsigned char *in, size_t in_len, size_t *consumed,
                           unsigned char *out, size_t out_cap, size_t *produced, int *done, bkr_error *err)
{
    cipher_stream *c = self;
    *consumed = *produced = 0;
    for (;;) {
        if (c->out_len > c->out_pos) {
            drain(c, out, out_cap, produced);
            if (c->out_len > c->out_pos)
                return 0;
        }
        if (in == NULL) {
            if (c->final_done) {
                c->finished = 1;
                *done = 1;
                return 0;
            }
            if (c->header_fill < HEADER_LEN)
                return bkr_error_kind(err, BKR_KIND_TRUNCATED, c->header_fill == 0 ? "not a bkr encrypted file (empty)"
                                                              : "not a bkr encrypted file (truncated header)");
            if (c->in_fill < TAG_LEN)
                return bkr_error_kind(err, BKR_KIND_TRUNCATED, "truncated: no final chunk (the file ends after chunk %llu)",
                                     (unsigned long long)c->chunks);
            if (open_chunk(c, 1, err) != 0)
                return -1;
            continue;
        }
        if (*consumed == in_len)
            return 0;
        if (c->header_fill < HEADER_LEN) {
            size_t n = in_len - *consumed;
            if (n > HEADER_LEN - c->header_fill)
                n = HEADER_LEN - c->header_fill;
            memcpy(c->header + c->header_fill, in + *consumed, n);
            c->header_fill += n;
            *consumed += n;
            if (c->header_fill == HEADER_LEN && parse_header(c, err) != 0)
                return -1;
            continue;
        }
        if (c->final_done)
            return bkr_error_kind(err, BKR_KIND_CORRUPT, "data after the final chunk");
        size_t full = (size_t)c->chunk_size + TAG_LEN;
        if (c->in_fill == full) {
            /* More bytes follow: the buffered chunk is not the last one. */
            if (open_chunk(c, 0, err) != 0)
                return -1;
            continue;
        }
        size_t n = in_len - *consumed;
        if (n > full - c->in_fill)
            n = full - c->in_fill;
        memcpy(c->in + c->in_fill, in + *consumed, n);
        c->in_fill += n;
        *consumed += n;
    }
}

static const bkr_stage_ops encrypt_ops = {
    .type = "encrypt", .kind = BKR_FILTER, .process = encrypt_process, .result = cipher_result,
    .free = cipher_free,
};

static const bkr_stage_ops decrypt_ops = {
    .type = "decrypt", .kind = BKR_FILTER, .process = decrypt_process, .result = cipher_result,
    .free = cipher_free,
};

/* The `key` field of the options table at index 1, checked. */
static const unsigned char *opt_key(lua_State *L, const char *fname)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "key");
    size_t len = 0;
    const char *key = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
    if (key == NULL || len != KEY_LEN)
        luaL_error(L, "%s: key must be a string of %d raw bytes", fname, KEY_LEN);
    lua_pop(L, 1); /* the options table keeps the string alive */
    return (const unsigned char *)key;
}

static int crypto_encrypt(lua_State *L)
{
    const unsigned char *key = opt_key(L, "crypto.encrypt");
    lua_getfield(L, 1, "chunk_size");
    lua_Integer chunk_size = luaL_optinteger(L, -1, DEFAULT_CHUNK);
    lua_pop(L, 1);
    luaL_argcheck(L, chunk_size >= 1 && chunk_size <= MAX_CHUNK, 1, "chunk_size must be 1 to 8388608");
    const char *name = bkr_stage_optname(L, 1);
    bkr_stage *st = bkr_stage_new(L, &encrypt_ops);

    cipher_stream *c = calloc(1, sizeof *c);
    int failed = c == NULL;
    if (!failed) {
        c->encrypt = 1;
        c->chunk_size = (uint32_t)chunk_size;
        memcpy(c->key, key, KEY_LEN);
        c->in = malloc((size_t)chunk_size);
        c->out = malloc((size_t)chunk_size + TAG_LEN + HEADER_LEN);
        c->ctx = gcm_context(key, 1);
        failed = c->in == NULL || c->out == NULL || c->ctx == NULL || compute_key_id(key, c->key_id) != 0;
    }
    if (!failed) {
        unsigned char *h = c->header;
        memcpy(h, MAGIC, MAGIC_LEN);
        h[MAGIC_LEN] = FORMAT_VERSION;
        h[MAGIC_LEN + 1] = 0;
        put_be32(h + MAGIC_LEN + 2, c->chunk_size);
        memcpy(h + MAGIC_LEN + 2 + 4, c->key_id, KEY_ID_LEN);
        failed = RAND_bytes(h + HEADER_LEN - PREFIX_LEN, PREFIX_LEN) != 1;
        ERR_clear_error();
        /* The header leads the output. */
        memcpy(c->out, h, HEADER_LEN);
        c->out_len = HEADER_LEN;
    }
    if (failed) {
        if (c != NULL)
            cipher_free(c);
        return luaL_error(L, "crypto.encrypt: cannot set up AES-256-GCM");
    }
    bkr_stage_open(st, c, name);
    return 1;
}

static int crypto_decrypt(lua_State *L)
{
    const unsigned char *key = opt_key(L, "crypto.decrypt");
    const char *name = bkr_stage_optname(L, 1);
    bkr_stage *st = bkr_stage_new(L, &decrypt_ops);
    cipher_stream *c = calloc(1, sizeof *c);
    int failed = c == NULL;
    if (!failed) {
        memcpy(c->key, key, KEY_LEN);
        c->ctx = gcm_context(key, 0);
        failed = c->ctx == NULL || compute_key_id(key, c->key_id) != 0;
    }
    if (failed) {
        if (c != NULL)
            cipher_free(c);
        return luaL_error(L, "crypto.decrypt: cannot set up AES-256-GCM");
    }
    bkr_stage_open(st, c, name);
    return 1;
}

static const luaL_Reg crypto_functions[] = {
    {"key_id", crypto_key_id},
    {"random_bytes", crypto_random_bytes},
    {"base64_encode", crypto_base64_encode},
    {"base64_decode", crypto_base64_decode},
    {"encrypt_value", crypto_encrypt_value},
    {"decrypt_value", crypto_decrypt_value},
    {"xor_encrypt_value", crypto_xor_encrypt_value},
    {"xor_value", crypto_xor_value},
    {"encrypt", crypto_encrypt},
    {"decrypt", crypto_decrypt},
    {NULL, NULL},
};

int luaopen_bkr_crypto(lua_State *L)
{
    luaL_newlib(L, crypto_functions);
    return 1;
}
