"""The bench harness's generated configs: templates filled in, Snapshots valid, options parsed."""

from pathlib import Path

import configs
import driver
import pytest
import summary

from gossamer import snapshot


def test_backend_and_peer_configs_name_their_ports(tmp_path: Path) -> None:
    backend = configs.backend_nginx(tmp_path, 40001).read_text()
    assert "listen 127.0.0.1:40001;" in backend
    assert "worker_processes 1;" in backend
    assert f'return 200 "{"x" * 99}\\n";' in backend
    nginx = configs.proxy_nginx(tmp_path, 40002, 40001).read_text()
    assert "server 127.0.0.1:40001;" in nginx
    assert "keepalive 64;" in nginx
    assert 'proxy_set_header Connection "";' in nginx
    haproxy = configs.haproxy(tmp_path, 40003, 40001).read_text()
    assert "bind 127.0.0.1:40003" in haproxy
    assert "http-reuse always" in haproxy
    assert "retry-on conn-failure empty-response response-timeout" in haproxy
    envoy = configs.envoy(tmp_path, 40004, 40005, 40001).read_text()
    assert "port_value: 40004" in envoy
    assert "port_value: 40005" in envoy
    assert "port_value: 40001" in envoy
    assert "$" not in backend + nginx + haproxy + envoy


def test_gossamer_snapshot_routes_the_service_to_the_endpoint(tmp_path: Path) -> None:
    path = configs.gossamer_snapshot(
        tmp_path / "s.json", proxy_id="bench-a", service="bench", app_port=40001,
        endpoint="127.0.0.1:40009",
    )  # fmt: skip
    snap = snapshot.decode(path.read_bytes())
    assert snap.version == snapshot.seal(snap).version != ""
    assert snap.proxy.proxy_id == "bench-a"
    assert snap.listeners.inbound is not None
    assert snap.listeners.inbound.app_port == 40001
    (vhost,) = snap.virtual_hosts
    assert configs.SERVICE in vhost.domains
    (cluster,) = snap.clusters
    assert vhost.rules[0].backends[0].cluster == cluster.name
    assert [e.address for e in cluster.endpoints] == ["127.0.0.1:40009"]


def test_quick_run_defaults_and_output() -> None:
    args = driver.parse_args(["--quick"])
    assert (args.rounds, args.duration, args.warmup) == (1, 1, 1)
    assert args.target_list == list(summary.TARGETS)
    assert not args.official
    assert args.output.name == "quick.json"


def test_full_run_defaults_follow_the_method() -> None:
    args = driver.parse_args([])
    assert (args.rounds, args.duration, args.warmup) == (3, 10, 2)
    assert args.official
    assert args.output.parts[-2:] == ("results", "latest.json")


def test_unknown_target_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        driver.parse_args(["--targets", "direct,linkerd"])
    assert "unknown target 'linkerd'" in capsys.readouterr().err


def test_mtls_mesh_configs_share_one_root_and_cipher_suite(tmp_path: Path) -> None:
    import certs
    from cryptography import x509

    c = certs.write_mesh_certs(tmp_path)
    assert c.client.key.stat().st_mode & 0o077 == 0
    server = x509.load_pem_x509_certificate(c.server.cert.read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [certs.SERVER_ID]
    assert sans.get_values_for_type(x509.DNSName) == [certs.SERVER_DNS]
    for side in ("front", "back"):
        envoy = configs.envoy_mesh(
            tmp_path, side, port=40010, admin_port=40011, peer_port=40012,
            cert=c.client.cert, key=c.client.key, bundle=c.bundle, server_id=certs.SERVER_ID,
        ).read_text()  # fmt: skip
        nginx = configs.nginx_mesh(
            tmp_path, side, port=40013, peer_port=40014, cert=c.client.cert, key=c.client.key,
            bundle=c.bundle, server_dns=certs.SERVER_DNS,
        ).read_text()  # fmt: skip
        assert "$" not in envoy + nginx
        assert "TLSv1_3" in envoy
        assert "TLSv1.3" in nginx
        assert f"Ciphersuites {configs.CIPHERSUITE}" in nginx
        assert str(c.bundle) in envoy
        assert str(c.bundle) in nginx
    assert "require_client_certificate: true" in envoy  # the back side, last rendered
    assert "ssl_verify_client on;" in nginx
    assert configs.CIPHERSUITE in configs.openssl_conf(tmp_path).read_text()


def test_mtls_snapshot_is_strict_and_names_the_peer(tmp_path: Path) -> None:
    path = configs.gossamer_snapshot(
        tmp_path / "s.json", proxy_id="bench-a", service="bench", app_port=40001,
        endpoint="127.0.0.1:40009", mtls=("PEM", "spiffe://bench.local/ns/default/sa/backend"),
    )  # fmt: skip
    snap = snapshot.decode(path.read_bytes())
    assert snap.tls is not None
    assert snap.tls.mode == "STRICT"
    assert snap.tls.trust_bundle == "PEM"
    (cluster,) = snap.clusters
    assert cluster.tls is not None
    assert cluster.tls.identities == ["spiffe://bench.local/ns/default/sa/backend"]
