#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite (the README's test command; .ci/run calls it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# torch==2.13.0 first: the CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
pip install -q torch==2.13.0 -e '.[dev]'
# The browser tests drive Debian's Chromium with Playwright (Playwright's own browser download
# cannot work offline). Install it when we can (root + apt); the tests skip cleanly without it.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; browser tests will skip" >&2
fi
export SDL_VIDEODRIVER=dummy SDL_AUDIODRIVER=dummy
exec python -m pytest -q "$@"
