/*
 * pg_redact.h - keeping passwords out of bkr.pg's messages: finding what looks like a password
 * in a connection string, and masking secrets in a message. Pure string code, with no libpq
 * and no Lua (pg_redact.c), so that it can be fuzzed (tests/fuzz/fuzz_conninfo.c).
 *
 * Every function takes a pointer and a length; none reads past the length or needs a
 * terminating NUL (a NUL byte is an ordinary byte).
 */
#ifndef BKR_PG_REDACT_H
#define BKR_PG_REDACT_H

#include <stddef.h>

/* A piece of a string: ptr[0..len). It does not own ptr. */
typedef struct pg_secret {
    const char *ptr;
    size_t len;
} pg_secret;

/* Called with each secret found; the piece points into the conninfo that was searched. */
typedef void (*pg_secret_found)(void *arg, const char *ptr, size_t len);

/*
 * Find what looks like a password in conninfo s[0..len), without parsing it as libpq would
 * (libpq's parse finds the password it will use; this finds the pieces libpq's messages may
 * quote even when it cannot parse the string): the password of a URI
 * (scheme://user:PASSWORD@host, the first "://" only), and the value of every
 * "password = VALUE" (up to a blank, a newline or '&') or "password = 'VALUE'" (up to the next
 * quote). Calls found(arg, ptr, n) for each, n > 0, in order; each piece lies inside s.
 */
void pg_conninfo_secrets(const char *s, size_t len, pg_secret_found found, void *arg);

/* Whether s[0..len) may hold a password ("password" or an '@' in it): when libpq cannot parse
 * such a string, its message may quote any piece of it. */
int pg_conninfo_may_hold_secret(const char *s, size_t len);

/* The size of an output buffer that pg_redact never cuts, for a message of len bytes: no byte
 * becomes more than three ("x" -> "***", and '""' -> '"***"' is five for two). */
#define PG_REDACT_CAP(len) (3 * (size_t)(len) + 1)

/*
 * Write msg[0..len) into out (cap bytes, NUL-terminated when cap > 0) with each stretch of it
 * that is covered by an occurrence of a secret (overlapping and adjacent occurrences make one
 * stretch) or, when quoted, lies between a pair of double quotes (an opening quote and the
 * next one; '""' too), replaced by "***". Empty secrets are ignored. The output is cut at
 * cap - 1 bytes (never with PG_REDACT_CAP(len)); a cut output is a prefix of the whole.
 * Returns the number of bytes written before the NUL.
 *
 * What it guarantees: no secret without a '*' in it appears in the output, and, when quoted,
 * nothing from between a pair of quotes is copied.
 */
size_t pg_redact(char *out, size_t cap, const char *msg, size_t len, const pg_secret *secrets, size_t n,
                 int quoted);

#endif
