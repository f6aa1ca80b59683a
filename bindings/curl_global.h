/*
 * curl_global.h - libcurl's process-wide state, shared by the bindings that use libcurl
 * (curl.c, s3.c). Not a Lua module.
 */
#ifndef BKR_CURL_GLOBAL_H
#define BKR_CURL_GLOBAL_H

#include <lua.h>

/* Sets libcurl's global state up once per Lua state (curl_global_init) and has it torn down
 * (curl_global_cleanup) when the state closes, through a sentinel userdata in the registry:
 * no C global of our own. Any number of calls make one setup and one cleanup. A userdata
 * created after this call is collected before the sentinel when the state closes, so
 * handles made by a module opened after it are cleaned up while libcurl is still set up.
 * Raises when libcurl cannot be set up. */
void bkr_curl_global_init(lua_State *L);

#endif
