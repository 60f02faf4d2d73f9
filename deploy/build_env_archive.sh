#!/usr/bin/env bash
# Build the Python environment Spark executors run knnspark in: a relocatable venv archive.
#
#   bash deploy/build_env_archive.sh [OUT_DIR]        (default: dist/)
#
# Writes OUT_DIR/knnspark-<version>-py3-none-any.whl and OUT_DIR/knnspark-env.tar.gz (venv-pack),
# the layout the Spark docs' "Python Package Management" page recommends: wheels (numpy, pyarrow,
# scipy are native code, so --py-files zips cannot carry them) installed into a venv that is
# packed and shipped with
#
#   spark-submit --archives OUT_DIR/knnspark-env.tar.gz#environment \
#       --conf spark.pyspark.python=./environment/bin/python ...   (see deploy/submit.sh)
#
# PySpark itself is left out: executors run the cluster's own Spark, whose pyspark is put on the
# workers' PYTHONPATH by Spark. A venv links to its base interpreter, so the nodes need the same
# Python (PYTHON, default python3) at the same path; if they do not, use the Docker image
# (deploy/kubernetes/Dockerfile) or conda-pack with a conda Python.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mkdir -p "${1:-$ROOT/dist}" && cd "${1:-$ROOT/dist}" && pwd)"
PYTHON="${PYTHON:-python3}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
# KNNSPARK_DEPS_CACHE=DIR keeps the dependency venv between builds (keyed by the Python version
# and the requirement list), so a rebuild only reinstalls knnspark and repacks.
DEPS_CACHE="${KNNSPARK_DEPS_CACHE:-}"

echo "[build-env] building the knnspark wheel" >&2
"$PYTHON" -m venv "$WORK/build"
"$WORK/build/bin/python" -m pip install -q --upgrade pip wheel setuptools
rm -f "$OUT"/knnspark-*.whl
"$WORK/build/bin/python" -m pip wheel -q --no-deps -w "$OUT" "$ROOT"
WHEEL="$(ls "$OUT"/knnspark-*.whl)"

# The wheel's runtime requirements, minus pyspark (the cluster provides it).
mapfile -t REQS < <("$PYTHON" - "$WHEEL" <<'PY'
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as whl:
    meta = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
    for line in whl.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:") and "extra ==" not in line:
            req = line.split(":", 1)[1].strip()
            if not req.lower().startswith("pyspark"):
                print(req)
PY
)
KEY="$("$PYTHON" -c 'import sys; print("py%d.%d" % sys.version_info[:2])')-$(printf '%s\n' "${REQS[@]}" | sha256sum | cut -c1-12)"
if [[ -n "$DEPS_CACHE" ]]; then
  ENV_DIR="$DEPS_CACHE/$KEY"
else
  ENV_DIR="$WORK/env"
fi
ENV_PY="$ENV_DIR/bin/python"
if [[ ! -f "$ENV_DIR/.deps-installed" ]]; then
  echo "[build-env] installing ${REQS[*]} into $ENV_DIR" >&2
  rm -rf "$ENV_DIR"
  "$PYTHON" -m venv "$ENV_DIR"
  "$ENV_PY" -m pip install -q --upgrade pip
  "$ENV_PY" -m pip install -q "${REQS[@]}" venv-pack
  touch "$ENV_DIR/.deps-installed"
else
  echo "[build-env] reusing dependencies in $ENV_DIR" >&2
fi
"$ENV_PY" -m pip install -q --no-deps --force-reinstall "$WHEEL"
"$ENV_PY" -c "import knnspark, numpy, pyarrow, scipy, datasketch, threadpoolctl; print('[build-env] ok:', knnspark.__version__)" >&2

rm -f "$OUT/knnspark-env.tar.gz"
"$ENV_DIR/bin/venv-pack" -q -p "$ENV_DIR" -o "$OUT/knnspark-env.tar.gz" --compress-level 1 \
  --exclude 'bin/venv-pack' --exclude 'lib/python*/site-packages/venv_pack*' \
  --exclude 'lib/python*/site-packages/pip/*' --exclude 'lib/python*/site-packages/pip-*' \
  --exclude '.deps-installed'
ls -l "$OUT/knnspark-env.tar.gz" "$WHEEL" >&2
echo "$OUT/knnspark-env.tar.gz"
