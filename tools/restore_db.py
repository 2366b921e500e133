"""Restore the game's database from a `pg_dump` backup, on either target (`bin/restore-db`).

    bin/restore-db --stack local --list                 the dumps, newest first
    bin/restore-db --stack local                        restore the newest dump
    bin/restore-db --stack prod --dump game-20261126T031700Z.sql.gz

The restore itself is `pg-restore.sh`, the same script on both targets, run where the stack put
it: on Docker in the backup container (`docker exec`), on K3s in a Job made from the suspended
CronJob `postgres-restore` (as `kubectl create job --from` makes one). Around it, this stops the
app's writers (the workloads given `DATABASE_URL`: their Docker containers are stopped, their
Deployments scaled to 0) and brings them back afterwards, failed restore or not. The password
never passes through here: the script reads it in its container (a secret file on Docker, the
app Secret by reference on K3s).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from components.on_docker.backup import BACKUP_CONTAINER, SCRIPTS_DIR  # noqa: E402
from components.on_kubernetes.platform import KubernetesPlatform  # noqa: E402
from components.on_kubernetes.restore import RESTORE_CONTAINER, RESTORE_NAME  # noqa: E402

WRITER_ENV = "DATABASE_URL"
"""The workloads picluster gives this variable are the app's writers."""
POLL_SECONDS = 2.0


class RestoreError(Exception):
    """A restore that cannot go on; the message says why and what to do."""


Runner = Callable[..., subprocess.CompletedProcess[str]]


def run(
    argv: Sequence[str], *, input: str | None = None, capture: bool = True, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a CLI (docker, kubectl); captured output, or the user's terminal when not `capture`."""
    result = subprocess.run(
        list(argv), input=input, text=True, capture_output=capture, check=False, timeout=3600
    )
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip() if capture else ""
        raise RestoreError(f"`{' '.join(argv)}` failed (exit {result.returncode}) {detail}")
    return result


def say(message: str) -> None:
    print(f"restore-db: {message}", flush=True)


@dataclass
class DockerTarget:
    """The local stack: containers named `<prefix>-...` on the network `<prefix>-app`."""

    prefix: str
    run: Runner = run

    @property
    def backup(self) -> str:
        return f"{self.prefix}-{BACKUP_CONTAINER}"

    def _script(self, *args: str) -> list[str]:
        # As the image's postgres user, the one the backup job runs as.
        return ["docker", "exec", "--user", "postgres", self.backup,
                "sh", f"{SCRIPTS_DIR}/pg-restore.sh", *args]  # fmt: skip

    def check(self) -> None:
        state = self.run(
            ["docker", "inspect", "--format", "{{.State.Running}}", self.backup], check=False
        )
        if state.returncode != 0 or state.stdout.strip() != "true":
            raise RestoreError(
                f"no running backup container {self.backup}: are backups enabled "
                "(picluster:app.database.backup.enabled) and the stack up (pulumi up)?"
            )

    def list(self) -> bool:
        return self.run(self._script("--list"), capture=False, check=False).returncode == 0

    def writers(self) -> list[str]:
        """The running containers on the app network that are given DATABASE_URL."""
        names = self.run(
            ["docker", "ps", "--filter", f"network={self.prefix}-app", "--format", "{{.Names}}"]
        ).stdout.split()
        if not names:
            return []
        # Only the variables' names leave Docker: the template splits each entry at `=`.
        template = '{{.Name}}{{range .Config.Env}} {{index (split . "=") 0}}{{end}}'
        lines = self.run(["docker", "inspect", "--format", template, *names]).stdout
        return sorted(
            line.split()[0].lstrip("/")
            for line in lines.splitlines()
            if WRITER_ENV in line.split()[1:]
        )

    def restore(self, dump: str | None) -> bool:
        writers = self.writers()
        try:
            if writers:
                say(f"stopping the writers: {', '.join(writers)}")
                self.run(["docker", "stop", *writers])
            ok = self.run(self._script(*([dump] if dump else [])), capture=False, check=False)
            return ok.returncode == 0
        finally:
            if writers:
                self.run(["docker", "start", *writers])
                say(f"started the writers again: {', '.join(writers)}")


def job_from_cronjob(cronjob: dict[str, Any], name: str, args: Sequence[str]) -> dict[str, Any]:
    """The Job `kubectl create job NAME --from=cronjob/...` makes, with `args` for the restore
    container (k8s.io/kubectl pkg/cmd/create/create_job.go, createJobFromCronJob)."""
    template = copy.deepcopy(cronjob["spec"]["jobTemplate"])
    template_meta = template.get("metadata") or {}
    spec = template["spec"]
    containers = [
        c for c in spec["template"]["spec"]["containers"] if c["name"] == RESTORE_CONTAINER
    ]
    if len(containers) != 1:
        raise RestoreError(f"cronjob/{RESTORE_NAME} has no container {RESTORE_CONTAINER}")
    containers[0]["args"] = list(args)
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": cronjob["metadata"]["namespace"],
        "annotations": {
            "cronjob.kubernetes.io/instantiate": "manual",
            **(template_meta.get("annotations") or {}),
        },
        "ownerReferences": [
            {
                "apiVersion": "batch/v1",
                "kind": "CronJob",
                "name": cronjob["metadata"]["name"],
                "uid": cronjob["metadata"]["uid"],
                "controller": True,
            }
        ],
    }
    if template_meta.get("labels"):
        metadata["labels"] = template_meta["labels"]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}


@dataclass
class KubernetesTarget:
    """The prod stack: the app namespace on the cluster of the current kubeconfig."""

    namespace: str
    kubeconfig: str | None = None
    timeout: float = 1800
    run: Runner = run
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def kubectl(self, *args: str) -> list[str]:
        config = ["--kubeconfig", self.kubeconfig] if self.kubeconfig else []
        return ["kubectl", *config, "--namespace", self.namespace, *args]

    def _get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.run(self.kubectl("get", *args, "--output", "json")).stdout)

    def check(self) -> None:
        found = self.run(self.kubectl("get", f"cronjob/{RESTORE_NAME}"), check=False)
        if found.returncode != 0:
            raise RestoreError(
                f"no cronjob/{RESTORE_NAME} in namespace {self.namespace}: are backups enabled "
                "(picluster:app.database.backup.enabled), the stack up (pulumi up -s prod) and "
                f"KUBECONFIG the cluster's? ({found.stderr.strip()})"
            )

    def _job(self, args: Sequence[str], kind: str) -> tuple[str, bool]:
        """Run a Job of the restore template with `args`: its name and whether it succeeded.
        Its log is printed either way."""
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        name = f"{RESTORE_NAME}-{kind}-{stamp}"
        job = job_from_cronjob(self._get(f"cronjob/{RESTORE_NAME}"), name, args)
        self.run(self.kubectl("create", "--filename", "-"), input=json.dumps(job))
        deadline = self.clock() + self.timeout
        succeeded = False
        while True:
            status = self._get(f"job/{name}").get("status") or {}
            if status.get("succeeded"):
                succeeded = True
                break
            if status.get("failed"):
                break
            if self.clock() > deadline:
                say(f"job/{name} did not finish in {self.timeout:.0f} s")
                break
            self.sleep(POLL_SECONDS)
        logs = self.run(self.kubectl("logs", f"job/{name}"), check=False)
        sys.stdout.write(logs.stdout)
        if not succeeded:
            say(f"job/{name} failed: kubectl -n {self.namespace} describe job/{name}")
        return name, succeeded

    def list(self) -> bool:
        name, ok = self._job(["--list"], "list")
        self.run(self.kubectl("delete", f"job/{name}", "--wait=false"), check=False)
        return ok

    def writers(self) -> list[tuple[str, int, str]]:
        """(name, replicas, label selector) of each Deployment given DATABASE_URL."""
        found: list[tuple[str, int, str]] = []
        for item in self._get("deployments").get("items", []):
            spec = item["spec"]
            env = {
                variable["name"]
                for container in spec["template"]["spec"]["containers"]
                for variable in container.get("env") or []
            }
            if WRITER_ENV in env:
                labels = spec["selector"]["matchLabels"]
                selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
                found.append((item["metadata"]["name"], int(spec.get("replicas", 1)), selector))
        return sorted(found)

    def restore(self, dump: str | None) -> bool:
        writers = self.writers()
        try:
            for name, _, _ in writers:
                say(f"scaling deployment/{name} to 0")
                self.run(self.kubectl("scale", f"deployment/{name}", "--replicas=0"))
            for _, _, selector in writers:
                self.run(
                    self.kubectl(
                        "wait", "--for=delete", "pod", "--selector", selector, "--timeout=300s"
                    )
                )
            return self._job([dump] if dump else [], "run")[1]
        finally:
            for name, replicas, _ in writers:
                self.run(self.kubectl("scale", f"deployment/{name}", f"--replicas={replicas}"))
                say(f"deployment/{name} back to {replicas} replicas")


def stack_settings(stack: str) -> dict[str, Any]:
    """The `picluster:` keys of Pulumi.<stack>.yaml, unprefixed."""
    path = ROOT / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        raise RestoreError(f"no {path.name}: name a stack of this project with --stack")
    config = (yaml.safe_load(path.read_text()) or {}).get("config") or {}
    prefix = "picluster:"
    return {k.removeprefix(prefix): v for k, v in config.items() if k.startswith(prefix)}


def target_for(args: argparse.Namespace) -> DockerTarget | KubernetesTarget:
    settings = stack_settings(args.stack)
    if settings.get("target") == "docker":
        host = (settings.get("docker") or {}).get("host")
        if host and "DOCKER_HOST" not in os.environ:
            os.environ["DOCKER_HOST"] = host  # the stack's daemon, as its provider uses
        return DockerTarget(prefix=f"picluster-{args.stack}")
    default = {f.name: f.default for f in dataclasses.fields(KubernetesPlatform)}["app_namespace"]
    return KubernetesTarget(namespace=args.namespace or str(default), kubeconfig=args.kubeconfig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bin/restore-db", description="Restore the game's database from a pg_dump backup."
    )
    parser.add_argument("--stack", required=True, help="the Pulumi stack: local or prod")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--list", action="store_true", help="list the dumps, newest first")
    action.add_argument("--dump", help="the dump to restore (from --list); default: the newest")
    parser.add_argument("--yes", action="store_true", help="do not ask before restoring")
    parser.add_argument("--namespace", help="K3s: the app namespace (game)")
    parser.add_argument("--kubeconfig", help="K3s: the kubeconfig (default: KUBECONFIG)")
    args = parser.parse_args(argv)
    try:
        target = target_for(args)
        target.check()
        if args.list:
            return 0 if target.list() else 1
        what = args.dump or "the newest dump"
        if not args.yes:
            if not sys.stdin.isatty():
                raise RestoreError("restoring replaces the database: confirm with --yes")
            answer = input(f"Replace the {args.stack} stack's database with {what}? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                say("nothing done")
                return 1
        ok = target.restore(args.dump)
    except RestoreError as error:
        say(str(error))
        return 2
    if ok:
        say(f"done. `pulumi up -s {args.stack}` puts back anything declared that was changed")
        return 0
    say(f"the restore failed; the database is as it was. `pulumi up -s {args.stack}` if needed")
    return 1


if __name__ == "__main__":
    sys.exit(main())
