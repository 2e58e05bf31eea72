"""Write each target's configuration into the work dir: peers' templates, Gossamer's Snapshots."""

from __future__ import annotations

import os
from pathlib import Path
from string import Template

from gossamer import snapshot as snap

TEMPLATES = Path(__file__).resolve().parent / "templates"
BODY = "x" * 99 + "\n"  # the backend's 100-byte answer
assert len(BODY.encode()) == 100


def _user_line() -> str:
    # nginx switches its worker to `nobody` when started as root; keep the current user instead so
    # that the worker can use the work dir.
    return "user root;" if os.geteuid() == 0 else ""


def render(template: str, dest: Path, **values: object) -> Path:
    """Fill `templates/<template>` with `values` (`$name`s) and write it to `dest`."""
    text = Template((TEMPLATES / template).read_text()).substitute(
        {k: str(v) for k, v in values.items()}
    )
    dest.write_text(text)
    return dest


def backend_nginx(workdir: Path, port: int) -> Path:
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    return render(
        "backend-nginx.conf",
        workdir / "backend-nginx.conf",
        workdir=workdir,
        port=port,
        body=BODY.replace("\n", "\\n"),
        user_line=_user_line(),
    )


def proxy_nginx(workdir: Path, port: int, backend_port: int) -> Path:
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    return render(
        "proxy-nginx.conf",
        workdir / "proxy-nginx.conf",
        workdir=workdir,
        port=port,
        backend_port=backend_port,
        user_line=_user_line(),
    )


def haproxy(workdir: Path, port: int, backend_port: int) -> Path:
    return render(
        "haproxy.cfg",
        workdir / "haproxy.cfg",
        workdir=workdir,
        port=port,
        backend_port=backend_port,
    )


def envoy(workdir: Path, port: int, admin_port: int, backend_port: int) -> Path:
    return render(
        "envoy.yaml",
        workdir / "envoy.yaml",
        port=port,
        admin_port=admin_port,
        backend_port=backend_port,
    )


SERVICE = "backend"  # the Host header wrk sends to a Gossamer outbound listener


def gossamer_snapshot(
    dest: Path, *, proxy_id: str, service: str, app_port: int, endpoint: str
) -> Path:
    """A static Snapshot: one virtual host for SERVICE whose default rule goes to `endpoint`.

    Args:
        proxy_id, service: the sidecar's identity (its own service, not the one it calls).
        app_port: the local app behind this sidecar's inbound listener.
        endpoint: "host:port" the SERVICE cluster sends to (the backend, or a sidecar's inbound).
    """
    cluster = f"{SERVICE}.default"
    sealed = snap.seal(
        snap.Snapshot(
            proxy=snap.ProxyIdentity(proxy_id=proxy_id, service=service),
            listeners=snap.Listeners(inbound=snap.InboundListener(app_port=app_port)),
            virtual_hosts=[
                snap.VirtualHost(
                    name=cluster,
                    domains=[SERVICE, cluster, f"{cluster}.svc", f"{cluster}.svc.cluster.local"],
                    rules=[
                        snap.RouteRule(
                            name="default", backends=[snap.WeightedCluster(cluster=cluster)]
                        )
                    ],
                )
            ],
            clusters=[
                snap.Cluster(
                    name=cluster, service=SERVICE, endpoints=[snap.Endpoint(address=endpoint)]
                )
            ],
        )
    )
    dest.write_bytes(snap.encode(sealed))
    return dest
