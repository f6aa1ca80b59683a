/*
 * fs.c - module bkr.fs: the file-system operations a backup tool needs and
 * LuaFileSystem lacks: durability (fsync), atomic replacement, exclusive locks,
 * free space, and temporary directories.
 *
 * Lua API (require "bkr.fs"):
 *   fs.fsync(path)                      -> true            fsync a file or a directory
 *   fs.rename(from, to)                 -> true            rename(2), then fsync the directories
 *   fs.read_file(path[, opts])          -> data            a whole regular file, never through a
 *        symlink (unless opts.follow) and at most opts.max bytes (default 64 MiB); else
 *        nil, msg, kind ("not_regular", "too_large", or the errno's kind)
 *   fs.append(path, data[, opts])       -> true            append to a log file, created with
 *        opts.mode (default 0600), given to opts.owner ({uid, gid}) when that is set;
 *        never through a symlink, never to a FIFO or device
 *   fs.write_file(path, data[, opts])   -> true            atomic whole-file write;
 *        opts = {mode = "0600", overwrite = false, owner = nil} (the defaults, as
 *        stream.to_file's: both are atomic_file.c); overwrite = false never replaces a file;
 *        owner = {uid, gid} chowns the temporary file before it takes its final name
 *   fs.lock(path[, opts])               -> Lock            exclusive flock, "PID\n" written inside
 *                                                          (opts.shared: another user's file locked read-only)
 *        (opts.owner = {uid, gid}: the lock file is given to that owner)
 *        held elsewhere: nil, "fs.lock: PATH is held by process N", "locked"
 *   lock:pid()                          -> integer         the pid written in the file (ours)
 *   lock:close()                        -> true            empty the file, unlock (also __gc, __close)
 *   fs.free_space(path)                 -> avail, total    bytes, from statvfs
 *   fs.chmod(path, mode)                -> true            mode: "0640" or tonumber("640", 8)
 *   fs.mode(path)                       -> integer         permission bits (st_mode & 07777)
 *   fs.mkdirs(path[, mode[, opts]])     -> true            mkdir -p, default mode "0755" (umask applies);
 *        opts.owner = {uid, gid}: each directory it creates is given to that owner
 *   fs.owner(path)                      -> uid, gid, user  of path itself (lstat: a symlink is not
 *        followed); user is the owner's name, or nil when the passwd database has none
 *   fs.chown(path, uid, gid)            -> true            lchown(2): never through a symlink
 *   fs.access(path, how)                -> true            may bkr (its effective uid) read ("r"),
 *        write ("w") or enter ("x") path? how: any of "rwx"; else nil, msg, kind ("permission")
 *   fs.user([name])                     -> uid, gid, name  the user bkr runs as (effective uid,
 *        and its group), or the user called name: nil, msg, "missing" when there is none
 *   fs.temp_dir([prefix[, holder]])     -> path            new private (0700) directory under
 *        $TMPDIR or /tmp: PREFIX.PID.XXXXXX, with bkr's pid, so that a later run can tell the
 *        leftover of a killed run (lib/tempdir.lua) from a live run's; with a holder table,
 *        holder.path is set before returning (see fs_temp_dir)
 *   fs.remove_tree(path)                -> true            rm -r without following symlinks
 *
 * Modes are permission bits 0..0777, given as an octal string ("0600") or an
 * integer (Lua has no octal literals: 0600 in Lua is decimal 600, refused).
 *
 * Every failure of the environment returns nil, "fs.NAME: PATH: strerror" (plus
 * a code where noted); only misuse (wrong argument types, bad modes, removing
 * "/") raises.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>

#include "atomic_file.h"
#include "bkr.h"
#include "modules.h"

#define BKR_LOCK "bkr.fs.Lock"

/* ===================================================================== */
/* Helpers                                                                */
/* ===================================================================== */

/*
 * Push the directory part of path onto the Lua stack ("." when there is none,
 * "/" for a file in the root). Trailing slashes of path are ignored.
 * Returns the pushed string, owned by Lua.
 */
static const char *push_dirname(lua_State *L, const char *path)
{
    size_t len = strlen(path);
    while (len > 1 && path[len - 1] == '/')
        len--;
    while (len > 0 && path[len - 1] != '/')
        len--;
    if (len == 0)
        return lua_pushliteral(L, ".");
    while (len > 1 && path[len - 1] == '/')
        len--;
    return lua_pushlstring(L, path, len);
}

/* A mode argument, else raise. */
static mode_t check_mode(lua_State *L, int arg)
{
    mode_t mode = 0;
    if (atomic_file_parse_mode(L, arg, &mode) != 0)
        luaL_argerror(L, arg, ATOMIC_FILE_MODE_RULE);
    return mode;
}

/* A writable copy of s, owned by Lua (a userdata left on the stack). */
static char *push_scratch(lua_State *L, const char *s, size_t len)
{
    char *buf = lua_newuserdatauv(L, len + 1, 0);
    memcpy(buf, s, len);
    buf[len] = '\0';
    return buf;
}

/* ===================================================================== */
/* fsync, rename                                                          */
/* ===================================================================== */

static int fs_fsync(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    int err = atomic_file_fsync_path(path);
    if (err)
        return bkr_pusherrno(L, err, "fs.fsync: %s", path);
    lua_pushboolean(L, 1);
    return 1;
}

static int fs_rename(lua_State *L)
{
    const char *from = luaL_checkstring(L, 1);
    const char *to = luaL_checkstring(L, 2);
    const char *to_dir = push_dirname(L, to);
    const char *from_dir = push_dirname(L, from);
    if (rename(from, to) != 0) {
        int err = errno;
        return bkr_pusherrno(L, err, "fs.rename: %s -> %s", from, to);
    }
    int err = atomic_file_fsync_path(to_dir);
    if (err)
        return bkr_pusherrno(L, err, "fs.rename: %s", to_dir);
    if (strcmp(from_dir, to_dir) != 0 && (err = atomic_file_fsync_path(from_dir)) != 0)
        return bkr_pusherrno(L, err, "fs.rename: %s", from_dir);
    lua_pushboolean(L, 1);
    return 1;
}

/* ===================================================================== */
/* write_file                                                             */
/* ===================================================================== */

/* ===================================================================== */
/* read_file                                                              */
/* ===================================================================== */

#define READ_FILE_DEFAULT_MAX (64 * 1024 * 1024)

/* A whole small file (manifest, sidecar, key) from a place someone else may have written:
 * a regular file only (bkr_open_regular), and no more than opts.max bytes. */
static int fs_read_file(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lua_Integer max = READ_FILE_DEFAULT_MAX;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "max");
        max = luaL_optinteger(L, -1, READ_FILE_DEFAULT_MAX);
        lua_pop(L, 1);
        luaL_argcheck(L, max >= 0, 2, "opts.max must not be negative");
    }
    int follow = bkr_opt_follow(L, 2);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    int fd = bkr_open_regular(path, follow);
    if (fd < 0)
        return bkr_push_open_failure(L, "fs.read_file", path, follow);
    lua_Integer total = 0;
    int err = 0, too_large = 0;
    for (;;) {
        char *p = luaL_prepbuffer(&b);
        ssize_t n = read(fd, p, LUAL_BUFFERSIZE);
        if (n < 0 && errno == EINTR && !bkr_interrupted())
            continue;
        if (n < 0) {
            err = errno;
            break;
        }
        if (n == 0)
            break;
        total += n;
        if (total > max) {
            too_large = 1;
            break;
        }
        luaL_addsize(&b, (size_t)n);
    }
    close(fd);
    if (too_large)
        return bkr_pushfail(L, "too_large", "fs.read_file: %s: larger than %lld bytes", path, (long long)max);
    if (err)
        return bkr_pusherrno(L, err, "fs.read_file: %s", path);
    luaL_pushresult(&b);
    return 1;
}

/* Append data to a log: created with opts.mode (default 0600) if missing, never through a
 * symlink, never to a FIFO or device. One write(2) of the whole line with O_APPEND, so lines
 * of concurrent writers do not interleave. */
static int fs_append(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    mode_t mode = ATOMIC_FILE_DEFAULT_MODE;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        if (lua_getfield(L, 3, "mode") != LUA_TNIL && atomic_file_parse_mode(L, -1, &mode) != 0)
            return luaL_error(L, "fs.append: opts." ATOMIC_FILE_MODE_RULE);
        lua_pop(L, 1);
    }
    uid_t uid = 0;
    gid_t gid = 0;
    int chown_to = atomic_file_checkowner(L, 3, "fs.append", &uid, &gid);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, mode);
    if (fd < 0) {
        int err = errno;
        return bkr_pusherrno(L, err, "fs.append: %s", path);
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return bkr_pushfail(L, "not_regular", "fs.append: %s: not a regular file", path);
    }
    if (chown_to && (st.st_uid != uid || st.st_gid != gid) && fchown(fd, uid, gid) != 0) {
        int err = errno;
        close(fd);
        return bkr_pusherrno(L, err, "fs.append: %s", path);
    }
    int err = bkr_write_all(fd, data, len);
    if (close(fd) != 0 && err == 0)
        err = errno;
    if (err)
        return bkr_pusherrno(L, err, "fs.append: %s", path);
    lua_pushboolean(L, 1);
    return 1;
}

/* The writer is atomic_file.c, shared with stream.to_file. */
static int fs_write_file(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    atomic_file_opts opts;
    atomic_file_checkopts(L, 3, "fs.write_file", &opts);
    atomic_file file;
    const char *what = "";
    int err = atomic_file_open(&file, path, &opts);
    if (err == 0 && (err = atomic_file_write(&file, data, len)) == 0)
        err = atomic_file_commit(&file, &what);
    atomic_file_abort(&file);
    if (err != 0)
        return bkr_pusherrno(L, err, "fs.write_file: %s", path);
    lua_pushboolean(L, 1);
    return 1;
}

/* ===================================================================== */
/* Lock                                                                   */
/* ===================================================================== */

typedef struct fs_lock {
    int fd;       /* -1 when closed */
    pid_t pid;
} fs_lock;

#define tolock(L, i) ((fs_lock *)luaL_checkudata(L, i, BKR_LOCK))

static fs_lock *checklock(lua_State *L)
{
    fs_lock *lk = tolock(L, 1);
    if (lk->fd < 0)
        luaL_error(L, "attempt to use a closed lock");
    return lk;
}

/* Release: empty the file (so a stale PID never misleads), unlock, close. Never fails. */
static void lock_release(fs_lock *lk)
{
    int fd = lk->fd;
    if (fd < 0)
        return;
    lk->fd = -1;
    if (ftruncate(fd, 0) != 0) {
        /* Nothing to do: the lock itself is released below all the same. */
    }
    flock(fd, LOCK_UN);
    close(fd);
}

static int lock_close(lua_State *L)
{
    lock_release(tolock(L, 1));
    lua_pushboolean(L, 1);
    return 1;
}

static int lock_pid(lua_State *L)
{
    fs_lock *lk = checklock(L);
    lua_pushinteger(L, (lua_Integer)lk->pid);
    return 1;
}

static int lock_tostring(lua_State *L)
{
    fs_lock *lk = tolock(L, 1);
    if (lk->fd < 0)
        lua_pushliteral(L, "bkr.fs.Lock (closed)");
    else
        lua_pushfstring(L, "bkr.fs.Lock (pid %d)", (int)lk->pid);
    return 1;
}

/* The holder's PID as written in its lock file, or 0 when there is none to read. */
static long read_holder_pid(int fd)
{
    char buf[32];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *end;
    errno = 0;
    long pid = strtol(buf, &end, 10);
    if (errno != 0 || end == buf || pid <= 0 || (*end != '\n' && *end != '\0'))
        return 0;
    return pid;
}

static int fs_lock_new(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    uid_t uid = 0;
    gid_t gid = 0;
    int chown_to = atomic_file_checkowner(L, 2, "fs.lock", &uid, &gid);
    /* opts.shared: a lock in a directory every user shares (/run/lock), whose file another
     * user may have made first */
    int shared = 0;
    if (lua_istable(L, 2)) {
        shared = lua_getfield(L, 2, "shared") != LUA_TNIL && lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    fs_lock *lk = lua_newuserdatauv(L, sizeof *lk, 0);
    lk->fd = -1;
    lk->pid = 0;
    luaL_setmetatable(L, BKR_LOCK);

    /* O_NOFOLLOW: the file is truncated below, so never through a symlink someone planted. */
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    int read_only = 0;
    if (fd < 0 && errno == EACCES && shared) {
        /* Another user's lock file (root ran first, 0644): flock works on a read-only
         * descriptor just as well, so both users still exclude each other; only the PID that
         * names the holder cannot be written. (In a repository, such a file is a permission
         * problem to report: bkr could write nothing else there either.) */
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        read_only = fd >= 0;
        if (fd < 0)
            errno = EACCES;
    }
    if (fd < 0) {
        int err = errno;
        return bkr_pusherrno(L, err, "fs.lock: %s", path);
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int err = errno;
        long holder = err == EWOULDBLOCK ? read_holder_pid(fd) : 0;
        close(fd);
        if (err != EWOULDBLOCK)
            return bkr_pusherrno(L, err, "fs.lock: %s", path);
        if (holder > 0)
            return bkr_pushfail(L, "locked", "fs.lock: %s is held by process %ld", path, holder);
        return bkr_pushfail(L, "locked", "fs.lock: %s is held by another process", path);
    }
    lk->fd = fd;
    lk->pid = getpid();
    struct stat st;
    if (chown_to && fstat(fd, &st) == 0 && (st.st_uid != uid || st.st_gid != gid) && fchown(fd, uid, gid) != 0) {
        int err = errno;
        lock_release(lk);
        return bkr_pusherrno(L, err, "fs.lock: %s", path);
    }

    /* The flock is the lock; the PID inside only names the holder for the "busy" message.
     * Writing it is best effort: on a full disk the run that would free space (rotate) must
     * still get the lock. A PID that could not be written is left out, never half-written. */
    char line[32];
    int n = snprintf(line, sizeof line, "%ld\n", (long)lk->pid);
    if (!read_only && ftruncate(fd, 0) == 0 && (bkr_write_all(fd, line, (size_t)n) != 0 || fsync(fd) != 0))
        (void)!ftruncate(fd, 0);
    return 1;
}

/* ===================================================================== */
/* free_space, chmod, mode                                                */
/* ===================================================================== */

static int fs_free_space(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    struct statvfs sv;
    if (statvfs(path, &sv) != 0) {
        int err = errno;
        return bkr_pusherrno(L, err, "fs.free_space: %s", path);
    }
    lua_pushinteger(L, (lua_Integer)((unsigned long long)sv.f_bavail * sv.f_frsize));
    lua_pushinteger(L, (lua_Integer)((unsigned long long)sv.f_blocks * sv.f_frsize));
    return 2;
}

static int fs_chmod(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    mode_t mode = check_mode(L, 2);
    if (chmod(path, mode) != 0) {
        int err = errno;
        return bkr_pusherrno(L, err, "fs.chmod: %s", path);
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int fs_mode(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    struct stat st;
    if (stat(path, &st) != 0) {
        int err = errno;
        return bkr_pusherrno(L, err, "fs.mode: %s", path);
    }
    lua_pushinteger(L, (lua_Integer)(st.st_mode & 07777));
    return 1;
}

/* Whether `path` (symlinks followed) carries a POSIX access ACL. Its mode's group bits are
 * then the ACL's mask, not the owning group's permissions: a copy made from the mode alone
 * would give the group what the ACL gave someone else. */
static int fs_has_acl(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    ssize_t n = getxattr(path, "system.posix_acl_access", NULL, 0);
    if (n < 0) {
        int err = errno;
        if (err == ENODATA || err == ENOTSUP) {
            lua_pushboolean(L, 0);
            return 1;
        }
        return bkr_pusherrno(L, err, "fs.has_acl: %s", path);
    }
    lua_pushboolean(L, n > 0);
    return 1;
}

/* ===================================================================== */
/* owner, chown, user                                                     */
/* ===================================================================== */

/* Push a user's name from the passwd database (getpwuid_r/getpwnam_r, never the static
 * getpwuid), or nil when there is none. `name` NULL looks uid up. Returns 0, or an errno
 * (other than "no such user") when the lookup itself failed; nothing is pushed then. */
static int push_user(lua_State *L, uid_t uid, const char *name, uid_t *uid_out, gid_t *gid_out)
{
    long size = sysconf(_SC_GETPW_R_SIZE_MAX);
    if (size <= 0)
        size = 16384;
    for (;;) {
        /* the buffer is a userdata: a memory error in Lua frees it */
        char *buf = lua_newuserdatauv(L, (size_t)size, 0);
        struct passwd pw, *found = NULL;
        int err = name ? getpwnam_r(name, &pw, buf, (size_t)size, &found)
                       : getpwuid_r(uid, &pw, buf, (size_t)size, &found);
        if (err == ERANGE && size < (1L << 20)) {
            lua_pop(L, 1);
            size *= 2;
            continue;
        }
        if (err != 0 && err != ENOENT && err != ESRCH && err != EBADF && err != EPERM) {
            lua_pop(L, 1);
            return err;
        }
        if (found == NULL) {
            lua_pop(L, 1);
            lua_pushnil(L);
            return 0;
        }
        if (uid_out)
            *uid_out = found->pw_uid;
        if (gid_out)
            *gid_out = found->pw_gid;
        lua_pushstring(L, found->pw_name);
        lua_remove(L, -2);
        return 0;
    }
}

/* Who owns path itself (lstat: a symlink's own owner): uid, gid, the owner's name or nil. */
static int fs_owner(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    struct stat st;
    if (lstat(path, &st) != 0) {
        int err = errno;
        return bkr_pusherrno(L, err, "fs.owner: %s", path);
    }
    lua_pushinteger(L, (lua_Integer)st.st_uid);
    lua_pushinteger(L, (lua_Integer)st.st_gid);
    int err = push_user(L, st.st_uid, NULL, NULL, NULL);
    if (err != 0)
        return bkr_pusherrno(L, err, "fs.owner: %s: looking up uid %lu", path, (unsigned long)st.st_uid);
    return 3;
}

/* Give path (never a symlink's target) to uid:gid. */
static int fs_chown(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lua_Integer uid = luaL_checkinteger(L, 2);
    lua_Integer gid = luaL_checkinteger(L, 3);
    luaL_argcheck(L, uid >= 0 && uid < (lua_Integer)0xFFFFFFFF, 2, "not a uid");
    luaL_argcheck(L, gid >= 0 && gid < (lua_Integer)0xFFFFFFFF, 3, "not a gid");
    if (fchownat(AT_FDCWD, path, (uid_t)uid, (gid_t)gid, AT_SYMLINK_NOFOLLOW) != 0) {
        int err = errno;
        return bkr_pusherrno(L, err, "fs.chown: %s", path);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* May the effective user read/write/enter path? faccessat with AT_EACCESS: the effective
 * ids, as open(2) would judge them, without opening anything (a FIFO or a tape device is
 * never touched). */
static int fs_access(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    const char *how = luaL_checkstring(L, 2);
    int mode = 0;
    for (const char *p = how; *p; p++) {
        if (*p == 'r')
            mode |= R_OK;
        else if (*p == 'w')
            mode |= W_OK;
        else if (*p == 'x')
            mode |= X_OK;
        else
            return luaL_argerror(L, 2, "expected letters of \"rwx\"");
    }
    luaL_argcheck(L, mode != 0, 2, "expected letters of \"rwx\"");
    if (faccessat(AT_FDCWD, path, mode, AT_EACCESS) != 0) {
        int err = errno;
        return bkr_pusherrno(L, err, "fs.access: %s", path);
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* The user bkr runs as (effective uid, effective gid, name), or the user called `name`
 * (uid, primary gid, name). */
static int fs_user(lua_State *L)
{
    const char *name = luaL_optstring(L, 1, NULL);
    if (name == NULL) {
        uid_t uid = geteuid();
        lua_pushinteger(L, (lua_Integer)uid);
        lua_pushinteger(L, (lua_Integer)getegid());
        int err = push_user(L, uid, NULL, NULL, NULL);
        if (err != 0)
            return bkr_pusherrno(L, err, "fs.user: looking up uid %lu", (unsigned long)uid);
        return 3;
    }
    uid_t uid = 0;
    gid_t gid = 0;
    int err = push_user(L, 0, name, &uid, &gid);
    if (err != 0)
        return bkr_pusherrno(L, err, "fs.user: looking up %s", name);
    if (lua_isnil(L, -1))
        return bkr_pushfail(L, "missing", "fs.user: no user named %s", name);
    lua_pushinteger(L, (lua_Integer)uid);
    lua_pushinteger(L, (lua_Integer)gid);
    lua_rotate(L, -3, -1); /* uid, gid, name */
    return 3;
}

/* ===================================================================== */
/* mkdirs, temp_dir                                                       */
/* ===================================================================== */

/* mkdir that accepts an existing directory (a symlink to one too), and gives a directory it
 * creates to owner (when chown_to). Returns 0 or errno. */
static int mkdir_one(const char *path, mode_t mode, int chown_to, uid_t uid, gid_t gid)
{
    if (mkdir(path, mode) == 0)
        return chown_to && lchown(path, uid, gid) != 0 ? errno : 0;
    int err = errno;
    struct stat st;
    if (stat(path, &st) == 0)
        return S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
    return err;
}

static int fs_mkdirs(lua_State *L)
{
    size_t len;
    const char *path = luaL_checklstring(L, 1, &len);
    mode_t mode = lua_isnoneornil(L, 2) ? 0755 : check_mode(L, 2);
    if (!lua_isnoneornil(L, 3))
        luaL_checktype(L, 3, LUA_TTABLE);
    uid_t uid = 0;
    gid_t gid = 0;
    int chown_to = atomic_file_checkowner(L, 3, "fs.mkdirs", &uid, &gid);
    char *buf = push_scratch(L, path, len);
    int err = 0;
    for (size_t i = 1; i < len && !err; i++) {
        if (buf[i] != '/' || buf[i - 1] == '/')
            continue;
        buf[i] = '\0';
        err = mkdir_one(buf, mode, chown_to, uid, gid);
        if (!err)
            buf[i] = '/';
    }
    if (!err)
        err = mkdir_one(buf, mode, chown_to, uid, gid);
    if (err)
        return bkr_pusherrno(L, err, "fs.mkdirs: %s", buf);
    lua_pushboolean(L, 1);
    return 1;
}

/* The holder: the host's interrupt hook may raise as this function returns (a return event),
 * and the path would be lost with the directory left behind. Set in the holder from C, where
 * no hook runs, it reaches the caller's cleanup whatever happens next. */
static int fs_temp_dir(lua_State *L)
{
    const char *prefix = luaL_optstring(L, 1, "bkr");
    luaL_argcheck(L, strchr(prefix, '/') == NULL, 1, "prefix must not contain '/'");
    int holder = !lua_isnoneornil(L, 2);
    if (holder)
        luaL_checktype(L, 2, LUA_TTABLE);
    const char *base = getenv("TMPDIR");
    if (base == NULL || base[0] == '\0')
        base = "/tmp";
    const char *tmpl = lua_pushfstring(L, "%s/%s.%d.XXXXXX", base, prefix, (int)getpid());
    char *buf = push_scratch(L, tmpl, strlen(tmpl));
    if (mkdtemp(buf) == NULL) {
        int err = errno;
        return bkr_pusherrno(L, err, "fs.temp_dir: %s", tmpl);
    }
    if (holder) {
        /* raw: a __newindex would run Lua code, where the hook may raise */
        lua_pushliteral(L, "path");
        lua_pushstring(L, buf);
        lua_rawset(L, 2);
    }
    lua_pushstring(L, buf);
    return 1;
}

/* ===================================================================== */
/* remove_tree                                                            */
/* ===================================================================== */

/* Where remove_tree is, for error messages: path of the entry being removed. */
typedef struct rm_state {
    char path[PATH_MAX];
    size_t len;
    int err;
} rm_state;

/* Append "/name" to st->path (truncated for display if too long). Returns the old length. */
static size_t rm_push(rm_state *st, const char *name)
{
    size_t old = st->len;
    int n = snprintf(st->path + old, sizeof st->path - old, "%s%s", old ? "/" : "", name);
    if (n > 0)
        st->len = old + (size_t)n < sizeof st->path ? old + (size_t)n : sizeof st->path - 1;
    return old;
}

static void rm_pop(rm_state *st, size_t old)
{
    st->len = old;
    st->path[old] = '\0';
}

/* Remove name (relative to parent) and everything below it, never following a symlink. */
static int rm_entry(int parent, const char *name, int known_nondir, rm_state *st)
{
    if (!known_nondir) {
        int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
        if (fd >= 0) {
            DIR *d = fdopendir(fd);
            if (d == NULL) {
                st->err = errno;
                close(fd);
                return -1;
            }
            struct dirent *de;
            int rc = 0;
            for (;;) {
                errno = 0;
                de = readdir(d);
                if (de == NULL) {
                    if (errno != 0) {
                        st->err = errno;
                        rc = -1;
                    }
                    break;
                }
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                    continue;
                size_t old = rm_push(st, de->d_name);
                int nondir = de->d_type != DT_DIR && de->d_type != DT_UNKNOWN;
                if (rm_entry(dirfd(d), de->d_name, nondir, st) != 0) {
                    rc = -1;
                    break;
                }
                rm_pop(st, old);
            }
            closedir(d);
            if (rc != 0)
                return rc;
            if (unlinkat(parent, name, AT_REMOVEDIR) != 0) {
                st->err = errno;
                return -1;
            }
            return 0;
        }
        if (errno != ENOTDIR && errno != ELOOP) {
            st->err = errno;
            return -1;
        }
    }
    if (unlinkat(parent, name, 0) != 0) {
        st->err = errno;
        return -1;
    }
    return 0;
}

static int fs_remove_tree(lua_State *L)
{
    size_t len;
    const char *path = luaL_checklstring(L, 1, &len);
    size_t i = 0;
    while (i < len && path[i] == '/')
        i++;
    luaL_argcheck(L, i < len, 1, "refusing to remove \"/\" or \"\"");
    rm_state *st = lua_newuserdatauv(L, sizeof *st, 0);
    st->len = 0;
    st->err = 0;
    rm_push(st, path);
    if (rm_entry(AT_FDCWD, path, 0, st) != 0)
        return bkr_pusherrno(L, st->err, "fs.remove_tree: %s", st->path);
    lua_pushboolean(L, 1);
    return 1;
}

/* ===================================================================== */
/* Module                                                                 */
/* ===================================================================== */

static const luaL_Reg lock_methods[] = {
    {"pid", lock_pid},
    {"close", lock_close},
    {NULL, NULL},
};

static const luaL_Reg lock_metamethods[] = {
    {"__gc", lock_close},
    {"__close", lock_close},
    {"__tostring", lock_tostring},
    {NULL, NULL},
};

static const luaL_Reg fs_funcs[] = {
    {"fsync", fs_fsync},
    {"rename", fs_rename},
    {"read_file", fs_read_file},
    {"append", fs_append},
    {"write_file", fs_write_file},
    {"lock", fs_lock_new},
    {"free_space", fs_free_space},
    {"chmod", fs_chmod},
    {"mode", fs_mode},
    {"has_acl", fs_has_acl},
    {"mkdirs", fs_mkdirs},
    {"owner", fs_owner},
    {"chown", fs_chown},
    {"user", fs_user},
    {"access", fs_access},
    {"temp_dir", fs_temp_dir},
    {"remove_tree", fs_remove_tree},
    {NULL, NULL},
};

int luaopen_bkr_fs(lua_State *L)
{
    luaL_newlib(L, fs_funcs);
    bkr_createmeta(L, BKR_LOCK, lock_metamethods, lock_methods);
    return 1;
}
