#!/usr/bin/env bash
# Load deploy/airflow/ with Airflow's DagBag in a separate venv and print the rendered
# spark-submit command of one run as JSON (used by tests/e2e/test_deploy.py).
#
#   bash deploy/airflow/check_dag.sh [YYYY-MM-DD]
#
# The Airflow venv: see airflow_venv.sh.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/airflow_venv.sh"
AIRFLOW_HOME="$(mktemp -d)"
trap 'rm -rf "$AIRFLOW_HOME"' EXIT
export AIRFLOW_HOME
export AIRFLOW__CORE__UNIT_TEST_MODE=True
# The spark_default connection, inline (no metadata database is needed to build the command).
export AIRFLOW_CONN_SPARK_DEFAULT="${AIRFLOW_CONN_SPARK_DEFAULT:-{\"conn_type\": \"spark\", \"host\": \"yarn\", \"extra\": {\"deploy-mode\": \"cluster\"}}}"
exec "$VENV/bin/python" "$HERE/check_dag.py" "$HERE" "${1:-2026-11-22}"
