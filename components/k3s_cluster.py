"""K3sCluster: K3s on prepared Pis, from the first server to every agent Ready, and its kubeconfig.

Remote steps (each one SSH session running a script from `components/scripts/`):

- `<node>-k3s` on every node (`k3s-install.sh`): the token into a root-only file, config.yaml
  and registries.yaml (built here as data; `components/registries.py`) written 0600 only when
  they changed, the taints in a registration drop-in, K3s installed at the pinned version,
  restarted only when its version, config, registries or token changed.
  The first server initialises; every other node gets K3s's full token
  (`K10<CA hash>::server:<token>`) and so checks the cluster before it sends the secret. The hash
  is of the CA in the kubeconfig read (below), which is read once: a re-run of the first
  server's install leaves it known in a preview, so the other installs do not preview as updates.
- `<node>-drain` on the first server for every node (`k3s-drain.sh`), before the node's install:
  its stdin carries only the target version, so only a version change re-runs it. It refuses a
  downgrade, and cordons and drains the node (evictions: PodDisruptionBudgets hold it) unless
  the node has not joined yet, already runs the version, or is the only schedulable node
  (cordoned, not Ready or NoSchedule/NoExecute-tainted nodes do not count).
- `<node>-join` on the first server for every node (`k3s-node.sh`): waits until the node is Ready
  on the pinned version, applies its labels and taints through the API (K3s reads them only when
  a node registers) and uncordons it if its drain step cordoned it, again after each run of the
  node's install; on destroy it drains the node and (for an agent) removes it before the node's
  K3s is uninstalled; another server removes itself in its uninstall.
- `<server>-snapshots` on a single server (`k3s-sqlite-snapshots.sh`): a systemd timer copying its
  SQLite datastore on the `k3s.snapshots` schedule (with more servers, K3s snapshots embedded etcd
  itself, from the `etcd-snapshot-*` / `etcd-s3-*` keys in config.yaml; `datastore_snapshots`).
- `kubeconfig` on the first server (`k3s-kubeconfig.sh`): stdout is the admin kubeconfig, kept
  secret and never logged; its server address is rewritten (as YAML) to the first server. It is
  read once, not after every run of the install: the Kubernetes provider is built from it, and a
  re-read would leave every object on the cluster undiffable in a preview.

One node at a time, servers first (the first server initialises, etcd admits one new member at a
time), then agents: drain(n) -> install(n) -> join(n) -> drain(n+1) ... So a version change is a
rolling upgrade, and the first failure stops it with every later node untouched. The graph is the
same for the first `up`, where every drain has nothing to do: nodes join one after another.

No step carries `triggers`: pulumi-command's SDK adds `replaceOnChanges: ["triggers[*]"]` to every
Command, and a replaced install would run its `delete` (uninstall K3s) after the new one ran. What
must re-run a step goes into its stdin instead, which the provider diffs as an in-place update.

The token and the registry credentials only ever travel as secrets on stdin; they never appear in
a command line or a log.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import yaml
from pulumi_command import remote

from components.config import NodeRole
from components.datastore_snapshots import (
    DatastoreSnapshots,
    etcd_config,
    etcd_s3_credentials,
    sqlite_timer_values,
)
from components.kubeconfig import ca_hash, rewrite_kubeconfig
from components.pi_node import SshTarget
from components.registries import RegistryTrust, registries_document
from components.remote_script import run_marker, steps_payload

K3S_DIR = "/etc/rancher/k3s"
TOKEN_FILE = f"{K3S_DIR}/picluster-token"
API_PORT = 6443
READY_TIMEOUT_SECONDS = 600
DRAIN_TIMEOUT_SECONDS = 300
"""How long a node's drain may take by default: on two or three Pis, the evicted pods' graceful
stop plus, where a PodDisruptionBudget holds one, a replacement's start (an image pull) on
another Pi."""


@dataclass(frozen=True, kw_only=True)
class ClusterNode:
    """A prepared Pi, as the cluster sees it."""

    name: str
    """Kubernetes node name (the hostname PiNode set)."""
    role: NodeRole
    ssh: SshTarget
    """How to reach it."""
    address: str
    """The address other nodes and clients use (the config's `host`)."""
    ready: pulumi.Resource
    """What must finish before K3s goes on (the node's PiNode)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: Sequence[str] = ()


@dataclass(frozen=True, kw_only=True)
class K3sClusterArgs:
    """Inputs of a K3sCluster."""

    nodes: Sequence[ClusterNode]
    """Servers (an odd number) and agents; the first server initialises the cluster."""
    version: str
    """Pinned K3s release, e.g. v1.31.4+k3s1."""
    token: pulumi.Input[str]
    """Cluster join token, a secret."""
    cluster_name: str
    """Name of the cluster, context and user in the exported kubeconfig."""
    disable: Sequence[str] = ()
    """Packaged components to turn off."""
    secrets_encryption: bool = True
    """Encrypt Secrets at rest."""
    server_config: Mapping[str, Any] = field(default_factory=dict)
    """Extra config.yaml keys for servers."""
    agent_config: Mapping[str, Any] = field(default_factory=dict)
    """Extra config.yaml keys for agents."""
    protect_servers: bool = True
    """Protect the servers' K3s from an accidental destroy."""
    install_url: str = "https://get.k3s.io"
    """The K3s installer."""
    snapshots: DatastoreSnapshots = field(default_factory=DatastoreSnapshots)
    """Scheduled datastore snapshots: K3s's own for embedded etcd, a timer's copy for SQLite."""
    etcd_s3_access_key: pulumi.Input[str] | None = None
    """The S3 access key of `snapshots.s3`, a secret."""
    etcd_s3_secret_key: pulumi.Input[str] | None = None
    """The S3 secret key of `snapshots.s3`, a secret."""
    drain_timeout: int = DRAIN_TIMEOUT_SECONDS
    """Seconds a node's drain before its upgrade may take before the upgrade stops."""
    registries: RegistryTrust = field(default_factory=RegistryTrust)
    """Every node's registries.yaml: mirrors and registry credentials (empty: no file)."""


def embedded_etcd(args: K3sClusterArgs) -> bool:
    """More than one server: K3s runs embedded etcd (`cluster-init`), else SQLite through kine."""
    return sum(1 for n in args.nodes if n.role is NodeRole.SERVER) > 1


def _node_ip(address: str) -> str | None:
    try:
        return str(ipaddress.IPv4Address(address))
    except ValueError:
        return None  # a DNS name: K3s picks the address of the default route


def node_config(node: ClusterNode, args: K3sClusterArgs, first: ClusterNode) -> dict[str, Any]:
    """The node's /etc/rancher/k3s/config.yaml, as data."""
    config: dict[str, Any] = {"node-name": node.name, "token-file": TOKEN_FILE}
    node_ip = _node_ip(node.address)
    if node_ip is not None:
        config["node-ip"] = node_ip
    if node is not first:
        config["server"] = f"https://{first.address}:{API_PORT}"
    # No node-label / node-taint here: K3s reads them only when the node registers, and a change
    # of config.yaml restarts K3s. Taints go to the registration drop-in (registration_config),
    # and both are kept up to date through the API by the node's `-join` step.
    if node.role is NodeRole.SERVER:
        servers = [n for n in args.nodes if n.role is NodeRole.SERVER]
        config["tls-san"] = sorted({n.address for n in servers})
        config["write-kubeconfig-mode"] = "0600"
        if args.secrets_encryption:
            config["secrets-encryption"] = True
        if args.disable:
            config["disable"] = list(args.disable)
        if embedded_etcd(args):
            config.update(_embedded_etcd(node is first))
            config.update(etcd_config(args.snapshots))
        config.update(args.server_config)
    else:
        config.update(args.agent_config)
    return config


def _embedded_etcd(first: bool) -> dict[str, Any]:
    """An HA control plane's embedded etcd (the first server creates it), with its metrics also
    on the node's address (plain HTTP, port 2381) for Prometheus' `etcd` job."""
    config: dict[str, Any] = {"cluster-init": True} if first else {}
    config["etcd-expose-metrics"] = True
    return config


def registration_config(node: ClusterNode) -> dict[str, Any]:
    """What K3s reads only when the node registers (`config.yaml.d` drop-in): its taints, so that
    nothing is scheduled on it before the `-join` step applies them through the API."""
    return {"node-taint": list(node.taints)} if node.taints else {}


def _b64_yaml(document: dict[str, Any]) -> str:
    if not document:
        return ""
    return base64.b64encode(yaml.safe_dump(document, sort_keys=True).encode()).decode()


def install_values(
    node: ClusterNode,
    args: K3sClusterArgs,
    first: ClusterNode,
    token: str,
    s3_keys: tuple[str, str] | None = None,
    registries: str = "",
) -> dict[str, str]:
    """The values `k3s-install.sh` receives on stdin for `node` (`token` is the secret's value:
    the plain token for the first server, the full `K10...` token for every other node;
    `s3_keys` the values of the S3 access and secret keys, which a server running embedded etcd
    with an S3 target gets in its 0600 config.yaml; `registries` the text of registries.yaml,
    `registries_document(args.registries)` resolved, "" for none)."""
    config = node_config(node, args, first)
    if s3_keys is not None and "etcd-s3" in config:
        config |= etcd_s3_credentials(*s3_keys)
    return {
        "ROLE": node.role.value,
        "NODE_NAME": node.name,
        "K3S_VERSION": args.version,
        "K3S_TOKEN": token,
        "CONFIG_YAML_B64": _b64_yaml(config),
        "REGISTRATION_YAML_B64": _b64_yaml(registration_config(node)),
        "REGISTRIES_YAML_B64": base64.b64encode(registries.encode()).decode(),
        "K3S_INSTALL_URL": args.install_url,
        "READY_TIMEOUT": str(READY_TIMEOUT_SECONDS),
    }


def join_token(token: str, cluster_ca_hash: str) -> str:
    """K3s's full ("secure") token: joiners check the CA they download against its hash before
    they send the secret (k3s-io/k3s pkg/clientaccess/token.go: `K10<hash>::server:<secret>`)."""
    return f"K10{cluster_ca_hash}::server:{token}"


def drain_values(node: ClusterNode, args: K3sClusterArgs) -> dict[str, str]:
    """The values `k3s-drain.sh` receives on stdin for `node`, on the first server: nothing but
    the target version (and the timeout) changes them, so nothing else re-runs the drain."""
    return {
        "NODE_NAME": node.name,
        "K3S_VERSION": args.version,
        "DRAIN_TIMEOUT": str(args.drain_timeout),
        "READY_TIMEOUT": str(READY_TIMEOUT_SECONDS),
    }


def node_values(node: ClusterNode, *, first: bool, version: str) -> dict[str, str]:
    """The values `k3s-node.sh` receives on stdin for `node`, on the first server."""
    return {
        "NODE_NAME": node.name,
        "K3S_VERSION": version,
        "READY_TIMEOUT": str(READY_TIMEOUT_SECONDS),
        "LABELS": "\n".join(f"{k}={v}" for k, v in sorted(node.labels.items())),
        "TAINTS": "\n".join(node.taints),
        "FIRST_SERVER": "1" if first else "0",
        "ROLE": node.role.value,
    }


class K3sCluster(pulumi.ComponentResource):
    """A K3s cluster on prepared Raspberry Pis."""

    kubeconfig: pulumi.Output[str]
    """Admin kubeconfig pointing at the first server, a secret."""
    api_server_url: pulumi.Output[str]
    """https://<first server>:6443."""
    node_names: list[str]
    """Every node's name, servers first."""
    ready: list[pulumi.Resource]
    """The steps after which every node is Ready, its labels and taints applied."""
    servers_ready: list[remote.Command]
    """The steps after which every server is Ready: build the Kubernetes provider after these
    only. What depends on the provider (the protected database claim) then does not depend on
    an agent, so `pulumi destroy --exclude-protected` can remove the agents, and a new agent
    joins without holding up the app."""

    def __init__(
        self, name: str, args: K3sClusterArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("picluster:index:K3sCluster", name, None, opts)
        servers = [n for n in args.nodes if n.role is NodeRole.SERVER]
        agents = [n for n in args.nodes if n.role is NodeRole.AGENT]
        if not servers:
            raise ValueError("K3sCluster needs at least one server")
        first = servers[0]
        first_connection = first.ssh.connection()
        # The same on every node; it may hold a password, so it is a secret like the token.
        registries = registries_document(args.registries)

        # One node at a time, servers first: drain(n) -> install(n) -> join(n) -> drain(n+1).
        # The first server starts with the plain token; every other node gets the full token,
        # with the hash of the CA that server created, so it checks the cluster before joining.
        token: pulumi.Input[str] = args.token
        read: remote.Command | None = None  # after the first server's install, the first step
        previous: list[pulumi.Resource] = []
        joins: list[remote.Command] = []
        for node in [*servers, *agents]:
            drain = remote.Command(
                f"{name}-{node.name}-drain",
                connection=first_connection,
                create="sudo bash -s",
                update="sudo bash -s",
                # No delete: removing a node drains it in its `-join` step's delete.
                stdin=steps_payload(["k3s-drain.sh"], drain_values(node, args)),
                add_previous_output_in_env=False,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[node.ready, *previous]),
            )
            install = self._install(
                name, node, args, first, token, registries, depends_on=[node.ready, drain]
            )
            if node is first:
                read = self._read_kubeconfig(name, first_connection, after=install)
                # The CA's hash comes from the kubeconfig, read once: known in every preview,
                # where the stdout of a re-run install is not.
                token = pulumi.Output.secret(
                    pulumi.Output.all(args.token, read.stdout).apply(
                        lambda parts: join_token(parts[0], ca_hash(parts[1]))
                    )
                )
                if not embedded_etcd(args):
                    self._sqlite_snapshots(name, first, args, depends_on=install)
            join = remote.Command(
                f"{name}-{node.name}-join",
                connection=first_connection,
                create="sudo bash -s",
                update="sudo bash -s",
                delete="sudo bash -s -- delete",
                # A re-run of the node's install (an upgrade, a new config) re-runs this wait.
                stdin=install.stdout.apply(
                    lambda out, node=node: steps_payload(
                        ["k3s-node.sh"],
                        {
                            **node_values(node, first=node is first, version=args.version),
                            "AFTER_RUN": run_marker(out),
                        },
                    )
                ),
                add_previous_output_in_env=False,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[install]),
            )
            joins.append(join)
            previous = [join]

        assert read is not None  # the first server is the loop's first node
        self.api_server_url = pulumi.Output.from_input(f"https://{first.address}:{API_PORT}")
        self.kubeconfig = pulumi.Output.secret(
            read.stdout.apply(
                lambda raw: rewrite_kubeconfig(
                    raw, f"https://{first.address}:{API_PORT}", args.cluster_name
                )
            )
        )
        self.node_names = [n.name for n in [*servers, *agents]]
        self.ready = list(joins)
        self.servers_ready = joins[: len(servers)]
        self.register_outputs(
            {"kubeconfig": self.kubeconfig, "api_server_url": self.api_server_url}
        )

    def _read_kubeconfig(
        self, name: str, connection: remote.ConnectionArgs, *, after: remote.Command
    ) -> remote.Command:
        """`kubeconfig`: the admin kubeconfig from the first server, after its install."""
        return remote.Command(
            f"{name}-kubeconfig",
            connection=connection,
            create="sudo bash -s",
            update="sudo bash -s",
            # Read once, after the first server's install, and again only when the first server
            # itself changes (the connection): not after each run of its install. A re-read
            # leaves the kubeconfig unknown in a preview, and a Kubernetes provider with unknown
            # config cannot diff, so every object on the cluster would preview as an update.
            # The install keeps the CA and the admin credentials across upgrades and restarts.
            stdin=steps_payload(["k3s-kubeconfig.sh"], {"READY_TIMEOUT": "300"}),
            # The kubeconfig holds the cluster's admin credentials: never logged, stored secret,
            # and not handed back to the next run's environment.
            logging=remote.Logging.STDERR,
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[after],
                additional_secret_outputs=["stdout"],
            ),
        )

    def _sqlite_snapshots(
        self, name: str, server: ClusterNode, args: K3sClusterArgs, *, depends_on: remote.Command
    ) -> remote.Command:
        """`<server>-snapshots`: the timer copying a single server's SQLite datastore (K3s
        snapshots embedded etcd only). A new schedule or retention is an in-place update."""
        return remote.Command(
            f"{name}-{server.name}-snapshots",
            connection=server.ssh.connection(),
            create="sudo bash -s",
            update="sudo bash -s",
            delete="sudo bash -s -- delete",
            stdin=steps_payload(["k3s-sqlite-snapshots.sh"], sqlite_timer_values(args.snapshots)),
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[depends_on]),
        )

    def _install(
        self,
        name: str,
        node: ClusterNode,
        args: K3sClusterArgs,
        first: ClusterNode,
        token: pulumi.Input[str],
        registries: pulumi.Output[str],
        *,
        depends_on: Sequence[pulumi.Resource],
    ) -> remote.Command:
        values = pulumi.Output.all(
            token, args.etcd_s3_access_key, args.etcd_s3_secret_key, registries
        ).apply(
            lambda parts: steps_payload(
                ["k3s-install.sh"],
                install_values(
                    node,
                    args,
                    first,
                    parts[0],
                    (parts[1], parts[2]) if parts[1] else None,
                    registries=parts[3],
                ),
            )
        )
        protect = node.role is NodeRole.SERVER and args.protect_servers
        return remote.Command(
            f"{name}-{node.name}-k3s",
            connection=node.ssh.connection(),
            create="sudo bash -s",
            # A new version, config.yaml or registries.yaml changes stdin, and a stdin change is an
            # in-place update that re-runs the install. Never `triggers`: pulumi-command makes them
            # replace the command, and a replaced install runs its `delete` (the uninstall) on the
            # old stdin.
            update="sudo bash -s",
            delete="sudo bash -s -- delete",
            stdin=pulumi.Output.secret(values),
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=list(depends_on),
                protect=protect,
            ),
        )
