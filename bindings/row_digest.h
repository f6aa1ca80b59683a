/*
 * row_digest.h - the per-table row digest of docs/api/dump.md: every row's SHA-256, read as a
 * 256-bit big-endian integer, summed modulo 2^256. One implementation, used by bkr.dump
 * (dump.c: the pg_dump filter and the row_digest sink) and by bkr.pg's parallel table
 * comparison (pg_digest.c, on worker threads). Not a Lua module: no Lua calls, no globals,
 * so each thread may own its own state.
 */
#ifndef BKR_ROW_DIGEST_H
#define BKR_ROW_DIGEST_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/evp.h>

/* ---- The sum: four 64-bit limbs, least significant first ---- */

/* sum += add (mod 2^256). */
void row_digest_add(uint64_t sum[4], const uint64_t add[4]);

/* 64 lowercase hex digits and a NUL into out. */
void row_digest_hex(const uint64_t sum[4], char out[65]);

/* 64 hex digits (either case) into limbs: 0, or -1 if s is not exactly that. */
int row_digest_parse(const char *s, size_t len, uint64_t sum[4]);

/* ---- One row at a time, in pieces: row_start, row_bytes for each piece, row_end ---- */

/* SHA-256 of one row at a time, reusing one context. */
typedef struct rowhash {
    EVP_MD *md;
    EVP_MD_CTX *ctx;
} rowhash;

/* 0, or -1 (OpenSSL's error queue cleared). rowhash_release is safe after a failure. */
int rowhash_init(rowhash *h);
void rowhash_release(rowhash *h);

/* A row in progress. The first two bytes and the length are kept, so that the pg_dump
 * filter can recognise the "\." terminator. */
typedef struct rowstate {
    rowhash h;
    int open;               /* a row has started and its newline not yet seen */
    size_t len;
    unsigned char head[2];
} rowstate;

/* Each returns 0, or -1 when SHA-256 failed (the reason is on OpenSSL's error queue). */
int row_start(rowstate *r);
int row_bytes(rowstate *r, const unsigned char *p, size_t n);
int row_end(rowstate *r, uint64_t sum[4]); /* adds the row's hash to sum */

/* ---- The rows of one table, as COPY ... TO STDOUT (text) sends them, in any pieces ---- */

typedef struct rowsum {
    rowstate row;
    uint64_t count;         /* complete rows */
    uint64_t sum[4];
} rowsum;

/* Zeroed and ready: 0, or -1 (then rowsum_release, which is always safe). */
int rowsum_init(rowsum *s);
void rowsum_release(rowsum *s);

/* Start again from no rows, keeping the hash context (for the next table). */
void rowsum_reset(rowsum *s);

/* Add bytes: each "\n" ends a row. 0, or -1 when SHA-256 failed (reason on OpenSSL's queue). */
int rowsum_write(rowsum *s, const unsigned char *data, size_t len);

/* Whether the input stopped inside a row (no newline after the last one). */
int rowsum_open(const rowsum *s);

#endif
