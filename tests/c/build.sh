#!/usr/bin/env bash
# Builds the C tests (tests/c/test_*.c) against the C core -- every csrc/ source
# outside csrc/python -- and runs them. No Python is involved in the tests;
# Python is only asked where pip put oneDNN (headers from onednn-devel-cpu-gomp,
# libdnnl.so.3 from onednn-cpu-gomp), exactly as setup.py finds them.
#
#   tests/c/build.sh               -O2 build, run every test
#   tests/c/build.sh --sanitize    AddressSanitizer + UBSan build, run every test;
#                                  any report fails the run
#   tests/c/build.sh --no-run      build only
#   PYTHON=/path/to/python tests/c/build.sh   (default: python, else python3)
#
# Outputs go to tests/c/bin/<variant>/ (git-ignored). Exit status: 0 when every
# test passed with no sanitizer report.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$(pwd)

SANITIZE=0
RUN=1
for arg in "$@"; do
    case "$arg" in
        --sanitize) SANITIZE=1 ;;
        --no-run) RUN=0 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown option $arg (use --sanitize, --no-run)" >&2; exit 2 ;;
    esac
done

PYTHON=${PYTHON:-$(command -v python || command -v python3)}
CC=${CC:-cc}

# The same lookup as setup.py: the installed file lists of the two oneDNN wheels.
read -r DNNL_INC DNNL_LIB < <("$PYTHON" - <<'EOF'
import os, sys
from importlib import metadata

def dist_dir(name, marker):
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        sys.exit(f"build.sh: {name} is not installed in {sys.prefix} (pip install {name}==2023.2.0)")
    for f in dist.files or []:
        p = str(f).replace("\\", "/")
        if p.endswith(marker):
            return os.path.realpath(str(dist.locate_file(f)))[: -len(marker)].rstrip("/")
    sys.exit(f"build.sh: {name} has no {marker}")

print(dist_dir("onednn-devel-cpu-gomp", "/oneapi/dnnl/dnnl.h"), dist_dir("onednn-cpu-gomp", "/libdnnl.so.3"))
EOF
) || true
if [ -z "${DNNL_LIB:-}" ]; then
    echo "build.sh: cannot locate oneDNN through $PYTHON (see above)" >&2
    exit 2
fi

CFLAGS=(-std=c11 -fopenmp -Wall -Wextra -Werror -Wno-unknown-pragmas -D_GNU_SOURCE -Icsrc -I"$DNNL_INC" -g)
LDFLAGS=(-fopenmp -L"$DNNL_LIB" -Wl,-rpath,"$DNNL_LIB" -ldnnl -lm -lpthread)
if [ "$SANITIZE" = 1 ]; then
    VARIANT=asan
    SAN=(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
    CFLAGS+=(-O1 "${SAN[@]}")
    LDFLAGS+=("${SAN[@]}")
else
    VARIANT=release
    CFLAGS+=(-O2)
fi
OUT="$ROOT/tests/c/bin/$VARIANT"
mkdir -p "$OUT/obj"

# The core library: core, ops, models, sampling (csrc/python is the only layer
# that needs Python, and the C tests must not).
mapfile -t SOURCES < <(ls csrc/core/*.c csrc/ops/*.c csrc/models/*.c csrc/sampling/*.c 2>/dev/null)
OBJECTS=()
for src in "${SOURCES[@]}"; do
    OBJECTS+=("$OUT/obj/$(echo "${src%.c}" | tr / _).o")
done
echo "build.sh: compiling ${#SOURCES[@]} core sources ($VARIANT) with $CC, oneDNN from $DNNL_LIB"
export CC OUT
printf '%s\n' "${SOURCES[@]}" | xargs -P "$(nproc)" -I{} sh -c \
    'o="$OUT/obj/$(echo "{}" | sed "s/\.c$//" | tr / _).o"; exec "$CC" "$@" -c "{}" -o "$o"' sh "${CFLAGS[@]}"
rm -f "$OUT/libasymvq_core.a"
ar rcs "$OUT/libasymvq_core.a" "${OBJECTS[@]}"

# The tests include the public headers as strict ISO C (-Wpedantic).
TESTS=()
for t in tests/c/test_*.c; do
    exe="$OUT/$(basename "${t%.c}")"
    "$CC" "${CFLAGS[@]}" -Wpedantic "$t" "$OUT/libasymvq_core.a" "${LDFLAGS[@]}" -o "$exe"
    TESTS+=("$exe")
done
echo "build.sh: built ${TESTS[*]#$ROOT/}"
[ "$RUN" = 1 ] || exit 0

if [ "$SANITIZE" = 1 ]; then
    # Leak reports from third-party frames only (libgomp's thread pool, oneDNN's
    # global caches) are suppressed by name in lsan.supp; ours are not.
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1:exitcode=99:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1"
    export LSAN_OPTIONS="suppressions=$ROOT/tests/c/lsan.supp:print_suppressions=1"
    export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=98"
fi
status=0
for exe in "${TESTS[@]}"; do
    echo "build.sh: running ${exe#$ROOT/}"
    log="$OUT/$(basename "$exe").log"
    set +e
    "$exe" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" -ne 0 ]; then
        echo "build.sh: ${exe#$ROOT/} failed (exit $rc)" >&2
        status=1
    elif grep -qE "ERROR: (Address|Leak)Sanitizer|runtime error:|SUMMARY: (Address|Undefined|Leak)" "$log"; then
        echo "build.sh: ${exe#$ROOT/} produced a sanitizer report" >&2
        status=1
    fi
done
[ "$status" = 0 ] && echo "build.sh: all C tests passed ($VARIANT)"
exit "$status"
