"""Which input changes each provider answers with a replace, for every resource type the program
registers, each entry read in the provider's source (not its docstrings).

The engine replaces a resource when its provider's `Diff` (for a provider resource, `DiffConfig`)
names a replace-forcing property, or when a changed path matches the resource's `replaceOnChanges`
(what `tests/engine_rules.py` applies from the registration itself). This table is the provider
half. Each `source` names the repository, the ref that was read and the file.

The pinned SDK versions (requirements.txt) are newer than the provider snapshots that could be
read here: pulumi-kubernetes 4.34.2 was read at v4.32.0+27 (its force-new table,
`provider/pkg/provider/diff.go`, has not changed since 2024 apart from lint), pulumi-docker 5.2.0
at v5.1.0+24 (upstream terraform-provider-docker v4.5.0), pulumi-random 4.21.4 at v4.21.1+9
(upstream terraform-provider-random v3.9.0). pulumi-command is read at its own v1.2.1 tag.

How each kind of provider decides:

- **Kubernetes** (`provider.go` `Diff`): a JSON merge patch from the pruned live object to the new
  inputs; a patched path at or under one of `forceNewProperties` (`diff.go`) is a replace, any
  other change a server-side-apply patch. `metadata.name` and `metadata.namespace` force a replace
  for every kind (cluster-scoped kinds have their namespace cleared on both sides, so it never
  differs). Where the API server holds a field immutable but the provider does not replace, the
  patch fails: `api_rejects` (read in kubernetes/kubernetes `pkg/apis/*/validation/validation.go`,
  `Validate*Update`). Replacements are delete-before-replace when the object has an explicit
  `metadata.name` that stays the same (every object of this program is named): two objects cannot
  share a name. A replace forced by a change of the name or namespace itself creates first.
- **Bridged Terraform providers** (Docker, Random; pulumi-terraform-bridge
  `pkg/tfbridge/provider.go` `Diff`): the Terraform plan decides; an attribute without `ForceNew`
  (SDKv2) or `RequiresReplace` (plugin framework) updates in place, anything else replaces, hence
  `update_paths`.
- **pulumi-command** (pulumi-go-provider `infer/resource.go` `Diff`): every change is an update
  except `triggers` (`provider:"replaceOnChanges"`); the Python SDK also registers
  `replaceOnChanges=["triggers[*]"]` itself.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True, kw_only=True)
class ProviderRule:
    """How a provider diffs one resource type."""

    source: str
    """Where this was read: repository@tag path (function or line)."""
    replace_paths: tuple[str, ...] = ()
    """Input paths (dotted, Pulumi camelCase, e.g. "spec.selector", "metadata.name"; list indices
    as "[*]" e.g. "triggers") a change at or under which forces a replace; every other change is
    an in-place update."""
    update_paths: tuple[str, ...] | None = None
    """When set (bridged providers): only changes at or under these paths update in place; a
    change anywhere else forces a replace."""
    delete_before_replace: bool = False
    """The provider deletes the old resource before creating its replacement."""
    api_rejects: tuple[str, ...] = ()
    """Paths the provider would patch in place but the Kubernetes API server rejects as immutable
    (the update fails)."""
    unless_provider: tuple[str, tuple[str, ...]] | None = None
    """(`flag`, paths): when the managing provider's input `flag` is true, these `replace_paths`
    update in place instead (pulumi-kubernetes `enableConfigMapMutable` / `enableSecretMutable`)."""


# Refs read (`git describe` of the snapshot where the pinned tag was not in it).
_K8S = "pulumi/pulumi-kubernetes@v4.32.0-27-g94977969d"
_K8S_DIFF = f"{_K8S} provider/pkg/provider/diff.go"
_BRIDGE = "pulumi/pulumi-terraform-bridge@v3.136.0"
_DOCKER = "pulumi/pulumi-docker@v5.1.0-24-g237b7899"
_TF_DOCKER = "kreuzwerker/terraform-provider-docker@v4.5.0 internal/provider"
_TF_RANDOM = "hashicorp/terraform-provider-random@v3.9.0"

_NAMED = ("metadata.name", "metadata.namespace")
"""diff.go `metadataForceNewProperties(".metadata")`, added for every kind."""
_CLUSTER_NAMED = ("metadata.name",)
"""The same for a cluster-scoped kind: `Diff` clears `metadata.namespace` on both sides."""


def _k8s(
    where: str,
    *fields: str,
    cluster_scoped: bool = False,
    api_rejects: tuple[str, ...] = (),
) -> ProviderRule:
    """A Kubernetes kind: its name (and namespace) plus the kind's force-new `fields`."""
    return ProviderRule(
        source=f"{_K8S_DIFF} ({where}); {_K8S} provider/pkg/provider/provider.go (Diff)",
        replace_paths=(*(_CLUSTER_NAMED if cluster_scoped else _NAMED), *fields),
        delete_before_replace=True,
        api_rejects=api_rejects,
    )


_NOT_IN_TABLE = "forceNewProperties: kind not in the forceNew table, metadata only"

RULES: dict[str, ProviderRule] = {
    # --- pulumi-command ---------------------------------------------------------------------
    # infer's default Diff looks each detailed-diff key up in the schema: `triggers` added or
    # removed as a whole is a replace, but an element change ("triggers[0]") is not found there
    # and comes back an update. The engine still replaces on it through the replaceOnChanges
    # that pulumi_command/remote/command.py registers (tests/engine_rules.py applies that).
    # No DeleteBeforeReplace: the engine's default create-before-delete.
    "command:remote:Command": ProviderRule(
        source=(
            "pulumi/pulumi-command@v1.2.1 provider/pkg/provider/common/inputs.go "
            '(Triggers provider:"replaceOnChanges"); pulumi/pulumi-go-provider@v1.3.0 '
            "infer/resource.go (derivedResourceController.Diff)"
        ),
        replace_paths=("triggers",),
    ),
    # The local Command is the same infer resource with the same inputs (common/inputs.go is
    # shared by local and remote); pulumi_command/local/command.py registers the same
    # replaceOnChanges=["triggers[*]"].
    "command:local:Command": ProviderRule(
        source=(
            "pulumi/pulumi-command@v1.2.1 provider/pkg/provider/local/command.go, "
            'provider/pkg/provider/common/inputs.go (Triggers provider:"replaceOnChanges")'
        ),
        replace_paths=("triggers",),
    ),
    # --- Docker (bridged) -----------------------------------------------------------------------
    # resource_docker_container.go: every input is ForceNew except these (snake_case ->
    # the SDK's names, pluralised by the bridge). resourceDockerContainerUpdate
    # (resource_docker_container_funcs.go) only applies restart, maxRetryCount, cpuShares,
    # memory, memoryReservation, cpuSet, memorySwap, device*Bps/Iops and a mustRun false->true
    # start: a change of healthcheck, init, tmpfs, cpuPeriod or cpuQuota is an "update" that
    # leaves the running container as it was. deviceCgroupRules (SDK 5.2.0) is not in v4.5.0:
    # unconfirmed, so it counts as replace-forcing here.
    "docker:index/container:Container": ProviderRule(
        source=(
            f"{_TF_DOCKER}/resource_docker_container.go (resourceDockerContainer schema); "
            f"{_DOCKER} provider/resources.go (docker_container DeleteBeforeReplace: true)"
        ),
        update_paths=(
            "attach",
            "containerReadRefreshTimeoutMilliseconds",
            "cpuPeriod",
            "cpuQuota",
            "cpuSet",
            "cpuShares",
            "destroyGraceSeconds",
            "deviceReadBps",
            "deviceReadIops",
            "deviceWriteBps",
            "deviceWriteIops",
            "healthcheck",
            "init",
            "logs",
            "maxRetryCount",
            "memory",
            "memoryReservation",
            "memorySwap",
            "mustRun",
            "removeVolumes",
            "restart",
            "rm",
            "start",
            "tmpfs",
            "wait",
            "waitTimeout",
        ),
        delete_before_replace=True,
    ),
    # No UpdateContext: every input is ForceNew. Delete-before-replace because `name` is
    # auto-named (resources.go SetAutonaming) and the program gives it explicitly: the bridge's
    # nameRequiresDeleteBeforeReplace (pkg/tfbridge/schema.go) then answers true.
    "docker:index/network:Network": ProviderRule(
        source=(
            f"{_TF_DOCKER}/resource_docker_network.go (resourceDockerNetwork schema); "
            f"{_BRIDGE} pkg/tfbridge/schema.go (nameRequiresDeleteBeforeReplace)"
        ),
        update_paths=(),
        delete_before_replace=True,
    ),
    # `name` is ForceNew and has a Fields entry (so it is not auto-named): create-before-delete.
    # `build` is a TypeSet whose required `context` is ForceNew: any change to it replaces.
    "docker:index/remoteImage:RemoteImage": ProviderRule(
        source=(
            f"{_TF_DOCKER}/resource_docker_image.go (resourceDockerImage schema); "
            f"{_DOCKER} provider/resources.go (docker_image)"
        ),
        update_paths=("forceRemove", "keepLocally"),
    ),
    # Only a swarm cluster volume's availability updates (resourceDockerVolumeUpdate); the rest
    # is ForceNew. Auto-named `name` given explicitly: delete-before-replace, as for Network.
    "docker:index/volume:Volume": ProviderRule(
        source=(
            f"{_TF_DOCKER}/resource_docker_volume.go (resourceDockerVolume schema); "
            f"{_BRIDGE} pkg/tfbridge/schema.go (nameRequiresDeleteBeforeReplace)"
        ),
        update_paths=("cluster.availability",),
        delete_before_replace=True,
    ),
    # --- Kubernetes -----------------------------------------------------------------------------
    # The API server's own immutables for these kinds (spec.selector) are all force-new here.
    "kubernetes:apps/v1:DaemonSet": _k8s("forceNew apps/v1 DaemonSet", "spec.selector"),
    "kubernetes:apps/v1:Deployment": _k8s("forceNew apps/v1 Deployment", "spec.selector"),
    # ValidateStatefulSetUpdate allows only replicas, ordinals, template, updateStrategy,
    # revisionHistoryLimit, persistentVolumeClaimRetentionPolicy and minReadySeconds to change;
    # everything else is force-new here (and revisionHistoryLimit is too, though mutable).
    "kubernetes:apps/v1:StatefulSet": _k8s(
        "forceNew apps/v1 StatefulSet",
        "spec.podManagementPolicy",
        "spec.revisionHistoryLimit",
        "spec.selector",
        "spec.serviceName",
        "spec.volumeClaimTemplates",
    ),
    # CronJob is not in the table; its whole spec is mutable (ValidateCronJobUpdate).
    "kubernetes:batch/v1:CronJob": _k8s(_NOT_IN_TABLE),
    # The provider replaces on completions, parallelism (mutable in the API), selector and
    # template; ValidateJobSpecUpdate also holds these immutable, which the provider patches.
    "kubernetes:batch/v1:Job": _k8s(
        "forceNew batch/v1 Job",
        "spec.completions",
        "spec.parallelism",
        "spec.selector",
        "spec.template",
        api_rejects=(
            "spec.backoffLimitPerIndex",
            "spec.completionMode",
            "spec.managedBy",
            "spec.podFailurePolicy",
            "spec.successPolicy",
        ),
    ),
    # enableConfigMapMutable defaults to false (provider.go Configure): data and binaryData force
    # a replace unless the provider sets it (diff.go forceNewProperties), as picluster's does.
    "kubernetes:core/v1:ConfigMap": replace(
        _k8s("forceNewProperties: ConfigMap without enableConfigMapMutable", "binaryData", "data"),
        unless_provider=("enableConfigMapMutable", ("binaryData", "data")),
    ),
    "kubernetes:core/v1:Namespace": _k8s(_NOT_IN_TABLE, cluster_scoped=True),
    # The provider replaces on accessModes, selector, storageClassName and volumeName, and patches
    # the rest of the spec. ValidatePersistentVolumeClaimUpdate: "spec is immutable after
    # creation except resources.requests and volumeAttributesClassName for bound claims", and a
    # storage request may only grow, on a bound claim whose StorageClass has
    # allowVolumeExpansion (the PersistentVolumeClaimResize admission plugin). K3s's local-path
    # class has none, so on this cluster any spec.resources change is rejected too.
    "kubernetes:core/v1:PersistentVolumeClaim": _k8s(
        "forceNew core/v1 PersistentVolumeClaim",
        "spec.accessModes",
        "spec.selector",
        "spec.storageClassName",
        "spec.volumeName",
        api_rejects=(
            "spec.dataSource",
            "spec.dataSourceRef",
            "spec.resources",
            "spec.volumeMode",
        ),
    ),
    # enableSecretMutable defaults to false: type, data and stringData replace unless the provider
    # sets it (diff.go forceNewProperties), as picluster's does; then a type change is patched and
    # the API server rejects it (ValidateSecretUpdate: type is immutable).
    "kubernetes:core/v1:Secret": replace(
        _k8s(
            "forceNewProperties: Secret without enableSecretMutable",
            "data",
            "stringData",
            "type",
            api_rejects=("type",),
        ),
        unless_provider=("enableSecretMutable", ("data", "stringData", "type")),
    ),
    # spec.clusterIP is force-new; the primary clusterIPs / ipFamilies entry may not change
    # once set (validateUpgradeDowngradeClusterIPs, validateUpgradeDowngradeIPFamilies).
    "kubernetes:core/v1:Service": _k8s(
        "forceNew core/v1 Service",
        "spec.clusterIP",
        api_rejects=("spec.clusterIPs", "spec.ipFamilies"),
    ),
    "kubernetes:core/v1:ServiceAccount": _k8s(_NOT_IN_TABLE),
    "kubernetes:networking.k8s.io/v1:Ingress": _k8s(_NOT_IN_TABLE),
    "kubernetes:networking.k8s.io/v1:NetworkPolicy": _k8s(_NOT_IN_TABLE),
    # Only policy/v1beta1 PodDisruptionBudget has `.spec` force-new; policy/v1 is not in the
    # table (and its spec is mutable in the API).
    "kubernetes:policy/v1:PodDisruptionBudget": _k8s(_NOT_IN_TABLE),
    "kubernetes:rbac.authorization.k8s.io/v1:ClusterRole": _k8s(_NOT_IN_TABLE, cluster_scoped=True),
    "kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding": _k8s(
        "forceNew rbac.authorization.k8s.io/v1 ClusterRoleBinding", "roleRef", cluster_scoped=True
    ),
    "kubernetes:rbac.authorization.k8s.io/v1:Role": _k8s(_NOT_IN_TABLE),
    "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding": _k8s(
        "forceNew rbac.authorization.k8s.io/v1 RoleBinding", "roleRef"
    ),
    # --- Random (bridged, plugin framework) -----------------------------------------------------
    # passwordSchemaV3: every input has a RequiresReplace plan modifier (keepers: unless only
    # null-valued keys change; overrideSpecial: unless "" -> null). Update only copies the plan.
    "random:index/randomPassword:RandomPassword": ProviderRule(
        source=f"{_TF_RANDOM} internal/provider/resource_password.go (passwordSchemaV3)",
        update_paths=(),
    ),
    # --- Providers ------------------------------------------------------------------------------
    # DiffConfig: a changed clusterIdentifier replaces; one that is set and unchanged clears
    # every replace (a deferred `resp.Replaces = nil`), which is this program's case (the stack
    # name, components/providers.py). Without it, a kubeconfig/context/cluster change that moves
    # the active cluster, an unknown kubeconfig, or renderYamlToDirectory would replace; adding
    # or removing clusterIdentifier falls back to those rules.
    "pulumi:providers:kubernetes": ProviderRule(
        source=f"{_K8S} provider/pkg/provider/provider.go (DiffConfig)",
        replace_paths=("clusterIdentifier",),
    ),
    # The bridge's DiffConfig replaces only on config fields with ForcesProviderReplace, and
    # pulumi-docker sets none (provider/resources.go Config; hybrid.go delegates DiffConfig):
    # a new `host` updates the provider in place, the containers are not moved.
    "pulumi:providers:docker": ProviderRule(
        source=(
            f"{_BRIDGE} pkg/tfbridge/provider.go (configDiffer.DiffConfig); "
            f"{_DOCKER} provider/resources.go (Config)"
        ),
    ),
    # No config inputs: infer without Config leaves DiffConfig unimplemented, and the engine
    # answers an unimplemented DiffConfig with no replaces.
    "pulumi:providers:command": ProviderRule(
        source=(
            "pulumi/pulumi-go-provider@v1.3.0 infer/provider.go (DiffConfig only with Config); "
            "pulumi/pulumi@v3.259.0 sdk/go/common/resource/plugin/provider_plugin.go (DiffConfig)"
        ),
    ),
}


def rule_for(type_: str) -> ProviderRule:
    """The rule for `type_`; raises KeyError naming the type when it is not in the table (so a
    new resource type cannot slip past the harness unreviewed)."""
    try:
        return RULES[type_]
    except KeyError:
        raise KeyError(
            f"no provider rule for resource type {type_!r}: read its provider's Diff and add it "
            "to tests/provider_rules.py"
        ) from None
