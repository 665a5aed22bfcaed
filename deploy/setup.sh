#!/usr/bin/env bash
# Set up a development checkout of borealdb: a virtual environment in .venv with
# borealdb installed in editable mode plus the test dependencies.
#
#   ./deploy/setup.sh && .venv/bin/boreal up                 # start a local cluster
#   ./deploy/setup.sh && .venv/bin/python -m pytest -q       # run the tests
#
# Idempotent: it creates .venv only if it is missing or broken, and reinstalls only
# when pyproject.toml changed since the last successful run. Needs Python >= 3.11;
# on Debian/Ubuntu it installs python3-venv with apt-get when that is missing and it
# runs as root. PYTHON=/path/to/python3 chooses the interpreter.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.borealdb-setup"

say() { echo "setup: $*" >&2; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    say "no $PYTHON found; install Python 3.11 or newer (Debian: apt-get install python3 python3-venv)"
    exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    say "$("$PYTHON" --version 2>&1) is too old: borealdb needs Python 3.11 or newer"
    exit 1
fi

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    # Debian splits venv/ensurepip into python3-venv.
    if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            say "installing python3-venv"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        else
            say "$PYTHON cannot create virtual environments; install python3-venv (sudo apt-get install python3-venv)"
            exit 1
        fi
    fi
    say "creating $VENV"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    rm -f "$STAMP"
fi

want="$(sha256sum pyproject.toml | cut -d' ' -f1) $(pwd)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c 'import borealdb.nodes.cli, pytest' >/dev/null 2>&1; then
    exit 0  # already set up
fi
say "installing borealdb (editable) and test dependencies into $VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
echo "$want" > "$STAMP"
say "done: $VENV/bin/boreal --help"
