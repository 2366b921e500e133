"""picluster: the game and its monitoring on Docker (`-s local`) or K3s on Pis (`-s prod`)."""

import pulumi

from components import config as stack_config
from components.app_model import build_app
from components.app_stack import AppStack, AppStackArgs
from components.config import Target
from components.monitoring import Monitoring, MonitoringArgs
from components.on_docker.containers import DockerPlatform
from components.providers import docker_provider
from components.secrets import stack_secrets

config = stack_config.load()  # raises one ConfigError, before any resource, on bad input
settings = config.settings
if settings.target is not Target.DOCKER:
    raise stack_config.ConfigError(
        ["picluster:target: 'k3s' is not available yet in this version; use 'docker'"]
    )

app = build_app(settings.app)
secrets = stack_secrets(config, app)
provider = docker_provider(settings.docker)
platform = DockerPlatform(
    publish_address=settings.docker.publish_address,
    frontend_port=settings.docker.ports.frontend,
    grafana_port=settings.docker.ports.grafana,
    prometheus_port=settings.docker.ports.prometheus,
    name_prefix=f"picluster-{pulumi.get_stack()}",
)
on_platform = pulumi.ResourceOptions(providers=[provider])

app_stack = AppStack("app", AppStackArgs(app=app, secrets=secrets, platform=platform), on_platform)
pulumi.export("frontendUrl", app_stack.frontend_url)
if settings.monitoring.enabled:
    monitoring = Monitoring(
        "monitoring",
        MonitoringArgs(
            app=app,
            secrets=secrets,
            settings=settings.monitoring,
            platform=platform,
            network_name=app_stack.network_name,
        ),
        on_platform,
    )
    pulumi.export("grafanaUrl", monitoring.grafana_url)
    pulumi.export("prometheusUrl", monitoring.prometheus_url)
    pulumi.export("grafanaAdminPassword", secrets.grafana_admin_password)
pulumi.export("dbPassword", secrets.db_password)
