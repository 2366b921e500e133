"""Scheduled PostgreSQL backups: a CronJob running `pg_dump` onto its own retained volume."""

from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

from components.app_model import AppModel, BackupInfo
from components.on_kubernetes.platform import KubernetesPlatform, labels
from components.on_kubernetes.policies import BACKUP_COMPONENT
from components.on_kubernetes.workloads import restricted_security_context

BACKUP_SCRIPT = Path(__file__).resolve().parents[1] / "assets" / "backup" / "pg-backup.sh"
BACKUP_CLAIM = "postgres-backups"


def render_backup(
    parent: pulumi.Resource,
    name: str,
    ns: pulumi.Input[str],
    app: AppModel,
    backup: BackupInfo,
    platform: KubernetesPlatform,
) -> None:
    """Declare the backup volume, its script and the CronJob."""
    db = app.database
    opts = pulumi.ResourceOptions(parent=parent)
    k8s.core.v1.PersistentVolumeClaim(
        f"{name}-backups",
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name=BACKUP_CLAIM, namespace=ns, labels=labels(BACKUP_CLAIM, "storage")
        ),
        spec=k8s.core.v1.PersistentVolumeClaimSpecArgs(
            access_modes=["ReadWriteOnce"],
            storage_class_name=platform.storage_class,
            resources=k8s.core.v1.VolumeResourceRequirementsArgs(
                requests={"storage": backup.storage}
            ),
        ),
        opts=pulumi.ResourceOptions(parent=parent, retain_on_delete=True),
    )
    script = k8s.core.v1.ConfigMap(
        f"{name}-backup-script",
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name="postgres-backup", namespace=ns, labels=labels("postgres-backup", "config")
        ),
        data={"pg-backup.sh": BACKUP_SCRIPT.read_text()},
        opts=opts,
    )
    env = [
        k8s.core.v1.EnvVarArgs(name="PGHOST", value=app.db.host),
        k8s.core.v1.EnvVarArgs(name="PGPORT", value=str(app.db.port)),
        k8s.core.v1.EnvVarArgs(name="PGDATABASE", value=app.db.name),
        k8s.core.v1.EnvVarArgs(name="PGUSER", value=app.db.user),
        k8s.core.v1.EnvVarArgs(name="KEEP", value=str(backup.keep)),
        k8s.core.v1.EnvVarArgs(
            name="PGPASSWORD",
            value_from=k8s.core.v1.EnvVarSourceArgs(
                secret_key_ref=k8s.core.v1.SecretKeySelectorArgs(
                    name="app-secrets", key="db-password"
                )
            ),
        ),
    ]
    container = k8s.core.v1.ContainerArgs(
        name="pg-dump",
        image=db.image,
        image_pull_policy="IfNotPresent",
        command=["sh", "/scripts/pg-backup.sh"],
        env=env,
        volume_mounts=[
            k8s.core.v1.VolumeMountArgs(name="backups", mount_path="/backups"),
            k8s.core.v1.VolumeMountArgs(name="script", mount_path="/scripts", read_only=True),
            k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp"),
        ],
        resources=k8s.core.v1.ResourceRequirementsArgs(
            requests={"cpu": "50m", "memory": "64Mi"},
            limits={"cpu": "500m", "memory": "256Mi"},
        ),
        security_context=restricted_security_context(),
    )
    uid = db.run_as_user or 70
    pod_labels = labels("postgres-backup", BACKUP_COMPONENT)
    k8s.batch.v1.CronJob(
        f"{name}-backup",
        metadata=k8s.meta.v1.ObjectMetaArgs(
            name="postgres-backup", namespace=ns, labels=pod_labels
        ),
        spec=k8s.batch.v1.CronJobSpecArgs(
            schedule=backup.schedule,
            concurrency_policy="Forbid",
            successful_jobs_history_limit=3,
            failed_jobs_history_limit=3,
            job_template=k8s.batch.v1.JobTemplateSpecArgs(
                spec=k8s.batch.v1.JobSpecArgs(
                    backoff_limit=2,
                    ttl_seconds_after_finished=86400,
                    template=k8s.core.v1.PodTemplateSpecArgs(
                        metadata=k8s.meta.v1.ObjectMetaArgs(labels=pod_labels),
                        spec=k8s.core.v1.PodSpecArgs(
                            restart_policy="OnFailure",
                            automount_service_account_token=False,
                            security_context=k8s.core.v1.PodSecurityContextArgs(
                                run_as_non_root=True,
                                run_as_user=uid,
                                run_as_group=uid,
                                fs_group=uid,
                                seccomp_profile=k8s.core.v1.SeccompProfileArgs(
                                    type="RuntimeDefault"
                                ),
                            ),
                            containers=[container],
                            volumes=[
                                k8s.core.v1.VolumeArgs(
                                    name="backups",
                                    persistent_volume_claim=k8s.core.v1.PersistentVolumeClaimVolumeSourceArgs(
                                        claim_name=BACKUP_CLAIM
                                    ),
                                ),
                                k8s.core.v1.VolumeArgs(
                                    name="script",
                                    config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(
                                        name="postgres-backup"
                                    ),
                                ),
                                k8s.core.v1.VolumeArgs(
                                    name="tmp", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs()
                                ),
                            ],
                        ),
                    ),
                )
            ),
        ),
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[script]),
    )
