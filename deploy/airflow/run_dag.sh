#!/usr/bin/env bash
# Run the DAG for one day, for real: `airflow dags test knnspark_daily_neighbors DATE` against a
# SQLite metadata database, its one task submitting the job with spark-submit.
#
#   bash deploy/airflow/run_dag.sh 2026-11-20
#
# What the run needs comes from the environment, as on an Airflow worker: the connection
# (AIRFLOW_CONN_SPARK_DEFAULT, e.g. {"conn_type": "spark", "host": "local[2]"}), the Variables
# (AIRFLOW_VAR_KNNSPARK_HOME, _ENV_ARCHIVE, _INPUT, _OUTPUT, optionally _K and _TABLE) and a
# spark-submit on PATH (SPARK_HOME set). AIRFLOW_HOME, when given, keeps the database between
# runs; otherwise a temporary one is used. tests/e2e/test_deploy.py runs it for two days.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/airflow_venv.sh"
if [[ -z "${AIRFLOW_HOME:-}" ]]; then
  AIRFLOW_HOME="$(mktemp -d)"
  trap 'rm -rf "$AIRFLOW_HOME"' EXIT
fi
export AIRFLOW_HOME
export AIRFLOW__CORE__DAGS_FOLDER="$HERE"
if [[ ! -f "$AIRFLOW_HOME/airflow.db" ]]; then
  "$VENV/bin/airflow" db migrate >&2
fi
exec "$VENV/bin/airflow" dags test knnspark_daily_neighbors "${1:?usage: run_dag.sh YYYY-MM-DD}"
