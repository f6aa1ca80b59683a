/*
 * psql_guard.c - bkr.dump's guard between a plain-format dump and psql: refuses every psql
 * meta-command pg_dump never writes, before psql can read the line that holds it.
 *
 * Lua API (registered into bkr.dump by dump.c)
 *   dump.refuse_meta_commands([{name = ...}])  pass-through filter stage (type "psql_guard")
 *                                 over a plain-format dump on its way to psql; result:
 *                                 { meta_commands = n, copy_sections = n }: the allowed
 *                                 meta-commands (\restrict, \unrestrict, \connect) and the
 *                                 COPY ... FROM stdin data blocks seen. The run fails with kind
 *                                 "corrupt" ("line N: a psql meta-command pg_dump never
 *                                 writes: \!", ...) at the first byte psql could take for
 *                                 the start of any other meta-command, or at anything that
 *                                 would make psql's reading of the text differ from ours.
 *
 * Why. psql executes a backslash outside quotes and comments as a meta-command, anywhere on a
 * line: `\! cmd` runs a shell, `\o |cmd` a pipe, `\i` reads a file, and backticks in the
 * arguments of an allowed command run a shell too. A dump someone else could write is an
 * attack on the machine restoring it. pg_dump writes only `\restrict KEY` / `\unrestrict KEY`
 * (since 13.22/14.19/15.14/16.10/17.6), `\connect DB` (--create; `\encoding SQL_ASCII` before it
 * when the name must be quoted) and the `\.` ending COPY data.
 *
 * How. A lexer that follows psql's own (src/fe_utils/psqlscan.l), one byte at a time so that
 * chunk boundaries change nothing, with a fixed amount of state: standard strings ('' the
 * only escape: pg_dump sets standard_conforming_strings), E'' strings (backslash escapes),
 * B'' X'' U&'' strings, "identifiers" and U&"identifiers", $tag$ dollar quotes, -- comments
 * (which end at CR as well as LF), nested comments, and psql's own statement splitting
 * (parentheses and its BEGIN ... END heuristic for CREATE FUNCTION), which decides where the
 * data of a COPY ... FROM stdin starts: on the line after the one where psql sends the
 * statement, up to a line that is exactly "\." (or "\.\r"). Where psql's reading depends on
 * things this lexer cannot see (psql's version, a session setting the dump itself may
 * change, psql variables), the stage refuses rather than guesses; docs/api/dump.md lists
 * each case and what the stage cannot see at all.
 *
 * Bytes pass on unchanged as soon as they are checked. A refused line never gets its
 * newline through, and a process sink is killed before its input closes when a run fails,
 * so psql never executes the line (it reads whole lines, or a last line at end of input).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>

#include "bkr.h"
#include "psql_guard.h"
#include "stream.h"

/* Longest dollar-quote tag accepted (pg_dump writes $_$, $__$, ...). */
#define GUARD_TAG_MAX 64
/* Longest line of an allowed meta-command (a \connect with a quoted 63-byte name is < 300). */
#define GUARD_META_MAX 1024
/* Bytes of an identifier kept for keyword comparisons (the longest keyword is 9). */
#define GUARD_WORD_MAX 16

/* ================================================================ state */

enum {
    G_INIT,          /* between tokens, outside quotes and comments */
    G_IDENT,         /* in an unquoted identifier or keyword */
    G_UAMP,          /* after "u&" at the start of a token */
    G_NUMBER,        /* in the digits of a number or of $n */
    G_NUM_DOT,       /* digits then "." */
    G_NUM_FRAC,      /* digits after the "." */
    G_NUM_E,         /* after the e of an exponent */
    G_NUM_ESIGN,     /* after e+ or e- */
    G_NUM_EXP,       /* in the exponent's digits */
    G_DOT,           /* "." at the start of a token: a number if a digit follows */
    G_DOLLAR,        /* "$" at the start of a token */
    G_TAG,           /* "$tag" read, the closing "$" may come */
    G_DOLQ,          /* in a dollar-quoted string */
    G_DOLQ_END,      /* "$" in a dollar-quoted string: matching the tag */
    G_XQ,            /* in a '...' string (plain, N, B, X or U&) */
    G_XQ_QUOTE,      /* a quote in one: the end, or the first of '' */
    G_XE,            /* in an E'...' string */
    G_XE_ESC,        /* after a backslash in one */
    G_XE_QUOTE,
    G_XD,            /* in a "..." identifier */
    G_XD_QUOTE,
    G_DASH,          /* "-": a comment if another follows */
    G_LINE_COMMENT,
    G_SLASH,         /* "/": a comment if "*" follows */
    G_XC,            /* in a block comment (xc_depth nested ones inside) */
    G_XC_SLASH,
    G_XC_STAR,
    G_COLON,         /* ":": "::", or a psql variable reference */
    G_VAR,           /* in the name after ":" */
    G_META,          /* from a backslash to the end of its line */
    G_AFTER_COPY,    /* after the ";" of COPY ... FROM stdin, on the same line */
    G_COPY_BOL,      /* COPY data, at the start of a line */
    G_COPY_BS,       /* a line that starts with "\" */
    G_COPY_BSDOT,    /* "\." */
    G_COPY_BSDOTCR,  /* "\.\r" */
    G_COPY_REST,     /* the rest of a data line */
};

typedef struct guard {
    int state;
    uint64_t line;              /* line of the byte being read, from 1 */
    int line_start;             /* no byte of this line read yet */

    int std_string;             /* the '...' string is a plain one (see G_XQ) */
    int odd_backslashes;        /* in it: an odd run of backslashes just read */
    uint64_t xc_depth;
    unsigned char tag[GUARD_TAG_MAX];
    size_t tag_len, tag_pos;

    char word[GUARD_WORD_MAX];  /* the identifier being read, lower case, first bytes */
    size_t word_len;            /* its whole length */
    int var_upper;              /* the psql variable name has an upper-case letter */

    /* psql's statement splitting (psqlscan.l): a query ends at ";" outside parentheses
     * and outside a BEGIN ... END of CREATE FUNCTION / PROCEDURE */
    uint64_t paren_depth, begin_depth; /* 64 bits: never wrap, whatever the input */
    unsigned identifier_count;
    char identifiers[4];

    /* what the query so far is */
    unsigned q_tokens;          /* tokens (capped) */
    int q_copy;                 /* its first token is COPY */
    int q_from;                 /* the last token was FROM, outside parentheses */
    int q_copy_in;              /* COPY ... FROM STDIN (or STDOUT, the same for the server) */
    int q_internal;             /* it has a ";" psql does not split at */

    unsigned char meta[GUARD_META_MAX]; /* the meta-command's line, after the backslash */
    size_t meta_len;
    int meta_at_start;          /* the backslash was the line's first byte */

    uint64_t meta_commands, copy_sections;
    int finished;
} guard;

static int is_ident_start(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c >= 0x80;
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static int is_ident_cont(unsigned char c)
{
    return is_ident_start(c) || is_digit(c) || c == '$';
}

static int is_dolq_cont(unsigned char c)
{
    return is_ident_start(c) || is_digit(c);
}

static int is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f';
}

/* ================================================================ refusals */

/* Up to 40 bytes of s, printable: never echo control bytes or broken UTF-8 into a message. */
static void printable(const unsigned char *s, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < len && i < 40 && o + 5 < cap; i++) {
        if (s[i] > 0x20 && s[i] < 0x7f)
            out[o++] = (char)s[i];
        else
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", s[i]);
    }
    if (len > 40 && o + 4 < cap) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
}

static int refuse(guard *g, bkr_error *err, const char *what)
{
    return bkr_error_kind(err, BKR_KIND_CORRUPT, "line %llu: %s", (unsigned long long)g->line, what);
}

/* The command word: the bytes after the backslash up to a space or another backslash. */
static size_t meta_word_len(const guard *g)
{
    size_t n = 0;
    while (n < g->meta_len && !is_space(g->meta[n]) && g->meta[n] != '\\')
        n++;
    return n;
}

static int refuse_meta(guard *g, bkr_error *err, const char *why)
{
    char word[200];
    printable(g->meta, meta_word_len(g), word, sizeof word);
    return bkr_error_kind(err, BKR_KIND_CORRUPT, "line %llu: %s: \\%s", (unsigned long long)g->line, why, word);
}

/* ================================================================ psql's statement splitting */

static int word_is(const guard *g, const char *kw)
{
    size_t n = strlen(kw);
    return g->word_len == n && memcmp(g->word, kw, n) == 0;
}

static void query_reset(guard *g)
{
    g->identifier_count = 0;
    g->q_tokens = 0;
    g->q_copy = g->q_from = g->q_copy_in = g->q_internal = 0;
}

/* Any token but an identifier (a string, a number, an operator, a parenthesis). */
static void other_token(guard *g)
{
    if (g->q_tokens < 1000)
        g->q_tokens++;
    g->q_from = 0;
}

/* An identifier ended: psqlscan.l's {identifier} rule, and what the server will make of a COPY. */
static int identifier_done(guard *g, bkr_error *err)
{
    if (g->identifier_count == 0)
        memset(g->identifiers, 0, sizeof g->identifiers);
    if (word_is(g, "create") || word_is(g, "function") || word_is(g, "procedure") || word_is(g, "or")
        || word_is(g, "replace")) {
        if (g->identifier_count < sizeof g->identifiers)
            g->identifiers[g->identifier_count] = g->word[0];
    }
    if (g->identifier_count < 1000)
        g->identifier_count++;
    const char *id = g->identifiers;
    if (id[0] == 'c' && (id[1] == 'f' || id[1] == 'p' || (id[1] == 'o' && id[2] == 'r' && (id[3] == 'f' || id[3] == 'p')))
        && g->paren_depth == 0) {
        if (word_is(g, "begin"))
            g->begin_depth++;
        else if (word_is(g, "case")) {
            if (g->begin_depth >= 1)
                g->begin_depth++;
        } else if (word_is(g, "end")) {
            if (g->begin_depth > 0)
                g->begin_depth--;
        }
    }

    /* The server enters COPY IN for COPY ... FROM STDIN (STDOUT too: the grammar gives both
     * the same meaning), and psql then reads data from the line after the one it sent the
     * query on. Within one query sent as several statements (a ";" psql does not split at,
     * which another psql version or the server may see differently) that start is not
     * certain: refuse a COPY there. */
    if (word_is(g, "copy")) {
        if (g->q_internal)
            return refuse(g, err, "COPY after a \";\" psql does not split at, which pg_dump never writes");
        if (g->q_tokens == 0)
            g->q_copy = 1;
    }
    if (g->q_copy && g->q_from && g->paren_depth == 0 && (word_is(g, "stdin") || word_is(g, "stdout")))
        g->q_copy_in = 1;
    g->q_from = g->paren_depth == 0 && word_is(g, "from");
    if (g->q_tokens < 1000)
        g->q_tokens++;
    return 0;
}

static int semicolon(guard *g, bkr_error *err)
{
    if (g->paren_depth == 0 && g->begin_depth == 0) {
        int copy_in = g->q_copy_in;
        query_reset(g);
        if (copy_in)
            g->state = G_AFTER_COPY;
        return 0;
    }
    if (g->q_copy)
        return refuse(g, err, "a COPY with a \";\" psql does not split at, which pg_dump never writes");
    g->q_internal = 1;
    other_token(g);
    return 0;
}

/* ================================================================ meta-commands */

static int bare_name(const unsigned char *s, size_t len)
{
    if (len == 0)
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '_' || c == '.'))
            return 0;
    }
    return 1;
}

static size_t skip_blanks(const unsigned char *s, size_t i, size_t len)
{
    while (i < len && (s[i] == ' ' || s[i] == '\t'))
        i++;
    return i;
}

/* A connection string as pg_dump's appendConnStrVal writes one: dbname=NAME or dbname='...'
 * (with \' and \\), and nothing else (no host=, no second keyword). */
static int dbname_connstr(const unsigned char *s, size_t len)
{
    static const char key[] = "dbname=";
    if (len < strlen(key) || memcmp(s, key, strlen(key)) != 0)
        return 0;
    s += strlen(key);
    len -= strlen(key);
    if (len > 0 && s[0] != '\'')
        return bare_name(s, len);
    if (len < 3)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if (s[i] == '\\') {
            if (i + 1 >= len || (s[i + 1] != '\\' && s[i + 1] != '\''))
                return 0;
            i++;
        } else if (s[i] == '\'') {
            return i == len - 1 && i > 1;
        }
    }
    return 0;
}

/*
 * The arguments of \connect as pg_dump's appendPsqlMetaConnect writes them: a plain name,
 * bare or in double quotes, or -reuse-previous=on and a double-quoted connection string
 * naming only the database. psql would run backticks, expand :variables and take host=...
 * in anything else.
 */
static int connect_args(const unsigned char *s, size_t len)
{
    static const char reuse[] = "-reuse-previous=on";
    size_t i = skip_blanks(s, 0, len);
    if (i == 0 || i == len)
        return 0;
    int connstr = 0;
    if (len - i > strlen(reuse) && memcmp(s + i, reuse, strlen(reuse)) == 0
        && (s[i + strlen(reuse)] == ' ' || s[i + strlen(reuse)] == '\t')) {
        connstr = 1;
        i = skip_blanks(s, i + strlen(reuse), len);
    }
    unsigned char value[GUARD_META_MAX];
    size_t n = 0;
    if (i < len && s[i] == '"') {
        for (i++;; i++) {
            if (i == len)
                return 0;
            if (s[i] == '"') {
                if (i + 1 < len && s[i + 1] == '"')
                    i++;
                else
                    break;
            }
            value[n++] = s[i];
        }
        i++;
    } else {
        while (i < len && s[i] != ' ' && s[i] != '\t')
            value[n++] = s[i++];
    }
    if (skip_blanks(s, i, len) != len)
        return 0;
    return connstr ? dbname_connstr(value, n) : bare_name(value, n);
}

/* \restrict KEY and \unrestrict KEY: pg_dump's key is letters and digits. */
static int key_args(const unsigned char *s, size_t len)
{
    size_t i = skip_blanks(s, 0, len), start = i;
    if (i == 0)
        return 0;
    while (i < len && ((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || is_digit(s[i])))
        i++;
    return i > start && skip_blanks(s, i, len) == len;
}

static int meta_is(const guard *g, size_t wlen, const char *name)
{
    return wlen == strlen(name) && memcmp(g->meta, name, wlen) == 0;
}

static int allowed_word(const guard *g, size_t wlen)
{
    return meta_is(g, wlen, "restrict") || meta_is(g, wlen, "unrestrict") || meta_is(g, wlen, "connect")
           || meta_is(g, wlen, "c") || meta_is(g, wlen, "encoding");
}

/* \encoding SQL_ASCII, which pg_dump writes before a \connect with a quoted connection string
 * (dumputils.c: psql then passes the name's bytes on unconverted). SQL_ASCII is also one of
 * the encodings in which psql reads every byte below 0x80 as ASCII, as this lexer does. */
static int encoding_args(const unsigned char *s, size_t len)
{
    static const char arg[] = "SQL_ASCII";
    size_t i = skip_blanks(s, 0, len);
    return i > 0 && len - i >= strlen(arg) && memcmp(s + i, arg, strlen(arg)) == 0
           && skip_blanks(s, i + strlen(arg), len) == len;
}

/* The whole line of a meta-command is read (or the input ended): allow it or refuse it. */
static int meta_line_done(guard *g, bkr_error *err)
{
    size_t wlen = meta_word_len(g);
    if (!allowed_word(g, wlen))
        return refuse_meta(g, err, "a psql meta-command pg_dump never writes");
    if (!g->meta_at_start)
        return refuse_meta(g, err, "a psql meta-command where pg_dump never writes one (not at a line's start)");
    const unsigned char *args = g->meta + wlen;
    size_t alen = g->meta_len - wlen;
    int ok = meta_is(g, wlen, "restrict") || meta_is(g, wlen, "unrestrict") ? key_args(args, alen)
             : meta_is(g, wlen, "encoding")                                  ? encoding_args(args, alen)
                                                                             : connect_args(args, alen);
    if (!ok)
        return refuse_meta(g, err, "arguments pg_dump never writes after the psql meta-command");
    g->meta_commands++;
    return 0;
}

/* One more byte of a meta-command's line (not its newline). */
static int meta_byte(guard *g, unsigned char c, bkr_error *err)
{
    if (g->meta_len == sizeof g->meta)
        return refuse_meta(g, err, "a psql meta-command line longer than pg_dump writes");
    g->meta[g->meta_len++] = c;
    /* Refuse as soon as the word is known to be another command: never let its line end. */
    size_t wlen = meta_word_len(g);
    if (wlen < g->meta_len && (!allowed_word(g, wlen) || !g->meta_at_start))
        return meta_line_done(g, err);
    if (wlen == g->meta_len && wlen > strlen("unrestrict"))
        return refuse_meta(g, err, "a psql meta-command pg_dump never writes");
    return 0;
}

/* ================================================================ the lexer */

static void word_start(guard *g)
{
    g->word_len = 0;
}

static void word_add(guard *g, unsigned char c)
{
    if (g->word_len < sizeof g->word)
        g->word[g->word_len] = (char)(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    g->word_len++;
}

static void open_string(guard *g, int state, int std)
{
    g->state = state;
    g->std_string = std;
    g->odd_backslashes = 0;
}

/* A byte at the start of a token, outside quotes and comments. */
static int init_byte(guard *g, unsigned char c, bkr_error *err)
{
    switch (c) {
    case ' ': case '\t': case '\n': case '\f':
        return 0;
    case '\r':
        /* psql ends a -- comment at a CR and reads on; a CR between strings makes psql join
         * them; pg_dump never writes one outside quotes. */
        return refuse(g, err, "a carriage return outside quoted text, which pg_dump never writes");
    case '\\':
        g->meta_at_start = g->line_start;
        g->meta_len = 0;
        g->state = G_META;
        return 0;
    case '\'':
        other_token(g);
        open_string(g, G_XQ, 1);
        return 0;
    case '"':
        other_token(g);
        g->state = G_XD;
        return 0;
    case '$':
        g->state = G_DOLLAR;
        return 0;
    case '-':
        g->state = G_DASH;
        return 0;
    case '/':
        g->state = G_SLASH;
        return 0;
    case ':':
        g->state = G_COLON;
        return 0;
    case '.':
        g->state = G_DOT;
        return 0;
    case '(':
        g->paren_depth++;
        other_token(g);
        return 0;
    case ')':
        if (g->paren_depth > 0)
            g->paren_depth--;
        other_token(g);
        return 0;
    case ';':
        return semicolon(g, err);
    default:
        break;
    }
    if (is_digit(c)) {
        other_token(g);
        g->state = G_NUMBER;
    } else if (is_ident_start(c)) {
        word_start(g);
        word_add(g, c);
        g->state = G_IDENT;
    } else {
        other_token(g); /* an operator or punctuation */
    }
    return 0;
}

/* Letters run into a number: psql up to 14 reads "1e'x'" as 1 then E'x', 15 and later as
 * junk then 'x'. pg_dump always separates them; refuse rather than pick one. */
static int number_junk(guard *g, bkr_error *err)
{
    return refuse(g, err, "a number run into a name, which psql versions read differently");
}

/*
 * One byte. Returns 0 when it is consumed, 1 when the state changed and the same byte must be
 * read again in the new state, -1 on a refusal.
 */
static int step(guard *g, unsigned char c, bkr_error *err)
{
    switch (g->state) {
    case G_INIT:
        return init_byte(g, c, err) != 0 ? -1 : 0;

    case G_IDENT:
        if (g->word_len == 1 && c == '\'') {
            char p = g->word[0];
            g->state = G_INIT;
            if (p == 'e') {
                other_token(g);
                open_string(g, G_XE, 0);
                return 0;
            }
            if (p == 'b' || p == 'x' || p == 'n') {
                other_token(g);
                open_string(g, G_XQ, p == 'n'); /* N'' is a plain string; B'' and X'' have no escapes */
                return 0;
            }
        } else if (g->word_len == 1 && g->word[0] == 'u' && c == '&') {
            g->state = G_UAMP;
            return 0;
        }
        if (is_ident_cont(c)) {
            word_add(g, c);
            return 0;
        }
        g->state = G_INIT;
        return identifier_done(g, err) != 0 ? -1 : 1;

    case G_UAMP:
        g->state = G_INIT;
        if (c == '\'') {
            other_token(g);
            open_string(g, G_XQ, 0);
            return 0;
        }
        if (c == '"') {
            other_token(g);
            g->state = G_XD;
            return 0;
        }
        other_token(g); /* "u" then the operator "&" (psqlscan.l's xufailed) */
        return 1;

    case G_NUMBER:
        if (is_digit(c))
            return 0;
        if (c == '.') {
            g->state = G_NUM_DOT;
            return 0;
        }
        if (c == 'e' || c == 'E') {
            g->state = G_NUM_E;
            return 0;
        }
        if (is_ident_start(c))
            return number_junk(g, err);
        g->state = G_INIT;
        return 1;
    case G_NUM_DOT:
        if (c == '.') { /* "1..": 1 then "..", as psql reads it */
            g->state = G_INIT;
            other_token(g);
            return 0;
        }
        /* "1." is a number; digits may follow */
        /* fall through */
    case G_NUM_FRAC:
        if (is_digit(c)) {
            g->state = G_NUM_FRAC;
            return 0;
        }
        if (c == 'e' || c == 'E') {
            g->state = G_NUM_E;
            return 0;
        }
        if (is_ident_start(c))
            return number_junk(g, err);
        g->state = G_INIT;
        return 1;
    case G_NUM_E:
        if (c == '+' || c == '-') {
            g->state = G_NUM_ESIGN;
            return 0;
        }
        /* fall through */
    case G_NUM_ESIGN:
        if (is_digit(c)) {
            g->state = G_NUM_EXP;
            return 0;
        }
        return number_junk(g, err);
    case G_NUM_EXP:
        if (is_digit(c))
            return 0;
        if (is_ident_start(c) || c == '.')
            return number_junk(g, err);
        g->state = G_INIT;
        return 1;

    case G_DOT:
        if (is_digit(c)) {
            other_token(g);
            g->state = G_NUM_FRAC;
            return 0;
        }
        other_token(g);
        g->state = G_INIT;
        return 1;

    case G_DOLLAR:
        if (is_digit(c)) { /* a parameter: $1 */
            other_token(g);
            g->state = G_NUMBER;
            return 0;
        }
        if (c == '$') {
            other_token(g);
            g->tag_len = 0;
            g->state = G_DOLQ;
            return 0;
        }
        if (is_ident_start(c)) {
            g->tag[0] = c;
            g->tag_len = 1;
            g->state = G_TAG;
            return 0;
        }
        other_token(g);
        g->state = G_INIT;
        return 1;
    case G_TAG:
        if (c == '$') {
            other_token(g);
            g->state = G_DOLQ;
            return 0;
        }
        if (is_dolq_cont(c)) {
            if (g->tag_len == sizeof g->tag)
                return refuse(g, err, "a dollar-quote tag longer than pg_dump writes");
            g->tag[g->tag_len++] = c;
            return 0;
        }
        /* "$abc" without its closing "$": psql reads the "$" alone, then "abc" again as an
         * identifier (which may be a one-letter prefix: "$e'...'" is "$" then E'...'). */
        other_token(g);
        word_start(g);
        for (size_t i = 0; i < g->tag_len; i++)
            word_add(g, g->tag[i]);
        g->state = G_IDENT;
        return 1;
    case G_DOLQ:
        if (c == '$') {
            g->tag_pos = 0;
            g->state = G_DOLQ_END;
        }
        return 0;
    case G_DOLQ_END:
        if (g->tag_pos < g->tag_len) {
            if (c == g->tag[g->tag_pos]) {
                g->tag_pos++;
                return 0;
            }
        } else if (c == '$') {
            g->state = G_INIT;
            return 0;
        }
        if (c == '$') /* "$a$b$" in $b$...: this "$" may start the end */
            g->tag_pos = 0;
        else
            g->state = G_DOLQ;
        return 0;

    case G_XQ:
        if (c == '\'') {
            /* With standard_conforming_strings off (one statement in the dump can turn it
             * off), psql reads \' as an escaped quote: the string would go on. */
            if (g->std_string && g->odd_backslashes)
                return refuse(g, err, "a quoted string with an odd run of backslashes before a quote, which "
                                      "psql reads differently when standard_conforming_strings is off");
            g->state = G_XQ_QUOTE;
            return 0;
        }
        g->odd_backslashes = c == '\\' ? !g->odd_backslashes : 0;
        return 0;
    case G_XQ_QUOTE:
        if (c == '\'') {
            g->state = G_XQ;
            g->odd_backslashes = 0;
            return 0;
        }
        g->state = G_INIT;
        return 1;
    case G_XE:
        if (c == '\\')
            g->state = G_XE_ESC;
        else if (c == '\'')
            g->state = G_XE_QUOTE;
        return 0;
    case G_XE_ESC:
        g->state = G_XE;
        return 0;
    case G_XE_QUOTE:
        if (c == '\'') {
            g->state = G_XE;
            return 0;
        }
        g->state = G_INIT;
        return 1;
    case G_XD:
        if (c == '"')
            g->state = G_XD_QUOTE;
        return 0;
    case G_XD_QUOTE:
        if (c == '"') {
            g->state = G_XD;
            return 0;
        }
        g->state = G_INIT;
        return 1;

    case G_DASH:
        if (c == '-') {
            g->state = G_LINE_COMMENT;
            return 0;
        }
        other_token(g);
        g->state = G_INIT;
        return 1;
    case G_LINE_COMMENT:
        if (c == '\n' || c == '\r') { /* psqlscan.l: a comment ends at either */
            g->state = G_INIT;
            return 1;
        }
        return 0;
    case G_SLASH:
        if (c == '*') {
            g->xc_depth = 0;
            g->state = G_XC;
            return 0;
        }
        other_token(g);
        g->state = G_INIT;
        return 1;
    case G_XC:
        if (c == '/')
            g->state = G_XC_SLASH;
        else if (c == '*')
            g->state = G_XC_STAR;
        return 0;
    case G_XC_SLASH:
        if (c == '*') {
            g->xc_depth++;
            g->state = G_XC;
            return 0;
        }
        g->state = G_XC;
        return 1;
    case G_XC_STAR:
        if (c == '/') {
            if (g->xc_depth == 0)
                g->state = G_INIT;
            else {
                g->xc_depth--;
                g->state = G_XC;
            }
            return 0;
        }
        if (c == '*')
            return 0;
        g->state = G_XC;
        return 1;

    case G_COLON:
        if (c == ':') { /* a cast */
            other_token(g);
            g->state = G_INIT;
            return 0;
        }
        other_token(g);
        if (is_dolq_cont(c)) {
            g->var_upper = 0;
            g->state = G_VAR;
            return 1;
        }
        g->state = G_INIT;
        return 1;
    case G_VAR:
        /* psql replaces :NAME by the variable's value and reads that as input too, quotes and
         * backslashes included. It defines only upper-case names itself (DBNAME, USER, ...,
         * ON_ERROR_STOP), and \set is refused: a lower-case name (an array slice [1:n]) stays
         * as it is written. */
        if (is_dolq_cont(c)) {
            if (c >= 'A' && c <= 'Z')
                return refuse(g, err, "a psql variable reference, which pg_dump never writes");
            return 0;
        }
        g->state = G_INIT;
        return 1;

    case G_META:
        if (c == '\n') {
            if (meta_line_done(g, err) != 0)
                return -1;
            g->state = G_INIT;
            return 0;
        }
        return meta_byte(g, c, err) != 0 ? -1 : 0;

    case G_AFTER_COPY:
        if (c == ' ' || c == '\t')
            return 0;
        if (c == '\n') {
            g->copy_sections++;
            g->state = G_COPY_BOL;
            return 0;
        }
        /* psql reads the COPY data first, then the rest of this line: pg_dump leaves it empty. */
        return refuse(g, err, "text after COPY ... FROM stdin; on its line, which pg_dump never writes");

    case G_COPY_BOL:
        g->state = c == '\\' ? G_COPY_BS : c == '\n' ? G_COPY_BOL : G_COPY_REST;
        return 0;
    case G_COPY_BS:
        g->state = c == '.' ? G_COPY_BSDOT : c == '\n' ? G_COPY_BOL : G_COPY_REST;
        return 0;
    case G_COPY_BSDOT:
    case G_COPY_BSDOTCR:
        if (c == '\n') { /* psql's end of COPY data: "\.\n" or "\.\r\n" */
            g->state = G_INIT;
            return 0;
        }
        g->state = c == '\r' && g->state == G_COPY_BSDOT ? G_COPY_BSDOTCR : G_COPY_REST;
        return 0;
    case G_COPY_REST:
        if (c == '\n')
            g->state = G_COPY_BOL;
        return 0;
    }
    return 0;
}

static int guard_observe(void *self, const unsigned char *data, size_t len, bkr_error *err)
{
    guard *g = self;
    if (data == NULL) {
        /* psql executes a last line without a newline too. */
        if (g->state == G_META && meta_line_done(g, err) != 0)
            return -1;
        if (g->state == G_IDENT && identifier_done(g, err) != 0)
            return -1;
        g->finished = 1;
        return 0;
    }
    const unsigned char *p = data, *end = data + len;
    while (p < end) {
        if (g->state == G_COPY_REST || g->state == G_DOLQ) {
            /* The bulk of a dump: skip to the next byte that matters. */
            unsigned char stop = g->state == G_DOLQ ? '$' : '\n';
            const unsigned char *q = p;
            while (q < end && *q != stop && *q != '\n' && *q != '\0')
                q++;
            if (q > p)
                g->line_start = 0;
            p = q;
            if (p == end)
                break;
        }
        unsigned char c = *p;
        if (c == '\0')
            return refuse(g, err, "a NUL byte, which pg_dump never writes (psql would drop what follows it)");
        int rc;
        while ((rc = step(g, c, err)) == 1)
            ;
        if (rc < 0)
            return -1;
        if (c == '\n') {
            g->line++;
            g->line_start = 1;
            g->odd_backslashes = 0; /* psql reads by lines: a backslash escapes nothing past one */
        } else {
            g->line_start = 0;
        }
        p++;
    }
    return 0;
}

static int guard_result(void *self, lua_State *L)
{
    guard *g = self;
    if (!g->finished)
        return 0;
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, (lua_Integer)g->meta_commands);
    lua_setfield(L, -2, "meta_commands");
    lua_pushinteger(L, (lua_Integer)g->copy_sections);
    lua_setfield(L, -2, "copy_sections");
    return 1;
}

static void guard_free(void *self)
{
    free(self);
}

static guard *guard_new(void)
{
    guard *g = calloc(1, sizeof *g);
    if (g == NULL)
        return NULL;
    g->state = G_INIT;
    g->line = 1;
    g->line_start = 1;
    return g;
}

static const bkr_stage_ops guard_ops = {
    .type = "psql_guard", .kind = BKR_FILTER, .observe = guard_observe, .result = guard_result,
    .free = guard_free,
};

static int dump_refuse_meta_commands(lua_State *L)
{
    const char *name = bkr_stage_optname(L, 1);
    bkr_stage *st = bkr_stage_new(L, &guard_ops);
    guard *g = guard_new();
    if (g == NULL)
        return luaL_error(L, "dump.refuse_meta_commands: out of memory");
    bkr_stage_open(st, g, name);
    return 1;
}

const luaL_Reg bkr_dump_psql_guard[] = {
    {"refuse_meta_commands", dump_refuse_meta_commands},
    {NULL, NULL},
};
