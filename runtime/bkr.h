/*
 * bkr.h - what the host offers to every binding.
 *
 * The host owns the process: signal handling, error reporting and the Lua state.
 * Bindings use these few helpers so that environmental failures and interrupts
 * are reported the same way everywhere.
 */
#ifndef BKR_H
#define BKR_H

#include <lua.h>
#include <lauxlib.h>

#define BKR_VERSION "0.1.0"

/* Exit codes, documented in docs/EXIT_CODES.md. */
#define BKR_EXIT_OK 0
#define BKR_EXIT_FAILED 1
#define BKR_EXIT_USAGE 2
#define BKR_EXIT_INTEGRITY 3

/*
 * Nonzero once SIGINT or SIGTERM has arrived. Long-running C loops (pipelines,
 * waits, polls) check it between blocking calls and give up cleanly; the host
 * turns the resulting error into exit status 128+signal.
 */
int bkr_interrupted(void);

/*
 * A binding that fails because of the interrupt (its own "interrupted" error) calls this
 * before raising: the host then does not raise a second "interrupted by SIGTERM" at the next
 * Lua call, which would land outside the recipe's pcall and skip its cleanup and log line.
 */
void bkr_interrupt_delivered(lua_State *L);

/*
 * Push the conventional failure triple for environmental errors (file missing,
 * server down, child failed): nil, "prefix: message"[, code]. Returns the number
 * of values pushed, so a binding can `return bkr_pushfail(L, NULL, "...")`.
 * `code` may be NULL (then only nil and the message are pushed).
 */
int bkr_pushfail(lua_State *L, const char *code, const char *fmt, ...);

/* Same, with strerror(saved_errno) appended: "prefix: what: No such file", and the kind
 * of the errno (bkr_errno_kind) as the third value, for code to branch on. */
int bkr_pusherrno(lua_State *L, int saved_errno, const char *fmt, ...);

/*
 * The kind of an errno, one of a small fixed set that recipes branch on (never on the
 * message): "exists", "no_space", "interrupted", "permission", "missing", "not_regular"
 * (ELOOP: a symlink where a file belongs), else "io". docs/runtime.md lists every kind.
 */
const char *bkr_errno_kind(int e);

/* Seconds on CLOCK_MONOTONIC: durations that survive clock changes (NTP, the admin). */
double bkr_monotonic(void);

/*
 * Create the metatable `name` once (liolib's createmeta): metamethods set on it, methods
 * as its __index table (methods may be NULL). A second call does nothing, so every binding
 * that makes such userdata may call it. Leaves the stack as it was.
 */
void bkr_createmeta(lua_State *L, const char *name, const luaL_Reg *metamethods, const luaL_Reg *methods);

/* Raise "FN: unknown option 'KEY'" for a key of the options table at index `opts` that is not
 * in `allowed` (NULL-terminated): a misspelt option is the caller's mistake, never ignored. */
void bkr_check_option_keys(lua_State *L, int opts, const char *fn, const char *const *allowed);

#endif
