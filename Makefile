# Entry points for people and CI. `make run` and `make check` install Debian packages first.
BUILD ?= build
ASAN_BUILD ?= build-asan

.PHONY: all deps build build-asan run check check-replication check-migration unit interop fuzz \
	bench clean \
	install-links iotests

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

# Block replication's long form: a minute of checkpoints per transport (make check: 8 s).
check-replication: build
	@REPL_SECONDS=60 VDISK=$(abspath $(BUILD))/vdisk bash tests/interop/test-replication.sh

# Live disk migration's long form: a 4 GiB image, every compression x channels x TLS case
# and every fault (make check: 256 MiB, three cases). Needs root.
check-migration: build
	@MIG_FULL=1 VDISK=$(abspath $(BUILD))/vdisk bash tests/interop/test-migration.sh

bench: deps build
	@bash bench/run.sh

# Symlinks named qemu-img, qemu-io and qemu-nbd to the built vdisk, which then behaves as
# those programs. LINKDIR defaults to a directory on no PATH, so nothing shadows QEMU's own
# tools unless asked (make install-links LINKDIR=/usr/local/bin).
LINKDIR ?= $(BUILD)/links

install-links: build
	@mkdir -p $(LINKDIR)
	@for n in qemu-img qemu-io qemu-nbd; do \
	    ln -sfn $(abspath $(BUILD))/vdisk $(LINKDIR)/$$n || exit 1; \
	done
	@echo "$(LINKDIR): qemu-img qemu-io qemu-nbd -> $(abspath $(BUILD))/vdisk"

# QEMU 7.2's qemu-iotests against vdisk and against QEMU (tests/iotests/run.sh; not part of
# `make check`). IOTESTS="024 061" runs a subset, IOTESTS_JOBS=2 runs check -j2,
# IOTESTS_FORMATS="qcow2" limits the formats, IOTESTS_UPDATE=1 records the passing tests in
# tests/iotests/pass-*.list, IOTESTS_ARGS passes more options (e.g. --reuse-qemu).
IOTESTS ?=
IOTESTS_JOBS ?= 1
IOTESTS_FORMATS ?= qcow2 raw nbd
IOTESTS_UPDATE ?=
IOTESTS_ARGS ?=

iotests: build
	@BUILD=$(BUILD) bash tests/iotests/run.sh -j $(IOTESTS_JOBS) --formats "$(IOTESTS_FORMATS)" \
	    $(if $(IOTESTS_UPDATE),--update) $(IOTESTS_ARGS) $(IOTESTS)

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) var/*.qcow2
