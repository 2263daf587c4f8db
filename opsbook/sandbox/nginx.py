"""nginx, the frontend: static index, /health, /api/ proxied to the backend, maintenance mode.

Maintenance mode is on while DIR/nginx/maintenance.on exists: every location, /health
included, answers 503. As root the workers run as nobody:nogroup, so the files they read are
world-readable and the directories on the way are searchable.

The same server also listens with TLS on a second port (the inventory's public entry
`frontend-tls`), TLS 1.2 and 1.3 only, with a self-signed certificate made by openssl on the
first start (DIR/nginx/tls: cert.pem, and key.pem mode 0600, read by the master before it
drops privileges). The plain-HTTP listener stays as it was.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from opsbook.loopback import http_status
from opsbook.sandbox.base import Component, Layout, require_port
from opsbook.sandbox.process import ComponentError, Process
from opsbook.sandbox.tls import make_self_signed

TLS_PROTOCOLS = "TLSv1.2 TLSv1.3"

INDEX_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>AI chat</title></head>
<body><h1>AI chat</h1><p>The chat frontend (opsbook sandbox).</p></body></html>
"""

MAINTENANCE_HTML = (
    "<!doctype html><html lang=en><head><meta charset=utf-8><title>Maintenance</title></head>"
    "<body><h1>Down for maintenance</h1><p>We will be back shortly.</p></body></html>"
)


class Nginx(Component):
    name = "nginx"

    def __init__(
        self, layout: Layout, port: int | None, backend_port: int, tls_port: int | None = None
    ) -> None:
        self.backend_port = backend_port
        self.tls_port = tls_port
        super().__init__(layout, port)

    @property
    def home(self) -> Path:
        return self.layout.dir / "nginx"

    @property
    def config(self) -> Path:
        return self.home / "nginx.conf"

    @property
    def maintenance_flag(self) -> Path:
        return self.home / "maintenance.on"

    @property
    def certificate(self) -> Path:
        """The TLS listener's self-signed certificate: also the CA its clients trust."""
        return self.certificate_of(self.layout)

    @staticmethod
    def certificate_of(layout: Layout) -> Path:
        return layout.dir / "nginx" / "tls" / "cert.pem"

    @property
    def private_key(self) -> Path:
        return self.home / "tls" / "key.pem"

    def _process(self) -> Process:
        return Process(
            name=self.name,
            argv=["nginx", "-p", f"{self.home}/", "-c", str(self.config)],
            log=self.layout.log(self.name),
            pid_file=self.layout.pid_file(self.name),
            # SIGQUIT would wait for open connections; SIGTERM is the fast shutdown.
        )

    def render(self) -> str:
        home = self.home
        temp = home / "temp"
        user = "user nobody nogroup;\n" if os.geteuid() == 0 else ""
        headers = "\n".join(
            f"        add_header {name} {value} always;"
            for name, value in (
                ("X-Content-Type-Options", "nosniff"),
                ("X-Frame-Options", "DENY"),
                ("Referrer-Policy", "no-referrer"),
            )
        )
        tls = ""
        if self.tls_port is not None:
            tls = (
                f"        listen 127.0.0.1:{self.tls_port} ssl;\n"
                f"        ssl_certificate {self.certificate};\n"
                f"        ssl_certificate_key {self.private_key};\n"
                f"        ssl_protocols {TLS_PROTOCOLS};\n"
            )
        return f"""{user}daemon off;
worker_processes 1;
pid {home}/run/nginx.pid;
error_log {home}/logs/error.log info;

events {{
    worker_connections 256;
}}

http {{
    access_log {home}/logs/access.log;
    client_body_temp_path {temp}/client_body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server_tokens off;
    types {{
        text/html html;
        application/json json;
    }}
    default_type application/octet-stream;
    client_max_body_size 64k;

    server {{
        listen 127.0.0.1:{require_port(self)};
{tls}        server_name localhost;
        root {home}/html;
{headers}

        # Checked before any location is chosen, so it covers every path.
        if (-f {self.maintenance_flag}) {{
            return 503 '{MAINTENANCE_HTML}';
        }}
        default_type text/html;

        location = /health {{
            default_type application/json;
            return 200 '{{"status":"ok"}}';
        }}

        location /api/ {{
            proxy_pass http://127.0.0.1:{self.backend_port};
            proxy_connect_timeout 2s;
            proxy_send_timeout 5s;
            proxy_read_timeout 5s;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_hide_header X-Content-Type-Options;  # added once, above, for every answer
        }}

        location / {{
            index index.html;
            try_files $uri $uri/ =404;
        }}
    }}
}}
"""

    def prepare(self) -> None:
        for sub in ("", "html", "logs", "run", "temp"):
            path = self.home / sub
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o755)
        index = self.home / "html" / "index.html"
        index.write_text(INDEX_HTML, encoding="utf-8")
        index.chmod(0o644)
        if self.tls_port is not None:
            self.certificate.parent.mkdir(mode=0o755, exist_ok=True)
            make_self_signed(self.certificate, self.private_key, self.name)
        self.config.write_text(self.render(), encoding="utf-8")
        self.config.chmod(0o644)

    def reload(self) -> None:
        """Make the running nginx read its configuration file again (`nginx -s reload`); the
        new workers take over asynchronously."""
        done = subprocess.run(
            ["nginx", "-p", f"{self.home}/", "-c", str(self.config), "-s", "reload"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise ComponentError(self.name, f"reload failed: {done.stderr.strip()}", None)

    def ready(self) -> bool:
        return http_status(require_port(self), "/health") is not None
