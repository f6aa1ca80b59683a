/*
 * atomic_file.h - the one way bkr writes a file under its final name: a temporary file
 * beside it, the data, fchmod, fsync, then rename (overwrite) or link (never replace),
 * then fsync of the directory. stream.to_file and fs.write_file both use it, so they
 * agree on modes, defaults, long names and the temporary-file name.
 *
 * Temporary files are named DIR/.bkr-tmp.<NAME>.XXXXXX (NAME cut to fit NAME_MAX):
 * a prefix nobody else uses, so rotation can prove that a leftover is bkr's own
 * (ATOMIC_FILE_TMP_PREFIX; recipes/lib/repo.lua matches the same prefix).
 */
#ifndef BKR_ATOMIC_FILE_H
#define BKR_ATOMIC_FILE_H

#include <stddef.h>
#include <sys/types.h>

#include <lua.h>

#define ATOMIC_FILE_TMP_PREFIX ".bkr-tmp."
#define ATOMIC_FILE_DEFAULT_MODE 0600

/* How a file is written: its mode, whether it may replace a file, and its owner. */
typedef struct atomic_file_opts {
    mode_t mode;
    int overwrite;   /* 1: rename over an existing file; 0: fail with EEXIST instead */
    int chown;       /* 1: give the file to uid:gid before it gets its final name */
    uid_t uid;
    gid_t gid;
} atomic_file_opts;

typedef struct atomic_file {
    int fd;          /* -1 once closed */
    char *path;      /* final name */
    char *tmp;       /* temporary name; NULL once committed or removed */
    atomic_file_opts opts;
} atomic_file;

/* Options shared by both writers, read from the table at index idx (may be none/nil):
 * mode (octal string "0600" or integer 0..0777, default 0600), overwrite (boolean,
 * default false) and owner ({uid, gid}: the temporary file is chowned before the rename,
 * so the final name never exists with another owner; root runs on another user's
 * repository need it). Raises on misuse, naming `fname`. */
void atomic_file_checkopts(lua_State *L, int idx, const char *fname, atomic_file_opts *opts);

/* opts.owner ({uid, gid}, or nil) of the options table at idx, as atomic_file_checkopts reads
 * it; also used by fs.append, fs.lock and fs.mkdirs. Returns 1 when one is given. Raises on
 * misuse, naming `fname`. */
int atomic_file_checkowner(lua_State *L, int idx, const char *fname, uid_t *uid, gid_t *gid);

/* A permission mode at stack index idx: an integer 0..0777, or a string of octal digits.
 * Returns 0, or -1 if invalid (Lua's 0600 is decimal 600 = 01130: refused). */
int atomic_file_parse_mode(lua_State *L, int idx, mode_t *out);
#define ATOMIC_FILE_MODE_RULE \
    "mode must be 0..0777: an integer such as tonumber(\"644\", 8) or an octal string \"0644\""

/* Create the temporary file for path. Returns 0, or an errno (af is then closed). */
int atomic_file_open(atomic_file *af, const char *path, const atomic_file_opts *opts);

/* Append len bytes. Returns 0, or an errno (EINTR once bkr_interrupted()). */
int atomic_file_write(atomic_file *af, const void *data, size_t len);

/* Make it final: fchown (when asked), fchmod, fsync, rename or link. Returns 0, or an errno with *what set to the step that failed
 * ("fsync", "rename", ...); on failure the temporary file is still there for abort. */
int atomic_file_commit(atomic_file *af, const char **what);

/* Remove the temporary file (if any) and free everything; harmless to call twice. */
void atomic_file_abort(atomic_file *af);

/* Write all of data to fd, retrying short writes and EINTR (unless interrupted).
 * Returns 0, or an errno (EINTR once bkr_interrupted()). */
int bkr_write_all(int fd, const void *data, size_t len);

/*
 * Open path for reading only if it is a regular file: never a FIFO (which would block
 * forever), a device or a directory, and, unless follow_symlinks, never through a symlink
 * in the last component (O_NOFOLLOW). Everything bkr reads from a repository may have been
 * put there by someone else (docs/RELIABILITY.md). Returns the fd, or -1 with errno set;
 * a file of another type gives ELOOP too (kind "not_regular"), whatever it is.
 */
int bkr_open_regular(const char *path, int follow_symlinks);

/* Push nil, message, kind for a failed bkr_open_regular (errno as it left it):
 * "FNAME: PATH: not a regular file (...)", kind not_regular, or the errno's message and kind. */
int bkr_push_open_failure(lua_State *L, const char *fname, const char *path, int follow_symlinks);

/* Read option `follow` (boolean, default false) from the options table at idx, if any. */
int bkr_opt_follow(lua_State *L, int idx);

/* fsync the file or directory at path. Returns 0 or errno. */
int atomic_file_fsync_path(const char *path);

#endif
