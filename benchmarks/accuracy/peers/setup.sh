#!/usr/bin/env bash
# One venv per peer package of the accuracy benchmark, each with exactly the versions in
# requirements-<name>.txt (torch 2.14.1 included: no peer may bring its own torch).
#
#   bash benchmarks/accuracy/peers/setup.sh                 # nncf, torch-pruning, modelopt
#   bash benchmarks/accuracy/peers/setup.sh torch-pruning   # only the ones named
#
# Venvs go to <repo>/.venv-peers/<name>/ (ignored by git), about 5.5 GB each (torch's CUDA
# wheels). A venv whose .installed stamp exists is left as it is.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
PY="${PY:-python3.11}"
NAMES=("$@")
[ ${#NAMES[@]} -eq 0 ] && NAMES=(nncf torch-pruning modelopt)

for name in "${NAMES[@]}"; do
    reqs="$HERE/requirements-$name.txt"
    # The real path: a .venv-peers link (a worktree sharing main's venvs) must not end up
    # in the venv's scripts.
    venv="$(realpath -m "$ROOT/.venv-peers")/$name"
    if [ ! -f "$reqs" ]; then
        echo "unknown peer venv '$name': expected one of nncf, torch-pruning, modelopt" >&2
        exit 2
    fi
    if [ -f "$venv/.installed" ]; then
        echo "$venv: already installed"
        continue
    fi
    echo "$venv: installing $(grep -vc '^#' "$reqs") pinned packages"
    "$PY" -m venv "$venv"
    "$venv/bin/pip" install -q pip==26.3
    # --no-deps: the file is the whole resolved set, so pip must not pick anything else.
    "$venv/bin/pip" install -q --no-deps -r "$reqs"
    "$venv/bin/pip" check
    touch "$venv/.installed"
done
