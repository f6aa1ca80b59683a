/*
 * pg_redact.c - passwords out of bkr.pg's messages (pg_redact.h): the pieces of a connection
 * string that look like a password, and a message with secrets masked. Pure string code,
 * without libpq or Lua, fuzzed by tests/fuzz/fuzz_conninfo.c.
 */
#include <string.h>

#include "pg_redact.h"

/* ---------------------------------------------------------------------------------------------
 * Finding secrets in a connection string
 * ------------------------------------------------------------------------------------------- */

/* The first needle[0..n) in s[0..len) at or after from, or NULL. */
static const char *find_from(const char *s, size_t len, size_t from, const char *needle, size_t n)
{
    if (from > len)
        return NULL;
    return memmem(s + from, len - from, needle, n);
}

/* How many bytes at the start of s[0..len) are none of stop (strcspn within a length). */
static size_t span_until(const char *s, size_t len, const char *stop)
{
    size_t i = 0, nstop = strlen(stop);
    while (i < len && !memchr(stop, s[i], nstop))
        i++;
    return i;
}

void pg_conninfo_secrets(const char *s, size_t len, pg_secret_found found, void *arg)
{
    /* URI: postgresql://user:password@host... */
    const char *p = find_from(s, len, 0, "://", 3);
    if (p) {
        size_t at = (size_t)(p - s) + 3;
        size_t end = at + span_until(s + at, len - at, "@/");
        if (end < len && s[end] == '@') {
            const char *colon = memchr(s + at, ':', end - at);
            if (colon && (size_t)(colon - s) + 1 < end)
                found(arg, colon + 1, end - (size_t)(colon - s) - 1);
        }
    }
    /* password = value, password=value&..., password='quoted value' */
    for (size_t from = 0; (p = find_from(s, len, from, "password", 8)) != NULL; from = (size_t)(p - s) + 1) {
        size_t v = (size_t)(p - s) + 8;
        while (v < len && (s[v] == ' ' || s[v] == '\t'))
            v++;
        if (v >= len || s[v] != '=')
            continue;
        v++;
        while (v < len && (s[v] == ' ' || s[v] == '\t'))
            v++;
        size_t n;
        if (v < len && s[v] == '\'') {
            v++;
            n = span_until(s + v, len - v, "'");
        } else {
            n = span_until(s + v, len - v, " \t\n&");
        }
        if (n > 0)
            found(arg, s + v, n);
    }
}

int pg_conninfo_may_hold_secret(const char *s, size_t len)
{
    return find_from(s, len, 0, "password", 8) != NULL || memchr(s, '@', len) != NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Masking a message
 * ------------------------------------------------------------------------------------------- */

/* Append s[0..n) to out, keeping room for the NUL. */
static void put(char *out, size_t cap, size_t *o, const char *s, size_t n)
{
    while (n-- > 0 && *o + 1 < cap)
        out[(*o)++] = *s++;
}

/*
 * One pass over the message. A byte is masked while it lies inside an occurrence of a secret
 * (`covered` is the end of the furthest occurrence begun so far, so overlapping and nested
 * secrets are masked whole, whichever order they come in) or between a pair of quotes. Each
 * run of masked bytes becomes one "***".
 */
size_t pg_redact(char *out, size_t cap, const char *msg, size_t len, const pg_secret *secrets, size_t n,
                 int quoted)
{
    size_t o = 0, covered = 0, opened = 0;
    int in_quote = 0, in_run = 0;
    for (size_t i = 0; i < len; i++) {
        for (size_t k = 0; k < n; k++) {
            size_t sl = secrets[k].len;
            if (sl > 0 && sl <= len - i && i + sl > covered && secrets[k].ptr[0] == msg[i]
                && memcmp(msg + i, secrets[k].ptr, sl) == 0)
                covered = i + sl;
        }
        int masked = i < covered;
        if (quoted && msg[i] == '"') {
            if (in_quote) {
                in_quote = 0;
                if (i == opened + 1 && !in_run) { /* '""' shows as '"***"' too */
                    put(out, cap, &o, "***", 3);
                    in_run = 1;
                }
            } else if (memchr(msg + i + 1, '"', len - i - 1)) {
                in_quote = 1;
                opened = i;
            }
        } else if (in_quote) {
            masked = 1;
        }
        if (masked) {
            if (!in_run)
                put(out, cap, &o, "***", 3);
            in_run = 1;
        } else {
            put(out, cap, &o, msg + i, 1);
            in_run = 0;
        }
    }
    if (cap > 0)
        out[o] = '\0';
    return o;
}
