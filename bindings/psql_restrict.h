/*
 * psql_restrict.h - dump.drop_restrict_lines (psql_restrict.c), registered into bkr.dump by
 * dump.c.
 */
#ifndef BKR_PSQL_RESTRICT_H
#define BKR_PSQL_RESTRICT_H

#include <lauxlib.h>

extern const luaL_Reg bkr_dump_psql_restrict[];

#endif
