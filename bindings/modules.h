/*
 * modules.h - the native modules the host preloads, each opened by one binding file.
 * Lua sees them as require "bkr.<name>".
 */
#ifndef BKR_MODULES_H
#define BKR_MODULES_H

#include <lua.h>

int luaopen_bkr_stream(lua_State *L); /* stream.c: pipeline core, file/string/null stages */
int luaopen_bkr_gzip(lua_State *L);   /* gzip.c: gzip filters and whole-string helpers */
int luaopen_bkr_hash(lua_State *L);   /* hash.c: SHA-256 filter and helpers */
int luaopen_bkr_proc(lua_State *L);   /* proc.c: child processes from argv lists */
int luaopen_bkr_pg(lua_State *L);     /* pg.c: libpq connections, queries, COPY */
int luaopen_bkr_fs(lua_State *L);     /* fs.c: fsync, atomic rename, locks, free space */
int luaopen_bkr_yaml(lua_State *L);   /* yaml.c: YAML documents through libyaml's event parser */
int luaopen_bkr_dump(lua_State *L);   /* dump.c: per-table digests of pg_dump output */
int luaopen_bkr_crypto(lua_State *L); /* crypto.c: AES-256-GCM stream format and values, key ids */
int luaopen_bkr_curl(lua_State *L);   /* curl.c: one e-mail over SMTP, one HTTP(S) POST (libcurl) */
int luaopen_bkr_zstd(lua_State *L);   /* zstd.c: zstd filters (libzstd streaming, worker threads) */
int luaopen_bkr_s3(lua_State *L);     /* s3.c: objects on S3-compatible storage (libcurl, libxml2) */

#endif
