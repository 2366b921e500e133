"""The database restore's pod, kept on the cluster as a suspended CronJob that never fires.

`bin/restore-db --stack prod` makes a Job from its template (as `kubectl create job --from`
does) with the dump's name as argument. The template is the stack's: the pinned postgres image,
`pg-restore.sh` (the script the Docker target runs too) from its own ConfigMap, the backups'
claim read-only, the password from the app Secret by reference, Pod Security `restricted`, and
the `backup` component label, which the NetworkPolicies let reach PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

from components.app_model import AppModel
from components.on_kubernetes import pods
from components.on_kubernetes.backup import (
    BACKUP_CLAIM,
    BACKUP_RESOURCES,
    database_env,
    password_mount,
    password_volume,
)
from components.on_kubernetes.policies import BACKUP_COMPONENT
from components.on_kubernetes.workloads import prefer_servers

RESTORE_SCRIPT = Path(__file__).resolve().parents[1] / "assets" / "backup" / "pg-restore.sh"
RESTORE_NAME = "postgres-restore"
"""The CronJob, its ConfigMap and the pods' `app.kubernetes.io/name`."""
RESTORE_CONTAINER = "pg-restore"
NEVER = "0 0 30 2 *"
"""February 30th: the CronJob is suspended too, and a restore only ever runs when asked for."""
RESTORE_DEADLINE_SECONDS = 1800
"""A restore's pod is stopped by the Job controller after this long (`activeDeadlineSeconds`),
so one left behind by an interrupted `bin/restore-db` cannot rename the database later."""


def render_restore(
    parent: pulumi.Resource,
    name: str,
    ns: pulumi.Input[str],
    app: AppModel,
) -> k8s.batch.v1.CronJob:
    """Declare the restore script's ConfigMap and the suspended CronJob holding the pod."""
    db = app.database
    script = k8s.core.v1.ConfigMap(
        f"{name}-restore-script",
        metadata=pods.metadata(RESTORE_NAME, ns, "config"),
        data={"pg-restore.sh": RESTORE_SCRIPT.read_text()},
        opts=pulumi.ResourceOptions(parent=parent),
    )
    env = database_env(app)
    container = k8s.core.v1.ContainerArgs(
        name=RESTORE_CONTAINER,
        image=db.image,
        image_pull_policy="IfNotPresent",
        command=["sh", "/scripts/pg-restore.sh"],
        env=env,
        volume_mounts=[
            pods.mount("backups", "/backups", read_only=True),
            pods.mount("script", "/scripts", read_only=True),
            pods.mount("tmp", "/tmp"),
            password_mount(),
        ],
        resources=pods.resources(BACKUP_RESOURCES),
        security_context=pods.restricted_container_security(),
    )
    uid = db.run_as_user or 70
    return k8s.batch.v1.CronJob(
        f"{name}-restore",
        metadata=pods.metadata(RESTORE_NAME, ns, BACKUP_COMPONENT),
        spec=k8s.batch.v1.CronJobSpecArgs(
            schedule=NEVER,
            suspend=True,
            concurrency_policy="Forbid",
            successful_jobs_history_limit=1,
            failed_jobs_history_limit=1,
            job_template=k8s.batch.v1.JobTemplateSpecArgs(
                spec=k8s.batch.v1.JobSpecArgs(
                    # A failed restore is looked at, never retried on its own.
                    backoff_limit=0,
                    active_deadline_seconds=RESTORE_DEADLINE_SECONDS,
                    ttl_seconds_after_finished=86400,
                    # Reads the password when it runs: no checksum annotation, so a password
                    # rotation leaves this template alone.
                    template=pods.pod_template(
                        RESTORE_NAME,
                        BACKUP_COMPONENT,
                        k8s.core.v1.PodSpecArgs(
                            restart_policy="Never",
                            # Like the backup job: should it be the backups claim's first
                            # consumer, the retained volume binds on a server.
                            affinity=prefer_servers(),
                            automount_service_account_token=False,
                            security_context=pods.restricted_pod_security(uid, fs_group=uid),
                            containers=[container],
                            volumes=[
                                k8s.core.v1.VolumeArgs(
                                    name="backups",
                                    persistent_volume_claim=k8s.core.v1.PersistentVolumeClaimVolumeSourceArgs(
                                        claim_name=BACKUP_CLAIM, read_only=True
                                    ),
                                ),
                                k8s.core.v1.VolumeArgs(
                                    name="script",
                                    config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(
                                        name=RESTORE_NAME
                                    ),
                                ),
                                pods.scratch_volume("tmp"),
                                password_volume(),
                            ],
                        ),
                    ),
                )
            ),
        ),
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[script]),
    )
