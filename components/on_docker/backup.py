"""Scheduled PostgreSQL backups on Docker: the same `pg_dump` job as the K3s CronJob.

One container from the database's own pinned image runs `pg-backup-schedule.sh`, which runs
`pg-backup.sh` (the script the CronJob runs) on `app.database.backup.schedule`, in UTC, into its
own named volume, keeping the newest `keep` dumps. The volume is retained like the database's: a
`pulumi destroy` or a replacement never deletes the dumps. The container also carries
`pg-restore.sh`, which `bin/restore-db` runs in it (`docker exec`).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from components.app_model import ASSETS, AppModel, BackupInfo
from components.on_docker.containers import ContainerSpec, DockerScope, run_container
from components.secrets import StackSecrets

BACKUP_CONTAINER = "postgres-backup"
"""The backup container's name after the stack's prefix (`picluster-local-postgres-backup`)."""
BACKUP_VOLUME = "postgres-backups"
"""The dumps' volume's name after the stack's prefix (`picluster-local-postgres-backups`)."""
BACKUP_DIR = "/backups"
SCRIPTS_DIR = "/opt/picluster"
PASSWORD_FILE = "/run/secrets/db-password"  # noqa: S105 - a path, not a value
SCRIPTS = ("pg-backup-schedule.sh", "pg-backup.sh", "pg-restore.sh")


@dataclass(frozen=True, kw_only=True)
class DockerBackup:
    """What the Docker rendering of the backups hands back."""

    container: docker.Container
    volume: docker.Volume


def render_backup(
    scope: DockerScope,
    app: AppModel,
    backup: BackupInfo,
    secrets: StackSecrets,
    *,
    database: docker.Container,
) -> DockerBackup:
    """Declare the backup volume and the container that fills it, after the database."""
    volume = docker.Volume(
        f"{scope.component}-{BACKUP_VOLUME}",
        name=f"{scope.name_prefix}-{BACKUP_VOLUME}",
        opts=pulumi.ResourceOptions(parent=scope.parent, retain_on_delete=True),
    )
    db = app.db
    spec = ContainerSpec(
        name=BACKUP_CONTAINER,
        image=app.database.image,
        aliases=(BACKUP_CONTAINER,),
        env={
            "PGHOST": db.host,
            "PGPORT": str(db.port),
            "PGDATABASE": db.name,
            "PGUSER": db.user,
            "KEEP": str(backup.keep),
            "SCHEDULE": backup.schedule,
            "DB_PASSWORD_FILE": PASSWORD_FILE,
        },
        files={
            f"{SCRIPTS_DIR}/{script}": (ASSETS / "backup" / script).read_text()
            for script in SCRIPTS
        },
        secret_files={PASSWORD_FILE: secrets.db_password},
        # The image's entrypoint runs any command other than `postgres` as it is. The schedule
        # starts as root to give the fresh volume to the postgres user, then runs as that user.
        command=("sh", f"{SCRIPTS_DIR}/pg-backup-schedule.sh"),
        volumes=[docker.ContainerVolumeArgs(volume_name=volume.name, container_path=BACKUP_DIR)],
    )
    container = run_container(scope, spec, depends_on=[database, volume])
    return DockerBackup(container=container, volume=volume)
