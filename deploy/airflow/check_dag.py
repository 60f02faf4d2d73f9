"""Load the DAG folder with DagBag and render one run's spark-submit command (JSON on stdout).

Run by ``check_dag.sh`` inside an Airflow venv: ``python check_dag.py DAG_FOLDER YYYY-MM-DD``.
"""

from __future__ import annotations

import json
import sys

import pendulum


class _Vars(dict):
    """``var.value`` in templates: attribute access and ``.get`` like Airflow's accessor."""

    def __getattr__(self, name: str) -> str:
        return self[name]


def main() -> None:
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow < 3.1
        from airflow.models.dagbag import DagBag

    folder, date = sys.argv[1], sys.argv[2]
    bag = DagBag(dag_folder=folder)  # examples are off: AIRFLOW__CORE__LOAD_EXAMPLES=False
    out: dict = {
        "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
        "dag_ids": sorted(bag.dag_ids),
    }
    dag = bag.dags["knnspark_daily_neighbors"]  # get_dag() would query the metadata DB
    task = dag.get_task("all_items_knn")
    start = pendulum.parse(date)
    context = {
        "data_interval_start": start,
        "data_interval_end": start.add(days=1),
        "ds": date,
        "var": {
            "value": _Vars(
                knnspark_home="/opt/knnspark",
                knnspark_env_archive="hdfs:///apps/knnspark/knnspark-env.tar.gz",
                knnspark_input="s3a://bucket/embeddings/",
                knnspark_output="s3a://bucket/neighbors/",
            )
        },
    }
    task.render_template_fields(context)
    # The operator's own hook, as execute() builds it; the connection comes from the
    # AIRFLOW_CONN_SPARK_DEFAULT variable (no metadata database here).
    hook = task._get_hook()
    out.update(
        application=task.application,
        application_args=list(task.application_args),
        spark_submit=hook._build_spark_submit_command(task.application),
        retries=task.retries,
        retry_exponential_backoff=bool(task.retry_exponential_backoff),
        execution_timeout_s=task.execution_timeout.total_seconds(),
        catchup=dag.catchup,
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
