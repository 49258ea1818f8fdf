#!/usr/bin/env bash
# One command for everything on a fresh machine: make the virtual environment, install, then run.
#   bash scripts/run.sh main   # the main job on the embedded defaults (shipped model, CIFAR-10 sample)
#   bash scripts/run.sh test   # the test suite (RUN_SLOW=1 adds the slow tests, and installs Chromium for them)
# Extra arguments go to the job (`main`) or to pytest (`test`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  # Re-install only when pyproject.toml changed since the last install.
  local stamp="$VENV/.hf_vqvae-installed" want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    "$VENV/bin/pip" install -q --upgrade pip
    # The CPU wheel first: letting the resolver choose torch pulls a multi-GB CUDA build.
    "$VENV/bin/pip" install -q "torch==2.13.0"
    "$VENV/bin/pip" install -q -e ".[train,test,app]"
    echo "$want" > "$stamp"
  fi
}

# olah, a Hub mirror server written by others, proves our downloads against a server we did not write. It lives in
# its own environment (its dependencies are not ours); without it, its test is skipped with a reason.
setup_olah() {
  if [ ! -x .venv-olah/bin/olah-cli ]; then
    ("$PYTHON" -m venv .venv-olah && .venv-olah/bin/pip install -q "olah==0.5.*") \
      || echo "olah could not be installed; tests/test_olah.py will be skipped" >&2
  fi
  if [ -x .venv-olah/bin/olah-cli ]; then
    export OLAH_BIN="$PWD/.venv-olah/bin/olah-cli"
  fi
}

# The demo app's browser tests (tests/test_app.py) drive Debian's Chromium; Playwright's own browser downloads are
# never used. Installed once, as root (as CI runs); without it those tests are skipped with a reason.
setup_chromium() {
  if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "chromium could not be installed; the browser tests of tests/test_app.py will be skipped" >&2
    else
      echo "no /usr/bin/chromium (install Debian's chromium as root); the browser tests will be skipped" >&2
    fi
  fi
}

job="${1:-}"
shift || true
case "$job" in
  main)
    setup
    exec "$VENV/bin/python" scripts/main_job.py "$@"
    ;;
  test)
    setup
    setup_olah
    if [ "${RUN_SLOW:-0}" = 1 ]; then
      setup_chromium
    fi
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  *)
    echo "usage: bash scripts/run.sh main|test [args...]" >&2
    exit 2
    ;;
esac
