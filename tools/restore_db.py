"""Restore the game's database from a `pg_dump` backup, on either target (`bin/restore-db`).

    bin/restore-db --stack local --list                 the dumps, newest first
    bin/restore-db --stack local                        restore the newest dump
    bin/restore-db --stack prod --dump game-20261126T031700Z.sql.gz

The restore itself is `pg-restore.sh`, the same script on both targets, run where the stack put
it: on Docker in the backup container (`docker exec`), on K3s in a Job made from the suspended
CronJob `postgres-restore` (as `kubectl create job --from` makes one). Around it, this stops the
app's writers (the workloads given `DATABASE_URL`: their Docker containers are stopped, their
Deployments scaled to 0) and brings them back afterwards, failed restore or not, but never while
the script may still be running: a restore that outlives its time limit or is interrupted is
stopped (K3s: its Job deleted, and waited for) or, where it cannot be (Docker: `docker exec`
cannot stop what it started), the writers stay stopped and the user is told what to check. The
password never passes through here: the script reads it in its container (a secret file on
Docker, the app Secret by reference on K3s).
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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cli.stack import StackError, raw_settings  # noqa: E402
from components.on_docker.backup import BACKUP_CONTAINER, SCRIPTS_DIR  # noqa: E402
from components.on_kubernetes.platform import KubernetesPlatform  # noqa: E402
from components.on_kubernetes.restore import (  # noqa: E402
    RESTORE_CONTAINER,
    RESTORE_DEADLINE_SECONDS,
    RESTORE_NAME,
)

WRITER_ENV = "DATABASE_URL"
"""The workloads picluster gives this variable are the app's writers."""
REPLICAS_ANNOTATION = "picluster.io/replicas-before-restore"
"""A writer Deployment's replica count before a restore scaled it to 0; a run that was killed
leaves it, and the next run brings that count back instead of the 0 it finds."""
POLL_SECONDS = 2.0
COMMAND_SECONDS = 300.0
"""The limit of one CLI call other than the restore itself."""
STOP_SECONDS = 120
"""How long a Job that outlived its time is given to be deleted with its pod."""


class RestoreError(Exception):
    """A restore that cannot go on; the message says why and what to do."""


class RestoreTimeoutError(RestoreError):
    """A CLI call that ran past its time limit: the CLI was killed, not what it started."""


class StillRunningError(RestoreError):
    """The restore may still be changing the database: the writers are left stopped."""


Runner = Callable[..., subprocess.CompletedProcess[str]]


def run(
    argv: Sequence[str],
    *,
    input: str | None = None,
    capture: bool = True,
    check: bool = True,
    timeout: float = COMMAND_SECONDS,
) -> subprocess.CompletedProcess[str]:
    """Run a CLI (docker, kubectl); captured output, or the user's terminal when not `capture`."""
    try:
        result = subprocess.run(
            list(argv), input=input, text=True, capture_output=capture, check=False, timeout=timeout
        )
    except subprocess.TimeoutExpired as error:
        raise RestoreTimeoutError(f"`{' '.join(argv)}` did not end in {timeout:.0f} s") from error
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip() if capture else ""
        raise RestoreError(f"`{' '.join(argv)}` failed (exit {result.returncode}) {detail}")
    return result


def say(message: str) -> None:
    print(f"restore-db: {message}", flush=True)


def with_writers_stopped(
    stop: Callable[[], None], restore: Callable[[], bool], bring_back: Callable[[], list[str]]
) -> bool:
    """`stop` the writers, `restore`, and `bring_back` the writers (it reports and returns its
    failures), failed restore or not; but not while the restore may still be running."""
    try:
        stop()
        ok = restore()
    except StillRunningError:
        raise
    except BaseException:
        bring_back()  # its failures are said; the error that stopped the restore goes on
        raise
    failures = bring_back()
    if failures:
        done = "the restore succeeded" if ok else "the restore failed"
        raise RestoreError(f"{done}, but not every writer is back: {'; '.join(failures)}")
    return ok


@dataclass
class DockerTarget:
    """The local stack: containers named `<prefix>-...` on the network `<prefix>-app`."""

    prefix: str
    timeout: float = RESTORE_DEADLINE_SECONDS
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
        """The containers on the app network that are given DATABASE_URL, running or not: a run
        that was killed left them stopped, and this one starts them again."""
        names = self.run(
            ["docker", "ps", "--all", "--filter", f"network={self.prefix}-app",
             "--format", "{{.Names}}"]
        ).stdout.split()  # fmt: skip
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

    def script_running(self) -> bool:
        """Whether pg-restore.sh may still run in the backup container (`docker top` lists its
        processes from the host; when that fails or is interrupted, it may)."""
        try:
            top = self.run(["docker", "top", self.backup], check=False)
        except (RestoreError, KeyboardInterrupt):
            return True
        return top.returncode != 0 or "pg-restore.sh" in top.stdout

    def restore(self, dump: str | None) -> bool:
        writers = self.writers()

        def stop() -> None:
            if writers:
                say(f"stopping the writers: {', '.join(writers)}")
                self.run(["docker", "stop", *writers])

        def restore() -> bool:
            argv = self._script(*([dump] if dump else []))
            try:
                return (
                    self.run(argv, capture=False, check=False, timeout=self.timeout).returncode == 0
                )
            except (RestoreTimeoutError, KeyboardInterrupt) as error:
                # Only the docker CLI was stopped: the script runs on in the container.
                timed_out = isinstance(error, RestoreTimeoutError)
                why = f"not done in {self.timeout:.0f} s" if timed_out else "interrupted"
                if self.script_running():
                    raise StillRunningError(
                        f"the restore was {why}, and pg-restore.sh may still be running in "
                        f"{self.backup} (`docker top {self.backup}`): the writers stay stopped. "
                        "When it has ended, check the data (a database picluster_pre_restore "
                        "means it replaced the old one), then start them: "
                        f"`docker start {' '.join(writers)}`"
                    ) from error
                raise RestoreError(
                    f"the restore was {why}; pg-restore.sh has ended: check the data (a database "
                    "picluster_pre_restore means it replaced the old one)"
                ) from error

        def bring_back() -> list[str]:
            failures: list[str] = []
            for name in writers:
                started = self.run(["docker", "start", name], check=False)
                if started.returncode == 0:
                    say(f"started {name} again")
                else:
                    failures.append(f"`docker start {name}` failed: {started.stderr.strip()}")
                    say(failures[-1])
            return failures

        return with_writers_stopped(stop, restore, bring_back)


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
    timeout: float = RESTORE_DEADLINE_SECONDS + 60
    """Past the Job's own activeDeadlineSeconds, which normally ends it first."""
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
        try:
            succeeded = self._wait_for(name)
            if succeeded is None:
                raise RestoreTimeoutError(f"not done in {self.timeout:.0f} s")
        except (RestoreError, KeyboardInterrupt) as error:
            # The Job runs on without this tool: it is stopped before anything else happens.
            why = "interrupted" if isinstance(error, KeyboardInterrupt) else str(error)
            self._print_logs(name)
            self._stop(name, why)
            raise RestoreError(
                f"job/{name}: {why}; it was deleted with its pod. Check the data (a database "
                "picluster_pre_restore means it replaced the old one)"
            ) from error
        self._print_logs(name)
        if not succeeded:
            say(f"job/{name} failed: kubectl -n {self.namespace} describe job/{name}")
            self._pods_ended(name)
        return name, succeeded

    def _print_logs(self, name: str) -> None:
        try:
            logs = self.run(self.kubectl("logs", f"job/{name}"), check=False)
        except RestoreError:
            return
        sys.stdout.write(logs.stdout)

    def _wait_for(self, name: str) -> bool | None:
        """Whether job/`name` succeeded; None when it has not ended within the timeout."""
        deadline = self.clock() + self.timeout
        while True:
            status = self._get(f"job/{name}").get("status") or {}
            if status.get("succeeded"):
                return True
            if status.get("failed"):
                return False
            if self.clock() > deadline:
                return None
            self.sleep(POLL_SECONDS)

    def _pods(self, name: str) -> list[dict[str, Any]]:
        """The pods of job/`name`, by owner (its labels' names differ between K8s versions)."""
        return [
            pod
            for pod in self._get("pods").get("items", [])
            if any(
                (owner.get("kind"), owner.get("name")) == ("Job", name)
                for owner in pod["metadata"].get("ownerReferences") or []
            )
        ]

    def _pods_ended(self, name: str) -> None:
        """Wait until the failed Job's pod has stopped (a Job can be marked failed, past its
        deadline, while its pod is still terminating); delete the Job when it does not."""
        deadline = self.clock() + STOP_SECONDS
        try:
            while any(
                (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
                for pod in self._pods(name)
            ):
                if self.clock() > deadline:
                    raise RestoreTimeoutError(
                        f"its pod still runs {STOP_SECONDS} s after it failed"
                    )
                self.sleep(POLL_SECONDS)
        except (RestoreError, KeyboardInterrupt) as error:
            self._stop(name, str(error) or "interrupted")

    def _stop(self, name: str, why: str) -> None:
        """Delete job/`name` and wait until its pod is gone (foreground cascade: the Job goes
        only after its pod, and the pod only once its container has stopped). When that cannot
        be confirmed, the restore may still be running: StillRunningError."""
        say(f"job/{name}: {why}; deleting it and its pod")
        problem = "its pod is still there"
        try:
            deleted = self.run(
                self.kubectl("delete", f"job/{name}", "--cascade=foreground", "--ignore-not-found",
                             "--wait=true", f"--timeout={STOP_SECONDS}s"),
                check=False, timeout=STOP_SECONDS + 30,
            )  # fmt: skip
            problem = deleted.stderr.strip() or problem
            if deleted.returncode == 0 and not self._pods(name):
                return
        except (RestoreError, KeyboardInterrupt) as error:
            problem = str(error) or "interrupted"
        raise StillRunningError(
            f"job/{name} ({why}) could not be deleted with its pod ({problem}): pg-restore.sh "
            "may still be running, so the writers stay stopped. Check "
            f"`kubectl -n {self.namespace} get pods -l job-name={name}`; "
            "once no pod is left, check the data (a database picluster_pre_restore means it "
            "replaced the old one) and bring the writers back"
        )

    def list(self) -> bool:
        name, ok = self._job(["--list"], "list")
        self.run(self.kubectl("delete", f"job/{name}", "--wait=false"), check=False)
        return ok

    def writers(self) -> list[tuple[str, int, str]]:
        """(name, replicas, label selector) of each Deployment given DATABASE_URL; the replicas
        before a restore that was killed, when one left its annotation."""
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
                annotations = item["metadata"].get("annotations") or {}
                replicas = int(annotations.get(REPLICAS_ANNOTATION, spec.get("replicas", 1)))
                found.append((item["metadata"]["name"], replicas, selector))
        return sorted(found)

    def restore(self, dump: str | None) -> bool:
        writers = self.writers()

        def stop() -> None:
            for name, replicas, _ in writers:
                # Recorded first: a run killed from here on leaves the count to the next one.
                self.run(self.kubectl("annotate", "--overwrite", f"deployment/{name}",
                                      f"{REPLICAS_ANNOTATION}={replicas}"))  # fmt: skip
                say(f"scaling deployment/{name} to 0")
                self.run(self.kubectl("scale", f"deployment/{name}", "--replicas=0"))
            for _, _, selector in writers:
                self.run(
                    self.kubectl(
                        "wait", "--for=delete", "pod", "--selector", selector, "--timeout=300s"
                    ),
                    timeout=330,
                )

        def bring_back() -> list[str]:
            failures: list[str] = []
            for name, replicas, _ in writers:
                scaled = self.run(
                    self.kubectl("scale", f"deployment/{name}", f"--replicas={replicas}"),
                    check=False,
                )
                if scaled.returncode != 0:
                    failures.append(
                        f"`kubectl -n {self.namespace} scale deployment/{name} "
                        f"--replicas={replicas}` failed: {scaled.stderr.strip()}"
                    )
                    say(failures[-1])
                    continue
                self.run(self.kubectl("annotate", f"deployment/{name}", f"{REPLICAS_ANNOTATION}-"),
                         check=False)  # fmt: skip
                say(f"deployment/{name} back to {replicas} replicas")
            return failures

        def restore() -> bool:
            try:
                return self._job([dump] if dump else [], "run")[1]
            except StillRunningError as error:
                scale = "; ".join(
                    f"`kubectl -n {self.namespace} scale deployment/{name} --replicas={replicas}`"
                    for name, replicas, _ in writers
                )
                raise StillRunningError(f"{error}: {scale}") from error

        return with_writers_stopped(stop, restore, bring_back)


def stack_settings(stack: str) -> dict[str, Any]:
    """The `picluster:` keys of Pulumi.<stack>.yaml, unprefixed (cli/stack.py reads them)."""
    try:
        return raw_settings(stack, ROOT)
    except StackError as error:
        raise RestoreError(f"{error}, with --stack") from None


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
        if not isinstance(error, StillRunningError):
            say(f"if anything was left changed: `pulumi up --refresh -s {args.stack}`")
        return 2
    except KeyboardInterrupt:
        say(f"interrupted; if anything was left changed: `pulumi up --refresh -s {args.stack}`")
        return 130
    if ok:
        say("done")
        return 0
    say(
        "the restore failed: its log above says what it changed (pg-restore.sh replaces the "
        "database only in its last step, after the dump has loaded)"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
