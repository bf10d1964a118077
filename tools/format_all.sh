#!/usr/bin/env bash
# Applies the repository's formatters to the whole tree, with the versions CI checks (the `lint` extra):
#   ruff check --fix (import order and the other safe fixes), ruff format, clang-format -i on every C
#   source and header under csrc/ and tests/c/.
# CI (.ci/run) fails on any difference, so run it before committing; a formatting-only change is
# best committed alone. --check only reports, as CI does.
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
if [ "${1:-}" = "--check" ]; then
    check=1
elif [ $# -gt 0 ]; then
    echo "usage: tools/format_all.sh [--check]" >&2
    exit 2
fi

# the pins of the lint extra in pyproject.toml, e.g. ruff==0.17.6
pins=$(sed -n 's/^lint = \[\(.*\)\]/\1/p' pyproject.toml | tr -d '",')
for pin in $pins; do
    name=${pin%%==*}
    version=${pin##*==}
    have=$("$name" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1 || true)
    if [ "$have" != "$version" ]; then
        echo "error: $name $version is pinned (the lint extra), found '${have:-none}': pip install -e '.[lint]'" >&2
        exit 2
    fi
done

mapfile -d '' c_files < <(find csrc tests/c -name '*.[ch]' -print0 | sort -z)
if [ "$check" -eq 1 ]; then
    rc=0
    ruff check . || rc=1
    ruff format --check . || rc=1
    clang-format --dry-run -Werror "${c_files[@]}" || rc=1
    exit "$rc"
fi
ruff check --fix --exit-zero --quiet .  # what it cannot fix is listed at the end
ruff format .
clang-format -i "${c_files[@]}"
echo "formatted: Python (ruff) and ${#c_files[@]} C files (clang-format); review with git diff, commit alone"
if ! ruff check . >/dev/null; then
    echo "left for a hand fix (ruff check .):"
    ruff check --output-format concise . || true
fi
