# Sourced by check_dag.sh and run_dag.sh: sets VENV to a virtualenv with Airflow and the Spark
# provider (deploy/airflow/requirements.txt), installed once per machine under
# ${KNNSPARK_CACHE:-~/.cache/knnspark}/airflow-<hash of requirements.txt> (a few minutes) and
# reused; the project venv stays Airflow-free.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${KNNSPARK_CACHE:-$HOME/.cache/knnspark}"
PYTHON="${PYTHON:-python3}"
KEY="$(sha256sum < "$HERE/requirements.txt" | cut -c1-12)"
VENV="$CACHE/airflow-$KEY"
if [[ ! -f "$VENV/.installed" ]]; then
  echo "[airflow] installing Airflow into $VENV (once per machine)" >&2
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q -r "$HERE/requirements.txt" >&2
  touch "$VENV/.installed"
fi
export AIRFLOW__CORE__LOAD_EXAMPLES=False
