/*
 * s3_sign.c - AWS Signature Version 4 for bkr.s3 (s3_internal.h), pure: no Lua, no network.
 * Checked against the official AWS test suite (tests/s3_spec.lua).
 *
 *   canonical request = METHOD \n PATH \n QUERY \n HEADERS \n \n SIGNED_HEADERS \n PAYLOAD_HASH
 *   string to sign    = AWS4-HMAC-SHA256 \n DATE \n SCOPE \n hex(sha256(canonical request))
 *   signing key       = HMAC(HMAC(HMAC(HMAC("AWS4" secret, day), region), service), "aws4_request")
 *
 * S3 differs from the other services in the path: it is encoded once and never normalised
 * (a key "a/../b" or "a//b" is a key of its own). normalize_path gives the other services'
 * rule (dot segments and empty segments removed, then each segment encoded twice).
 * Also the small string buffer (s3_buf) the other s3 files use.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "s3_internal.h"

/* ===================================================================== */
/* s3_buf                                                                 */
/* ===================================================================== */

static int buf_reserve(s3_buf *b, size_t more)
{
    if (b->failed)
        return -1;
    if (more > (size_t)-1 / 2 - b->len) {
        b->failed = 1;
        return -1;
    }
    if (b->len + more + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *grown = realloc(b->data, cap);
    if (grown == NULL) {
        b->failed = 1;
        return -1;
    }
    b->data = grown;
    b->cap = cap;
    return 0;
}

void s3_buf_add(s3_buf *b, const void *data, size_t len)
{
    if (buf_reserve(b, len) != 0)
        return;
    if (len > 0)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
}

void s3_buf_str(s3_buf *b, const char *s)
{
    s3_buf_add(b, s, strlen(s));
}

void s3_buf_printf(s3_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || buf_reserve(b, (size_t)n) != 0) {
        b->failed = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void s3_buf_free(s3_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

/* Move the buffer's content out (a malloc'd string, "" when empty), or NULL if it failed. */
static char *buf_take(s3_buf *b)
{
    if (b->data == NULL && !b->failed)
        s3_buf_add(b, "", 0);
    if (b->failed) {
        s3_buf_free(b);
        return NULL;
    }
    char *s = b->data;
    b->data = NULL;
    b->len = b->cap = 0;
    return s;
}

/* ===================================================================== */
/* Encoding and digests                                                   */
/* ===================================================================== */

static int unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.'
           || c == '_' || c == '~';
}

void s3_uri_encode(s3_buf *b, const char *s, size_t len, int keep_slash)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (unreserved(c) || (keep_slash && c == '/')) {
            s3_buf_add(b, &s[i], 1);
        } else {
            char esc[3] = { '%', hex[c >> 4], hex[c & 15] };
            s3_buf_add(b, esc, 3);
        }
    }
}

static void hex_of(const unsigned char *bytes, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * len] = '\0';
}

int s3_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[32];
    unsigned int md_len = 0;
    if (EVP_Digest(data, len, md, &md_len, EVP_sha256(), NULL) != 1 || md_len != 32)
        return -1;
    hex_of(md, 32, out);
    return 0;
}

static int hmac(const unsigned char *key, size_t key_len, const char *data, size_t len, unsigned char out[32])
{
    unsigned int out_len = 0;
    if (key_len > 1024 || len > 1u << 30)
        return -1; /* HMAC() takes an int key length */
    if (HMAC(EVP_sha256(), key, (int)key_len, (const unsigned char *)data, len, out, &out_len) == NULL
        || out_len != 32)
        return -1;
    return 0;
}

/* ===================================================================== */
/* The canonical parts                                                    */
/* ===================================================================== */

/* The other services' path: remove "." and ".." segments and empty ones (RFC 3986 5.2.4 plus
 * "//" -> "/"), keeping a final slash; each segment encoded twice. */
static void normalized_path(s3_buf *b, const char *path, size_t len)
{
    /* segments as (start, length) pairs on a stack */
    size_t nseg = 0, cap = len / 2 + 2;
    size_t *seg = malloc(cap * 2 * sizeof *seg);
    if (seg == NULL) {
        b->failed = 1;
        return;
    }
    size_t i = 0;
    int trailing = len > 0 && path[len - 1] == '/';
    while (i < len) {
        while (i < len && path[i] == '/')
            i++;
        size_t start = i;
        while (i < len && path[i] != '/')
            i++;
        size_t n = i - start;
        if (n == 0 || (n == 1 && path[start] == '.'))
            continue;
        if (n == 2 && path[start] == '.' && path[start + 1] == '.') {
            if (nseg > 0)
                nseg--;
            continue;
        }
        seg[2 * nseg] = start;
        seg[2 * nseg + 1] = n;
        nseg++;
    }
    s3_buf_add(b, "/", 1);
    for (size_t k = 0; k < nseg; k++) {
        s3_buf once = {0};
        s3_uri_encode(&once, path + seg[2 * k], seg[2 * k + 1], 0);
        if (once.failed)
            b->failed = 1;
        else
            s3_uri_encode(b, once.data, once.len, 0);
        s3_buf_free(&once);
        if (k + 1 < nseg || trailing)
            s3_buf_add(b, "/", 1);
    }
    free(seg);
}

typedef struct enc_pair {
    char *name, *value;
} enc_pair;

static int cmp_pair(const void *a, const void *b)
{
    const enc_pair *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c != 0 ? c : strcmp(x->value, y->value);
}

static char *encode_dup(const char *s, size_t len)
{
    s3_buf b = {0};
    s3_uri_encode(&b, s, len, 0);
    return buf_take(&b);
}

/* name=value&... with names and values encoded, sorted by name then value. */
static char *canonical_query(const s3_pair *q, size_t n)
{
    enc_pair *pairs = calloc(n ? n : 1, sizeof *pairs);
    if (pairs == NULL)
        return NULL;
    int failed = 0;
    for (size_t i = 0; i < n && !failed; i++) {
        pairs[i].name = encode_dup(q[i].name, q[i].name_len);
        pairs[i].value = encode_dup(q[i].value, q[i].value_len);
        failed = pairs[i].name == NULL || pairs[i].value == NULL;
    }
    s3_buf b = {0};
    if (!failed) {
        qsort(pairs, n, sizeof *pairs, cmp_pair);
        for (size_t i = 0; i < n; i++)
            s3_buf_printf(&b, "%s%s=%s", i ? "&" : "", pairs[i].name, pairs[i].value);
    }
    for (size_t i = 0; i < n; i++) {
        free(pairs[i].name);
        free(pairs[i].value);
    }
    free(pairs);
    if (failed) {
        s3_buf_free(&b);
        return NULL;
    }
    return buf_take(&b);
}

typedef struct canon_header {
    char *name;   /* lowercase */
    char *value;  /* trimmed, inner runs of spaces made one */
    size_t order; /* position in the input: duplicates keep their order */
} canon_header;

static int cmp_header(const void *a, const void *b)
{
    const canon_header *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c != 0)
        return c;
    return x->order < y->order ? -1 : x->order > y->order;
}

/* An HTTP token (RFC 9110): what a header name may be. */
static int header_name_ok(const char *s, size_t len)
{
    if (len == 0)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
              || (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL)))
            return 0;
    }
    return 1;
}

static char *trim_value(const char *s, size_t len)
{
    s3_buf b = {0};
    size_t i = 0;
    while (i < len && (s[i] == ' ' || s[i] == '\t'))
        i++;
    while (len > i && (s[len - 1] == ' ' || s[len - 1] == '\t'))
        len--;
    int space = 0;
    for (; i < len; i++) {
        if (s[i] == ' ' || s[i] == '\t') {
            space = 1;
            continue;
        }
        if (space)
            s3_buf_add(&b, " ", 1);
        space = 0;
        s3_buf_add(&b, &s[i], 1);
    }
    return buf_take(&b);
}

/* ===================================================================== */
/* s3_sign                                                                */
/* ===================================================================== */

void s3_sign_out_free(s3_sign_out *out)
{
    free(out->canonical_request);
    free(out->string_to_sign);
    free(out->authorization);
    free(out->query_string);
    free(out->encoded_path);
    memset(out, 0, sizeof *out);
}

static int date_ok(const char *d)
{
    if (d == NULL || strlen(d) != 16 || d[8] != 'T' || d[15] != 'Z')
        return 0;
    for (int i = 0; i < 15; i++)
        if (i != 8 && (d[i] < '0' || d[i] > '9'))
            return 0;
    return 1;
}

int s3_sign(const s3_sign_in *in, s3_sign_out *out, char *err, size_t err_size)
{
    memset(out, 0, sizeof *out);
    if (!date_ok(in->amz_date)) {
        snprintf(err, err_size, "amz_date must be YYYYMMDDTHHMMSSZ");
        return -1;
    }
    for (size_t i = 0; i < in->nheaders; i++) {
        if (!header_name_ok(in->headers[i].name, in->headers[i].name_len)) {
            snprintf(err, err_size, "header %zu: the name must be a token (letters, digits, -)", i + 1);
            return -1;
        }
        const char *v = in->headers[i].value;
        size_t vl = in->headers[i].value_len;
        if (memchr(v, '\r', vl) || memchr(v, '\n', vl) || memchr(v, '\0', vl)) {
            snprintf(err, err_size, "header %zu: the value must be one line", i + 1);
            return -1;
        }
    }
    if (in->path_len == 0 || in->path[0] != '/') {
        snprintf(err, err_size, "path must start with /");
        return -1;
    }

    int failed = 0;
    canon_header *hs = calloc(in->nheaders ? in->nheaders : 1, sizeof *hs);
    s3_buf creq = {0}, signed_headers = {0}, sts = {0}, path = {0}, auth = {0};
    char *query = NULL;
    unsigned char key[32], k2[32];
    if (hs == NULL)
        goto oom;

    for (size_t i = 0; i < in->nheaders; i++) {
        hs[i].name = malloc(in->headers[i].name_len + 1);
        hs[i].value = trim_value(in->headers[i].value, in->headers[i].value_len);
        hs[i].order = i;
        if (hs[i].name == NULL || hs[i].value == NULL)
            goto oom;
        for (size_t k = 0; k < in->headers[i].name_len; k++) {
            char c = in->headers[i].name[k];
            hs[i].name[k] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
        }
        hs[i].name[in->headers[i].name_len] = '\0';
    }
    qsort(hs, in->nheaders, sizeof *hs, cmp_header);

    if (in->normalize_path)
        normalized_path(&path, in->path, in->path_len);
    else
        s3_uri_encode(&path, in->path, in->path_len, 1);
    query = canonical_query(in->query, in->nquery);
    if (query == NULL || path.failed)
        goto oom;

    s3_buf_printf(&creq, "%s\n%s\n%s\n", in->method, path.data, query);
    for (size_t i = 0; i < in->nheaders; i++) {
        if (i > 0 && strcmp(hs[i].name, hs[i - 1].name) == 0) {
            s3_buf_printf(&creq, ",%s", hs[i].value); /* a repeated header: values in order */
            continue;
        }
        s3_buf_printf(&creq, "%s%s:%s", i ? "\n" : "", hs[i].name, hs[i].value);
        s3_buf_printf(&signed_headers, "%s%s", signed_headers.len ? ";" : "", hs[i].name);
    }
    if (signed_headers.data == NULL)
        s3_buf_add(&signed_headers, "", 0);
    s3_buf_printf(&creq, "\n\n%s\n%s", signed_headers.data ? signed_headers.data : "", in->payload_hash);
    if (creq.failed || signed_headers.failed)
        goto oom;

    char creq_hash[65];
    if (s3_sha256_hex(creq.data, creq.len, creq_hash) != 0)
        goto crypto;
    char day[9];
    memcpy(day, in->amz_date, 8);
    day[8] = '\0';
    s3_buf_printf(&sts, "AWS4-HMAC-SHA256\n%s\n%s/%s/%s/aws4_request\n%s", in->amz_date, day, in->region,
                  in->service, creq_hash);
    if (sts.failed)
        goto oom;

    /* The signing key: never leaves this function, wiped at the end. */
    s3_buf secret = {0};
    s3_buf_printf(&secret, "AWS4%s", in->secret_key);
    if (secret.failed) {
        s3_buf_free(&secret);
        goto oom;
    }
    int bad = hmac((unsigned char *)secret.data, secret.len, day, 8, key) != 0
              || hmac(key, 32, in->region, strlen(in->region), k2) != 0
              || hmac(k2, 32, in->service, strlen(in->service), key) != 0
              || hmac(key, 32, "aws4_request", 12, k2) != 0;
    OPENSSL_cleanse(secret.data, secret.cap);
    s3_buf_free(&secret);
    unsigned char sig[32];
    if (bad || hmac(k2, 32, sts.data, sts.len, sig) != 0)
        goto crypto;
    hex_of(sig, 32, out->signature);

    s3_buf_printf(&auth, "AWS4-HMAC-SHA256 Credential=%s/%s/%s/%s/aws4_request, SignedHeaders=%s, Signature=%s",
                  in->access_key, day, in->region, in->service, signed_headers.data, out->signature);
    if (auth.failed)
        goto oom;
    /* The URL's path is encoded once whichever rule signs it. */
    s3_buf urlpath = {0};
    s3_uri_encode(&urlpath, in->path, in->path_len, 1);
    out->encoded_path = buf_take(&urlpath);
    out->canonical_request = buf_take(&creq);
    out->string_to_sign = buf_take(&sts);
    out->authorization = buf_take(&auth);
    out->query_string = query;
    query = NULL;
    if (out->encoded_path == NULL || out->canonical_request == NULL || out->string_to_sign == NULL
        || out->authorization == NULL)
        goto oom;
    goto done;

oom:
    snprintf(err, err_size, "out of memory");
    failed = 1;
    goto done;
crypto:
    snprintf(err, err_size, "OpenSSL failed to compute a digest");
    failed = 1;
done:
    OPENSSL_cleanse(key, sizeof key);
    OPENSSL_cleanse(k2, sizeof k2);
    if (hs != NULL)
        for (size_t i = 0; i < in->nheaders; i++) {
            free(hs[i].name);
            free(hs[i].value);
        }
    free(hs);
    free(query);
    s3_buf_free(&creq);
    s3_buf_free(&signed_headers);
    s3_buf_free(&sts);
    s3_buf_free(&path);
    s3_buf_free(&auth);
    if (failed) {
        s3_sign_out_free(out);
        return -1;
    }
    return 0;
}
