/*
 * proc_spawn.c - child processes without Lua: the output buffers, the process record and its
 * life (pipes pumped while waiting, reaping, SIGTERM then SIGKILL), and the fork/exec that
 * starts a child from a prepared plan, calling only async-signal-safe functions in between.
 * proc.c builds the plan from Lua tables and exposes the process to Lua.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "bkr.h"
#include "proc_spawn.h"

extern char **environ;

/* ===================================================================== */
/* Capture buffers                                                        */
/* ===================================================================== */


static int pbuf_reserve(pbuf *b, size_t need)
{
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < need)
        cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d)
        return -1;
    b->data = d;
    b->cap = cap;
    return 0;
}

/* Keep what the buffer's policy says; on memory exhaustion drop the data and say so. */
static void pbuf_append(pbuf *b, const char *data, size_t n)
{
    if (n == 0)
        return;
    if (!b->keep_tail) {
        if (b->len >= b->limit) {
            b->truncated = 1;
            return;
        }
        if (n > b->limit - b->len) {
            n = b->limit - b->len;
            b->truncated = 1;
        }
    } else if (n >= b->limit) {
        data += n - b->limit;
        n = b->limit;
        b->len = 0;
        b->truncated = 1;
    } else if (b->len + n > 2 * b->limit) {
        /* Slide instead of growing: the buffer never exceeds twice the limit. */
        size_t drop = b->len + n - b->limit;
        memmove(b->data, b->data + drop, b->len - drop);
        b->len -= drop;
        b->truncated = 1;
    }
    if (pbuf_reserve(b, b->len + n) < 0) {
        b->truncated = 1;
        return;
    }
    memcpy(b->data + b->len, data, n);
    b->len += n;
}

/* The bytes the policy keeps: for a tail buffer, only the last `limit`. */
const char *pbuf_view(const pbuf *b, size_t *len)
{
    if (b->keep_tail && b->len > b->limit) {
        *len = b->limit;
        return b->data + (b->len - b->limit);
    }
    *len = b->len;
    return b->data ? b->data : "";
}

static void pbuf_free(pbuf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ===================================================================== */
/* The process object                                                     */
/* ===================================================================== */


static int64_t now_ms(void)
{
    return (int64_t)(bkr_monotonic() * 1000);
}

void proc_close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

/* Read what a captured pipe has now; close it at end of file or on error. */
static void proc_drain_fd(int *fd, pbuf *b, int max_reads)
{
    char tmp[32768];
    for (int i = 0; i < max_reads && *fd >= 0;) {
        ssize_t n = read(*fd, tmp, sizeof tmp);
        if (n > 0) {
            pbuf_append(b, tmp, (size_t)n);
            i++;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && errno == EAGAIN) {
            return;
        } else {
            proc_close_fd(fd);
        }
    }
}

void proc_drain_all(proc *p, int max_reads)
{
    if (p->out_mode == MODE_CAPTURE)
        proc_drain_fd(&p->fd_out, &p->out, max_reads);
    proc_drain_fd(&p->fd_err, &p->err, max_reads);
}

/*
 * One round of I/O: wait up to timeout_ms for `want` to be ready for `events`, for a
 * captured pipe to have data or (with_pidfd) for the child to exit; drain the captured
 * pipes. Returns want's revents (0 if not ready or none), or -1 with errno.
 */
int proc_pump(proc *p, int want, short events, int timeout_ms, int with_pidfd)
{
    struct pollfd fds[4];
    int n = 0, iw = -1, io = -1, ie = -1;
    if (want >= 0) {
        iw = n;
        fds[n++] = (struct pollfd){ .fd = want, .events = events };
    }
    if (p->out_mode == MODE_CAPTURE && p->fd_out >= 0) {
        io = n;
        fds[n++] = (struct pollfd){ .fd = p->fd_out, .events = POLLIN };
    }
    if (p->fd_err >= 0) {
        ie = n;
        fds[n++] = (struct pollfd){ .fd = p->fd_err, .events = POLLIN };
    }
    if (with_pidfd && p->running && p->pidfd >= 0)
        fds[n++] = (struct pollfd){ .fd = p->pidfd, .events = POLLIN };
    int r = poll(fds, (nfds_t)n, timeout_ms);
    if (r < 0)
        return errno == EINTR ? 0 : -1;
    if (io >= 0 && fds[io].revents)
        proc_drain_fd(&p->fd_out, &p->out, 8);
    if (ie >= 0 && fds[ie].revents)
        proc_drain_fd(&p->fd_err, &p->err, 8);
    return iw >= 0 ? fds[iw].revents : 0;
}

static void proc_mark_reaped(proc *p, int wstatus)
{
    p->wstatus = wstatus;
    p->running = 0;
    p->reaped = 1;
    proc_close_fd(&p->pidfd);
    /* The child is gone: take what it left in the captured pipes, then stop listening
     * (a grandchild holding a pipe open must not keep us waiting). */
    proc_drain_all(p, 64);
    if (p->out_mode == MODE_CAPTURE)
        proc_close_fd(&p->fd_out);
    proc_close_fd(&p->fd_err);
}

/* Reap without blocking (block = 0) or blocking. Returns 1 if reaped, 0 if running, -1 + errno. */
static int proc_try_reap(proc *p, int block)
{
    if (!p->running)
        return 1;
    for (;;) {
        int st = 0;
        pid_t r = waitpid(p->pid, &st, block ? 0 : WNOHANG);
        if (r == p->pid) {
            proc_mark_reaped(p, st);
            return 1;
        }
        if (r == 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno == ECHILD) {
            /* Someone else reaped it (SIGCHLD ignored?): the status is lost. */
            proc_mark_reaped(p, 255 << 8);
            return 1;
        }
        return -1;
    }
}

/*
 * Wait until the child is reaped, draining captured pipes, for at most timeout_ms
 * (-1: no limit). Returns 0 when reaped, 1 on timeout, 2 when interrupted (only if
 * interruptible; the child is then still running), -1 with errno.
 */
int proc_reap(proc *p, int timeout_ms, int interruptible)
{
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        int r = proc_try_reap(p, 0);
        if (r != 0)
            return r < 0 ? -1 : 0;
        if (interruptible && bkr_interrupted())
            return 2;
        int tick = p->pidfd >= 0 ? PROC_TICK_MS : 10;
        if (deadline >= 0) {
            int64_t left = deadline - now_ms();
            if (left <= 0)
                return 1;
            if (left < tick)
                tick = (int)left;
        }
        if (proc_pump(p, -1, 0, tick, 1) < 0)
            return -1;
    }
}

/* SIGTERM, SIGKILL after the grace period, reap. Never leaves a zombie. */
void proc_terminate(proc *p)
{
    if (!p->running)
        return;
    kill(p->pid, SIGTERM);
    if (proc_reap(p, PROC_GRACE_MS, 0) == 0)
        return;
    kill(p->pid, SIGKILL);
    if (proc_try_reap(p, 1) != 1) {
        /* waitpid failed other than ECHILD: nothing more we can do but forget it. */
        p->running = 0;
    }
}

/* The one close: pipes first (the child sees EOF/EPIPE), then terminate, then free. */
void proc_release(proc *p)
{
    proc_close_fd(&p->fd_in);
    proc_close_fd(&p->fd_out);
    proc_close_fd(&p->fd_err);
    proc_terminate(p);
    proc_close_fd(&p->pidfd);
    pbuf_free(&p->out);
    pbuf_free(&p->err);
    p->closed = 1;
}

/*
 * Describe how the child ended, quoting the tail of its stderr:
 * "pg_dump exited with status 1<what>: <stderr>" or "pg_dump was killed by signal 9<what>".
 */
void proc_describe(proc *p, const char *what, char *out, size_t cap)
{
    int st = p->wstatus;
    int n;
    if (WIFEXITED(st))
        n = snprintf(out, cap, "%s exited with status %d%s", p->name, WEXITSTATUS(st), what);
    else if (WIFSIGNALED(st))
        n = snprintf(out, cap, "%s was killed by signal %d%s", p->name, WTERMSIG(st), what);
    else
        n = snprintf(out, cap, "%s ended with wait status %d%s", p->name, st, what);
    if (n < 0 || (size_t)n >= cap)
        return;

    size_t len;
    const char *s = pbuf_view(&p->err, &len);
    while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == '\r' || s[len - 1] == ' ' ||
                       s[len - 1] == '\t'))
        len--;
    int cut = 0;
    if (len > PROC_MSG_TAIL) {
        s += len - PROC_MSG_TAIL;
        len = PROC_MSG_TAIL;
        cut = 1;
        /* Start on a line boundary when one is near. */
        const char *nl = memchr(s, '\n', len);
        if (nl && (size_t)(nl - s) < len / 2) {
            len -= (size_t)(nl + 1 - s);
            s = nl + 1;
        }
    }
    while (len > 0 && (*s == '\n' || *s == '\r' || *s == ' ' || *s == '\t')) {
        s++;
        len--;
    }
    if (len > 0)
        snprintf(out + n, cap - (size_t)n, ": %s%.*s", cut ? "..." : "", (int)len, s);
}

int proc_exited_ok(const proc *p)
{
    return WIFEXITED(p->wstatus) && WEXITSTATUS(p->wstatus) == 0;
}

/* ===================================================================== */
/* Starting a child                                                       */
/* ===================================================================== */


enum { FAIL_SETUP = 1, FAIL_CHDIR = 2, FAIL_EXEC = 3 };

typedef struct child_report {
    int stage;
    int err;
} child_report;

static void child_fail(int errfd, int stage, int err)
{
    child_report rep = { stage, err };
    ssize_t w = write(errfd, &rep, sizeof rep);
    (void)w;
    _exit(127);
}

/* In the child, between fork and exec. Never returns. parent: bkr's pid, taken before fork. */
static void child_exec(const spawn_plan *sp, int in, int out, int err, int errfd, pid_t parent)
{
    /* A child dies with bkr: a SIGKILLed bkr must not leave a pg_dump writing its archive, nor
     * a pg_restore or psql working on a database, with nobody to read or stop them. The signal
     * comes when the forking thread ends, which for bkr is the main thread, the only one that
     * spawns; it survives exec of the (not set-uid) client programs. A parent that died before
     * prctl took effect is seen as a changed getppid(). */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
        child_fail(errfd, FAIL_SETUP, errno);
    if (getppid() != parent)
        _exit(127);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    for (int s = 1; s < NSIG; s++)
        if (s != SIGKILL && s != SIGSTOP)
            sigaction(s, &sa, NULL); /* fails harmlessly for the libc-reserved ones */

    /* All these are >= 3 (see fd_above_stdio), so dup2 cannot clobber one another. */
    if (in >= 0 && dup2(in, 0) < 0)
        child_fail(errfd, FAIL_SETUP, errno);
    if (out >= 0 && dup2(out, 1) < 0)
        child_fail(errfd, FAIL_SETUP, errno);
    if (err >= 0 && dup2(err, 2) < 0)
        child_fail(errfd, FAIL_SETUP, errno);
    if (sp->cwd && chdir(sp->cwd) < 0)
        child_fail(errfd, FAIL_CHDIR, errno);

    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    const char *prog = sp->argv[0];
    if (strchr(prog, '/')) {
        execve(prog, sp->argv, sp->envp);
        child_fail(errfd, FAIL_EXEC, errno);
    }
    /* The PATH search of execvp, but over the child's own environment. */
    size_t plen = strlen(prog);
    int seen_eacces = 0;
    const char *dir = sp->path;
    for (;;) {
        const char *end = strchrnul(dir, ':');
        size_t dlen = (size_t)(end - dir);
        char *b = sp->pathbuf;
        if (dlen > 0) {
            memcpy(b, dir, dlen);
            b[dlen++] = '/';
        }
        memcpy(b + dlen, prog, plen + 1);
        execve(b, sp->argv, sp->envp);
        switch (errno) {
        case EACCES:
            seen_eacces = 1;
            break;
        case ENOENT:
        case ENOTDIR:
        case ESTALE:
        case ELOOP:
        case ENAMETOOLONG:
        case ENODEV:
        case ETIMEDOUT:
            break;
        default:
            child_fail(errfd, FAIL_EXEC, errno);
        }
        if (!*end)
            break;
        dir = end + 1;
    }
    child_fail(errfd, FAIL_EXEC, seen_eacces ? EACCES : ENOENT);
}

/* A descriptor the child will dup2 must not be 0..2 itself (dup2(fd, fd) keeps CLOEXEC,
 * and an earlier dup2 could overwrite it). Returns 0 or -1 with errno. */
static int fd_above_stdio(int *fd)
{
    if (*fd < 0 || *fd > 2)
        return 0;
    int n = fcntl(*fd, F_DUPFD_CLOEXEC, 3);
    if (n < 0)
        return -1;
    close(*fd);
    *fd = n;
    return 0;
}

static int make_pipe(int fds[2])
{
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -1;
    if (fd_above_stdio(&fds[0]) < 0 || fd_above_stdio(&fds[1]) < 0) {
        int e = errno;
        close(fds[0]);
        close(fds[1]);
        errno = e;
        return -1;
    }
    return 0;
}

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/*
 * Start the child described by sp, filling p (which must be zeroed with fds at -1).
 * No Lua calls. Returns 0, or -1 with a message (without prefix) in msg; on failure
 * every descriptor is closed and no child is left behind.
 */
int proc_start(proc *p, const spawn_plan *sp, char *msg, size_t msgcap)
{
    int c_in = -1, c_out = -1, c_err = -1, devnull = -1, errpipe[2] = { -1, -1 }, fds[2];
    const char *what = NULL;
    int e = 0;

    if (sp->in_mode == MODE_NULL || sp->out_mode == MODE_NULL || sp->err_mode == MODE_NULL) {
        devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (devnull < 0 || fd_above_stdio(&devnull) < 0) {
            what = "/dev/null";
            goto fail;
        }
    }
    if (sp->in_mode == MODE_PIPE) {
        if (make_pipe(fds) < 0) {
            what = "pipe";
            goto fail;
        }
        c_in = fds[0];
        p->fd_in = fds[1];
        set_nonblock(p->fd_in);
    } else if (sp->in_mode == MODE_NULL) {
        c_in = devnull;
    }
    if (sp->out_mode == MODE_PIPE || sp->out_mode == MODE_CAPTURE) {
        if (make_pipe(fds) < 0) {
            what = "pipe";
            goto fail;
        }
        p->fd_out = fds[0];
        c_out = fds[1];
        set_nonblock(p->fd_out);
    } else if (sp->out_mode == MODE_NULL) {
        c_out = devnull;
    }
    if (sp->err_mode == MODE_CAPTURE) {
        if (make_pipe(fds) < 0) {
            what = "pipe";
            goto fail;
        }
        p->fd_err = fds[0];
        c_err = fds[1];
        set_nonblock(p->fd_err);
    } else if (sp->err_mode == MODE_NULL) {
        c_err = devnull;
    }
    if (make_pipe(errpipe) < 0) {
        what = "pipe";
        goto fail;
    }

    /* Block every signal across fork so that no host handler runs in the child before
     * it has reset the dispositions. */
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0)
        child_exec(sp, c_in, c_out, c_err, errpipe[1], parent);
    e = errno;
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        what = "fork";
        goto fail;
    }

    /* Our copies of the child's ends must go, or we would never see EOF. */
    if (c_in != devnull)
        proc_close_fd(&c_in);
    if (c_out != devnull)
        proc_close_fd(&c_out);
    if (c_err != devnull)
        proc_close_fd(&c_err);
    proc_close_fd(&devnull);
    proc_close_fd(&errpipe[1]);

    /* The write end closes on a successful exec (CLOEXEC): EOF means it started. */
    child_report rep;
    size_t got = 0;
    while (got < sizeof rep) {
        ssize_t n = read(errpipe[0], (char *)&rep + got, sizeof rep - got);
        if (n > 0)
            got += (size_t)n;
        else if (n < 0 && errno == EINTR)
            continue;
        else
            break;
    }
    proc_close_fd(&errpipe[0]);
    if (got == sizeof rep) {
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        proc_close_fd(&p->fd_in);
        proc_close_fd(&p->fd_out);
        proc_close_fd(&p->fd_err);
        if (rep.stage == FAIL_CHDIR)
            snprintf(msg, msgcap, "cannot change directory to '%s': %s", sp->cwd, strerror(rep.err));
        else if (rep.stage == FAIL_EXEC)
            snprintf(msg, msgcap, "%s: %s", sp->argv[0], strerror(rep.err));
        else
            snprintf(msg, msgcap, "%s: setting up the child: %s", sp->argv[0], strerror(rep.err));
        errno = rep.err;
        return -1;
    }

    p->pid = pid;
    p->running = 1;
#ifdef SYS_pidfd_open
    p->pidfd = (int)syscall(SYS_pidfd_open, pid, 0); /* CLOEXEC by definition */
    if (p->pidfd < 0)
        p->pidfd = -1;
#endif
    return 0;

fail:
    if (!e)
        e = errno;
    if (c_in != devnull)
        proc_close_fd(&c_in);
    if (c_out != devnull)
        proc_close_fd(&c_out);
    if (c_err != devnull)
        proc_close_fd(&c_err);
    proc_close_fd(&devnull);
    proc_close_fd(&errpipe[0]);
    proc_close_fd(&errpipe[1]);
    proc_close_fd(&p->fd_in);
    proc_close_fd(&p->fd_out);
    proc_close_fd(&p->fd_err);
    snprintf(msg, msgcap, "%s: %s", what, strerror(e));
    errno = e;
    return -1;
}

