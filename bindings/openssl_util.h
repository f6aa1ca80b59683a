/*
 * openssl_util.h - helpers shared by the bindings that use OpenSSL (hash.c, crypto.c).
 * Not a Lua module.
 */
#ifndef BKR_OPENSSL_UTIL_H
#define BKR_OPENSSL_UTIL_H

#include <stddef.h>

/* OpenSSL keeps a per-thread error queue: describe its newest entry into buf and leave the
 * queue empty, so a later failure never reports a stale reason. Returns buf. */
const char *bkr_openssl_reason(char *buf, size_t len);

/* Lowercase hex of len bytes into out, which holds 2 * len + 1 bytes. */
void bkr_hex(const unsigned char *bytes, size_t len, char *out);

#endif
