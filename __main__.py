"""picluster: the game and its monitoring on Docker (`-s local`) or K3s on Pis (`-s prod`)."""

import pulumi

from components import config as stack_config
from components.app_model import build_app
from components.app_stack import AppStack, AppStackArgs
from components.config import Target
from components.k3s_cluster import K3sCluster
from components.monitoring import Monitoring, MonitoringArgs
from components.pi_node import PiNode
from components.providers import command_provider, docker_provider, kubernetes_provider
from components.secrets import alert_secret_files, cluster_token, stack_secrets
from components.stack_args import (
    docker_platform,
    image_source,
    k3s_cluster_args,
    k3s_image_push,
    kubernetes_platform,
    pi_node_args,
)

config = stack_config.load_or_exit()  # every bad key in one error, before any resource
settings = config.settings
app = build_app(settings.app, image_source(settings))
secrets = stack_secrets(config, app)
node_args = pi_node_args(config)
# Remote steps on the Pis and the local image builds run through the one command provider.
commands: list[pulumi.ProviderResource] = [command_provider()] if node_args or app.builds else []
over_ssh = pulumi.ResourceOptions(providers=commands)
pis = [(node, PiNode(node.name, args, over_ssh)) for node, args in node_args]

if settings.target is Target.K3S:
    cluster = K3sCluster("cluster", k3s_cluster_args(config, pis, cluster_token(config)), over_ssh)
    stack_id = f"picluster-{pulumi.get_stack()}"
    provider = kubernetes_provider(cluster.kubeconfig, stack_id, cluster.servers_ready)
    after_nodes: list[pulumi.Resource] = list(cluster.ready)
    platform = kubernetes_platform(settings)
    push = k3s_image_push(config, pis)
    pulumi.export("apiServerUrl", cluster.api_server_url)
    pulumi.export("nodeNames", cluster.node_names)
    pulumi.export("kubeconfig", cluster.kubeconfig)
else:
    provider = docker_provider(settings.docker, [pi for _, pi in pis])
    after_nodes = []
    platform = docker_platform(settings)
    push = None

on_platform = pulumi.ResourceOptions(providers=[provider])
app_stack = AppStack(
    "app",
    AppStackArgs(app=app, secrets=secrets, platform=platform, push=push),
    pulumi.ResourceOptions(providers=[provider, *commands]),
)
pulumi.export("frontendUrl", app_stack.frontend_url)
pulumi.export("dbPassword", secrets.db_password)
if settings.monitoring.enabled:
    monitoring = Monitoring(
        "monitoring",
        MonitoringArgs(
            app=app,
            secrets=secrets,
            settings=settings.monitoring,
            alert_secrets=alert_secret_files(config),
            platform=platform,
            network_name=app_stack.network_name,
        ),
        # On K3s, after every node (and so, on destroy, gone before any agent is drained: the
        # drain refuses while Prometheus' or Grafana's volume is on the node). Not the app: it
        # holds the protected database claim, which must not depend on an agent.
        pulumi.ResourceOptions.merge(on_platform, pulumi.ResourceOptions(depends_on=after_nodes)),
    )
    pulumi.export("grafanaUrl", monitoring.grafana_url)
    pulumi.export("prometheusUrl", monitoring.prometheus_url)
    pulumi.export("alertmanagerUrl", monitoring.alertmanager_url)
    if monitoring.forward_command is not None:
        pulumi.export("forwardCommand", monitoring.forward_command)
    pulumi.export("grafanaAdminPassword", secrets.grafana_admin_password)
