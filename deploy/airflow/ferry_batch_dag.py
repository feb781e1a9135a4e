"""Daily sharded batch scoring with `ferry batch` on Kubernetes.

One KubernetesPodOperator per shard scores the day's partition `dt={{ ds }}`; Airflow's
retries re-run a failed shard, and ferry's completion markers make a retry skip the units it
already committed and redo the half-done one (no duplicate or lost rows). `catchup=True`
backfills past days (`airflow dags backfill ferry_batch_churn -s 2026-01-01 -e 2026-01-31`),
each day in its own output partition.

Exit codes: 3 (some units failed, nothing of them committed) is what retries are for. 2 (some
rows rejected) fails the task, and stays failed through every retry: the retry skips the
committed units, but their markers remember the rejected rows, so `ferry batch` answers 2 again
at once and prints each `rejected rows: <output>/_errors/<unit>.jsonl` path into the task log
(get_logs=True). The shard ends red with the error files named, never retried into green.
"""
from datetime import datetime, timedelta

from airflow import DAG
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from kubernetes.client import models as k8s

SHARDS = 8
IMAGE = "registry.example.com/ferry:0.1.0"
INPUT = "s3://ml-data/churn/features/dt={{ ds }}/"
OUTPUT = "s3://ml-data/churn/scores/dt={{ ds }}/"

config_volume = k8s.V1Volume(
    name="config", config_map=k8s.V1ConfigMapVolumeSource(name="ferry-batch-config"))
config_mount = k8s.V1VolumeMount(name="config", mount_path="/etc/ferry", read_only=True)

with DAG(
    dag_id="ferry_batch_churn",
    start_date=datetime(2026, 1, 1),
    schedule="@daily",
    catchup=True,
    max_active_runs=4,
    default_args={
        "retries": 3,
        "retry_delay": timedelta(minutes=5),
        "retry_exponential_backoff": True,
        "execution_timeout": timedelta(hours=4),
    },
    tags=["ferry", "batch"],
) as dag:
    for shard in range(SHARDS):
        KubernetesPodOperator(
            task_id=f"score_shard_{shard}",
            name=f"ferry-batch-churn-{shard}",
            namespace="ml",
            image=IMAGE,
            service_account_name="ferry-batch",
            arguments=[
                "batch",
                "--config=/etc/ferry/ferry.yaml",
                "--endpoint=churn",
                f"--input={INPUT}",
                f"--output={OUTPUT}",
                f"--shard={shard}/{SHARDS}",
                "--incremental",
                "--id-columns=user_id",
            ],
            env_vars={"FERRY_LOG_FORMAT": "json", "AWS_REGION": "eu-west-1"},
            volumes=[config_volume],
            volume_mounts=[config_mount],
            container_resources=k8s.V1ResourceRequirements(
                requests={"cpu": "2", "memory": "2Gi"}, limits={"cpu": "2", "memory": "4Gi"}),
            get_logs=True,
            on_finish_action="delete_pod",
        )
