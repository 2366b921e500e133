"""The frontend's nginx configuration, rendered from the app model.

nginx serves the game's static files and, where no ingress exists (the Docker target), routes each
service's path prefix to it. Upstreams are looked up per request through the platform's resolver,
so a restarted service container with a new address is found without reloading nginx, and nginx
starts even while a service is still coming up.
"""

from __future__ import annotations

from components.app_model import AppModel

DOCKER_RESOLVER = "127.0.0.11"
"""Docker's embedded DNS server on user-defined networks."""


def nginx_conf(app: AppModel, *, resolver: str | None, listen_port: int | None = None) -> str:
    """`/etc/nginx/conf.d/default.conf`; proxies service routes when `resolver` is given."""
    port = listen_port if listen_port is not None else app.frontend.port
    lines = [
        "# Written by picluster from the app model; changes here are replaced on the next update.",
        "server {",
        f"    listen {port};",
        "    server_name _;",
        "    root /usr/share/nginx/html;",
        "    index index.html;",
        "",
        "    location = /healthz {",
        "        access_log off;",
        "        default_type text/plain;",
        '        return 200 "ok\\n";',
        "    }",
        "",
        "    location / {",
        "        try_files $uri $uri/ /index.html;",
        "    }",
    ]
    if resolver is not None:
        lines += [
            "",
            f"    resolver {resolver} valid=10s ipv6=off;",
        ]
        for service in app.services:
            upstream = f"http://{service.name}:{service.port}"
            lines += [
                "",
                f"    location ~ ^{service.route}(/|$) {{",
                f"        set $upstream_{service.name.replace('-', '_')} {upstream};",
                f"        proxy_pass $upstream_{service.name.replace('-', '_')};",
                "        proxy_http_version 1.1;",
                "        proxy_set_header Host $host;",
                "        proxy_set_header X-Real-IP $remote_addr;",
                "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
                "        proxy_set_header X-Forwarded-Proto $scheme;",
                "        proxy_set_header Upgrade $http_upgrade;",
                '        proxy_set_header Connection "upgrade";',
                "    }",
            ]
    lines.append("}")
    return "\n".join(lines) + "\n"
