/*
 * fail.c - the host's helpers for environmental failures, shared by every binding (and
 * linked alone by the fuzz targets): nil, "message"[, code], as luaL_fileresult does.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>

#include "bkr.h"

const char *bkr_errno_kind(int e)
{
    switch (e) {
    case EEXIST:
        return "exists";
    case ENOSPC:
    case EDQUOT:
        return "no_space";
    case EINTR:
        return "interrupted";
    case EACCES:
    case EPERM:
        return "permission";
    case ENOENT:
        return "missing";
    case ELOOP:
        return "not_regular";
    default:
        return "io";
    }
}

static int pushfailv(lua_State *L, const char *code, int saved_errno, const char *fmt, va_list ap)
{
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    lua_pushnil(L);
    if (saved_errno != 0)
        lua_pushfstring(L, "%s: %s", msg, strerror(saved_errno));
    else
        lua_pushstring(L, msg);
    if (code == NULL)
        return 2;
    lua_pushstring(L, code);
    return 3;
}

int bkr_pushfail(lua_State *L, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = pushfailv(L, code, 0, fmt, ap);
    va_end(ap);
    return n;
}

int bkr_pusherrno(lua_State *L, int saved_errno, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = pushfailv(L, bkr_errno_kind(saved_errno), saved_errno, fmt, ap);
    va_end(ap);
    return n;
}
