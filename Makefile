# bkr - build, test, demo, install.
#   make              build ./bkr
#   make test         install missing packages, start a throwaway PostgreSQL, run every spec
#   make demo         install missing packages, start a throwaway PostgreSQL, run the main job end to end
#   make check-asan   build with AddressSanitizer + UndefinedBehaviorSanitizer and run the suite with it
#   make fuzz         run every libFuzzer target in tests/fuzz/ (FUZZ_SECONDS each)
#   make bench        backup and restore time, size and peak memory against pg_dump | gzip, pigz, pg_restore
#   make install PREFIX=/usr/local [DESTDIR=...] / make uninstall

PREFIX ?= /usr/local
BINDIR = $(PREFIX)/bin
DATADIR = $(PREFIX)/share/bkr
DOCDIR = $(PREFIX)/share/doc/bkr

CC ?= cc
PKGS = lua5.4 libpq zlib openssl yaml-0.1 libcurl libdeflate libzstd libxml-2.0
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

CFLAGS ?= -O2 -g
WARN = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-unused-parameter
ALL_CFLAGS = $(WARN) $(CFLAGS) $(PKG_CFLAGS) -Iruntime -Ibindings \
	-DBKR_INSTALLED_RECIPES='"$(DATADIR)/recipes"'
LIBS = $(PKG_LIBS) -lpthread -lm

SRCS = $(wildcard runtime/*.c) $(wildcard bindings/*.c)
HDRS = $(wildcard runtime/*.h) $(wildcard bindings/*.h)
OBJS = $(SRCS:%.c=build/%.o)
ASAN_OBJS = $(SRCS:%.c=build/asan/%.o)
SAN = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

.PHONY: all test demo check-asan bench fuzz install uninstall clean deps

all: bkr

bkr: $(OBJS)
	$(CC) -o $@ $(OBJS) $(LDFLAGS) $(LIBS)

build/%.o: %.c $(HDRS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

bkr-asan: $(ASAN_OBJS)
	$(CC) $(SAN) -o $@ $(ASAN_OBJS) $(LDFLAGS) $(LIBS)

build/asan/%.o: %.c $(HDRS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -O1 $(SAN) -c -o $@ $<

deps:
	scripts/install-deps.sh

SAN_ENV = ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

# The whole suite twice: the release build, and the ASan/UBSan build.
test: deps
	$(MAKE) bkr bkr-asan
	$(SAN_ENV) scripts/run-tests.sh -b ./bkr -b ./bkr-asan

check-asan: deps
	$(MAKE) bkr bkr-asan
	$(SAN_ENV) scripts/run-tests.sh -b ./bkr-asan

demo: deps
	$(MAKE) bkr
	scripts/demo.sh ./bkr

bench: deps
	$(MAKE) bkr
	scripts/bench.sh ./bkr

# Every libFuzzer target in tests/fuzz/ for FUZZ_SECONDS each (clang needed).
FUZZ_SECONDS ?= 60
fuzz:
	@for f in tests/fuzz/fuzz_*.c; do n=$${f#tests/fuzz/fuzz_}; n=$${n%.c}; \
		echo "== fuzz $$n ($(FUZZ_SECONDS) s)"; scripts/fuzz.sh $$n $(FUZZ_SECONDS) || exit 1; done

install: bkr
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(DATADIR)/recipes/lib $(DESTDIR)$(DOCDIR)
	install -m 0755 bkr $(DESTDIR)$(BINDIR)/bkr
	install -m 0644 recipes/*.lua $(DESTDIR)$(DATADIR)/recipes/
	install -m 0644 recipes/lib/*.lua $(DESTDIR)$(DATADIR)/recipes/lib/
	install -d $(DESTDIR)$(DOCDIR)/api
	install -m 0644 README.md docs/*.md docs/bkr.example.yaml $(DESTDIR)$(DOCDIR)/
	install -m 0644 docs/api/*.md $(DESTDIR)$(DOCDIR)/api/

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/bkr
	rm -rf $(DESTDIR)$(DATADIR) $(DESTDIR)$(DOCDIR)

clean:
	rm -rf build bkr bkr-asan
