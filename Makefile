# Entry points for people and CI. `make run` and `make check` install Debian packages first.
BUILD ?= build
ASAN_BUILD ?= build-asan

.PHONY: all deps build build-asan run check unit interop fuzz bench clean

all: build

deps:
	@bash scripts/install-deps.sh

$(BUILD)/build.ninja:
	meson setup $(BUILD) >/dev/null

build: $(BUILD)/build.ninja
	@meson setup --reconfigure $(BUILD) >/dev/null
	@ninja -C $(BUILD) >/dev/null || ninja -C $(BUILD)

$(ASAN_BUILD)/build.ninja:
	CC=clang meson setup $(ASAN_BUILD) -Db_sanitize=address,undefined -Db_lundef=false \
	    -Dbuildtype=debug >/dev/null

build-asan: $(ASAN_BUILD)/build.ninja
	@meson setup --reconfigure $(ASAN_BUILD) >/dev/null
	@ninja -C $(ASAN_BUILD) >/dev/null || ninja -C $(ASAN_BUILD)

run: deps build
	@bash scripts/demo.sh $(BUILD)/vdisk

check: deps build build-asan
	@bash tests/run-all.sh

bench: deps build
	@bash bench/run.sh

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) var/*.qcow2
