#!/usr/bin/env bash
# Installs bmb-stream: Debian's Fashion-MNIST (the real data of the default job), the dependencies and
# the package. Idempotent and quick when nothing changed.
#   ./install.sh          the package (in ./.venv), its dependencies and the test extras
#   ./install.sh --test   the same (the name says why it is run)
#
# The dependencies (torch alone is several GB) live in one environment per dependency list, shared by
# every checkout on the machine: $BMB_STREAM_DEPS, by default ~/.cache/bmb-stream/deps-<hash>.
# ./.venv is a small environment that sees them and holds this checkout's package (editable).
set -euo pipefail
cd "$(dirname "$0")"

case "${1:-}" in
  ""|--test) ;;
  *) echo "usage: ./install.sh [--test]" >&2; exit 2 ;;
esac

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "installing Debian's dataset-fashion-mnist"
  sudo_cmd=""
  if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq dataset-fashion-mnist
fi

python_cmd="${PYTHON:-$(command -v python3.11 || command -v python3)}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
run_logged() {  # run quietly; on failure show what it said
  if ! "$@" >"$log" 2>&1; then
    cat "$log"
    echo "install.sh: failed: $*" >&2
    exit 1
  fi
}

# the dependency list of pyproject.toml, test extras included (one shared environment, not two)
requirements="$("$python_cmd" - <<'PY'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(sorted(project["dependencies"] + project["optional-dependencies"]["test"])))
PY
)"
hash="$(printf '%s\n' "$requirements" | sha256sum | cut -c1-16)"
deps="${BMB_STREAM_DEPS:-$HOME/.cache/bmb-stream/deps-$hash}"
if [ ! -f "$deps/.complete" ]; then
  echo "installing the dependencies into $deps (the first time this takes a few minutes)"
  rm -rf "$deps"
  run_logged "$python_cmd" -m venv "$deps"
  run_logged "$deps/bin/python" -m pip install -q --upgrade pip
  printf '%s\n' "$requirements" > "$deps/requirements.txt"
  run_logged "$deps/bin/python" -m pip install -q -r "$deps/requirements.txt"
  touch "$deps/.complete"
fi

if [ ! -x .venv/bin/python ]; then
  run_logged "$python_cmd" -m venv .venv
fi
site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
deps_site="$("$deps/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$deps_site" > "$site/bmb_stream_deps.pth"

stamp=".venv/.installed-$(cat pyproject.toml setup.py | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "installing bmb-stream (editable) into .venv"
  run_logged .venv/bin/python -m pip install -q --no-deps -e .
  rm -f .venv/.installed-*
  touch "$stamp"
fi
