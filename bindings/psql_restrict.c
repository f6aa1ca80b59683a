/*
 * psql_restrict.c - dump.drop_restrict_lines: a transforming filter stage, registered into
 * bkr.dump by dump.c, that takes pg_dump's own `\restrict KEY` and `\unrestrict KEY` lines out
 * of a plain dump on its way to psql.
 *
 *   dump.drop_restrict_lines([{name = ...}])  -> stage; result { dropped = n lines }
 *
 * Why: bkr starts psql in restricted mode itself (`psql -c '\restrict KEY'`, a key of its own
 * that never appears in the stream), so that psql refuses every backslash command of the dump
 * by its own lexer, whatever the dump does to confuse a reader of its text (a client encoding
 * that hides a quote from any other lexer: docs/api/dump.md). In restricted mode psql also
 * refuses the dump's own `\restrict`; pg_dump writes it once, among the comments before the
 * first statement, and `\unrestrict` once, as the last line. Those two lines, in those two
 * places, are dropped; anything else passes unchanged, and any other backslash line reaches
 * psql, which refuses it (the restore fails, nothing committed). The stage decides by
 * position only: it never needs to know where strings or COPY data are, and a line it lets
 * through by mistake is refused by psql, never run.
 *
 * Memory: a line starting with a backslash is examined up to LINE_MAX bytes; a held
 * `\unrestrict` line with the blank lines after it up to HELD_MAX; output waits in a queue of
 * QUEUE_MAX. All fixed.
 */
#include <string.h>
#include <stdlib.h>

#include <lua.h>
#include <lauxlib.h>

#include "stream.h"
#include "psql_restrict.h"

#define LINE_MAX_BYTES 256
#define HELD_MAX 4096
#define QUEUE_MAX (HELD_MAX + LINE_MAX_BYTES + 16)

enum { HEAD, BODY };

typedef struct dropper {
    int phase;           /* HEAD: only comments and blank lines so far */
    int at_line_start;
    int capturing;       /* in a line that began with a backslash, not decided yet */
    int holding;         /* held: an \unrestrict line and blank lines after it */
    int finished;
    unsigned char line[LINE_MAX_BYTES];
    size_t line_len;
    unsigned char held[HELD_MAX];
    size_t held_len;
    unsigned char queue[QUEUE_MAX];
    size_t queue_start, queue_len;
    long dropped;
} dropper;

static void emit(dropper *d, const unsigned char *p, size_t n)
{
    /* (callers never queue more than QUEUE_MAX: process keeps room for the largest emission) */
    if (d->queue_start > 0 && d->queue_start + d->queue_len + n > QUEUE_MAX) {
        memmove(d->queue, d->queue + d->queue_start, d->queue_len);
        d->queue_start = 0;
    }
    memcpy(d->queue + d->queue_start + d->queue_len, p, n);
    d->queue_len += n;
}

static void release_held(dropper *d)
{
    if (d->holding) {
        emit(d, d->held, d->held_len);
        d->holding = 0;
        d->held_len = 0;
    }
}

/* "\WORD KEY" with KEY 1 to 128 letters and digits, then the end of the line (a newline, or
 * the end of the stream when at_end). */
static int is_key_line(const unsigned char *s, size_t len, const char *word, int at_end)
{
    size_t w = strlen(word);
    if (len > 0 && s[len - 1] == '\n')
        len--;
    else if (!at_end)
        return 0;
    if (len < w + 3 || s[0] != '\\' || memcmp(s + 1, word, w) != 0 || s[1 + w] != ' ')
        return 0;
    size_t key = len - (w + 2);
    if (key > 128)
        return 0;
    for (size_t i = w + 2; i < len; i++) {
        unsigned char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')))
            return 0;
    }
    return 1;
}

/* A backslash line is complete (or the stream ended in it): drop it, hold it, or pass it. */
static void line_done(dropper *d, int at_end)
{
    d->capturing = 0;
    if (d->phase == HEAD && is_key_line(d->line, d->line_len, "restrict", at_end)) {
        d->dropped++;
    } else if (d->phase == BODY && is_key_line(d->line, d->line_len, "unrestrict", at_end)) {
        release_held(d); /* an earlier one was not the last line */
        memcpy(d->held, d->line, d->line_len);
        d->held_len = d->line_len;
        d->holding = 1;
    } else {
        release_held(d);
        emit(d, d->line, d->line_len);
    }
    d->line_len = 0;
}

static void step(dropper *d, unsigned char c)
{
    if (d->capturing) {
        d->line[d->line_len++] = c;
        if (c == '\n') {
            line_done(d, 0);
            d->at_line_start = 1;
        } else if (d->line_len == LINE_MAX_BYTES) {
            /* too long for a key line: it goes on as it is (psql judges it) */
            d->capturing = 0;
            release_held(d);
            emit(d, d->line, d->line_len);
            d->line_len = 0;
            d->phase = BODY;
        }
        return;
    }
    if (d->at_line_start) {
        if (c == '\\') {
            d->capturing = 1;
            d->line[0] = c;
            d->line_len = 1;
            d->at_line_start = 0;
            return;
        }
        if (d->holding) {
            if (c == '\n' && d->held_len < HELD_MAX) {
                d->held[d->held_len++] = c; /* a blank line after \unrestrict: still the end? */
                return;
            }
            release_held(d);
        }
        if (d->phase == HEAD && c != '\n' && c != '-')
            d->phase = BODY;
    }
    d->at_line_start = c == '\n';
    emit(d, &c, 1);
}

static size_t drain(dropper *d, unsigned char *out, size_t out_cap)
{
    size_t n = d->queue_len < out_cap ? d->queue_len : out_cap;
    memcpy(out, d->queue + d->queue_start, n);
    d->queue_start += n;
    d->queue_len -= n;
    if (d->queue_len == 0)
        d->queue_start = 0;
    return n;
}

static int dropper_process(void *self, const unsigned char *in, size_t in_len, size_t *consumed,
                           unsigned char *out, size_t out_cap, size_t *produced, int *done, bkr_error *err)
{
    (void)err;
    dropper *d = self;
    *consumed = 0;
    *produced = drain(d, out, out_cap);
    if (in == NULL) {
        if (!d->finished) {
            d->finished = 1;
            if (d->capturing)
                line_done(d, 1);
            if (d->holding) { /* the last line was pg_dump's \unrestrict: dropped */
                d->holding = 0;
                d->held_len = 0;
                d->dropped++;
            }
        }
        *produced += drain(d, out + *produced, out_cap - *produced);
        *done = d->queue_len == 0;
        return 0;
    }
    size_t i = 0;
    for (;;) {
        *produced += drain(d, out + *produced, out_cap - *produced);
        if (i == in_len)
            break;
        if (d->queue_len == 0 && !d->capturing && !d->holding && d->phase == BODY && !d->at_line_start) {
            /* inside an ordinary line: straight through, up to its newline */
            size_t room = out_cap - *produced, n = in_len - i < room ? in_len - i : room;
            const unsigned char *nl = memchr(in + i, '\n', n);
            size_t take = nl ? (size_t)(nl - (in + i)) + 1 : n;
            if (take == 0)
                break; /* out is full */
            memcpy(out + *produced, in + i, take);
            *produced += take;
            i += take;
            d->at_line_start = nl != NULL;
            continue;
        }
        /* one byte can release the held lines and a captured line at once: room for that */
        if (d->queue_len + HELD_MAX + LINE_MAX_BYTES + 1 > QUEUE_MAX)
            break;
        step(d, in[i++]);
    }
    *consumed = i;
    return 0;
}

static int dropper_result(void *self, lua_State *L)
{
    dropper *d = self;
    lua_createtable(L, 0, 1);
    lua_pushinteger(L, d->dropped);
    lua_setfield(L, -2, "dropped");
    return 1;
}

static void dropper_free(void *self)
{
    free(self);
}

static const bkr_stage_ops dropper_ops = {
    .type = "restrict_lines", .kind = BKR_FILTER, .process = dropper_process, .result = dropper_result,
    .free = dropper_free,
};

static int dump_drop_restrict_lines(lua_State *L)
{
    const char *name = bkr_stage_optname(L, 1);
    bkr_stage *st = bkr_stage_new(L, &dropper_ops);
    dropper *d = calloc(1, sizeof *d);
    if (d == NULL)
        return luaL_error(L, "dump.drop_restrict_lines: out of memory");
    d->phase = HEAD;
    d->at_line_start = 1;
    bkr_stage_open(st, d, name);
    return 1;
}

const luaL_Reg bkr_dump_psql_restrict[] = {
    {"drop_restrict_lines", dump_drop_restrict_lines},
    {NULL, NULL},
};
