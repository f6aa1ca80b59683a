/*
 * stream.h - the pipeline core's C interface.
 *
 * A pipeline is source -> filters -> sink, run to completion inside C by
 * stream.run (stream.c). Every stage, whichever binding creates it (a file, a
 * process's stdout, a COPY, gzip, SHA-256, a cipher), is one userdata of type
 * BKR_STAGE carrying a table of callbacks (bkr_stage_ops) and the binding's own
 * state. The core knows nothing about any particular stage: adding a codec or a
 * cipher adds a file that fills in a bkr_stage_ops, it does not edit stream.c.
 *
 * Life of a stage: created closed by bkr_stage_new (ops set, no state), opened
 * by bkr_stage_open once its state is allocated, used by at most one run, then
 * freed by __gc/__close/close through ops->free. Within a run the core calls:
 *   source: read ... until *eof, then finish
 *   filter: process/observe for every chunk, process(NULL) to flush until *done, then finish
 *   sink:   write for every chunk, then finish (a file sink commits here)
 * and, if anything failed anywhere, abort on every stage instead of finish
 * (a stage whose finish failed is aborted too). abort must not fail: it kills
 * children, cancels COPYs, unlinks temporary files.
 */
#ifndef BKR_STREAM_H
#define BKR_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include <lua.h>
#include <lauxlib.h>

#define BKR_STAGE "bkr.stream.Stage"

/* Size of the buffers between stages: bounds the pipeline's memory. */
#define BKR_CHUNK (128 * 1024)

typedef enum { BKR_SOURCE = 1, BKR_FILTER = 2, BKR_SINK = 3 } bkr_stage_kind;

/* Failures are described by the stage in a bkr_error (runtime/error.h: message and kind)
 * and returned as -1. */
#include "error.h"

typedef struct bkr_stage_ops {
    const char *type;    /* "gzip", "sha256", "file", ...; default result name */
    bkr_stage_kind kind;

    /* source: put up to cap bytes into buf, set *len. At end set *eof = 1 (with *len >= 0).
     * May block; must return an error promptly when bkr_interrupted() becomes true. */
    int (*read)(void *self, unsigned char *buf, size_t cap, size_t *len, int *eof, bkr_error *err);

    /* filter, transforming: consume some of in[0..in_len) into out[0..out_cap).
     * in == NULL means flush: no more input; produce remaining output, set *done = 1
     * when nothing more will come. Must make progress (consume or produce) on each call
     * unless out_cap is 0. */
    int (*process)(void *self, const unsigned char *in, size_t in_len, size_t *consumed,
                   unsigned char *out, size_t out_cap, size_t *produced, int *done, bkr_error *err);

    /* filter, pass-through: sees the bytes, which go on unchanged (digests, counters).
     * data == NULL means end of input. A filter has either process or observe. */
    int (*observe)(void *self, const unsigned char *data, size_t len, bkr_error *err);

    /* sink: take all len bytes. */
    int (*write)(void *self, const unsigned char *data, size_t len, bkr_error *err);

    /* any kind, optional: all data went through; make it final (commit a file, check a
     * child's exit status, end a COPY). */
    int (*finish)(void *self, bkr_error *err);

    /* any kind, optional: the run failed; release and undo (remove temporary files,
     * terminate and reap children, cancel COPYs). Must not fail, may be called after
     * a failed finish. */
    void (*abort)(void *self);

    /* any kind, optional: push this stage's result (a digest, a table) and return 1,
     * or return 0 for none. Called after a successful run only. */
    int (*result)(void *self, lua_State *L);

    /* any kind: release everything. Called exactly once, from close/__gc/__close, also
     * for a stage that never ran (then it must clean up as abort would). */
    void (*free)(void *self);
} bkr_stage_ops;

enum { BKR_STAGE_CLOSED = 0, BKR_STAGE_READY, BKR_STAGE_USED };

typedef struct bkr_stage {
    const bkr_stage_ops *ops;
    void *self;           /* the binding's state; NULL while closed */
    int state;
    char name[64];        /* key of its result in the run's result table */
    uint64_t bytes_in;    /* maintained by the core */
    uint64_t bytes_out;
    double seconds;       /* time spent inside this stage's callbacks */
} bkr_stage;

/*
 * Push a new, closed stage userdata with its metatable set. It has one user value
 * (see bkr_stage_keep). Create it before acquiring the C resource, then open it.
 */
bkr_stage *bkr_stage_new(lua_State *L, const bkr_stage_ops *ops);

/* Hand the allocated state to the stage. name NULL means ops->type. */
void bkr_stage_open(bkr_stage *st, void *self, const char *name);

/* Keep the Lua value at index obj alive as long as the stage at index stage
 * (for example the connection a COPY stage reads from). */
void bkr_stage_keep(lua_State *L, int stage, int obj);

/* Read an optional `name` field from the options table at index opts (or return NULL). */
const char *bkr_stage_optname(lua_State *L, int opts);

/* The constructors of the built-in stages (stream_stages.c), registered into bkr.stream. */
extern const luaL_Reg bkr_stream_stages[];

#endif
