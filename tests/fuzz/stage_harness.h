/*
 * stage_harness.h - what a fuzz target that includes a stage's .c file whole needs around it:
 * the host's interrupt hook (the fuzzer is never interrupted), the Lua-facing stage
 * constructors (never reached: the targets call a stage's callbacks directly), and a small
 * seeded generator for chunk sizes. Included once, after the stage's source.
 */
#ifndef BKR_FUZZ_STAGE_HARNESS_H
#define BKR_FUZZ_STAGE_HARNESS_H

#include <stdint.h>
#include <stdlib.h>

void bkr_interrupt_delivered(lua_State *L) { (void)L; }

bkr_stage *bkr_stage_new(lua_State *L, const bkr_stage_ops *ops) { abort(); }
void bkr_stage_open(bkr_stage *st, void *self, const char *name) { abort(); }
const char *bkr_stage_optname(lua_State *L, int opts) { abort(); }

/* xorshift64: the chunk sizes of a run, from a seed the input's hash gives */
static uint64_t next_random(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

#endif
