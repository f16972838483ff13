# tests/fuzz/fuzz.mk -- the libFuzzer targets; included by the Makefile.
#
#   make fuzz                  build the targets, then run each on its corpus
#                              for FUZZ_SECONDS (default 30); fails on any crash
#   make fuzz FUZZ_SECONDS=600 longer runs, to look for bugs
#
# The targets (tests/fuzz/fuzz_*.c) are built with clang into build-fuzz/fuzz/,
# linked with -fsanitize=fuzzer,address,undefined against a build-fuzz/
# library whose objects are compiled with -fsanitize=fuzzer-no-link,address,
# undefined, so libFuzzer's coverage sees copystream's own code. The rule below
# is written with $(BUILD) because the library rules of the Makefile are: it
# is only asked for by the sub-make that sets BUILD=build-fuzz.

FUZZ_BUILD   := build-fuzz
FUZZ_SECONDS ?= 30
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined \
                -fno-omit-frame-pointer
FUZZ_NAMES   := $(patsubst tests/fuzz/%.c,%,$(wildcard tests/fuzz/fuzz_*.c))

.PHONY: fuzz fuzz-build fuzz-clean

$(BUILD)/fuzz/%: tests/fuzz/%.c tests/fuzz/fuzz.h $(LIB) | $(BUILD)/fuzz
	$(CC) $(CFLAGS) -fsanitize=fuzzer -o $@ $< $(LIB) $(LDFLAGS) $(LDLIBS)

$(BUILD)/fuzz:
	mkdir -p $@

fuzz-build:
	$(MAKE) BUILD=$(FUZZ_BUILD) CC=clang OPT=-O1 \
	    SAN="-fsanitize=fuzzer-no-link $(FUZZ_SAN)" $(FUZZ_NAMES:%=$(FUZZ_BUILD)/fuzz/%)

fuzz: deps
	$(MAKE) fuzz-build
	scripts/run-fuzz.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

clean: fuzz-clean
fuzz-clean:
	rm -rf $(FUZZ_BUILD)
