#!/usr/bin/env bash
# Load deploy/airflow/ with Airflow's DagBag in a separate venv and print the rendered
# spark-submit command of one run as JSON (used by tests/test_deploy.py).
#
#   bash deploy/airflow/check_dag.sh [YYYY-MM-DD]
#
# The venv lives in ${KNNSPARK_CACHE:-~/.cache/knnspark}/airflow-<hash of requirements.txt>, so it
# is installed once per machine (a few minutes) and reused; the project venv stays Airflow-free.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${KNNSPARK_CACHE:-$HOME/.cache/knnspark}"
PYTHON="${PYTHON:-python3}"
KEY="$(cat "$HERE/requirements.txt" | sha256sum | cut -c1-12)"
VENV="$CACHE/airflow-$KEY"
if [[ ! -f "$VENV/.installed" ]]; then
  echo "[check-dag] installing Airflow into $VENV (once per machine)" >&2
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q -r "$HERE/requirements.txt" >&2
  touch "$VENV/.installed"
fi
AIRFLOW_HOME="$(mktemp -d)"
trap 'rm -rf "$AIRFLOW_HOME"' EXIT
export AIRFLOW_HOME
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__UNIT_TEST_MODE=True
# The spark_default connection, inline (no metadata database is needed to build the command).
export AIRFLOW_CONN_SPARK_DEFAULT="${AIRFLOW_CONN_SPARK_DEFAULT:-{\"conn_type\": \"spark\", \"host\": \"yarn\", \"extra\": {\"deploy-mode\": \"cluster\"}}}"
exec "$VENV/bin/python" "$HERE/check_dag.py" "$HERE" "${1:-2026-11-22}"
