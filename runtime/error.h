/*
 * error.h - errors as data: a failure carries a message for people and a kind for code.
 *
 * Pipeline stages describe a failure in a bkr_error (a message, a kind, and the stage's
 * name, filled in by the core); stream.run raises it as an error object, a table
 * { message = "stream.run: STAGE: REASON", detail = "STAGE: REASON", reason = "REASON",
 *   kind = ..., stage = ... }
 * whose __tostring is the message (as Redis's
 * script_lua.c raises { err = ... } tables). Recipes branch on `kind`, never on the text.
 *
 * The kinds are a small fixed set (docs/runtime.md#errors):
 *   corrupt       the bytes are not what they should be (bad gzip, not a bkr file, bad COPY)
 *   truncated     the data ends early (gzip, a dump without its end, no final chunk)
 *   auth          authentication failed (a GCM tag: tampered, reordered)
 *   key           encrypted with another key than the one given
 *   exists        the name is taken (EEXIST)
 *   no_space      the disk or quota is full (ENOSPC, EDQUOT)
 *   permission    not allowed (EACCES, EPERM)
 *   missing       no such file (ENOENT)
 *   not_regular   a symlink, FIFO, device or directory where a regular file belongs
 *   interrupted   SIGINT or SIGTERM arrived
 *   child_failed  a child process exited non-zero or was killed
 *   usage         misuse by the caller
 *   io            anything else
 */
#ifndef BKR_ERROR_H
#define BKR_ERROR_H

#include <lua.h>

#define BKR_ERROR "bkr.Error"

#define BKR_KIND_CORRUPT "corrupt"
#define BKR_KIND_TRUNCATED "truncated"
#define BKR_KIND_AUTH "auth"
#define BKR_KIND_KEY "key"
#define BKR_KIND_EXISTS "exists"
#define BKR_KIND_NO_SPACE "no_space"
#define BKR_KIND_PERMISSION "permission"
#define BKR_KIND_MISSING "missing"
#define BKR_KIND_NOT_REGULAR "not_regular"
#define BKR_KIND_INTERRUPTED "interrupted"
#define BKR_KIND_CHILD_FAILED "child_failed"
#define BKR_KIND_USAGE "usage"
#define BKR_KIND_IO "io"

/* A failure described by a stage and returned as -1. kind is one of the BKR_KIND_ strings
 * (static storage); stage is filled in by the pipeline core. */
typedef struct bkr_error {
    char msg[2048];
    const char *kind;
    char stage[64];
    size_t reason_at; /* where the stage's own words start in msg, after "STAGE: " */
} bkr_error;

/* Set the message (printf-style) with kind "io". Returns -1, so a callback can
 * `return bkr_error_set(...)`. */
int bkr_error_set(bkr_error *err, const char *fmt, ...);

/* Same with an explicit kind. */
int bkr_error_kind(bkr_error *err, const char *kind, const char *fmt, ...);

/* Same with ": strerror(saved_errno)" appended, and the errno's kind (bkr_errno_kind). */
int bkr_error_errno(bkr_error *err, int saved_errno, const char *fmt, ...);

/* Push an error object { message, kind, stage } (stage may be NULL or empty). */
void bkr_push_error(lua_State *L, const char *message, const char *kind, const char *stage);

/* Raise "WHO: interrupted" as an error object of kind interrupted, telling the host the
 * interrupt was delivered (bkr_interrupt_delivered): the caller's pcall sees it and its
 * cleanup runs. Call it only once C holds nothing that Lua does not own. */
int bkr_raise_interrupted(lua_State *L, const char *who);

#endif
