/*
 * row_digest.c - the row digest (row_digest.h; specified in docs/api/dump.md): SHA-256 per
 * row, summed modulo 2^256. No Lua, no global state: one rowhash per thread.
 */
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>

#include "row_digest.h"

/* ================================================================ the sum */

void row_digest_add(uint64_t sum[4], const uint64_t add[4])
{
    unsigned carry = 0;
    for (int i = 0; i < 4; i++) {
        uint64_t a = sum[i] + add[i];
        unsigned c1 = a < add[i];
        uint64_t b = a + carry;
        unsigned c2 = b < a;
        sum[i] = b;
        carry = c1 | c2;
    }
}

/* Add a 32-byte digest read as a big-endian number. */
static void add_hash(uint64_t sum[4], const unsigned char d[32])
{
    uint64_t add[4];
    for (int i = 0; i < 4; i++) {
        const unsigned char *p = d + 8 * (3 - i);
        uint64_t v = 0;
        for (int j = 0; j < 8; j++)
            v = v << 8 | p[j];
        add[i] = v;
    }
    row_digest_add(sum, add);
}

void row_digest_hex(const uint64_t sum[4], char out[65])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 4; i++) {
        uint64_t v = sum[3 - i];
        for (int j = 0; j < 16; j++)
            out[16 * i + j] = digits[(v >> (60 - 4 * j)) & 15];
    }
    out[64] = '\0';
}

int row_digest_parse(const char *s, size_t len, uint64_t sum[4])
{
    if (len != 64)
        return -1;
    for (int i = 0; i < 4; i++) {
        uint64_t v = 0;
        for (int j = 0; j < 16; j++) {
            char c = s[16 * i + j];
            int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                  : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            if (d < 0)
                return -1;
            v = v << 4 | (uint64_t)d;
        }
        sum[3 - i] = v;
    }
    return 0;
}

/* ================================================================ one row */

int rowhash_init(rowhash *h)
{
    h->md = EVP_MD_fetch(NULL, "SHA256", NULL);
    h->ctx = EVP_MD_CTX_new();
    if (h->md == NULL || h->ctx == NULL) {
        ERR_clear_error();
        return -1;
    }
    return 0;
}

void rowhash_release(rowhash *h)
{
    EVP_MD_CTX_free(h->ctx);
    EVP_MD_free(h->md);
    h->ctx = NULL;
    h->md = NULL;
}

int row_start(rowstate *r)
{
    r->open = 1;
    r->len = 0;
    return EVP_DigestInit_ex2(r->h.ctx, r->h.md, NULL) == 1 ? 0 : -1;
}

int row_bytes(rowstate *r, const unsigned char *p, size_t n)
{
    for (size_t i = 0; r->len + i < 2 && i < n; i++)
        r->head[r->len + i] = p[i];
    r->len += n;
    return n == 0 || EVP_DigestUpdate(r->h.ctx, p, n) == 1 ? 0 : -1;
}

int row_end(rowstate *r, uint64_t sum[4])
{
    unsigned char d[EVP_MAX_MD_SIZE];
    r->open = 0;
    if (EVP_DigestFinal_ex(r->h.ctx, d, NULL) != 1)
        return -1;
    add_hash(sum, d);
    return 0;
}

/* ================================================================ the rows of a table */

int rowsum_init(rowsum *s)
{
    memset(s, 0, sizeof *s);
    return rowhash_init(&s->row.h);
}

void rowsum_release(rowsum *s)
{
    rowhash_release(&s->row.h);
}

void rowsum_reset(rowsum *s)
{
    s->row.open = 0;
    s->row.len = 0;
    s->count = 0;
    memset(s->sum, 0, sizeof s->sum);
}

int rowsum_write(rowsum *s, const unsigned char *data, size_t len)
{
    const unsigned char *p = data, *end = data + len;
    while (p < end) {
        if (!s->row.open && row_start(&s->row) != 0)
            return -1;
        const unsigned char *nl = memchr(p, '\n', (size_t)(end - p));
        const unsigned char *stop = nl ? nl : end;
        if (row_bytes(&s->row, p, (size_t)(stop - p)) != 0)
            return -1;
        if (nl == NULL)
            break;
        p = nl + 1;
        if (row_end(&s->row, s->sum) != 0)
            return -1;
        s->count++;
    }
    return 0;
}

int rowsum_open(const rowsum *s)
{
    return s->row.open;
}
