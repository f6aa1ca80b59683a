/*
 * atomic_file.c - the one atomic file writer (see atomic_file.h), shared by
 * stream.to_file and fs.write_file.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>

#include "atomic_file.h"
#include "bkr.h"

/* Longest part of the final name kept in the temporary name: prefix + name + ".XXXXXX"
 * stays within NAME_MAX (255), so a 250-byte final name still gets a temporary file. */
#define TMP_NAME_MAX 200

int atomic_file_parse_mode(lua_State *L, int idx, mode_t *out)
{
    lua_Integer m = -1;
    if (lua_type(L, idx) == LUA_TNUMBER) {
        int isint;
        m = lua_tointegerx(L, idx, &isint);
        if (!isint)
            return -1;
    } else if (lua_type(L, idx) == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        if (len == 0 || len > 5 || strspn(s, "01234567") != len)
            return -1;
        m = (lua_Integer)strtol(s, NULL, 8);
    }
    if (m < 0 || m > 0777)
        return -1;
    *out = (mode_t)m;
    return 0;
}

/* One id of opts.owner: a non-negative integer that fits uid_t/gid_t, and not -1 (which
 * chown reads as "leave alone"). */
static lua_Integer owner_id(lua_State *L, int owner, int i, const char *fname)
{
    lua_rawgeti(L, owner, i);
    int isint;
    lua_Integer id = lua_tointegerx(L, -1, &isint);
    lua_pop(L, 1);
    if (!isint || id < 0 || id >= (lua_Integer)0xFFFFFFFF)
        luaL_error(L, "%s: opts.owner must be {uid, gid}, two non-negative integers", fname);
    return id;
}

int atomic_file_checkowner(lua_State *L, int idx, const char *fname, uid_t *uid, gid_t *gid)
{
    if (!lua_istable(L, idx))
        return 0;
    int t = lua_getfield(L, idx, "owner");
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return 0;
    }
    if (t != LUA_TTABLE)
        luaL_error(L, "%s: opts.owner must be {uid, gid}, two non-negative integers", fname);
    int owner = lua_gettop(L);
    *uid = (uid_t)owner_id(L, owner, 1, fname);
    *gid = (gid_t)owner_id(L, owner, 2, fname);
    lua_pop(L, 1);
    return 1;
}

void atomic_file_checkopts(lua_State *L, int idx, const char *fname, atomic_file_opts *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->mode = ATOMIC_FILE_DEFAULT_MODE;
    if (lua_isnoneornil(L, idx))
        return;
    luaL_checktype(L, idx, LUA_TTABLE);
    if (lua_getfield(L, idx, "mode") != LUA_TNIL && atomic_file_parse_mode(L, -1, &opts->mode) != 0)
        luaL_error(L, "%s: opts." ATOMIC_FILE_MODE_RULE, fname);
    lua_pop(L, 1);
    int t = lua_getfield(L, idx, "overwrite");
    if (t != LUA_TNIL) {
        if (t != LUA_TBOOLEAN)
            luaL_error(L, "%s: opts.overwrite must be a boolean", fname);
        opts->overwrite = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    opts->chown = atomic_file_checkowner(L, idx, fname, &opts->uid, &opts->gid);
}

int bkr_open_regular(const char *path, int follow_symlinks)
{
    /* O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | (follow_symlinks ? 0 : O_NOFOLLOW));
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        errno = ELOOP;
        return -1;
    }
    int flags = fcntl(fd, F_GETFL);
    if (flags >= 0)
        fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    return fd;
}

int bkr_push_open_failure(lua_State *L, const char *fname, const char *path, int follow_symlinks)
{
    int e = errno;
    if (e == ELOOP)
        return bkr_pushfail(L, "not_regular", "%s: %s: not a regular file%s", fname, path,
                            follow_symlinks ? "" : " (a symlink, FIFO or device)");
    return bkr_pusherrno(L, e, "%s: %s", fname, path);
}

int bkr_opt_follow(lua_State *L, int idx)
{
    if (!lua_istable(L, idx))
        return 0;
    lua_getfield(L, idx, "follow");
    int follow = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return follow;
}

int atomic_file_fsync_path(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    int err = fsync(fd) == 0 ? 0 : errno;
    if (close(fd) != 0 && err == 0)
        err = errno;
    return err;
}

/* The directory part of path ("." when none, "/" for a file in the root), malloc'd. */
static char *dir_of(const char *path, size_t *base_start, size_t *base_len)
{
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/')
        len--;
    size_t start = len;
    while (start > 0 && path[start - 1] != '/')
        start--;
    *base_start = start;
    *base_len = len - start;
    size_t dlen = start;
    while (dlen > 1 && path[dlen - 1] == '/')
        dlen--;
    if (dlen == 0)
        return strdup(".");
    return strndup(path, dlen);
}

int atomic_file_open(atomic_file *af, const char *path, const atomic_file_opts *opts)
{
    af->fd = -1;
    af->path = NULL;
    af->tmp = NULL;
    af->opts = *opts;
    size_t bstart, blen;
    char *dir = dir_of(path, &bstart, &blen);
    af->path = strdup(path);
    if (dir == NULL || af->path == NULL) {
        free(dir);
        atomic_file_abort(af);
        return ENOMEM;
    }
    if (blen > TMP_NAME_MAX)
        blen = TMP_NAME_MAX;
    size_t len = strlen(dir) + 1 + sizeof ATOMIC_FILE_TMP_PREFIX + blen + sizeof ".XXXXXX";
    af->tmp = malloc(len);
    if (af->tmp == NULL) {
        free(dir);
        atomic_file_abort(af);
        return ENOMEM;
    }
    snprintf(af->tmp, len, "%s/" ATOMIC_FILE_TMP_PREFIX "%.*s.XXXXXX", dir, (int)blen, path + bstart);
    free(dir);
    af->fd = mkostemp(af->tmp, O_CLOEXEC);
    if (af->fd < 0) {
        int err = errno;
        free(af->tmp);
        af->tmp = NULL;
        atomic_file_abort(af);
        return err;
    }
    return 0;
}

int bkr_write_all(int fd, const void *data, size_t len)
{
    const unsigned char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR && !bkr_interrupted())
                continue;
            return errno;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int atomic_file_write(atomic_file *af, const void *data, size_t len)
{
    return bkr_write_all(af->fd, data, len);
}

int atomic_file_commit(atomic_file *af, const char **what)
{
    /* The owner first (fchown may clear set-id bits; the mode is set after it), and before
     * the final name exists: no reader ever sees the file with the wrong owner. */
    *what = "chown";
    if (af->opts.chown && fchown(af->fd, af->opts.uid, af->opts.gid) != 0)
        return errno;
    *what = "chmod";
    if (fchmod(af->fd, af->opts.mode) != 0)
        return errno;
    *what = "fsync";
    if (fsync(af->fd) != 0)
        return errno;
    *what = "close";
    int rc = close(af->fd);
    af->fd = -1;
    if (rc != 0)
        return errno;
    if (af->opts.overwrite) {
        *what = "rename";
        if (rename(af->tmp, af->path) != 0)
            return errno;
    } else {
        /* link() fails with EEXIST instead of replacing: an existing file is never lost. */
        *what = "link";
        if (link(af->tmp, af->path) != 0)
            return errno;
        unlink(af->tmp);
    }
    free(af->tmp);
    af->tmp = NULL;
    size_t bstart, blen;
    char *dir = dir_of(af->path, &bstart, &blen);
    *what = "fsync directory";
    int err = dir == NULL ? ENOMEM : atomic_file_fsync_path(dir);
    free(dir);
    return err;
}

void atomic_file_abort(atomic_file *af)
{
    if (af->fd >= 0)
        close(af->fd);
    af->fd = -1;
    if (af->tmp != NULL)
        unlink(af->tmp);
    free(af->tmp);
    af->tmp = NULL;
    free(af->path);
    af->path = NULL;
}
