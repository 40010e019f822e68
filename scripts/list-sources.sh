#!/bin/sh
# Prints the C sources under the given folders, sorted, for meson.build.
cd "$(dirname "$0")/.." || exit 1
find "$@" -name '*.c' 2>/dev/null | LC_ALL=C sort
