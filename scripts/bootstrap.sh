#!/usr/bin/env bash
# Set up knnspark on a fresh machine and run the demo or the tests.
#
#   bash scripts/bootstrap.sh demo   # venv + packages + Java check, then 100k x 100 demo run
#   bash scripts/bootstrap.sh test   # venv + packages + Java check, then ruff and the test suite
#   bash scripts/bootstrap.sh setup  # only the set-up
#
# Needs Python >= 3.10 and Java 17 or 21 (Spark 4 runs on nothing else). Java is installed with
# apt-get when it is missing and we are root on a Debian/Ubuntu machine; otherwise the script says
# exactly what to install.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
VENV="${KNNSPARK_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

say() { printf '[knnspark setup] %s\n' "$*" >&2; }

java_major() {
  local java_bin="$1"
  "$java_bin" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}' | awk -F. '{ if ($1 == 1) print $2; else print $1 }'
}

find_java() {
  local candidate
  for candidate in "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java || true)" \
      /usr/lib/jvm/java-17-openjdk-*/bin/java /usr/lib/jvm/java-21-openjdk-*/bin/java; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    case "$(java_major "$candidate")" in
      17|21) echo "$candidate"; return 0 ;;
    esac
  done
  return 1
}

ensure_java() {
  local java_bin
  if java_bin="$(find_java)"; then
    say "Java $(java_major "$java_bin") found: $java_bin"
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "Java 17/21 not found: installing openjdk-17-jre-headless with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
    java_bin="$(find_java)" || { say "openjdk-17 installed but no java 17 found"; exit 1; }
  else
    say "Spark 4 needs Java 17 or 21 and none was found (java on PATH: $(command -v java || echo none))."
    say "Install one, e.g.:  sudo apt-get install openjdk-17-jre-headless   (Debian/Ubuntu)"
    say "                    brew install openjdk@17                         (macOS)"
    say "then set JAVA_HOME to it and run this script again."
    exit 1
  fi
  # Spark finds Java through JAVA_HOME first.
  JAVA_HOME="$(dirname "$(dirname "$(readlink -f "$java_bin")")")"
  export JAVA_HOME
}

ensure_venv() {
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    say "Python >= 3.10 is needed ($PY is $("$PY" --version 2>&1 || echo missing)); set PYTHON=..."
    exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV"
    if ! "$PY" -m venv "$VENV" 2>/dev/null; then
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        rm -rf "$VENV"; "$PY" -m venv "$VENV"
      else
        say "python -m venv failed: install your distribution's python3-venv package"; exit 1
      fi
    fi
  fi
  local stamp="$VENV/.knnspark-installed"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    say "installing knnspark and its dependencies into $VENV (first time: a few minutes)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".[dev]"
    touch "$stamp"
  fi
}

# The report test (tests/e2e/test_cli.py) opens `knnspark report`'s page in headless Chromium.
ensure_chromium() {
  local browser
  for browser in "${KNNSPARK_CHROMIUM:-}" chromium chromium-browser google-chrome; do
    if [ -n "$browser" ] && command -v "$browser" >/dev/null 2>&1; then
      export KNNSPARK_CHROMIUM="$(command -v "$browser")"; return 0
    fi
  done
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "Chromium not found: installing Debian's chromium with apt-get (for the report test)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || {
      DEBIAN_FRONTEND=noninteractive apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    }
    export KNNSPARK_CHROMIUM=/usr/bin/chromium
  else
    say "no Chromium: the test that renders the report page will be skipped"
    say "(install one, e.g. sudo apt-get install chromium, or set KNNSPARK_CHROMIUM)"
  fi
}

setup() {
  ensure_java
  ensure_venv
  export PYSPARK_PYTHON="$VENV/bin/python"
  export PYSPARK_DRIVER_PYTHON="$VENV/bin/python"
}

demo() {
  setup
  local data="$ROOT/demo_data/embeddings_100k_x_100" out="$ROOT/demo_out/neighbors"
  if [ ! -f "$data/part-00000.parquet" ]; then
    "$VENV/bin/knnspark" generate --output "$data" --n 100000 --dim 100 --seed 0
  fi
  "$VENV/bin/knnspark" run --input "$data" --output "$out" --k 10 --mode overwrite --show 3
  "$VENV/bin/knnspark" report "$out" >/dev/null
  say "neighbour table: $out (manifest: $out/_manifest.json, report: $out/_report.html)"
}

run_tests() {
  setup
  ensure_chromium
  "$VENV/bin/ruff" check knnspark benchmarks jobs tests scripts deploy
  # Every tier (unit, spark, e2e) unless tests are named; plain `pytest` runs the fast two.
  [ $# -gt 0 ] || set -- tests
  "$VENV/bin/python" -m pytest -q "$@"
}

case "${1:-}" in
  demo) demo ;;
  test) shift; run_tests "$@" ;;
  setup) setup ;;
  *) echo "usage: bash scripts/bootstrap.sh demo|test|setup" >&2; exit 64 ;;
esac
