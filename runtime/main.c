/*
 * main.c - the bkr host: command line, Lua state, recipe path, signals, error reporting.
 *
 *   bkr [--debug] RECIPE [args...]     run RECIPE.lua from the recipe path (--debug, or
 *                                      BKR_DEBUG=1: errors keep the recipe's file and line,
 *                                      and a traceback; without it no message names them)
 *   bkr [--debug] run FILE.lua [args]  run any Lua file
 *   bkr --help | --version
 *
 * The recipe path is every directory in $BKR_RECIPE_PATH (colon-separated, searched
 * first so a customer can shadow or add recipes), then the built-in recipes: the
 * `recipes/` directory beside the executable in a source tree, else the installed
 * share/bkr/recipes. The same directories form package.path, so `require "lib.x"`
 * can be shadowed the same way.
 *
 * The host knows nothing about PostgreSQL or gzip: it preloads the native modules
 * listed in bindings/modules.h and gives the script a global table `bkr`:
 *   bkr.version, bkr.debug, bkr.recipe_path (array), bkr.script (path),
 *   bkr.interrupted() -> signal name or nil, bkr.monotonic() -> seconds (for durations),
 *   bkr.sleep(seconds) -> true, or nil, "interrupted" (no shell, wakes on SIGINT/SIGTERM),
 *   bkr.exit_codes {ok, failed, usage, integrity},
 *   bkr.at_exit(fn): fn(outcome) runs once the recipe has ended, however it ended (last
 *     registered first), with outcome = {exit_code, message (nil on success),
 *     error (the error object, when one), interrupted ("SIGTERM"/"SIGINT" or nil)}.
 *     Notifications and the run's last log line live there. An error in fn is printed
 *     and never changes the exit status; SIGINT/SIGTERM no longer interrupt it.
 *
 * Exit status: the integer the main chunk returns (default 0); 1 for an error; an
 * error object `{exit_code = n, message = "..."}` chooses its own; 128+signal after
 * SIGINT/SIGTERM. All Lua objects are collected before exit, so child processes are
 * reaped and temporary files removed by their finalizers even on failure.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "bkr.h"
#include "modules.h"

#ifndef BKR_INSTALLED_RECIPES
#define BKR_INSTALLED_RECIPES "/usr/local/share/bkr/recipes"
#endif

#define MAX_RECIPE_DIRS 32

/* ===================================================================== signals */

/* The only process-wide mutable state: a signal handler can reach nothing else. */
static volatile sig_atomic_t interrupt_signal = 0;
static lua_State *volatile global_state = NULL;
/* Set while the at-exit functions run: they report the run (a notification after SIGTERM
 * above all), so neither the signal that ended the run nor a second one may cut them short. */
static volatile sig_atomic_t in_at_exit = 0;

int bkr_interrupted(void)
{
    return interrupt_signal != 0 && !in_at_exit;
}

static int message_handler(lua_State *L);

/* Raise once inside running Lua code, as lua.c does, then get out of the way so
 * finalizers and cleanup code run normally. When a binding already failed with its
 * own "interrupted" error, the hook fires as the message handler is called: keep the
 * binding's message, it says what was interrupted. */
static void interrupt_hook(lua_State *L, lua_Debug *ar)
{
    lua_sethook(L, NULL, 0, 0);
    if (ar->event == LUA_HOOKCALL && lua_getinfo(L, "f", ar)) {
        int in_handler = lua_tocfunction(L, -1) == message_handler;
        lua_pop(L, 1);
        if (in_handler)
            return;
    }
    /* No "file:line:" prefix: the admin sees what happened, not where a recipe was. */
    lua_pushfstring(L, "interrupted by %s", interrupt_signal == SIGINT ? "SIGINT" : "SIGTERM");
    lua_error(L);
}

void bkr_interrupt_delivered(lua_State *L)
{
    lua_sethook(L, NULL, 0, 0);
}

static void on_signal(int sig)
{
    if (interrupt_signal == 0)
        interrupt_signal = sig;
    if (global_state != NULL && !in_at_exit)
        lua_sethook(global_state, interrupt_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

static void install_signal_handlers(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: blocking calls return EINTR and see the flag */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* A reader that went away is reported by write() as EPIPE, with a message. */
    signal(SIGPIPE, SIG_IGN);
}

/* ================================================================ recipe path */

typedef struct recipe_path {
    char *dirs[MAX_RECIPE_DIRS];
    int count;
} recipe_path;

static int is_directory(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static void path_add(recipe_path *rp, const char *dir, size_t len)
{
    if (len == 0 || rp->count >= MAX_RECIPE_DIRS)
        return;
    char *copy = strndup(dir, len);
    if (copy == NULL)
        return;
    while (strlen(copy) > 1 && copy[strlen(copy) - 1] == '/')
        copy[strlen(copy) - 1] = '\0';
    rp->dirs[rp->count++] = copy;
}

/* The built-in recipes: beside the executable in a source tree, else installed relative to
 * it (PREFIX/bin/bkr -> PREFIX/share/bkr/recipes, so a staged or moved install works),
 * else where the build said they would be installed. */
static void path_add_builtin(recipe_path *rp)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash != NULL) {
            static const char *relative[] = {"recipes", "../share/bkr/recipes"};
            *slash = '\0';
            for (size_t i = 0; i < sizeof relative / sizeof relative[0]; i++) {
                char dir[PATH_MAX + 32];
                snprintf(dir, sizeof dir, "%s/%s", exe, relative[i]);
                char resolved[PATH_MAX];
                if (is_directory(dir) && realpath(dir, resolved) != NULL) {
                    path_add(rp, resolved, strlen(resolved));
                    return;
                }
            }
        }
    }
    path_add(rp, BKR_INSTALLED_RECIPES, strlen(BKR_INSTALLED_RECIPES));
}

static void path_init(recipe_path *rp)
{
    memset(rp, 0, sizeof *rp);
    const char *env = getenv("BKR_RECIPE_PATH");
    while (env != NULL && *env != '\0') {
        const char *colon = strchr(env, ':');
        size_t len = colon ? (size_t)(colon - env) : strlen(env);
        path_add(rp, env, len);
        env = colon ? colon + 1 : NULL;
    }
    path_add_builtin(rp);
}

static void path_free(recipe_path *rp)
{
    for (int i = 0; i < rp->count; i++)
        free(rp->dirs[i]);
    rp->count = 0;
}

static int valid_recipe_name(const char *name)
{
    if (name[0] < 'a' || name[0] > 'z')
        return 0;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-'))
            return 0;
    return strlen(name) < 64;
}

/* First RECIPE.lua along the path, or NULL. The result is malloc'd. */
static char *path_find(const recipe_path *rp, const char *name)
{
    if (!valid_recipe_name(name))
        return NULL;
    for (int i = 0; i < rp->count; i++) {
        char file[PATH_MAX];
        snprintf(file, sizeof file, "%s/%s.lua", rp->dirs[i], name);
        if (access(file, R_OK) == 0)
            return strdup(file);
    }
    return NULL;
}

/* A recipe describes itself on its first line: "-- one-line description". */
static void recipe_description(const char *file, char *out, size_t outlen)
{
    out[0] = '\0';
    FILE *f = fopen(file, "r");
    if (f == NULL)
        return;
    char line[256];
    if (fgets(line, sizeof line, f) != NULL && strncmp(line, "--", 2) == 0) {
        char *s = line + 2;
        while (*s == '-' || *s == ' ')
            s++;
        s[strcspn(s, "\r\n")] = '\0';
        snprintf(out, outlen, "%s", s);
    }
    fclose(f);
}

static int compare_strings(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void print_help(const recipe_path *rp)
{
    printf("bkr %s - Lua-scriptable PostgreSQL backups\n\n"
           "usage: bkr [--debug] RECIPE [args...]     run a recipe (bkr RECIPE --help for its options)\n"
           "       bkr [--debug] run FILE.lua [args...]  run any Lua file with bkr's modules\n"
           "       bkr --help | --version\n\n"
           "Recipes (first found along the recipe path wins):\n", BKR_VERSION);
    char *names[512];
    int count = 0;
    for (int i = 0; i < rp->count; i++) {
        DIR *d = opendir(rp->dirs[i]);
        if (d == NULL)
            continue;
        struct dirent *e;
        while ((e = readdir(d)) != NULL && count < 512) {
            size_t len = strlen(e->d_name);
            if (len < 5 || strcmp(e->d_name + len - 4, ".lua") != 0)
                continue;
            char *name = strndup(e->d_name, len - 4);
            if (name == NULL)
                continue;
            int seen = !valid_recipe_name(name);
            for (int j = 0; j < count && !seen; j++)
                seen = strcmp(names[j], name) == 0;
            if (seen)
                free(name);
            else
                names[count++] = name;
        }
        closedir(d);
    }
    qsort(names, (size_t)count, sizeof names[0], compare_strings);
    for (int i = 0; i < count; i++) {
        char *file = path_find(rp, names[i]);
        char desc[256];
        recipe_description(file ? file : "", desc, sizeof desc);
        printf("  %-12s %s\n", names[i], desc);
        free(file);
        free(names[i]);
    }
    if (count == 0)
        printf("  (none found)\n");
    printf("\nRecipe path:");
    for (int i = 0; i < rp->count; i++)
        printf(" %s", rp->dirs[i]);
    printf("\n\nExit codes: 0 success, 1 operation failed, 2 usage or configuration error,\n"
           "3 integrity check failed, 130/143 interrupted by SIGINT/SIGTERM.\n"
           "Set BKR_RECIPE_PATH to add or shadow recipes. Documentation: docs/ (installed under "
           "share/doc/bkr).\n");
}

/* ================================================================ Lua state */

static int l_interrupted(lua_State *L)
{
    int sig = interrupt_signal;
    if (sig == 0)
        lua_pushnil(L);
    else
        lua_pushstring(L, sig == SIGINT ? "SIGINT" : "SIGTERM");
    return 1;
}

/* Seconds on a clock that never jumps: durations (RTO, step times) survive NTP corrections. */
static int l_monotonic(lua_State *L)
{
    lua_pushnumber(L, bkr_monotonic());
    return 1;
}

/* Wait without a shell (os.execute("sleep") would start one), and stop waiting at once when
 * SIGINT or SIGTERM arrives: nanosleep returns EINTR, the flag is set. */
static int l_sleep(lua_State *L)
{
    lua_Number seconds = luaL_checknumber(L, 1);
    luaL_argcheck(L, seconds >= 0 && seconds <= 86400, 1, "seconds must be between 0 and 86400");
    struct timespec ts = { (time_t)seconds, (long)((seconds - (lua_Number)(time_t)seconds) * 1e9) };
    while (nanosleep(&ts, &ts) != 0) {
        if (errno != EINTR || bkr_interrupted()) {
            bkr_interrupt_delivered(L); /* the caller hears it here, and may clean up */
            luaL_pushfail(L);
            lua_pushliteral(L, "interrupted");
            return 2;
        }
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* The at-exit functions, in the registry: the host keeps no Lua state in C globals. */
#define BKR_AT_EXIT "bkr.at_exit"

static int l_at_exit(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, BKR_AT_EXIT);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    return 0;
}

static void preload_modules(lua_State *L)
{
    static const luaL_Reg modules[] = {
        {"bkr.stream", luaopen_bkr_stream},
        {"bkr.gzip", luaopen_bkr_gzip},
        {"bkr.hash", luaopen_bkr_hash},
        {"bkr.proc", luaopen_bkr_proc},
        {"bkr.pg", luaopen_bkr_pg},
        {"bkr.fs", luaopen_bkr_fs},
        {"bkr.yaml", luaopen_bkr_yaml},
        {"bkr.dump", luaopen_bkr_dump},
        {"bkr.crypto", luaopen_bkr_crypto},
        {"bkr.curl", luaopen_bkr_curl},
        {"bkr.zstd", luaopen_bkr_zstd},
        {"bkr.s3", luaopen_bkr_s3},
        {NULL, NULL},
    };
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    for (const luaL_Reg *m = modules; m->name; m++) {
        lua_pushcfunction(L, m->func);
        lua_setfield(L, -2, m->name);
    }
    lua_pop(L, 1);
}

/* package.path: the recipe path first, then Lua's defaults (system modules: lfs, busted). */
static void set_package_path(lua_State *L, const recipe_path *rp)
{
    lua_getglobal(L, "package");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 0; i < rp->count; i++) {
        luaL_addstring(&b, rp->dirs[i]);
        luaL_addstring(&b, "/?.lua;");
    }
    lua_getfield(L, -2, "path");
    luaL_addvalue(&b);
    luaL_pushresult(&b);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
}

static void set_bkr_global(lua_State *L, const recipe_path *rp, const char *script, int debug)
{
    lua_newtable(L);
    lua_pushstring(L, BKR_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushboolean(L, debug);
    lua_setfield(L, -2, "debug");
    lua_pushstring(L, script);
    lua_setfield(L, -2, "script");
    lua_createtable(L, rp->count, 0);
    for (int i = 0; i < rp->count; i++) {
        lua_pushstring(L, rp->dirs[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "recipe_path");
    lua_pushcfunction(L, l_interrupted);
    lua_setfield(L, -2, "interrupted");
    lua_pushcfunction(L, l_monotonic);
    lua_setfield(L, -2, "monotonic");
    lua_pushcfunction(L, l_sleep);
    lua_setfield(L, -2, "sleep");
    lua_pushcfunction(L, l_at_exit);
    lua_setfield(L, -2, "at_exit");
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, BKR_EXIT_OK);
    lua_setfield(L, -2, "ok");
    lua_pushinteger(L, BKR_EXIT_FAILED);
    lua_setfield(L, -2, "failed");
    lua_pushinteger(L, BKR_EXIT_USAGE);
    lua_setfield(L, -2, "usage");
    lua_pushinteger(L, BKR_EXIT_INTEGRITY);
    lua_setfield(L, -2, "integrity");
    lua_setfield(L, -2, "exit_codes");
    lua_setglobal(L, "bkr");
}

/* Does msg already start with "chunk:line:"? (errors raised from Lua code do) */
static int has_position(const char *msg)
{
    const char *colon = strchr(msg, ':');
    if (colon == NULL || colon == msg)
        return 0;
    const char *p = colon + 1;
    if (*p < '0' || *p > '9')
        return 0;
    while (*p >= '0' && *p <= '9')
        p++;
    return *p == ':';
}

/* The length of a leading "chunk:line: " that Lua's error() puts before a message raised
 * from a Lua file ("x/recipes/config.lua:102: ", "[string \"...\"]:3: "), or 0. Only a chunk
 * name that is a Lua file or a string chunk counts: "db.example:5432: refused" is a message. */
static size_t position_length(const char *msg)
{
    if (!has_position(msg))
        return 0;
    const char *colon = strchr(msg, ':');
    size_t chunk = (size_t)(colon - msg);
    int lua_file = chunk >= 4 && strncmp(colon - 4, ".lua", 4) == 0;
    int string_chunk = msg[0] == '[' && colon[-1] == ']';
    if (!lua_file && !string_chunk)
        return 0;
    const char *p = colon + 1;
    while (*p >= '0' && *p <= '9')
        p++;
    p++; /* the second ':' */
    if (*p == ' ')
        p++;
    return (size_t)(p - msg);
}

/*
 * Message handler. Without --debug (or BKR_DEBUG) a message is for the admin: it never
 * names a recipe's file and line, so a leading "chunk:line: " (added by Lua's error() to a
 * string raised from a recipe, as many times as it was re-raised) is removed. With --debug
 * the message keeps its position; an error raised inside a C function is given the
 * innermost Lua line that led there, and a traceback follows. Error objects (tables) pass
 * through untouched.
 */
static int message_handler(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (msg == NULL)
        return 1;
    lua_getglobal(L, "bkr");
    lua_getfield(L, -1, "debug");
    int debug = lua_toboolean(L, -1);
    lua_pop(L, 2);
    if (!debug) {
        size_t skip;
        while ((skip = position_length(msg)) > 0)
            msg += skip;
        lua_pushstring(L, msg);
        return 1;
    }
    /* After SIGINT/SIGTERM the message says what was interrupted; where a recipe happened
     * to be is noise. */
    if (!has_position(msg) && interrupt_signal == 0) {
        lua_Debug ar;
        for (int level = 1; lua_getstack(L, level, &ar); level++) {
            lua_getinfo(L, "Sl", &ar);
            if (ar.currentline > 0) {
                lua_pushfstring(L, "%s:%d: %s", ar.short_src, ar.currentline, msg);
                msg = lua_tostring(L, -1);
                break;
            }
        }
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* Report the error on top of the stack and choose the exit status. */
static int report_error(lua_State *L)
{
    int code = BKR_EXIT_FAILED;
    const char *msg;
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "exit_code");
        if (lua_isinteger(L, -1))
            code = (int)lua_tointeger(L, -1);
        lua_pop(L, 1);
        lua_getfield(L, -1, "message");
        msg = lua_tostring(L, -1);
        if (msg == NULL)
            msg = "(error object without a message)";
    } else {
        msg = lua_tostring(L, -1);
        if (msg == NULL)
            msg = luaL_tolstring(L, -1, NULL);
    }
    fprintf(stderr, "bkr: %s\n", msg);
    return code;
}

/* The outcome table given to each at-exit function: the error value (or nil) is on top. */
static void push_outcome(lua_State *L, int error_index, int code)
{
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, code);
    lua_setfield(L, -2, "exit_code");
    if (error_index != 0) {
        if (lua_istable(L, error_index)) {
            lua_pushvalue(L, error_index);
            lua_setfield(L, -2, "error");
            lua_getfield(L, error_index, "message");
        } else {
            lua_pushvalue(L, error_index);
        }
        if (lua_type(L, -1) == LUA_TSTRING)
            lua_setfield(L, -2, "message");
        else
            lua_pop(L, 1);
    }
    if (interrupt_signal != 0) {
        lua_pushstring(L, interrupt_signal == SIGINT ? "SIGINT" : "SIGTERM");
        lua_setfield(L, -2, "interrupted");
    }
}

/* Run the at-exit functions, last registered first. The interrupt hook is off and bindings
 * see no interrupt (bkr_interrupted() is false): a second SIGTERM must not cut a failure
 * notification short, nor may the first make its child process or transfer give up at once
 * (systemd's stop timeout still bounds it). bkr.interrupted() still names the signal. */
static void run_at_exit(lua_State *L, int error_index, int code)
{
    in_at_exit = 1;
    lua_sethook(L, NULL, 0, 0);
    if (lua_getfield(L, LUA_REGISTRYINDEX, BKR_AT_EXIT) != LUA_TTABLE) {
        lua_pop(L, 1);
        return;
    }
    int list = lua_gettop(L);
    for (lua_Integer i = (lua_Integer)lua_rawlen(L, list); i >= 1; i--) {
        lua_pushcfunction(L, message_handler);
        int handler = lua_gettop(L);
        lua_rawgeti(L, list, i);
        push_outcome(L, error_index, code);
        if (lua_pcall(L, 1, 0, handler) != LUA_OK) {
            const char *msg = lua_tostring(L, -1);
            fprintf(stderr, "bkr: after the run: %s\n", msg ? msg : "(error object)");
            lua_pop(L, 1);
        }
        lua_pop(L, 1); /* handler */
    }
    lua_pop(L, 1);
}

static int run_script(lua_State *L, const char *file, int argc, char **argv)
{
    /* arg table, as the standalone lua interpreter builds it */
    lua_createtable(L, argc, 1);
    lua_pushstring(L, file);
    lua_rawseti(L, -2, 0);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setglobal(L, "arg");

    lua_pushcfunction(L, message_handler);
    int handler = lua_gettop(L);
    if (luaL_loadfile(L, file) != LUA_OK) {
        fprintf(stderr, "bkr: %s\n", lua_tostring(L, -1));
        return BKR_EXIT_USAGE;
    }
    for (int i = 0; i < argc; i++)
        lua_pushstring(L, argv[i]);
    int status = lua_pcall(L, argc, 1, handler);
    int result = lua_gettop(L); /* the error value, or what the main chunk returned */
    int code;
    if (interrupt_signal != 0) {
        /* A recipe's own message (an error object) says what the interrupt left behind; a
         * plain error raised on the way out is only the interrupt itself, wherever a recipe
         * happened to be: say that, without a recipe's file and line. */
        if (status != LUA_OK && !lua_istable(L, -1)) {
            lua_pushfstring(L, "interrupted by %s", interrupt_signal == SIGINT ? "SIGINT" : "SIGTERM");
            lua_replace(L, result);
        }
        if (status != LUA_OK)
            report_error(L);
        code = 128 + interrupt_signal;
    } else if (status != LUA_OK) {
        code = report_error(L);
    } else if (lua_isinteger(L, -1)) {
        code = (int)lua_tointeger(L, -1);
    } else {
        code = BKR_EXIT_OK;
    }
    fflush(stdout);
    run_at_exit(L, status != LUA_OK ? result : 0, code);
    return code;
}

int main(int argc, char **argv)
{
    int debug = getenv("BKR_DEBUG") != NULL && strcmp(getenv("BKR_DEBUG"), "") != 0;
    int i = 1;
    while (i < argc && strcmp(argv[i], "--debug") == 0) {
        debug = 1;
        i++;
    }
    recipe_path rp;
    path_init(&rp);

    if (i >= argc || strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0
        || strcmp(argv[i], "help") == 0) {
        print_help(&rp);
        path_free(&rp);
        return i >= argc ? BKR_EXIT_USAGE : BKR_EXIT_OK;
    }
    if (strcmp(argv[i], "--version") == 0) {
        printf("bkr %s (%s)\n", BKR_VERSION, LUA_RELEASE);
        path_free(&rp);
        return BKR_EXIT_OK;
    }

    char *script;
    if (strcmp(argv[i], "run") == 0) {
        if (i + 1 >= argc) {
            fprintf(stderr, "bkr: run needs a Lua file: bkr run FILE.lua [args...]\n");
            path_free(&rp);
            return BKR_EXIT_USAGE;
        }
        script = strdup(argv[i + 1]);
        i += 2;
    } else if (argv[i][0] == '-') {
        fprintf(stderr, "bkr: unknown option %s (see bkr --help)\n", argv[i]);
        path_free(&rp);
        return BKR_EXIT_USAGE;
    } else {
        script = path_find(&rp, argv[i]);
        if (script == NULL) {
            fprintf(stderr, "bkr: no recipe named '%s' in the recipe path (see bkr --help)\n", argv[i]);
            path_free(&rp);
            return BKR_EXIT_USAGE;
        }
        i += 1;
    }

    lua_State *L = luaL_newstate();
    if (L == NULL || script == NULL) {
        fprintf(stderr, "bkr: out of memory\n");
        return BKR_EXIT_FAILED;
    }
    luaL_openlibs(L);
    preload_modules(L);
    set_package_path(L, &rp);
    set_bkr_global(L, &rp, script, debug);
    global_state = L;
    install_signal_handlers();

    int code = run_script(L, script, argc - i, argv + i);

    /* Finalizers reap children and remove temporary files; no signal may raise in them. */
    global_state = NULL;
    lua_sethook(L, NULL, 0, 0);
    lua_close(L);
    free(script);
    path_free(&rp);
    fflush(stdout);
    return code;
}
