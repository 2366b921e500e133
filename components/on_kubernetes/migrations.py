"""A service's database migration on K3s: one Job per release, which its Deployment waits for.

The Job `<service>-migrate-<tag>` runs the service's `migrate` command once (one pod, never one
per replica) in the release's image, with the service's environment, secrets and hardening.
`pulumi up` waits for it: pulumi-kubernetes awaits a created Job until its `Complete` condition
and fails the step on a `Failed` one (`BackoffLimitExceeded`, `DeadlineExceeded`;
provider/pkg/await/job.go, await/checker/job/check.go). The service's Deployment depends on the
Job, so a failed migration stops the update before the Deployment is patched: the engine skips
every step that depends on a failed one, and the old pods keep running the old release.

What the engine does with the previous release's Job when the tag changes: each release's Job
is its own resource, named by its tag (`<app>-<service>-migrate-<tag>`), so a new tag creates a
new one and the old one leaves the program; the engine deletes what left the program only after
every create and update succeeded, and `retainOnDelete` turns that delete into forgetting it,
so a routine change deletes no Job and no log. Kubernetes' TTL controller removes each Job (and
its pod's log) `TTL_SECONDS` after it finished.

Why not one resource whose `metadata.name` changes: pulumi-kubernetes replaces it, and the
engine builds the replacement from the inputs after `ignoreChanges` put back the old values
(pulumi/pulumi pkg/resource/deploy/step_generator.go, `processIgnoreChanges` before the diff):
the new release's Job would run the old image. A Job's spec is immutable (the API server rejects
a changed template), so within one release `spec` is left out of updates: a changed `migrate`
command or environment reaches the next release's Job, which is the only one that runs again.
"""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_kubernetes as k8s

from components.app_model import Workload, release
from components.on_kubernetes import pods
from components.on_kubernetes.platform import labels
from components.on_kubernetes.policies import MIGRATION_COMPONENT
from components.on_kubernetes.workloads import migration_container, pod_spec

COMPONENT = MIGRATION_COMPONENT
"""`app.kubernetes.io/component` of the migration pods (the database admits them)."""
BACKOFF_LIMIT = 1
"""One retry: a migration that fails twice in a row will not pass on a third try, and each
attempt is a pod whose log stays readable (restartPolicy Never)."""
TTL_SECONDS = 7 * 24 * 3600
"""A finished Job and its pod's log stay a week: long enough to read after a failed or
surprising release. After that a `pulumi up --refresh` finds the current Job gone and runs the
migration once more (which a migration tool that records what it applied answers with nothing
to do)."""
_MAX_NAME = 63
"""A Job's name is also its pods' `job-name` label value: at most 63 characters."""


def job_name(workload: Workload) -> str:
    """`<service>-migrate-<release>`, the service name shortened to fit 63 characters."""
    suffix = f"-migrate-{release(workload)}"
    return f"{workload.name[: _MAX_NAME - len(suffix)].rstrip('-')}{suffix}"


def render_migration(
    parent: pulumi.Resource,
    name: str,
    ns: pulumi.Input[str],
    workload: Workload,
    *,
    secret_name: str,
    config_map: str | None,
    files: dict[str, str],
    depends_on: Sequence[pulumi.Resource],
    image: pulumi.Input[str] | None = None,
) -> k8s.batch.v1.Job:
    """The release's migration Job of `workload`, after `depends_on` (its image's build and
    push, the database, the Secret and the NetworkPolicies that let it reach the database);
    `image` is a built image by its pushed digest (else `workload.image`)."""
    container = migration_container(
        workload, secret_name, config_map=config_map, files=files, image=image
    )
    pod_name = f"{workload.name}-migrate"
    return k8s.batch.v1.Job(
        f"{name}-{job_name(workload)}",
        metadata=pods.metadata(job_name(workload), ns, COMPONENT),
        spec=k8s.batch.v1.JobSpecArgs(
            backoff_limit=BACKOFF_LIMIT,
            completions=1,
            parallelism=1,
            ttl_seconds_after_finished=TTL_SECONDS,
            template=k8s.core.v1.PodTemplateSpecArgs(
                # Not the service's name label: its Service and PodDisruptionBudget select that.
                metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels(pod_name, COMPONENT)),
                spec=pod_spec(
                    workload,
                    [container],
                    config_map=config_map,
                    secret_name=secret_name,
                    restart_policy="Never",
                ),
            ),
        ),
        opts=pulumi.ResourceOptions(
            parent=parent,
            depends_on=list(depends_on),
            retain_on_delete=True,
            ignore_changes=["spec"],
        ),
    )
