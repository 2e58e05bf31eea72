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
    dest: Path,
    *,
    proxy_id: str,
    service: str,
    app_port: int,
    endpoint: str,
    mtls: tuple[str, str] | None = None,
) -> Path:
    """A static Snapshot: one virtual host for SERVICE whose default rule goes to `endpoint`.

    Args:
        proxy_id, service: the sidecar's identity (its own service, not the one it calls).
        app_port: the local app behind this sidecar's inbound listener.
        endpoint: "host:port" the SERVICE cluster sends to (the backend, or a sidecar's inbound).
        mtls: (trust bundle PEM, the SPIFFE ID the endpoint must present): mTLS STRICT inbound and
            mTLS to the endpoint; None: plaintext.
    """
    tls = None
    upstream_tls = None
    if mtls is not None:
        tls = snap.MeshTls(mode="STRICT", trust_bundle=mtls[0])
        upstream_tls = snap.UpstreamTls(identities=[mtls[1]])
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
                    name=cluster,
                    service=SERVICE,
                    endpoints=[snap.Endpoint(address=endpoint)],
                    tls=upstream_tls,
                    # What the translator gives every cluster by default, so the benchmark
                    # measures the request path users run: outlier detection on, panic at 50%.
                    outlier_detection=snap.OutlierDetection(),
                    load_balancer=snap.LoadBalancer(panic_threshold=50.0),
                )
            ],
            tls=tls,
        )
    )
    dest.write_bytes(snap.encode(sealed))
    return dest


# --- the mTLS mesh path: two hops of each proxy, mutual TLS 1.3 between them ----------------------

# One cipher suite for all: BoringSSL (Envoy) prefers it on AES-NI machines and cannot be told
# otherwise for TLS 1.3; nginx and Gossamer (OpenSSL) are set to it.
CIPHERSUITE = "TLS_AES_128_GCM_SHA256"


def openssl_conf(workdir: Path) -> Path:
    """An OpenSSL config that limits TLS 1.3 to CIPHERSUITE (Python's ssl has no setting for it);
    Gossamer's sidecars get it through OPENSSL_CONF."""
    dest = workdir / "openssl-bench.cnf"
    dest.write_text(
        "openssl_conf = openssl_init\n"
        "[openssl_init]\nssl_conf = ssl_sect\n"
        "[ssl_sect]\nsystem_default = system_default_sect\n"
        f"[system_default_sect]\nCiphersuites = {CIPHERSUITE}\n"
    )
    return dest


def envoy_mesh(
    workdir: Path,
    side: str,
    *,
    port: int,
    admin_port: int,
    peer_port: int,
    cert: Path,
    key: Path,
    bundle: Path,
    server_id: str,
) -> Path:
    """Envoy's mTLS hop: `side` "front" calls `peer_port` over mTLS, "back" serves it."""
    return render(
        f"envoy-mesh-{side}.yaml",
        workdir / f"envoy-mesh-{side}.yaml",
        port=port,
        admin_port=admin_port,
        peer_port=peer_port,
        backend_port=peer_port,
        cert=cert,
        key=key,
        bundle=bundle,
        server_id=server_id,
    )


def nginx_mesh(
    workdir: Path,
    side: str,
    *,
    port: int,
    peer_port: int,
    cert: Path,
    key: Path,
    bundle: Path,
    server_dns: str,
) -> Path:
    """nginx's TLS hop: `side` "front" calls `peer_port` over TLS, "back" serves it."""
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    name = f"nginx-mesh-{side}"
    return render(
        f"{name}.conf",
        workdir / f"{name}.conf",
        name=name,
        workdir=workdir,
        port=port,
        peer_port=peer_port,
        backend_port=peer_port,
        cert=cert,
        key=key,
        bundle=bundle,
        server_dns=server_dns,
        ciphersuite=CIPHERSUITE,
        user_line=_user_line(),
    )
