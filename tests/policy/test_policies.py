"""The policy pack: each policy passing and failing on resource inputs as the engine sends them,
the pack itself served over gRPC, and the committed stacks passing their own policies.

Inputs are written in the engine's wire form (a secret is `{sig: secret, value: ...}`) and become
the SDK's own `ResourceValidationArgs` the way the pack builds them: deserialized with secret
markers kept, wrapped in the SDK's unknown-checking proxy.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2, json_format, struct_pb2
from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc
from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyCustomTimeouts,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Secret,
)
from pulumi_policy import policy as sdk_policy
from pulumi_policy.deserialize import SPECIAL_SECRET_SIG, SPECIAL_SIG_KEY
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, unknown_checking_proxy

from policy import picluster_policies as pp
from tests.harness import Registration, Run, run_main, stack_file_config
from tests.unit.test_prod_program import run_prod

POLICY_DIR = Path(__file__).resolve().parents[2] / "policy"
DIGEST = "sha256:" + "a" * 64
PEM = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n-----END OPENSSH PRIVATE KEY-----\n"


def secret(value: Any) -> dict[str, Any]:
    """`value` as the engine sends a secret."""
    return {SPECIAL_SIG_KEY: SPECIAL_SECRET_SIG, "value": value}


def sdk_args(
    type_: str,
    props: Mapping[str, Any],
    *,
    name: str = "thing",
    protect: bool = False,
    config: Mapping[str, Any] | None = None,
) -> ResourceValidationArgs:
    """The SDK's validation arguments for inputs in wire form, built as the pack builds them."""
    opts = PolicyResourceOptions(protect, [], None, [], PolicyCustomTimeouts(0, 0, 0), [], None)
    return ResourceValidationArgs(
        type_,
        unknown_checking_proxy(pp.deserialize_keeping_secrets(dict(props))),
        f"urn:pulumi:test::picluster::{type_}::{name}",
        name,
        opts,
        None,
        dict(config) if config is not None else None,
    )


POLICIES: dict[str, ResourceValidationPolicy] = {
    p.name: p for p in pp.policies() if isinstance(p, ResourceValidationPolicy)
}


def judge(policy: str, args: ResourceValidationArgs) -> list[str] | None:
    """The violations `policy` reports, or None when it says it does not apply."""
    reported: list[str] = []
    validate = POLICIES[policy].validate
    assert callable(validate)
    try:
        validate(args, lambda message, urn=None: reported.append(message))
    except sdk_policy._NotApplicableError:
        return None
    return reported


def workload(kind: str, pod: dict[str, Any], namespace: str | None = "game") -> dict[str, Any]:
    """A Kubernetes workload's inputs around the pod spec `pod`."""
    metadata: dict[str, Any] = {"name": "w"} | ({"namespace": namespace} if namespace else {})
    template = {"metadata": {"labels": {"app": "w"}}, "spec": pod}
    if kind == "CronJob":
        return {"metadata": metadata, "spec": {"jobTemplate": {"spec": {"template": template}}}}
    if kind == "Pod":
        return {"metadata": metadata, "spec": pod}
    return {"metadata": metadata, "spec": {"template": template}}


KINDS = {
    "Deployment": "kubernetes:apps/v1:Deployment",
    "StatefulSet": "kubernetes:apps/v1:StatefulSet",
    "DaemonSet": "kubernetes:apps/v1:DaemonSet",
    "CronJob": "kubernetes:batch/v1:CronJob",
    "Job": "kubernetes:batch/v1:Job",
    "Pod": "kubernetes:core/v1:Pod",
}
LIMITS = {"limits": {"cpu": "200m", "memory": "128Mi"}, "requests": {"cpu": "50m"}}


def container(image: str = "nginx:1.27.3-alpine", **extra: Any) -> dict[str, Any]:
    """A container spec with pinned image and limits unless overridden."""
    return {"name": "c", "image": image, "resources": LIMITS} | extra


# --- images-pinned -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        "postgres:17-alpine",
        "registry.lan:5000/game/api:1.4.2",
        f"nginx@{DIGEST}",
        f"nginx:1.27@{DIGEST}",
    ],
)
def test_pinned_remote_images_pass(image: str) -> None:
    assert judge("images-pinned", sdk_args(pp.REMOTE_IMAGE, {"name": image})) == []


@pytest.mark.parametrize(
    ("image", "why"),
    [
        ("nginx", "has no tag"),
        ("nginx:latest", "is tagged latest"),
        ("registry.lan:5000/game/api", "has no tag"),
        ("nginx@sha256:short", "malformed digest"),
    ],
)
def test_unpinned_remote_images_fail(image: str, why: str) -> None:
    [problem] = judge("images-pinned", sdk_args(pp.REMOTE_IMAGE, {"name": image})) or ["none"]
    assert why in problem and image in problem


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_kubernetes_images_pass_when_every_container_is_pinned(kind: str) -> None:
    pod = {"initContainers": [container("busybox:1.37")], "containers": [container()]}
    assert judge("images-pinned", sdk_args(KINDS[kind], workload(kind, pod))) == []


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_kubernetes_unpinned_container_or_init_container_fails(kind: str) -> None:
    pod = {
        "initContainers": [container("busybox", name="init")],
        "containers": [container("api:latest", name="api"), container()],
    }
    problems = judge("images-pinned", sdk_args(KINDS[kind], workload(kind, pod))) or []
    assert len(problems) == 2
    assert "initContainers[0] (init).image 'busybox' has no tag" in problems[0]
    assert "containers[0] (api).image 'api:latest' is tagged latest" in problems[1]


def test_an_image_known_only_at_update_is_left_to_the_update_and_a_missing_one_fails() -> None:
    # A built image's reference carries the digest its push prints: unknown in a fresh preview,
    # checked again by `pulumi up --policy-pack`. An image that is not set at all still fails.
    unknown = {"containers": [container(UNKNOWN_STRING_VALUE, name="api")]}
    assert (
        judge("images-pinned", sdk_args(KINDS["Deployment"], workload("Deployment", unknown))) == []
    )
    missing_image = container(name="api")
    del missing_image["image"]
    missing = {"containers": [missing_image]}
    [problem] = judge(
        "images-pinned", sdk_args(KINDS["Deployment"], workload("Deployment", missing))
    ) or ["none"]
    assert "containers[0] (api).image is not set" in problem


# --- container-limits ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_containers_with_cpu_and_memory_limits_pass(kind: str) -> None:
    pod = {"initContainers": [container()], "containers": [container(), container()]}
    assert judge("container-limits", sdk_args(KINDS[kind], workload(kind, pod))) == []


def test_container_without_memory_limit_fails() -> None:
    pod = {"containers": [container(resources={"limits": {"cpu": "1"}})]}
    problems = judge("container-limits", sdk_args(KINDS["Deployment"], workload("x", pod)))
    assert problems == ["containers[0] (c) has no memory limit"]


def test_init_container_without_limits_fails() -> None:
    pod = {
        "initContainers": [container(resources={"requests": {"cpu": "1", "memory": "1Gi"}})],
        "containers": [container()],
    }
    problems = judge("container-limits", sdk_args(KINDS["StatefulSet"], workload("x", pod)))
    assert problems == ["initContainers[0] (c) has no cpu and no memory limit"]


def test_limits_only_concern_kubernetes_workloads() -> None:
    assert judge("container-limits", sdk_args(pp.DOCKER_CONTAINER, {"image": "x"})) == []


# --- no-privileged-containers --------------------------------------------------------------------

NODE_EXPORTER_POD = {
    "hostPID": True,
    "hostNetwork": True,
    "containers": [container("prom/node-exporter:v1.8.2")],
}


def test_host_access_in_the_monitoring_node_namespace_passes() -> None:
    args = sdk_args(KINDS["DaemonSet"], workload("x", NODE_EXPORTER_POD, "monitoring-node"))
    assert judge("no-privileged-containers", args) == []


def test_host_access_elsewhere_fails() -> None:
    args = sdk_args(KINDS["DaemonSet"], workload("x", NODE_EXPORTER_POD, "monitoring"))
    problems = judge("no-privileged-containers", args) or []
    assert [p.split(" in ")[0] for p in problems] == ["hostPID: true", "hostNetwork: true"]
    assert "namespace 'monitoring'" in problems[0]


def test_privileged_container_in_the_app_namespace_fails() -> None:
    pod = {"containers": [container(securityContext={"privileged": True})]}
    problems = judge("no-privileged-containers", sdk_args(KINDS["Deployment"], workload("x", pod)))
    assert problems == [
        "containers[0] (c) securityContext.privileged: true in namespace 'game'; "
        "host access is allowed only in monitoring-node"
    ]


def test_privileged_pod_without_namespace_is_judged_in_default() -> None:
    pod = {"hostNetwork": True, "containers": [container()]}
    problems = judge("no-privileged-containers", sdk_args(KINDS["Pod"], workload("Pod", pod, None)))
    assert problems and "namespace 'default'" in problems[0]


def test_unprivileged_pods_pass_everywhere() -> None:
    pod = {"containers": [container(securityContext={"privileged": False})]}
    assert judge("no-privileged-containers", sdk_args(KINDS["Job"], workload("x", pod))) == []


def test_privileged_namespaces_come_from_the_policy_config() -> None:
    config = {"privilegedNamespaces": ["node-tools"]}
    allowed = sdk_args(
        KINDS["DaemonSet"], workload("x", NODE_EXPORTER_POD, "node-tools"), config=config
    )
    default = sdk_args(
        KINDS["DaemonSet"], workload("x", NODE_EXPORTER_POD, "monitoring-node"), config=config
    )
    assert judge("no-privileged-containers", allowed) == []
    assert judge("no-privileged-containers", default)


# --- no-public-docker-ports ----------------------------------------------------------------------


def docker_container(*ports: dict[str, Any]) -> dict[str, Any]:
    """A Docker container's inputs with `ports`."""
    return {"name": "frontend", "image": DIGEST, "ports": list(ports)}


def test_ports_on_loopback_pass() -> None:
    args = sdk_args(
        pp.DOCKER_CONTAINER, docker_container({"internal": 80, "external": 8080, "ip": "127.0.0.1"})
    )
    assert judge("no-public-docker-ports", args) == []


@pytest.mark.parametrize("ip", ["0.0.0.0", "::", "", None])
def test_ports_on_every_interface_fail(ip: str | None) -> None:
    port: dict[str, Any] = {"internal": 80, "external": 8080} | (
        {"ip": ip} if ip is not None else {}
    )
    problems = judge(
        "no-public-docker-ports", sdk_args(pp.DOCKER_CONTAINER, docker_container(port))
    )
    assert problems and "ports[0] publishes 8080" in problems[0]
    assert "allowPublicPorts" in problems[0]


def test_public_ports_pass_when_the_config_allows_them() -> None:
    args = sdk_args(
        pp.DOCKER_CONTAINER,
        docker_container({"internal": 80, "external": 8080, "ip": "0.0.0.0"}),
        config={"allowPublicPorts": True},
    )
    assert judge("no-public-docker-ports", args) == []


def test_a_port_ip_unknown_during_preview_is_not_judged() -> None:
    port = {"internal": 80, "external": 8080, "ip": UNKNOWN_STRING_VALUE}
    assert (
        judge("no-public-docker-ports", sdk_args(pp.DOCKER_CONTAINER, docker_container(port))) == []
    )


# --- no-plain-secrets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "props", "needle"),
    [
        (pp.DOCKER_CONTAINER, {"envs": ["PORT=3000", "DB_PASSWORD=hunter2"]}, "DB_PASSWORD"),
        (pp.DOCKER_CONTAINER, {"envs": ["DATABASE_URL=postgres://app@db/app"]}, "DATABASE_URL"),
        (
            KINDS["Deployment"],
            workload("x", {"containers": [container(env=[{"name": "API_TOKEN", "value": "t0k"}])]}),
            "API_TOKEN",
        ),
        ("command:remote:Command", {"connection": {"host": "pi", "privateKey": "k"}}, "privateKey"),
        ("command:remote:Command", {"stdin": PEM}, "PEM private key"),
        (
            "kubernetes:core/v1:ConfigMap",
            {"data": {"exporter.env": "postgresql://game:s3cret@postgres:5432/game"}},
            "URL with a password",
        ),
        (pp.K8S_SECRET, {"stringData": {"db-password": "hunter2"}}, "stringData of a Secret"),
        (pp.K8S_SECRET, {"data": {"token": "aHVudGVyMg=="}}, "data of a Secret"),
    ],
)
def test_plain_secret_looking_values_fail(type_: str, props: dict[str, Any], needle: str) -> None:
    problems = judge("no-plain-secrets", sdk_args(type_, props)) or []
    assert any(needle in p for p in problems), problems


@pytest.mark.parametrize(
    ("type_", "props"),
    [
        (pp.DOCKER_CONTAINER, {"envs": secret(["PORT=3000", "DB_PASSWORD=hunter2"])}),
        (pp.DOCKER_CONTAINER, {"envs": ["PORT=3000", secret("DB_PASSWORD=hunter2")]}),
        (
            pp.DOCKER_CONTAINER,
            {"envs": ["POSTGRES_PASSWORD_FILE=/run/secrets/db-password", "POSTGRES_USER=game"]},
        ),
        (
            KINDS["Deployment"],
            workload(
                "x",
                {
                    "containers": [
                        container(
                            env=[
                                {
                                    "name": "PGPASSWORD",
                                    "valueFrom": {
                                        "secretKeyRef": {
                                            "name": "app-secrets",
                                            "key": "db-password",
                                        }
                                    },
                                }
                            ]
                        )
                    ],
                    "volumes": [{"name": "s", "secret": {"secretName": "app-secrets"}}],
                },
            ),
        ),
        ("command:remote:Command", {"connection": {"host": "pi", "privateKey": secret(PEM)}}),
        ("command:remote:Command", {"stdin": secret(f"K3S_TOKEN=abc\nKEY={PEM}")}),
        ("pulumi:providers:docker", {"host": "ssh://pi@192.168.1.10"}),
        ("kubernetes:core/v1:ConfigMap", {"data": {"dsn": "postgresql://game@postgres:5432/game"}}),
        (pp.K8S_SECRET, {"stringData": secret({"db-password": "hunter2"})}),
        (pp.K8S_SECRET, {"stringData": {"db-password": secret("hunter2")}}),
        (pp.K8S_SECRET, {"stringData": {"db-password": UNKNOWN_STRING_VALUE}}),
        (pp.DOCKER_CONTAINER, {"envs": [f"DB_PASSWORD={UNKNOWN_STRING_VALUE}", "EMPTY_TOKEN="]}),
    ],
)
def test_secrets_kept_secret_or_by_reference_pass(type_: str, props: dict[str, Any]) -> None:
    assert judge("no-plain-secrets", sdk_args(type_, props)) == []


# --- postgres-storage-protected ------------------------------------------------------------------


def claim(name: str, namespace: str) -> dict[str, Any]:
    """A PersistentVolumeClaim's inputs."""
    return {"metadata": {"name": name, "namespace": namespace}, "spec": {"accessModes": ["RWO"]}}


def test_protected_database_claim_passes() -> None:
    args = sdk_args(pp.K8S_PVC, claim("postgres-data", "game"), protect=True)
    assert judge("postgres-storage-protected", args) == []


def test_unprotected_database_claim_fails() -> None:
    problems = judge(
        "postgres-storage-protected", sdk_args(pp.K8S_PVC, claim("postgres-data", "game"))
    )
    assert problems == [
        "the database claim 'postgres-data' must be protected (retainOnDelete is not visible)"
    ]


def test_claims_elsewhere_are_not_the_database() -> None:
    for args in (
        sdk_args(pp.K8S_PVC, claim("prometheus-data", "monitoring")),
        sdk_args(pp.K8S_PVC, claim("postgres-backups", "game")),
    ):
        assert judge("postgres-storage-protected", args) == []


def test_app_namespace_comes_from_the_policy_config() -> None:
    args = sdk_args(pp.K8S_PVC, claim("db-data", "arcade"), config={"appNamespace": "arcade"})
    assert judge("postgres-storage-protected", args)


def test_docker_database_volume_protected_passes() -> None:
    args = sdk_args(pp.DOCKER_VOLUME, {"name": "picluster-local-db-data"}, protect=True)
    assert judge("postgres-storage-protected", args) == []


def test_docker_database_volume_retention_is_not_visible_to_the_sdk() -> None:
    # pulumi-policy 1.21's PolicyResourceOptions has no retain_on_delete: the policy says it
    # cannot judge rather than pass or fail blindly.
    assert not hasattr(sdk_args(pp.DOCKER_VOLUME, {}).opts, "retain_on_delete")
    args = sdk_args(pp.DOCKER_VOLUME, {"name": "picluster-local-db-data"})
    assert judge("postgres-storage-protected", args) is None


def test_docker_database_volume_judged_where_retention_is_known() -> None:
    # The pure check with a stand-in `Resource` where retainOnDelete is known (as under mocks).
    volume = pp.Resource(type=pp.DOCKER_VOLUME, name="app-db-data", props={"name": "x-db-data"})
    assert pp.check_storage_protected(replace(volume, retain_on_delete=True), {}) == []
    assert pp.check_storage_protected(replace(volume, retain_on_delete=False), {}) == [
        "the database volume 'x-db-data' needs retainOnDelete or protect"
    ]


# --- how secrets reach a policy ------------------------------------------------------------------


def analyze(props: Mapping[str, Any], policies: list[Policy]) -> Any:
    """Run the SDK's own analyzer servicer on one resource, as the engine would call it."""
    servicer = sdk_policy._PolicyAnalyzerServicer(
        "test", "0.0.1", policies, EnforcementLevel.MANDATORY
    )
    properties = json_format.ParseDict(dict(props), struct_pb2.Struct())
    request = analyzer_pb2.AnalyzeRequest(
        type=pp.DOCKER_CONTAINER, urn="urn:x", name="x", properties=properties
    )
    return servicer.Analyze(request, None)


def seen_by_policy(props: Mapping[str, Any]) -> Any:
    """The `password` input as a policy's `args.props` shows it."""
    seen: list[Any] = []
    spy = ResourceValidationPolicy(
        "spy", "records what it is shown", lambda args, report: seen.append(args.props["password"])
    )
    analyze(props, [spy])
    return seen[0]


def test_the_sdk_alone_hands_policies_secrets_unmarked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdk_policy, "deserialize_properties", pp._SDK_DESERIALIZE)
    assert seen_by_policy({"password": secret("hunter2")}) == "hunter2"
    assert seen_by_policy({"password": "hunter2"}) == "hunter2"  # indistinguishable


def test_the_pack_keeps_secret_markers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sdk_policy, "deserialize_properties", pp._SDK_DESERIALIZE)
    pp.keep_secret_markers()
    shown = seen_by_policy({"password": secret("hunter2")})
    assert isinstance(shown, Secret) and shown.value == "hunter2"
    assert seen_by_policy({"password": "hunter2"}) == "hunter2"

    policies: list[Policy] = [POLICIES["no-plain-secrets"]]
    plain = analyze({"envs": ["DB_PASSWORD=hunter2"]}, policies)
    kept = analyze({"envs": [secret("DB_PASSWORD=hunter2")]}, policies)
    assert [d.policyName for d in plain.diagnostics] == ["no-plain-secrets"]
    assert list(kept.diagnostics) == []


# --- the pack, served ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served_pack() -> Iterator[analyzer_pb2_grpc.AnalyzerStub]:
    """`policy/__main__.py` started the way the CLI's Python policy host starts it."""
    process = subprocess.Popen(
        [sys.executable, "-u", "__main__.py"],
        cwd=POLICY_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("PULUMI_")},
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        port = process.stdout.readline().strip()
        assert port.isdigit(), f"the pack did not print its port: {process.stderr.read()}"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield analyzer_pb2_grpc.AnalyzerStub(channel)
    finally:
        process.kill()
        process.wait(timeout=10)


def test_the_pack_serves_every_policy_as_mandatory(
    served_pack: analyzer_pb2_grpc.AnalyzerStub,
) -> None:
    info = served_pack.GetAnalyzerInfo(empty_pb2.Empty(), timeout=30)
    assert info.name == "picluster"
    assert [p.name for p in info.policies] == [spec.name for spec in pp.SPECS]
    assert {p.enforcementLevel for p in info.policies} == {analyzer_pb2.MANDATORY}


def test_the_served_pack_tells_secret_from_plain(
    served_pack: analyzer_pb2_grpc.AnalyzerStub,
) -> None:
    def diagnostics(envs: list[Any]) -> list[str]:
        properties = json_format.ParseDict({"envs": envs}, struct_pb2.Struct())
        request = analyzer_pb2.AnalyzeRequest(
            type=pp.DOCKER_CONTAINER, urn="urn:x", name="x", properties=properties
        )
        return [d.policyName for d in served_pack.Analyze(request, timeout=30).diagnostics]

    assert diagnostics(["DB_PASSWORD=hunter2"]) == ["no-plain-secrets"]
    assert diagnostics([secret("DB_PASSWORD=hunter2")]) == []


# --- the committed stacks pass their own policies ------------------------------------------------


def violations(run: Run) -> list[str]:
    """Every violation and every 'cannot judge' of every policy over one program run."""
    found: list[str] = []
    for registration in run.registrations:
        args = sdk_args(
            registration.type,
            registration.inputs,
            name=registration.name,
            protect=registration.protect,
        )
        # The recorder sees retainOnDelete, which the SDK cannot show: judge with it here.
        resource = replace(
            pp.Resource.from_args(args), retain_on_delete=registration.retain_on_delete
        )
        for spec in pp.SPECS:
            try:
                problems = spec.check(resource, {})
            except pp.NotApplicable as reason:
                problems = [f"cannot judge: {reason.reason}"]
            found += [f"{spec.name} {registration.name}: {p}" for p in problems]
    return found


@pytest.fixture(scope="module")
def local() -> Run:
    return run_main(stack_file_config("local"), stack="local")


@pytest.fixture(scope="module")
def prod() -> Run:
    return run_prod(stack_file_config("prod"))


def test_the_local_stack_passes_its_policies(local: Run) -> None:
    assert violations(local) == []


def test_the_prod_stack_passes_its_policies(prod: Run) -> None:
    assert violations(prod) == []


def _pod_specs(run: Run) -> list[Registration]:
    return [r for r in run.registrations if r.type in pp.POD_SPEC_PATHS]


def test_the_policies_see_what_the_stacks_declare(local: Run, prod: Run) -> None:
    # Guards the two tests above against passing because nothing was looked at.
    assert len(local.of_type(pp.REMOTE_IMAGE)) >= 5
    workloads = _pod_specs(prod)
    assert {r.type for r in workloads} >= {
        KINDS["Deployment"],
        KINDS["StatefulSet"],
        KINDS["DaemonSet"],
        KINDS["CronJob"],
    }
    seen = [
        c
        for r in workloads
        for c in pp.containers(pp.pod_spec(pp.Resource.from_args(sdk_args(r.type, r.inputs))) or {})
    ]
    assert len(seen) >= len(workloads)
    assert [
        r.name for r in prod.of_type(pp.K8S_PVC) if r.value("metadata")["name"].endswith("-data")
    ]
    # The committed prod stack builds the demo API: the in-cluster registry was judged too.
    assert "app-registry" in {r.name for r in workloads}


def test_a_stack_with_a_migration_passes_its_policies() -> None:
    services = [
        {
            "name": "scores",
            "build": "components/assets/demo-api",
            "port": 3000,
            "migrate": ["node", "migrate.js"],
        }
    ]
    config = stack_file_config("prod")
    run = run_prod({**config, "app": {**config.get("app", {}), "services": services}})
    assert [r for r in run.registrations if r.type == KINDS["Job"]]
    assert violations(run) == []


def test_opening_the_local_ports_is_a_violation_until_allowed() -> None:
    opened = run_main({"target": "docker", "docker": {"publishAddress": "0.0.0.0"}})
    assert any(v.startswith("no-public-docker-ports") for v in violations(opened))
