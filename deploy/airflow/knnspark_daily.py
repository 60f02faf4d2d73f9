"""Airflow 3 DAG: the knnspark all-items neighbour table, once a day, one ``dt=`` partition a run.

Each run submits ``jobs/all_items_knn.py`` with ``--partition-date`` set to the start of the
run's data interval, so a run (and every retry or backfill of it) writes exactly its own
``dt=YYYY-MM-DD`` partition: the job publishes atomically and replaces only that partition, which
is what makes retries safe. Executors run the packed environment built by
``deploy/build_env_archive.sh`` (shipped with ``--archives``).

Set up (see docs/deployment.md):

- a Spark connection ``spark_default`` (host ``yarn``, ``k8s://...``, or ``spark://...``);
- Airflow Variables ``knnspark_home`` (where the repo's ``jobs/`` lives on the Airflow worker),
  ``knnspark_env_archive`` (the archive, e.g. on HDFS/S3), ``knnspark_input``,
  ``knnspark_output`` and optionally ``knnspark_k``, ``knnspark_table``, and
  ``knnspark_incremental`` (``true``: each day updates the day before's partition, searching
  only new and changed items; the first day, or a day after a gap, runs in full).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import DAG

PYTHON_IN_ARCHIVE = "./environment/bin/python"
INCREMENTAL_FROM = (
    "{% if var.value.get('knnspark_incremental', 'false') | lower == 'true' %}"
    "{{ var.value.knnspark_output.rstrip('/') }}/"
    "dt={{ macros.ds_add(data_interval_start | ds, -1) }}"
    "{% endif %}"
)

with DAG(
    dag_id="knnspark_daily_neighbors",
    description="All-items top-k neighbour table, one dt partition a day",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 11, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # runs write different partitions, but share the cluster budget
    dagrun_timeout=timedelta(hours=8),
    default_args={
        "owner": "data-platform",
        # Safe: a retry rewrites the same dt= partition atomically, nothing else.
        "retries": 2,
        "retry_delay": timedelta(minutes=10),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(hours=6),
    },
    tags=["knnspark", "embeddings"],
) as dag:
    SparkSubmitOperator(
        task_id="all_items_knn",
        conn_id="spark_default",
        name="knnspark-{{ data_interval_start | ds }}",
        application="{{ var.value.knnspark_home }}/jobs/all_items_knn.py",
        conf={
            # spark.archives = --archives; set through conf because conf is a templated field.
            "spark.archives": "{{ var.value.knnspark_env_archive }}#environment",
            "spark.yarn.appMasterEnv.PYSPARK_PYTHON": PYTHON_IN_ARCHIVE,
            "spark.executorEnv.PYSPARK_PYTHON": PYTHON_IN_ARCHIVE,
            "spark.sql.shuffle.partitions": "400",
            "spark.sql.execution.arrow.maxRecordsPerBatch": "10000",
            "spark.executor.pyspark.memory": "2g",
        },
        env_vars={"PYSPARK_PYTHON": PYTHON_IN_ARCHIVE},
        application_args=[
            "--input",
            "{{ var.value.knnspark_input }}",
            "--output",
            "{{ var.value.knnspark_output }}",
            "--k",
            "{{ var.value.get('knnspark_k', '10') }}",
            "--partition-date",
            "{{ data_interval_start | ds }}",
            "--mode",
            "overwrite",
            "--table",
            "{{ var.value.get('knnspark_table', '') }}",
            # Empty unless the knnspark_incremental Variable is true: yesterday's partition.
            "--incremental-from",
            INCREMENTAL_FROM,
        ],  # fmt: skip
        verbose=False,
    )
