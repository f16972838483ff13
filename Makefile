# copystream -- build, test, demo, bench.
#
#   make            build build/copystream
#   make test       install what is missing, unit tests, then integration tests
#                   against a real Kafka broker and Redis started for the run
#   make asan       the same tests with AddressSanitizer + UBSan (build-asan/)
#   make valgrind   the unit tests under valgrind, failing on any leak or error
#   make fuzz       libFuzzer targets, FUZZ_SECONDS each (tests/fuzz/fuzz.mk)
#   make demo       clickstream in, personalized copy out, end to end
#   make bench      end-to-end throughput against a passthrough ceiling
#   make bench-inference   the Transformer engine's step, batch and scoring costs
#   make bench-train       training throughput against plain sgemm
#   make bench-beauty      train and evaluate on Amazon Beauty (../shared/data)
#   make bench-bandit      the copy bandit on simulated users with known click rates
#
# BUILD selects the output folder, SAN adds sanitizer flags; `make asan` sets both.

BUILD   ?= build
SAN     ?=
CC      ?= cc
PKGS    := rdkafka avro-c hiredis openblas jansson libmicrohttpd libxxhash inih
OPT     ?= -O2
CFLAGS  ?=
VERSION := 0.1.0
CFLAGS  += -DCOPYSTREAM_VERSION='"$(VERSION)"'
CFLAGS  += -std=gnu11 $(OPT) -g -Wall -Wextra -Wshadow -Wstrict-prototypes -Wno-unused-parameter \
           -Iinclude $(SAN) $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm -lpthread
LDFLAGS += $(SAN)

SRCS     := $(filter-out src/main.c,$(wildcard src/*.c))
OBJS     := $(SRCS:src/%.c=$(BUILD)/obj/%.o)
LIB      := $(BUILD)/libcopystream.a
BIN      := $(BUILD)/copystream

UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)
BENCH_SRCS := $(wildcard bench/*.c)
BENCH_BINS := $(BENCH_SRCS:bench/%.c=$(BUILD)/bench/%)
TOOL_SRCS  := $(wildcard tests/tools/*.c)
TOOL_BINS  := $(TOOL_SRCS:tests/tools/%.c=$(BUILD)/tools/%)

.PHONY: all deps test unit integration asan valgrind demo bench bench-inference bench-train \
        bench-beauty bench-bandit clean

all: $(BIN) $(UNIT_BINS) $(BENCH_BINS) $(TOOL_BINS)

$(BUILD)/obj/%.o: src/%.c $(wildcard include/*.h) | $(BUILD)/obj
	$(CC) $(CFLAGS) -c -o $@ $<

# The trainer's loops are written plainly, over any length; GCC vectorizes
# such loops only with -O3's cost model, and sqrtf only without errno.
$(BUILD)/obj/train.o: OPT += -O3 -fno-math-errno

$(LIB): $(OBJS)
	rm -f $@ && ar rcs $@ $^

$(BIN): src/main.c $(LIB)
	$(CC) $(CFLAGS) -o $@ $< $(LIB) $(LDFLAGS) $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c tests/unit/testutil.h $(LIB) | $(BUILD)/tests
	$(CC) $(CFLAGS) -Itests/unit $(shell pkg-config --cflags cmocka) -o $@ $< $(LIB) \
	    $(LDFLAGS) $(LDLIBS) $(shell pkg-config --libs cmocka)

$(BUILD)/bench/%: bench/%.c $(LIB) | $(BUILD)/bench
	$(CC) $(CFLAGS) -o $@ $< $(LIB) $(LDFLAGS) $(LDLIBS)

$(BUILD)/tools/%: tests/tools/%.c $(LIB) | $(BUILD)/tools
	$(CC) $(CFLAGS) -o $@ $< $(LIB) $(LDFLAGS) $(LDLIBS)

$(BUILD)/obj $(BUILD)/tests $(BUILD)/bench $(BUILD)/tools:
	mkdir -p $@

# Installs Debian packages, the Kafka broker's jars and the Python test tools
# when they are missing; a no-op on a machine that has them.
deps:
	scripts/deps.sh

unit: all
	scripts/run-unit.sh $(BUILD)

integration: all
	scripts/run-integration.sh $(BUILD)

test: deps
	$(MAKE) all
	scripts/run-unit.sh $(BUILD)
	scripts/run-integration.sh $(BUILD)

asan: deps
	$(MAKE) BUILD=build-asan OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" all
	scripts/run-unit.sh build-asan
	scripts/run-integration.sh build-asan

valgrind: deps
	$(MAKE) all
	VALGRIND=1 scripts/run-unit.sh $(BUILD)

demo: deps
	$(MAKE) $(BIN)
	scripts/demo.sh $(BUILD)

bench: deps
	$(MAKE) all
	bench/e2e.sh $(BUILD)

# The Transformer engine alone: incremental vs full recompute, batched step
# vs plain sgemm, scoring the Amazon Beauty catalog size. Needs no services.
bench-inference: $(BUILD)/bench/inference
	bash -c '. scripts/lib.sh && openblas_env && exec $(BUILD)/bench/inference --threads 1'

# The trainer's step against plain sgemm on the same products, on a dataset
# shaped like Amazon Beauty; BENCH_ARGS adds options (--threads 1, --negatives 0).
bench-train: $(BUILD)/bench/train
	bash -c '. scripts/lib.sh && openblas_env && exec $(BUILD)/bench/train $(BENCH_ARGS)'

# `copystream train` with its defaults on Amazon Beauty, then `copystream
# eval` on the test split: the figures docs/MODEL.md records.
bench-beauty: $(BIN)
	bench/beauty.sh $(BUILD)

# Thompson sampling on simulated users with known click rates: regret and the
# share of traffic on the best variant after 5,000 impressions. No services.
# BENCH_ARGS adds options (--compare: every candidate policy of docs/BANDIT.md).
bench-bandit: $(BUILD)/bench/bandit
	$(BUILD)/bench/bandit $(BENCH_ARGS)

clean:
	rm -rf build build-asan

include tests/fuzz/fuzz.mk
