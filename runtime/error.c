/*
 * error.c - errors as data (error.h): the bkr_error a stage fills in, and the error object
 * stream.run raises from it. Linked alone by the fuzz targets.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>

#include "bkr.h"
#include "error.h"

static int setv(bkr_error *err, const char *kind, const char *fmt, va_list ap)
{
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    err->kind = kind;
    return -1;
}

int bkr_error_set(bkr_error *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    setv(err, BKR_KIND_IO, fmt, ap);
    va_end(ap);
    return -1;
}

int bkr_error_kind(bkr_error *err, const char *kind, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    setv(err, kind, fmt, ap);
    va_end(ap);
    return -1;
}

int bkr_error_errno(bkr_error *err, int saved_errno, const char *fmt, ...)
{
    char what[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    snprintf(err->msg, sizeof err->msg, "%s: %s", what, strerror(saved_errno));
    err->kind = bkr_errno_kind(saved_errno);
    return -1;
}

static int error_tostring(lua_State *L)
{
    lua_getfield(L, 1, "message");
    if (!lua_isstring(L, -1))
        lua_pushliteral(L, "(error without a message)");
    return 1;
}

int bkr_raise_interrupted(lua_State *L, const char *who)
{
    bkr_interrupt_delivered(L);
    lua_pushfstring(L, "%s: interrupted", who);
    bkr_push_error(L, lua_tostring(L, -1), BKR_KIND_INTERRUPTED, NULL);
    return lua_error(L);
}

void bkr_push_error(lua_State *L, const char *message, const char *kind, const char *stage)
{
    lua_createtable(L, 0, 3);
    lua_pushstring(L, message);
    lua_setfield(L, -2, "message");
    lua_pushstring(L, kind != NULL ? kind : BKR_KIND_IO);
    lua_setfield(L, -2, "kind");
    if (stage != NULL && stage[0] != '\0') {
        lua_pushstring(L, stage);
        lua_setfield(L, -2, "stage");
    }
    if (luaL_newmetatable(L, BKR_ERROR)) {
        lua_pushcfunction(L, error_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_setmetatable(L, -2);
}
