"""K3s datastore snapshots, as data: what the servers' config.yaml gets for embedded etcd, and what
the scheduled copy of a single server's SQLite datastore gets.

- Embedded etcd (more than one server): K3s takes the snapshots itself. picluster writes
  `etcd-snapshot-schedule-cron`, `etcd-snapshot-retention` and, with an S3 target, the
  `etcd-s3-*` keys into every server's config.yaml (k3s-io/k3s pkg/cli/cmds/server.go). The S3
  access and secret keys go there too, from the install's secret stdin into the 0600 file: K3s's
  alternative, `etcd-s3-config-secret`, cannot be used by a restore ("cannot use S3 config secret
  when restoring snapshot; configuration must be set in CLI or config file", pkg/etcd/etcd.go).
- One server (SQLite through kine): K3s has no snapshots for it, so a systemd timer on that server
  runs `datastore-snapshot.sh`, an online SQLite backup of state.db (`k3s-sqlite-snapshots.sh`
  installs both). The same cron schedule drives it, as a systemd `OnCalendar`.

Pure functions of plain values: they run inside `Output.apply`.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from components.remote_script import script_path

SNAPSHOT_DIR = "/var/lib/rancher/k3s/server/db/snapshots"
"""Where K3s keeps etcd snapshots (`${data-dir}/server/db/snapshots`) and picluster the SQLite
copies."""
DEFAULT_SCHEDULE = "0 */12 * * *"
"""K3s's default `etcd-snapshot-schedule-cron`."""
DEFAULT_RETENTION = 5
"""K3s's default `etcd-snapshot-retention`."""


@dataclass(frozen=True, kw_only=True)
class S3Target:
    """An S3-compatible bucket for etcd snapshots (the keys are secrets, passed separately)."""

    bucket: str
    endpoint: str = "s3.amazonaws.com"
    region: str = "us-east-1"
    folder: str | None = None
    insecure: bool = False
    """Plain HTTP to the endpoint."""
    skip_ssl_verify: bool = False
    """HTTPS without checking the endpoint's certificate."""


@dataclass(frozen=True, kw_only=True)
class DatastoreSnapshots:
    """How often the datastore is snapshotted, how many are kept, and where else they go."""

    enabled: bool = True
    schedule: str = DEFAULT_SCHEDULE
    """A five-field cron schedule (K3s's format)."""
    retention: int = DEFAULT_RETENTION
    """How many snapshots each server keeps (and K3s keeps in S3)."""
    s3: S3Target | None = None
    """Also upload etcd snapshots to this bucket."""


def etcd_config(snapshots: DatastoreSnapshots) -> dict[str, object]:
    """The non-secret config.yaml keys of a server running embedded etcd."""
    if not snapshots.enabled:
        return {"etcd-disable-snapshots": True}
    config: dict[str, object] = {
        "etcd-snapshot-schedule-cron": snapshots.schedule,
        "etcd-snapshot-retention": snapshots.retention,
    }
    s3 = snapshots.s3
    if s3 is not None:
        config |= {
            "etcd-s3": True,
            "etcd-s3-endpoint": s3.endpoint,
            "etcd-s3-bucket": s3.bucket,
            "etcd-s3-region": s3.region,
        }
        if s3.folder:
            config["etcd-s3-folder"] = s3.folder
        if s3.insecure:
            config["etcd-s3-insecure"] = True
        if s3.skip_ssl_verify:
            config["etcd-s3-skip-ssl-verify"] = True
    return config


def etcd_s3_credentials(access_key: str, secret_key: str) -> dict[str, str]:
    """The secret config.yaml keys (values of the secrets, only ever inside secret stdin)."""
    return {"etcd-s3-access-key": access_key, "etcd-s3-secret-key": secret_key}


_DAYS = ("Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12))


def _calendar_part(value: str, name: str, low: int, high: int) -> str:
    """One cron field as a systemd calendar component (`*/5` -> `0/5`, `1-5` -> `1..5`)."""
    parts: list[str] = []
    for item in value.split(","):
        step = re.fullmatch(r"\*/([0-9]+)", item)
        span = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", item)
        if item == "*":
            parts.append("*")
        elif step and int(step[1]) > 0:
            parts.append(f"{low}/{int(step[1])}")
        elif span and all(low <= int(n) <= high for n in span.groups() if n is not None):
            parts.append(f"{int(span[1])}..{int(span[2])}" if span[2] else str(int(span[1])))
        else:
            raise ValueError(
                f"{name} {item!r} cannot be scheduled for the SQLite datastore's copy; use *, "
                f"*/N, N, N-M or lists of them ({low}-{high})"
            )
    return ",".join(parts)


def on_calendar(cron: str) -> str:
    """A five-field cron schedule as a systemd `OnCalendar=` expression.

    Raises ValueError for what has no systemd form (steps of ranges, a step of weekdays).
    """
    fields = cron.split()
    if len(fields) != 5:
        raise ValueError(f"{cron!r} is not a five-field cron schedule")
    minute, hour, dom, month = (
        _calendar_part(value, *spec) for value, spec in zip(fields[:4], _FIELDS, strict=True)
    )
    weekday = ""
    if fields[4] != "*":
        days: list[str] = []
        for item in fields[4].split(","):
            span = re.fullmatch(r"([0-7])(?:-([0-7]))?", item)
            if not span:
                raise ValueError(
                    f"day of week {item!r} cannot be scheduled for the SQLite datastore's copy; "
                    "use 0-7 (0 and 7 are Sunday), N-M or lists of them"
                )
            first, last = span[1], span[2]
            days.append(f"{_DAYS[int(first)]}..{_DAYS[int(last)]}" if last else _DAYS[int(first)])
        weekday = ",".join(days) + " "
    return f"{weekday}*-{month}-{dom} {hour}:{minute}:00"


def sqlite_timer_values(snapshots: DatastoreSnapshots) -> dict[str, str]:
    """What `k3s-sqlite-snapshots.sh` receives on stdin."""
    copy_script = script_path("datastore-snapshot.sh").read_bytes()
    return {
        "ENABLED": "1" if snapshots.enabled else "0",
        "ON_CALENDAR": on_calendar(snapshots.schedule),
        "RETENTION": str(snapshots.retention),
        "COPY_SCRIPT_B64": base64.b64encode(copy_script).decode(),
    }
