/*
 * proc_spawn.h - starting, watching and reaping child processes, with no Lua in it
 * (proc_spawn.c); bkr.proc (proc.c) is the Lua face of it.
 */
#ifndef BKR_PROC_SPAWN_H
#define BKR_PROC_SPAWN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define PROC_STDERR_KEEP (64 * 1024)        /* last bytes of stderr kept */
#define PROC_STDOUT_KEEP (64 * 1024 * 1024) /* first bytes of a captured stdout kept */
#define PROC_GRACE_MS 2000                  /* SIGTERM -> SIGKILL */
#define PROC_TICK_MS 200                    /* longest sleep between interrupt checks */
#define PROC_EPIPE_WAIT_MS 5000             /* how long a child that closed its stdin may take to exit */
#define PROC_MSG_TAIL 1000                  /* stderr quoted in error messages */

enum { MODE_NULL, MODE_PIPE, MODE_CAPTURE, MODE_INHERIT };

typedef struct pbuf {
    char *data;
    size_t len, cap;
    size_t limit;
    int keep_tail; /* 1: keep the last `limit` bytes (stderr); 0: keep the first (stdout) */
    int truncated;
} pbuf;

typedef struct proc {
    int closed;   /* methods refuse a closed process */
    pid_t pid;
    int running;  /* started and not yet reaped */
    int reaped;
    int wstatus;  /* valid once reaped */
    int fd_in;    /* our end of its stdin (stdin = "pipe"), -1 when closed */
    int fd_out;   /* our end of its stdout (stdout = "pipe" or "capture") */
    int fd_err;   /* our end of its stderr (stderr = "capture") */
    int pidfd;    /* readable when the child exits; -1 when unavailable */
    int in_mode, out_mode, err_mode;
    int has_source, has_sink;
    pbuf out, err;
    char name[64]; /* basename of argv[0], for messages */
} proc;

/* Everything the child needs, prepared before fork so that the child only calls
 * async-signal-safe functions. The arrays live in Lua userdata on the caller's stack. */
typedef struct spawn_plan {
    char *const *argv;
    char *const *envp;
    const char *path;  /* PATH of the resulting environment */
    char *pathbuf;     /* scratch for the PATH search, big enough for any candidate */
    const char *cwd;
    int in_mode, out_mode, err_mode;
} spawn_plan;

/* The buffer's bytes (for a tail buffer, in order); owned by the buffer. */
const char *pbuf_view(const pbuf *b, size_t *len);
/* Close *fd if open, and mark it closed (-1). */
void proc_close_fd(int *fd);
/* Read what the captured pipes hold, at most max_reads reads each. */
void proc_drain_all(proc *p, int max_reads);
/* poll the pipe `want` for events (and the pidfd), draining captured pipes meanwhile;
 * returns as poll(2) does for `want`, 0 on timeout, -1 with errno. */
int proc_pump(proc *p, int want, short events, int timeout_ms, int with_pidfd);
/* Wait for the child (timeout_ms < 0: forever): 0 reaped, 1 timed out, 2 interrupted
 * (when interruptible), -1 with errno. */
int proc_reap(proc *p, int timeout_ms, int interruptible);
/* SIGTERM, then SIGKILL after PROC_GRACE_MS; reaps the child. */
void proc_terminate(proc *p);
/* Terminate a running child, reap it, close every pipe, free the buffers. */
void proc_release(proc *p);
/* "NAME exited with status N / was killed by signal N WHAT: STDERR TAIL" into out. */
void proc_describe(proc *p, const char *what, char *out, size_t cap);
/* Reaped, and exited with status 0. */
int proc_exited_ok(const proc *p);
/* Start the child described by sp into p (zeroed, fds at -1). 0, or -1 with the reason in
 * msg; on failure every descriptor is closed and no child is left behind. */
int proc_start(proc *p, const spawn_plan *sp, char *msg, size_t msgcap);

#endif
