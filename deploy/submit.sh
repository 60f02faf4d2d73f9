#!/usr/bin/env bash
# Submit the all-items neighbour job with the packed environment (deploy/build_env_archive.sh).
#
#   bash deploy/submit.sh [spark-submit options] -- [job flags]
#   bash deploy/submit.sh --master yarn --deploy-mode cluster --num-executors 20 \
#       -- --input s3://b/emb/ --output s3://b/nbrs/ --k 10 --partition-date 2026-11-22
#
# Environment: KNNSPARK_ENV_ARCHIVE (default dist/knnspark-env.tar.gz), SPARK_SUBMIT (default
# spark-submit on PATH), PYSPARK_DRIVER_PYTHON for a client-mode driver (default: python3; it
# needs knnspark installed, e.g. the project venv; in cluster mode the driver uses the archive).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARCHIVE="${KNNSPARK_ENV_ARCHIVE:-$ROOT/dist/knnspark-env.tar.gz}"
SUBMIT="${SPARK_SUBMIT:-spark-submit}"
if [[ ! -f "$ARCHIVE" ]]; then
  echo "submit: $ARCHIVE not found; build it with: bash deploy/build_env_archive.sh" >&2
  exit 2
fi

SPARK_ARGS=()
MASTER=""
while [[ $# -gt 0 && "$1" != "--" ]]; do
  case "$1" in
    --master) MASTER="${2:-}" ;;
    --master=*) MASTER="${1#--master=}" ;;
  esac
  SPARK_ARGS+=("$1"); shift
done
[[ "${1:-}" == "--" ]] && shift

export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-python3}"
if [[ "$MASTER" == "local" || "$MASTER" == local\[* ]]; then
  # local[n] runs the Python workers from the driver's working directory, where Spark does not
  # unpack archives: unpack the same archive ourselves and point the workers at its interpreter.
  # (local-cluster[...] and real clusters take the --archives path below.)
  ENV_DIR="${KNNSPARK_LOCAL_ENV_DIR:-$(mktemp -d)/environment}"
  mkdir -p "$ENV_DIR"
  tar -xzf "$ARCHIVE" -C "$ENV_DIR"
  export PYSPARK_PYTHON="$ENV_DIR/bin/python"
  exec "$SUBMIT" "${SPARK_ARGS[@]}" "$ROOT/jobs/all_items_knn.py" "$@"
fi

# Executors run the archive's interpreter, unpacked in their working directory as ./environment
# (the Spark docs' recipe); so does a YARN cluster-mode driver (appMasterEnv).
export PYSPARK_PYTHON=./environment/bin/python
exec "$SUBMIT" \
  --archives "$ARCHIVE#environment" \
  --conf spark.yarn.appMasterEnv.PYSPARK_PYTHON=./environment/bin/python \
  "${SPARK_ARGS[@]}" \
  "$ROOT/jobs/all_items_knn.py" "$@"
