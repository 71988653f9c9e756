#!/usr/bin/env bash
# Installs bmb-stream into ./.venv: Debian's Fashion-MNIST (the real data of the default job) and the
# Python package with its dependencies. Idempotent: a second run with nothing changed takes a second.
#   ./install.sh          the package
#   ./install.sh --test   the package and the test extras
set -euo pipefail
cd "$(dirname "$0")"

extras=""
if [ "${1:-}" = "--test" ]; then extras="[test]"; fi

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "installing Debian's dataset-fashion-mnist"
  sudo_cmd=""
  if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq dataset-fashion-mnist
fi

python_cmd="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $python_cmd"
  "$python_cmd" -m venv .venv
fi

# reinstall only when pyproject.toml (the dependency list) or the extras changed
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)${extras:+-test}"
if [ ! -f "$stamp" ]; then
  echo "installing bmb-stream$extras into .venv (the first time this takes a few minutes)"
  log=.venv/install.log
  if ! { .venv/bin/python -m pip install -q --upgrade pip && .venv/bin/python -m pip install -q -e ".$extras"; } >"$log" 2>&1; then
    cat "$log"
    echo "install.sh: pip failed (log above, also in $log)" >&2
    exit 1
  fi
  rm -f .venv/.installed-*
  touch "$stamp"
fi
