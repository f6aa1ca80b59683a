/*
 * curl_global.h - process-wide library state (libcurl's, libxml2's) set up once per Lua
 * state and torn down when it closes, for the bindings that use those libraries (curl.c,
 * s3.c). Not a Lua module.
 */
#ifndef BKR_CURL_GLOBAL_H
#define BKR_CURL_GLOBAL_H

#include <lua.h>

/* Runs setup() once per Lua state and has cleanup called when the state closes, through a
 * sentinel userdata named `name` in the registry: no C global of our own. Any number of
 * calls make one setup and one cleanup. A userdata created after this call is collected
 * before the sentinel when the state closes, so handles made by a module opened after it are
 * cleaned up while the library is still set up. setup returns 0, or -1 to raise "`what`
 * failed" (and then cleanup is never called). */
void bkr_global_once(lua_State *L, const char *name, int (*setup)(void), lua_CFunction cleanup, const char *what);

/* libcurl's global state (curl_global_init / curl_global_cleanup), by bkr_global_once. Raises
 * when libcurl cannot be set up. */
void bkr_curl_global_init(lua_State *L);

#endif
