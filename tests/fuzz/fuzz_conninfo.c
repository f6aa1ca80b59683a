/*
 * fuzz_conninfo.c - libFuzzer target for keeping passwords out of bkr.pg's messages
 * (bindings/pg_redact.c): finding what looks like a password in a connection string, and
 * masking the secrets found in a message that may quote it.
 *
 * Build and run: scripts/fuzz.sh conninfo [SECONDS] (or make fuzz for every target).
 * fuzz-sources: bindings/pg_redact.c */
/*
 * The input is cut into: a flags byte; a password P (its bytes mapped onto what a password
 * may hold: letters, digits, punctuation, '"' and '\\' too, never a blank, '\'', '&', '@',
 * '/' or '*'); a head and a tail (raw bytes, each after a length byte); and the rest, a message
 * template. The flags choose how P is written into the connection string
 *   0: HEAD password=P TAIL            1: HEAD password = 'P, with blanks' TAIL
 *   2: postgresql://u:P@HEAD TAIL      3: HEAD TAIL (raw: no P)
 * and whether the message is masked as quoted (as pg.c does when libpq cannot parse the
 * string). In the template, byte 0x01 stands for the whole connection string (libpq's messages
 * quote it) and 0x02 for P; any other byte is itself.
 *
 * Beyond the sanitizers, it checks what pg.connect's callers rely on:
 * - the finder reports P, and only pieces inside the connection string, which sits in a buffer
 *   of its exact size with no NUL after it, so that ASan sees any read past its end (the finder
 *   also runs over the raw input);
 * - the masked message never contains P, nor any other secret found that has no '*' in it;
 * - the output is NUL-terminated and fits PG_REDACT_CAP(len); with a smaller buffer it is cut,
 *   and the cut output is a prefix of the whole;
 * - with no secret, a message comes out unchanged, or, quoted, exactly as the Lua-buffer code
 *   of pg.c before the split masked it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg_redact.h"

#define MAX_MESSAGE 16384

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_conninfo: %s\n", what);
        abort();
    }
}

/* ---- Reading the input ---- */

typedef struct input {
    const uint8_t *data;
    size_t size, pos;
} input;

static uint8_t take_byte(input *in)
{
    return in->pos < in->size ? in->data[in->pos++] : 0;
}

/* Up to n bytes; *got says how many there were. */
static const uint8_t *take(input *in, size_t n, size_t *got)
{
    const uint8_t *p = in->data + in->pos;
    *got = n < in->size - in->pos ? n : in->size - in->pos;
    in->pos += *got;
    return p;
}

/* ---- Building strings ---- */

typedef struct buf {
    char *data;
    size_t len, cap;
} buf;

static void add(buf *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n)
            cap *= 2;
        b->data = realloc(b->data, cap);
        check(b->data != NULL, "out of memory");
        b->cap = cap;
    }
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void adds(buf *b, const char *s)
{
    add(b, s, strlen(s));
}

/* ---- The finder's results ---- */

typedef struct found_list {
    const char *base;  /* the connection string searched */
    size_t base_len;
    pg_secret *items;
    size_t n, cap;
} found_list;

static void on_found(void *arg, const char *ptr, size_t len)
{
    found_list *f = arg;
    check(len > 0, "empty secret reported");
    check(ptr >= f->base && (size_t)(ptr - f->base) <= f->base_len && len <= f->base_len - (size_t)(ptr - f->base),
          "secret outside the connection string");
    if (f->n == f->cap) {
        f->cap = f->cap ? 2 * f->cap : 16;
        f->items = realloc(f->items, f->cap * sizeof *f->items);
        check(f->items != NULL, "out of memory");
    }
    f->items[f->n].ptr = ptr;
    f->items[f->n].len = len;
    f->n++;
}

/* A copy of exactly len bytes, with nothing after it for a reader to run into unseen. */
static char *exact_copy(const void *p, size_t len)
{
    char *c = malloc(len ? len : 1);
    check(c != NULL, "out of memory");
    if (len)
        memcpy(c, p, len);
    return c;
}

/* pg.c's quoted masking before the split, for a message with no secret. */
static size_t reference_quoted(const char *msg, size_t len, buf *out)
{
    out->len = 0;
    for (size_t i = 0; i < len; i++) {
        add(out, msg + i, 1);
        const char *close = msg[i] == '"' ? memchr(msg + i + 1, '"', len - i - 1) : NULL;
        if (close) {
            adds(out, "***\"");
            i = (size_t)(close - msg);
        }
    }
    return out->len;
}

static const char PASSWORD_CHARS[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$%^()[]{}|;:,<>?=+#\"\\";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The finder over the raw input, as a connection string. */
    {
        char *raw = exact_copy(data, size);
        found_list f = { raw, size, NULL, 0, 0 };
        pg_conninfo_secrets(raw, size, on_found, &f);
        (void)pg_conninfo_may_hold_secret(raw, size);
        free(f.items);
        free(raw);
    }

    input in = { data, size, 0 };
    uint8_t flags = take_byte(&in);
    int form = flags & 3, quoted = (flags >> 2) & 1, blanks = (flags >> 3) & 3;

    size_t got;
    size_t plen = 1 + take_byte(&in) % 48;
    const uint8_t *pbytes = take(&in, plen, &got);
    buf password = { 0 };
    for (size_t i = 0; i < got; i++) {
        char c = PASSWORD_CHARS[pbytes[i] % (sizeof PASSWORD_CHARS - 1)];
        if (form == 1 && pbytes[i] >= 0xf0)
            c = ' '; /* a quoted value may hold blanks */
        add(&password, &c, 1);
    }
    if (password.len == 0)
        add(&password, "x", 1);
    const uint8_t *head = take(&in, take_byte(&in), &got);
    size_t head_len = got;
    const uint8_t *tail = take(&in, take_byte(&in), &got);
    size_t tail_len = got;
    const uint8_t *template = take(&in, in.size - in.pos, &got);
    size_t template_len = got;

    /* The connection string. */
    buf conninfo = { 0 };
    static const char *const BLANKS[] = { "", " ", "\t", "  " };
    if (form == 2) {
        adds(&conninfo, "postgresql://u:");
        add(&conninfo, password.data, password.len);
        adds(&conninfo, "@");
    }
    add(&conninfo, head, head_len);
    if (form == 0 || form == 1) {
        adds(&conninfo, " password");
        adds(&conninfo, BLANKS[blanks]);
        adds(&conninfo, "=");
        adds(&conninfo, BLANKS[blanks]);
        if (form == 1)
            adds(&conninfo, "'");
        add(&conninfo, password.data, password.len);
        adds(&conninfo, form == 1 ? "' " : " ");
    }
    add(&conninfo, tail, tail_len);
    char *cs = exact_copy(conninfo.data, conninfo.len);

    found_list f = { cs, conninfo.len, NULL, 0, 0 };
    pg_conninfo_secrets(cs, conninfo.len, on_found, &f);
    if (form != 3) {
        int seen = 0;
        for (size_t i = 0; i < f.n; i++)
            if (f.items[i].len == password.len && memcmp(f.items[i].ptr, password.data, password.len) == 0)
                seen = 1;
        check(seen, "the password in the connection string was not found");
    }

    /* The message. */
    buf message = { 0 };
    for (size_t i = 0; i < template_len && message.len < MAX_MESSAGE; i++) {
        if (template[i] == 1)
            add(&message, conninfo.data, conninfo.len);
        else if (template[i] == 2)
            add(&message, password.data, password.len);
        else
            add(&message, template + i, 1);
    }
    char *msg = exact_copy(message.data, message.len);
    size_t len = message.len;

    size_t cap = PG_REDACT_CAP(len);
    char *out = malloc(cap + 1);
    check(out != NULL, "out of memory");
    out[cap] = 'X'; /* a canary past the end it was given */
    size_t n = pg_redact(out, cap, msg, len, f.items, f.n, quoted);
    check(n < cap && out[n] == '\0' && out[cap] == 'X', "output not NUL-terminated inside its buffer");
    check(strlen(out) == n || memchr(msg, '\0', len) != NULL, "length returned differs from the output's");

    if (form != 3)
        check(memmem(out, n, password.data, password.len) == NULL, "the password is in the output");
    for (size_t i = 0; i < f.n; i++)
        if (!memchr(f.items[i].ptr, '*', f.items[i].len))
            check(memmem(out, n, f.items[i].ptr, f.items[i].len) == NULL, "a secret found is in the output");

    /* Nothing to mask: unchanged, or masked as pg.c did before. */
    if (f.n == 0) {
        if (!quoted) {
            check(n == len && memcmp(out, msg, len) == 0, "a message without secrets was changed");
        } else {
            buf ref = { 0 };
            reference_quoted(msg, len, &ref);
            check(n == ref.len && (n == 0 || memcmp(out, ref.data, n) == 0), "quoted masking differs from pg.c's before");
            free(ref.data);
        }
    }

    /* A smaller buffer cuts the same output. */
    size_t small_cap = len % 17;
    char *small = malloc(small_cap ? small_cap : 1);
    check(small != NULL, "out of memory");
    size_t m = pg_redact(small, small_cap, msg, len, f.items, f.n, quoted);
    check(m == (small_cap ? (n < small_cap - 1 ? n : small_cap - 1) : 0), "cut output has the wrong length");
    check(m == 0 || memcmp(small, out, m) == 0, "cut output is not a prefix of the whole");
    check(small_cap == 0 || small[m] == '\0', "cut output not NUL-terminated");

    free(small);
    free(out);
    free(msg);
    free(message.data);
    free(f.items);
    free(cs);
    free(conninfo.data);
    free(password.data);
    return 0;
}
