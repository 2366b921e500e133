"""Scheduled PostgreSQL backups: a CronJob running `pg_dump` onto its own retained volume."""

from __future__ import annotations

from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

from components.app_model import AppModel, BackupInfo, Resources
from components.on_kubernetes import pods, volumes
from components.on_kubernetes.platform import KubernetesPlatform
from components.on_kubernetes.policies import BACKUP_COMPONENT
from components.on_kubernetes.workloads import prefer_servers
from components.secrets import StackSecrets

BACKUP_SCRIPT = Path(__file__).resolve().parents[1] / "assets" / "backup" / "pg-backup.sh"
BACKUP_CLAIM = "postgres-backups"
BACKUP_RESOURCES = Resources(
    cpu_request="50m", memory_request="64Mi", cpu_limit="500m", memory_limit="256Mi"
)


PASSWORD_DIR = "/run/secrets"  # noqa: S105 - a path, not a value
PASSWORD_FILE = f"{PASSWORD_DIR}/db-password"
"""Where the backup and restore pods read the database password: a file from the app's Secret,
named by DB_PASSWORD_FILE, as on Docker (never an environment variable, which every process of
the container and its /proc/<pid>/environ carry)."""


def password_env() -> k8s.core.v1.EnvVarArgs:
    """DB_PASSWORD_FILE, which pg-backup.sh and pg-restore.sh turn into a private pgpass file."""
    return k8s.core.v1.EnvVarArgs(name="DB_PASSWORD_FILE", value=PASSWORD_FILE)


def database_env(app: AppModel, *extra: k8s.core.v1.EnvVarArgs) -> list[k8s.core.v1.EnvVarArgs]:
    """libpq's connection variables for the backup and restore pods, then `extra`, then
    DB_PASSWORD_FILE."""
    return [
        k8s.core.v1.EnvVarArgs(name="PGHOST", value=app.db.host),
        k8s.core.v1.EnvVarArgs(name="PGPORT", value=str(app.db.port)),
        k8s.core.v1.EnvVarArgs(name="PGDATABASE", value=app.db.name),
        k8s.core.v1.EnvVarArgs(name="PGUSER", value=app.db.user),
        *extra,
        password_env(),
    ]


def password_mount() -> k8s.core.v1.VolumeMountArgs:
    return k8s.core.v1.VolumeMountArgs(name="db-password", mount_path=PASSWORD_DIR, read_only=True)


def password_volume() -> k8s.core.v1.VolumeArgs:
    """The Secret's db-password key alone, readable by the pod's fsGroup only."""
    return k8s.core.v1.VolumeArgs(
        name="db-password",
        secret=k8s.core.v1.SecretVolumeSourceArgs(
            secret_name="app-secrets",  # noqa: S106 - the Secret named in app.APP_SECRET
            items=[k8s.core.v1.KeyToPathArgs(key="db-password", path="db-password")],
            default_mode=0o440,
        ),
    )


def render_backup(
    parent: pulumi.Resource,
    name: str,
    ns: pulumi.Input[str],
    app: AppModel,
    backup: BackupInfo,
    secrets: StackSecrets,
    platform: KubernetesPlatform,
) -> None:
    """Declare the backup volume, its script and the CronJob."""
    db = app.database
    opts = pulumi.ResourceOptions(parent=parent)
    volumes.persistent_volume_claim(
        f"{name}-backups",
        ns,
        BACKUP_CLAIM,
        "storage",
        backup.storage,
        config_key="picluster:app.database.backup.storage",
        platform=platform,
        opts=pulumi.ResourceOptions(parent=parent, retain_on_delete=True),
    )
    script = k8s.core.v1.ConfigMap(
        f"{name}-backup-script",
        metadata=pods.metadata("postgres-backup", ns, "config"),
        data={"pg-backup.sh": BACKUP_SCRIPT.read_text()},
        opts=opts,
    )
    env = database_env(app, k8s.core.v1.EnvVarArgs(name="KEEP", value=str(backup.keep)))
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
            password_mount(),
        ],
        resources=pods.resources(BACKUP_RESOURCES),
        security_context=pods.restricted_container_security(),
    )
    uid = db.run_as_user or 70
    k8s.batch.v1.CronJob(
        f"{name}-backup",
        metadata=pods.metadata("postgres-backup", ns, BACKUP_COMPONENT),
        spec=k8s.batch.v1.CronJobSpecArgs(
            schedule=backup.schedule,
            concurrency_policy="Forbid",
            successful_jobs_history_limit=3,
            failed_jobs_history_limit=3,
            job_template=k8s.batch.v1.JobTemplateSpecArgs(
                spec=k8s.batch.v1.JobSpecArgs(
                    backoff_limit=2,
                    ttl_seconds_after_finished=86400,
                    # Each run reads the current password anyway; the checksum makes a
                    # rotation visible in the CronJob too, like every other reader's.
                    template=pods.pod_template(
                        "postgres-backup",
                        BACKUP_COMPONENT,
                        k8s.core.v1.PodSpecArgs(
                            restart_policy="OnFailure",
                            # The first run binds the retained backup volume to its node.
                            affinity=prefer_servers(),
                            automount_service_account_token=False,
                            security_context=pods.restricted_pod_security(uid, fs_group=uid),
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
                                pods.scratch_volume("tmp"),
                                password_volume(),
                            ],
                        ),
                        secrets=[secrets.db_password],
                    ),
                )
            ),
        ),
        opts=pulumi.ResourceOptions(parent=parent, depends_on=[script]),
    )
