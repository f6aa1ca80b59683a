/*
 * psql_guard.h - dump.refuse_meta_commands (psql_guard.c), registered into bkr.dump by dump.c.
 */
#ifndef BKR_PSQL_GUARD_H
#define BKR_PSQL_GUARD_H

#include <lauxlib.h>

/* The constructor of the stage that refuses psql meta-commands pg_dump never writes. */
extern const luaL_Reg bkr_dump_psql_guard[];

#endif
