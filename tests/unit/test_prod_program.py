"""The prod program under mocks: every node's steps, their order, and secrets kept secret."""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.config import ConfigError
from components.kubeconfig import ca_hash, rewrite_kubeconfig
from tests.engine_rules import kept_by_exclude_protected
from tests.harness import (
    K3S_KUBECONFIG,
    MOCK_CA_HASH,
    Registration,
    Run,
    run_main,
    stack_file_config,
    unwrap,
)
from tests.k8s_manifests import kubernetes_minor, manifests, validate_manifests

COMMAND = "command:remote:Command"
TOKEN = "K10picluster-unit-test-token-0123456789abcdef"
PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-unit-test-key\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGQ2dW5pdHRlc3Rob3N0a2V5MDEyMzQ1Njc4OWFi"

UNSEEN: dict[str, Any] = {
    "target": "k3s",
    "ssh": {"user": "ubuntu", "port": 2222},
    "k3s": {
        "version": "v1.30.6+k3s1",
        "disable": ["servicelb"],
        "serverConfig": {"etcd-snapshot-retention": 3},
        "agentConfig": {"kubelet-arg": ["max-pods=60"]},
    },
    "nodes": [
        {"name": "cp-a", "host": "10.20.0.11", "role": "server", "hostKey": HOST_KEY},
        {"name": "cp-b", "host": "10.20.0.12", "role": "server"},
        {"name": "cp-c", "host": "cp-c.lan", "role": "server", "user": "admin", "port": 22},
        {
            "name": "worker-1",
            "host": "10.20.0.21",
            "role": "agent",
            "labels": {"game.studio/tier": "frontend"},
            "taints": ["dedicated=game:NoSchedule"],
        },
        {"name": "worker-2", "host": "10.20.0.22", "role": "agent"},
        {"name": "worker-3", "host": "10.20.0.23", "role": "agent", "upgrade": False},
    ],
}


def run_prod(config: dict[str, Any], **extra: Any) -> Run:
    return run_main(
        {**config, "sshPrivateKey": PRIVATE_KEY, "k3sToken": TOKEN, **extra},
        stack="prod",
        secret_keys=("sshPrivateKey", "k3sToken"),
    )


@pytest.fixture(scope="module")
def unseen() -> Run:
    return run_prod(UNSEEN)


@pytest.fixture(scope="module")
def committed() -> Run:
    return run_prod(stack_file_config("prod"))


def commands(run: Run) -> dict[str, Registration]:
    return {r.name: r for r in run.of_type(COMMAND)}


def stdin_values(command: Registration) -> dict[str, str]:
    stdin = command.value("stdin")
    return {
        m["name"]: m["value"].strip("'")
        for m in re.finditer(r"^(?P<name>[A-Z_][A-Z0-9_]*)=(?P<value>.*)$", stdin, re.M)
    }


def k3s_config(command: Registration) -> dict[str, Any]:
    return yaml.safe_load(base64.b64decode(stdin_values(command)["CONFIG_YAML_B64"]))


def depends_on(run: Run, resource: Registration) -> set[str]:
    return {run.by_urn(urn).name for urn in resource.dependencies}


def test_every_node_gets_its_steps(unseen: Run) -> None:
    names = set(commands(unseen))
    for node in ("cp-a", "cp-b", "cp-c", "worker-1", "worker-2", "worker-3"):
        assert {f"{node}-prepare", f"{node}-gate", f"cluster-{node}-k3s"} <= names
    joins = {n for n in names if n.endswith("-join")}
    assert joins == {
        f"cluster-{n}-join" for n in ("cp-a", "cp-b", "cp-c", "worker-1", "worker-2", "worker-3")
    }
    assert "cluster-kubeconfig" in names
    assert unseen.names("picluster:index:PiNode") == {
        "cp-a",
        "cp-b",
        "cp-c",
        "worker-1",
        "worker-2",
        "worker-3",
    }


def test_node_steps_are_parented_to_their_components(unseen: Run) -> None:
    pi = unseen.named("worker-1")
    cluster = unseen.named("cluster")
    assert unseen.named("worker-1-prepare").parent == pi.urn
    assert unseen.named("worker-1-gate").parent == pi.urn
    assert unseen.named("cluster-worker-1-k3s").parent == cluster.urn


def test_prepare_then_gate_then_k3s_on_each_node(unseen: Run) -> None:
    assert "worker-2-prepare" in depends_on(unseen, unseen.named("worker-2-gate"))
    assert "worker-2-gate" in depends_on(unseen, unseen.named("cluster-worker-2-k3s"))
    prepare_stdin = unseen.named("worker-2-prepare").value("stdin")
    for script in ("picluster facts", "picluster prepare", "picluster reboot"):
        assert script in prepare_stdin
    assert "picluster cgroup-gate" in unseen.named("worker-2-gate").value("stdin")
    assert stdin_values(unseen.named("worker-3-prepare"))["UPGRADE"] == "0"
    assert stdin_values(unseen.named("worker-2-prepare"))["UPGRADE"] == "1"


ROLLOUT = ("cp-a", "cp-b", "cp-c", "worker-1", "worker-2", "worker-3")
"""The committed order of the unseen stack's nodes: servers first, then agents."""


def test_nodes_go_one_at_a_time_drain_install_join_servers_first(unseen: Run) -> None:
    # drain(n) -> install(n) -> join(n) -> drain(n+1): each step waits for exactly the one
    # before it (and its own Pi), so a failure stops the rollout with every later node untouched.
    for node in ROLLOUT:
        assert f"cluster-{node}-drain" in depends_on(unseen, unseen.named(f"cluster-{node}-k3s"))
        assert f"cluster-{node}-k3s" in depends_on(unseen, unseen.named(f"cluster-{node}-join"))
    for earlier, later in itertools.pairwise(ROLLOUT):
        deps = depends_on(unseen, unseen.named(f"cluster-{later}-drain"))
        # (A dependency on the PiNode component is one on its steps.)
        assert deps == {f"{later}-prepare", f"{later}-gate", f"cluster-{earlier}-join"}, deps
    assert depends_on(unseen, unseen.named("cluster-cp-a-drain")) == {"cp-a-prepare", "cp-a-gate"}


def test_every_drain_runs_on_the_first_server_with_only_the_version_in_its_stdin(
    unseen: Run,
) -> None:
    first = unseen.named("cluster-cp-a-join").inputs["connection"]
    for node in ROLLOUT:
        drain = unseen.named(f"cluster-{node}-drain")
        assert drain.inputs["connection"] == first, node
        assert not drain.value("delete"), node  # removing a node drains it in its join's delete
        values = stdin_values(drain)
        assert set(values) == {"NODE_NAME", "K3S_VERSION", "DRAIN_TIMEOUT", "READY_TIMEOUT"}
        assert values["NODE_NAME"] == node and values["K3S_VERSION"] == "v1.30.6+k3s1"
        assert values["DRAIN_TIMEOUT"] == "300"
        assert "picluster k3s-drain" in drain.value("stdin")
        # The node's check waits for the same version before it uncordons the node.
        assert stdin_values(unseen.named(f"cluster-{node}-join"))["K3S_VERSION"] == "v1.30.6+k3s1"


def test_the_drain_timeout_is_the_configured_one() -> None:
    longer = run_prod({**UNSEEN, "k3s": {**UNSEEN["k3s"], "drainTimeout": 900}})
    assert stdin_values(longer.named("cluster-worker-2-drain"))["DRAIN_TIMEOUT"] == "900"


def test_token_never_in_a_command_line_and_always_secret(unseen: Run) -> None:
    carrying = 0
    for resource in unseen.registrations:
        for key in ("create", "update", "delete"):
            assert TOKEN not in str(resource.value(key) or ""), f"{resource.name}.{key}"
        assert not any(TOKEN in s for s in resource.plain_strings()), resource.name
        if any(TOKEN in s for s in resource.secret_strings()):
            carrying += 1
            assert resource.is_secret("stdin"), resource.name
    assert carrying == 6  # one install step per node
    assert not unseen.of_type("random:index/randomPassword:RandomPassword") or all(
        r.name != "k3s-token" for r in unseen.of_type("random:index/randomPassword:RandomPassword")
    )


def test_generated_token_is_48_characters_and_secret(committed: Run) -> None:
    run = run_main(
        {**stack_file_config("prod"), "sshPrivateKey": PRIVATE_KEY},
        stack="prod",
        secret_keys=("sshPrivateKey",),
    )
    token = run.named("k3s-token")
    assert token.value("length") == 48
    install = run.named("cluster-pi-server-1-k3s")
    assert install.is_secret("stdin")
    assert stdin_values(install)["K3S_TOKEN"] == "generated-k3s-token-48"


def test_commands_run_scripts_from_stdin_with_sudo_and_never_replace(unseen: Run) -> None:
    for command in unseen.of_type(COMMAND):
        assert command.value("create") == "sudo bash -s", command.name
        assert command.value("update") == "sudo bash -s", command.name
        assert command.value("addPreviousOutputInEnv") is False, command.name
    for name in ("cluster-worker-1-k3s", "cluster-worker-1-join", "cluster-cp-b-k3s"):
        assert unseen.named(name).value("delete") == "sudo bash -s -- delete"


def test_kubeconfig_stdout_is_secret_and_not_logged(unseen: Run) -> None:
    read = unseen.named("cluster-kubeconfig")
    assert "stdout" in read.additional_secret_outputs
    assert read.value("logging") == "stderr"
    assert "cluster-cp-a-k3s" in depends_on(unseen, read)
    assert read.value("connection")["host"] == "10.20.0.11"


def test_kubeconfig_reaches_the_provider_as_a_secret_pointing_at_the_first_server(
    unseen: Run,
) -> None:
    provider = unseen.named("k3s")
    assert provider.type == "pulumi:providers:kubernetes"
    assert provider.is_secret("kubeconfig")
    kubeconfig = yaml.safe_load(provider.value("kubeconfig"))
    assert kubeconfig["clusters"][0]["cluster"]["server"] == "https://10.20.0.11:6443"
    assert kubeconfig["current-context"] == "picluster-prod"
    assert provider.value("clusterIdentifier") == "picluster-prod"
    # After every server, never after an agent (see the --exclude-protected test below).
    deps = depends_on(unseen, provider)
    assert {f"cluster-{n}-join" for n in ("cp-a", "cp-b", "cp-c")} <= deps
    assert not {d for d in deps if "worker" in d}, deps
    assert unseen.outputs["kubeconfig"].secret
    assert not unseen.outputs["apiServerUrl"].secret
    assert unseen.outputs["apiServerUrl"].value == "https://10.20.0.11:6443"
    assert unseen.outputs["nodeNames"].value == [
        "cp-a",
        "cp-b",
        "cp-c",
        "worker-1",
        "worker-2",
        "worker-3",
    ]


def test_connections_carry_user_port_key_and_pinned_host_key(unseen: Run) -> None:
    first = unseen.named("cluster-cp-a-k3s")
    connection = unwrap(first.inputs["connection"])
    assert connection["host"] == "10.20.0.11"
    assert connection["port"] == 2222
    assert connection["user"] == "ubuntu"
    assert connection["hostKey"] == HOST_KEY
    assert connection["dialErrorLimit"] >= 60
    assert connection["privateKey"] == PRIVATE_KEY
    assert first.is_secret("connection")
    cp_c = unwrap(unseen.named("cp-c-prepare").inputs["connection"])
    assert (cp_c["user"], cp_c["port"], cp_c["host"]) == ("admin", 22, "cp-c.lan")
    assert "hostKey" not in cp_c
    warned = [w for w in unseen.warnings if "no hostKey" in w]
    assert len(warned) == 5 and not any("cp-a" in w for w in warned)


def test_config_yaml_is_built_as_data_for_each_role(unseen: Run) -> None:
    first = k3s_config(unseen.named("cluster-cp-a-k3s"))
    assert first["node-name"] == "cp-a"
    assert first["node-ip"] == "10.20.0.11"
    assert first["token-file"] == "/etc/rancher/k3s/picluster-token"
    assert first["cluster-init"] is True
    assert first["write-kubeconfig-mode"] == "0600"
    assert first["secrets-encryption"] is True
    assert first["tls-san"] == ["10.20.0.11", "10.20.0.12", "cp-c.lan"]
    assert first["disable"] == ["servicelb"]
    assert first["etcd-snapshot-retention"] == 3
    assert "server" not in first and "token" not in first

    joining = k3s_config(unseen.named("cluster-cp-c-k3s"))
    assert joining["server"] == "https://10.20.0.11:6443"
    assert "node-ip" not in joining  # a DNS name: K3s picks the address
    assert "cluster-init" not in joining
    # Every etcd member serves its metrics on its address for Prometheus' etcd job.
    assert first["etcd-expose-metrics"] is True and joining["etcd-expose-metrics"] is True

    agent = k3s_config(unseen.named("cluster-worker-1-k3s"))
    assert agent == {
        "node-name": "worker-1",
        "node-ip": "10.20.0.21",
        "token-file": "/etc/rancher/k3s/picluster-token",
        "server": "https://10.20.0.11:6443",
        "kubelet-arg": ["max-pods=60"],
    }
    values = stdin_values(unseen.named("cluster-worker-1-k3s"))
    assert (values["ROLE"], values["K3S_VERSION"]) == ("agent", "v1.30.6+k3s1")


def test_labels_and_taints_go_through_the_api_and_taints_also_to_registration(
    unseen: Run,
) -> None:
    # K3s reads node-label/node-taint only when a node registers; in config.yaml a change would
    # restart K3s and still not reach the Node. The join step applies both through the API.
    values = stdin_values(unseen.named("cluster-worker-1-k3s"))
    registration = yaml.safe_load(base64.b64decode(values["REGISTRATION_YAML_B64"]))
    assert registration == {"node-taint": ["dedicated=game:NoSchedule"]}
    assert stdin_values(unseen.named("cluster-worker-2-k3s"))["REGISTRATION_YAML_B64"] == ""
    join = unseen.named("cluster-worker-1-join").value("stdin")
    assert "LABELS=game.studio/tier=frontend\n" in join
    assert "TAINTS=dedicated=game:NoSchedule\n" in join
    assert "FIRST_SERVER=0\n" in join
    assert "FIRST_SERVER=1\n" in unseen.named("cluster-cp-a-join").value("stdin")
    assert unseen.named("cluster-cp-a-join").value("connection")["host"] == "10.20.0.11"


def test_joiners_pin_the_cluster_ca_with_the_full_token(unseen: Run) -> None:
    # The first server starts with the plain token; every other node gets K3s's full token,
    # K10<CA hash>::server:<token>, and checks the CA before joining. The hash is of the CA in
    # the kubeconfig, read once, not of anything a re-run of the first install prints.
    assert stdin_values(unseen.named("cluster-cp-a-k3s"))["K3S_TOKEN"] == TOKEN
    for node in ("cp-b", "cp-c", "worker-1", "worker-3"):
        install = unseen.named(f"cluster-{node}-k3s")
        assert stdin_values(install)["K3S_TOKEN"] == f"K10{MOCK_CA_HASH}::server:{TOKEN}", node
        assert install.is_secret("stdin")
        assert "cluster-kubeconfig" in depends_on(unseen, install)


def test_version_and_config_reach_the_install_step_on_stdin_never_as_triggers(
    unseen: Run,
) -> None:
    # pulumi-command's SDK adds replaceOnChanges ["triggers[*]"] to every Command: a trigger
    # would make a version bump replace the install, and the replaced one uninstall K3s.
    for command in unseen.of_type(COMMAND):
        assert command.value("triggers") is None, command.name
        assert command.replace_on_changes == ["triggers[*]"], command.name
    values = stdin_values(unseen.named("cluster-worker-2-k3s"))
    assert values["K3S_VERSION"] == "v1.30.6+k3s1"
    assert yaml.safe_load(base64.b64decode(values["CONFIG_YAML_B64"]))["node-name"] == "worker-2"


def test_followers_rerun_after_the_step_they_follow(unseen: Run) -> None:
    # The gate after prepare, the Ready wait after the node's install: each carries a marker of
    # the other step's output in its stdin.
    for follower, leader in (
        ("worker-1-gate", "worker-1-prepare"),
        ("cluster-worker-1-join", "cluster-worker-1-k3s"),
    ):
        marker = stdin_values(unseen.named(follower))["AFTER_RUN"]
        assert re.fullmatch(r"[0-9a-f]{16}", marker), follower
        assert leader in depends_on(unseen, unseen.named(follower))
    assert (
        stdin_values(unseen.named("cluster-worker-1-join"))["AFTER_RUN"]
        != stdin_values(unseen.named("cluster-worker-2-join"))["AFTER_RUN"]
    )


def test_the_kubeconfig_is_read_after_the_first_server_but_not_again_on_each_run(
    unseen: Run,
) -> None:
    # The Kubernetes provider is built from this read's stdout: were it to re-run with each run
    # of the install (an upgrade), a preview could not diff a single object on the cluster.
    read = unseen.named("cluster-kubeconfig")
    assert "cluster-cp-a-k3s" in depends_on(unseen, read)
    assert "AFTER_RUN" not in stdin_values(read)


def test_single_server_uses_no_cluster_init(committed: Run) -> None:
    config = k3s_config(committed.named("cluster-pi-server-1-k3s"))
    assert "cluster-init" not in config
    assert "etcd-expose-metrics" not in config  # SQLite: no etcd to expose


def test_servers_are_protected_unless_the_user_opts_out(committed: Run) -> None:
    assert committed.named("cluster-pi-server-1-k3s").protect
    assert not committed.named("cluster-pi-agent-1-k3s").protect
    k3s = {**stack_file_config("prod")["k3s"], "protectServerData": False}
    unprotected = run_prod({**stack_file_config("prod"), "k3s": k3s})
    assert not unprotected.named("cluster-pi-server-1-k3s").protect


def test_committed_prod_chain_is_eleven_steps_deep(committed: Run) -> None:
    # prepare -> gate, then drain -> install -> join for each of the three nodes in turn.
    def depth(resource: Registration) -> int:
        parents = [committed.by_urn(u) for u in resource.dependencies]
        remote = [p for p in parents if p.type == COMMAND]
        return 1 + max((depth(p) for p in remote), default=0)

    deepest = max(depth(c) for c in committed.of_type(COMMAND))
    assert deepest == 11


def test_docker_target_on_a_pi_prepares_it_and_installs_docker() -> None:
    run = run_main(
        {
            "target": "docker",
            "docker": {"host": "ssh://pi@10.0.0.5"},
            "ssh": {"user": "pi"},
            "nodes": [{"name": "pi-1", "host": "10.0.0.5", "role": "server", "docker": True}],
            "sshPrivateKey": PRIVATE_KEY,
        },
        secret_keys=("sshPrivateKey",),
    )
    gate = run.named("pi-1-gate")
    assert "picluster docker" in gate.value("stdin")
    assert stdin_values(gate)["DOCKER_USER"] == "pi"
    assert not run.of_type("picluster:index:K3sCluster")
    provider = run.named("docker")
    assert {"pi-1-prepare", "pi-1-gate"} <= depends_on(run, provider)


def test_missing_key_file_names_the_key(tmp_path: Path) -> None:
    config = {**stack_file_config("prod"), "ssh": {"privateKeyPath": str(tmp_path / "absent")}}
    with pytest.raises(ConfigError) as caught:
        run_main(config, stack="prod")
    assert str(caught.value).startswith("picluster:ssh.privateKeyPath: ")


def test_key_file_content_is_read_as_a_secret(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text(PRIVATE_KEY)
    run = run_main({**stack_file_config("prod"), "ssh": {"privateKeyPath": str(key)}}, stack="prod")
    prepare = run.named("pi-agent-1-prepare")
    assert prepare.is_secret("connection")
    assert unwrap(prepare.inputs["connection"])["privateKey"] == PRIVATE_KEY
    assert not any("unit-test-key" in s for r in run.registrations for s in r.plain_strings())


def test_reserved_k3s_keys_cannot_be_overridden() -> None:
    k3s = {"version": "v1.31.4+k3s1", "serverConfig": {"token": "x", "node-name": "y"}}
    with pytest.raises(ConfigError) as caught:
        run_prod({**stack_file_config("prod"), "k3s": k3s})
    assert "picluster:k3s.serverConfig.node-name: is set by picluster" in str(caught.value)
    assert "picluster:k3s.serverConfig.token: is set by picluster" in str(caught.value)


def test_kubeconfig_rewrite_parses_yaml_and_renames_every_entry() -> None:
    rewritten = yaml.safe_load(
        rewrite_kubeconfig(K3S_KUBECONFIG, "https://pi-1.lan:6443", "picluster-qa")
    )
    assert rewritten["clusters"][0] == {
        "cluster": {
            "certificate-authority-data": "Q0EtREFUQQ==",
            "server": "https://pi-1.lan:6443",
        },
        "name": "picluster-qa",
    }
    assert rewritten["contexts"][0]["context"] == {
        "cluster": "picluster-qa",
        "user": "picluster-qa",
    }
    assert rewritten["users"][0]["name"] == "picluster-qa"
    assert rewritten["current-context"] == "picluster-qa"
    with pytest.raises(ValueError, match="not a K3s kubeconfig with clusters"):
        rewrite_kubeconfig("kind: Config\n", "https://x:6443", "y")


@pytest.mark.parametrize(
    "raw",
    [
        "clusters:\n- cluster: {client-key-data: S0VZ-SECRET-KEY\n",  # broken YAML
        "clusters: S0VZ-SECRET-KEY\n",  # wrong shape
        K3S_KUBECONFIG.replace("Q0EtREFUQQ==", "S0VZ-SECRET-KEY")[: K3S_KUBECONFIG.index("users")],
    ],
)
@pytest.mark.parametrize(
    "read", [lambda raw: rewrite_kubeconfig(raw, "https://x:6443", "y"), ca_hash]
)
def test_a_broken_kubeconfig_fails_without_quoting_it(raw: str, read: Callable[[str], str]) -> None:
    # A YAML error quotes the offending line; the kubeconfig holds the admin credentials.
    with pytest.raises(ValueError) as failure:
        read(raw)
    assert "S0VZ-SECRET-KEY" not in str(failure.value)
    assert failure.value.__cause__ is None and failure.value.__context__ is None


def test_the_ca_hash_is_of_the_kubeconfig_ca_bytes_as_k3s_serves_them() -> None:
    # K3s: k3s.yaml's certificate-authority-data is server-ca.crt, which /cacerts serves and
    # the full token's hash covers (pkg/clientaccess/token.go hashes the /cacerts body).
    assert ca_hash(K3S_KUBECONFIG) == hashlib.sha256(b"CA-DATA").hexdigest() == MOCK_CA_HASH


def test_kubeconfig_read_prints_the_credentials_last_so_nothing_fails_after() -> None:
    # pulumi-command puts a failed command's whole stdout into its error text.
    script = (Path(__file__).parents[2] / "components/scripts/k3s-kubeconfig.sh").read_text()
    body = script[script.index("main() {") :].splitlines()
    printed = next(i for i, line in enumerate(body) if '"$kubeconfig"' in line and "printf" in line)
    assert body[printed].strip() == "printf '%s\\n' \"$kubeconfig\" || true"
    assert [line.strip() for line in body[printed + 1 :] if line.strip()] == [
        "exit 0",
        "}",
        'main "$@"',
    ]


def test_app_and_monitoring_land_on_the_cluster_provider(unseen: Run) -> None:
    provider = unseen.named("k3s")
    for component in ("app", "monitoring"):
        assert unseen.named(component).providers["kubernetes"].startswith(provider.urn)
    k8s_objects = [r for r in unseen.registrations if r.type.startswith("kubernetes:")]
    assert len(k8s_objects) > 40
    for resource in k8s_objects:
        assert resource.provider.startswith(provider.urn), resource.name
    assert not [r for r in unseen.registrations if r.type.startswith("docker:")]


@pytest.mark.parametrize("fixture", ["unseen", "committed"])
def test_every_kubernetes_object_validates_for_the_pinned_k3s(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    result: Run = request.getfixturevalue(fixture)
    version = UNSEEN["k3s"]["version"] if fixture == "unseen" else "v1.31.4+k3s1"
    objects = manifests(result)
    assert validate_manifests(objects, kubernetes_minor(version)) == []


def test_prod_secrets_live_only_in_kubernetes_secrets() -> None:
    db_password, grafana_password = "prod-db-S3cret-value", "prod-grafana-S3cret-value"
    result = run_prod(
        stack_file_config("prod"),
        dbPassword=db_password,
        grafanaAdminPassword=grafana_password,
    )
    holders = set()
    for resource in result.registrations:
        assert not any(db_password in s for s in resource.plain_strings()), resource.name
        assert not any(grafana_password in s for s in resource.plain_strings()), resource.name
        if any(p in s for s in resource.secret_strings() for p in (db_password, grafana_password)):
            holders.add(resource.type)
    assert holders == {"kubernetes:core/v1:Secret"}
    # The committed stack has no domain: the URLs use the first server's address.
    assert result.outputs["frontendUrl"].value == "http://192.168.1.10/"
    assert result.outputs["grafanaUrl"].value == "http://192.168.1.10/grafana/"
    assert result.outputs["prometheusUrl"].value == "http://127.0.0.1:9090/"
    assert result.outputs["grafanaAdminPassword"].secret


def test_a_k3s_installer_mirror_reaches_every_install_step() -> None:
    k3s = {**stack_file_config("prod")["k3s"], "installUrl": "file:///opt/k3s/install.sh"}
    run = run_prod({**stack_file_config("prod"), "k3s": k3s})
    installs = [c for c in run.of_type(COMMAND) if c.name.endswith("-k3s")]
    assert len(installs) == 3
    for install in installs:
        assert stdin_values(install)["K3S_INSTALL_URL"] == "file:///opt/k3s/install.sh"
    default = run_prod(stack_file_config("prod")).named("cluster-pi-agent-1-k3s")
    assert stdin_values(default)["K3S_INSTALL_URL"] == "https://get.k3s.io"


def test_the_program_owns_every_field_it_declares_on_the_cluster(committed: Run) -> None:
    # After a hand change (`kubectl scale`, `kubectl edit`), `pulumi up --refresh` must put the
    # declared value back; without force, Server-Side Apply refuses with a field conflict
    # against the hand change's manager (seen with the real engine: tests/engine/
    # test_prod_changes.py).
    objects = [r for r in committed.registrations if r.type.startswith("kubernetes:")]
    assert len(objects) > 40
    for obj in objects:
        annotations = (unwrap(obj.inputs).get("metadata") or {}).get("annotations") or {}
        assert annotations.get("pulumi.com/patchForce") == "true", obj.name


def test_destroy_excluding_protected_keeps_the_servers_and_data_and_removes_the_agents(
    committed: Run,
) -> None:
    # The engine keeps what is protected and everything it depends on: were the Kubernetes
    # provider (and so the database claim) to depend on the agents' steps, they would stay too
    # (seen with the real engine: tests/engine/test_prod_changes.py).
    kept = kept_by_exclude_protected(committed.registrations)
    assert {"cluster-pi-server-1-k3s", "app-db-data", "k3s"} <= kept, sorted(kept)
    assert not {name for name in kept if "agent" in name}, sorted(kept)


def test_monitoring_goes_before_any_agent_is_drained(committed: Run) -> None:
    # On destroy, the engine deletes a resource's dependents first: Prometheus' and Grafana's
    # claims (children of Monitoring) go before the agents' drains, which refuse while a volume
    # is on the node (seen with the real engine: tests/engine/test_prod_changes.py).
    joins = {r.name for r in committed.of_type(COMMAND) if r.name.endswith("-join")}
    assert joins and joins <= depends_on(committed, committed.named("monitoring"))
