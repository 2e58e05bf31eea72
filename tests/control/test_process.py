"""The real `gossamer control-plane` process: ready file, HTTP, restart with state, clean stop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gossamer.control.client import ApiError, ControlPlaneClient, Credentials
from gossamer.security.csr import generate_key, make_csr, private_key_pem
from gossamer.security.spiffe import SpiffeId

pytestmark = pytest.mark.integration

API = "gossamer.dev/v1alpha1"


def proxy_svid(client: ControlPlaneClient, account: str, where: Path) -> tuple[Path, Path]:
    """A proxy's SVID for `account` (bootstrap token, CSR), as files for a TLS client."""
    token = client.create_bootstrap_token(account)["token"]
    key = generate_key()
    csr = make_csr(key, SpiffeId.workload("gossamer.local", "default", account)).decode()
    answer = client.request("POST", "/v1/svid", body={"csr": csr, "token": token})
    where.mkdir(parents=True, exist_ok=True)
    cert, key_file = where / "svid.pem", where / "svid-key.pem"
    cert.write_text(answer["chain"])
    key_file.write_bytes(private_key_pem(key))
    key_file.chmod(0o600)
    return cert, key_file


def proxy_call(
    api: str, bundle: Path, svid: tuple[Path, Path], path: str, body: Any
) -> dict[str, Any]:
    """POST one proxy call over mTLS."""
    ctx = ssl.create_default_context(cafile=str(bundle))
    ctx.load_cert_chain(*svid)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx)
    )
    req = urllib.request.Request(
        api + path, data=json.dumps(body).encode(), method="POST",
        headers={"content-type": "application/json"},
    )  # fmt: skip
    with opener.open(req, timeout=10) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def wait_ready(
    proc: subprocess.Popen[bytes], ready: Path, deadline: float = 15.0
) -> dict[str, Any]:
    """Wait for the ready file (the process's own readiness signal), failing fast if it dies."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"control plane exited with {proc.returncode} before it was ready")
        if ready.exists():
            data: dict[str, Any] = json.loads(ready.read_text())
            return data
        time.sleep(0.02)
    pytest.fail(f"control plane not ready within {deadline}s")


class Runner:
    def __init__(self, tmp: Path) -> None:
        self.state = tmp / "state"
        self.ready = tmp / "ready.json"
        self.log = tmp / "cp.log"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.info: dict[str, Any] = {}

    def start(self) -> tuple[subprocess.Popen[bytes], ControlPlaneClient]:
        self.ready.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gossamer.cli.main",
                    "control-plane",
                    "--listen",
                    "127.0.0.1:0",
                    "--state-dir",
                    str(self.state),
                    "--ready-file",
                    str(self.ready),
                    "--heartbeat-ttl",
                    "3",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        info = wait_ready(proc, self.ready)
        assert info["pid"] == proc.pid
        assert info["api"].startswith("https://127.0.0.1:")
        assert "internal" not in info  # one listener: proxies use `api` with their SVIDs
        self.info = info
        creds = Credentials.from_state_dir(self.state)
        return proc, ControlPlaneClient(info["api"], timeout=5, credentials=creds)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    r = Runner(tmp_path)
    yield r
    r.stop_all()


def test_apply_kill_restart_state_intact(runner: Runner) -> None:
    proc, client = runner.start()
    assert client.healthz()["status"] == "ok"
    before = client.healthz()["revision"]
    result = client.apply(
        [
            {"apiVersion": API, "kind": "Service", "metadata": {"name": "pricing"}},
            {
                "apiVersion": API,
                "kind": "HTTPRoute",
                "metadata": {"name": "pricing"},
                "spec": {"parentRefs": [{"name": "pricing"}], "hostnames": ["prices.example"]},
            },
        ]
    )
    assert [r["action"] for r in result["results"]] == ["created", "created"]
    assert result["revision"] == before + 1
    svid = proxy_svid(client, "pricing", runner.state.parent / "pricing-svid")
    proxy_call(
        runner.info["api"],
        runner.state / "ca-bundle.pem",
        svid,
        "/v1/proxies/pricing-0/register",
        {"service": "pricing", "inbound": "127.0.0.1:4100", "appPort": 8080, "ready": True},
    )
    with pytest.raises(ApiError) as caught:
        client.apply([{"apiVersion": API, "kind": "HTTPRoute", "metadata": {"name": "x"},
                       "spec": {"parentRefs": [{"name": "pricng"}]}}])  # fmt: skip
    assert caught.value.status == 422
    assert caught.value.code == "invalid"
    assert "did you mean 'pricing'" in caught.value.message

    revision = client.healthz()["revision"]  # the registration was written too
    proc.kill()  # no chance to clean up: the store must already be durable
    proc.wait(10)

    proc, client = runner.start()
    assert client.healthz()["revision"] == revision
    assert client.get("HTTPRoute", "default", "pricing")["spec"]["hostnames"] == ["prices.example"]
    names = [i["metadata"]["name"] for i in client.list_resources("Service")["items"]]
    assert names == ["pricing"]
    (endpoint,) = client.endpoints("pricing")
    assert (endpoint["address"], endpoint["healthy"]) == ("127.0.0.1:4100", True)
    snapshot = client.proxy_snapshot("pricing-0")
    assert "prices.example" in snapshot["virtualHosts"][0]["domains"]
    again = client.apply([{"apiVersion": API, "kind": "Service", "metadata": {"name": "pricing"}}])
    assert again["results"][0]["action"] == "unchanged"
    with pytest.raises(ApiError) as missing:
        client.get("Service", "default", "nope")
    assert (missing.value.status, missing.value.code) == (404, "not_found")

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    with pytest.raises(ApiError) as gone:
        client.healthz()
    assert gone.value.code == "unreachable"


def test_sigint_stops_cleanly_during_long_poll(runner: Runner) -> None:
    """A stop does not wait for long polls to run out."""
    proc, client = runner.start()
    svid = proxy_svid(client, "a", runner.state.parent / "a-svid")
    bundle = runner.state / "ca-bundle.pem"
    proxy_call(
        runner.info["api"],
        bundle,
        svid,
        "/v1/proxies/p-0/register",
        {"service": "a", "inbound": "127.0.0.1:4100", "ready": True},
    )
    version = client.proxy_snapshot("p-0")["version"]
    poller = subprocess.Popen(
        [
            "curl", "-sS", "--noproxy", "*", "--max-time", "60",
            "--cacert", str(bundle), "--cert", str(svid[0]), "--key", str(svid[1]),
            f"{runner.info['api']}/v1/proxies/p-0/snapshot?version={version}&wait=60",
        ],
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # The poll is in flight once the proxy shows as in contact with no new version sent.
        end = time.monotonic() + 10
        while time.monotonic() < end and poller.poll() is None:
            items = client.proxies()
            if items and items[0]["sentVersion"] == version:
                break
            time.sleep(0.02)
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 5
    finally:
        poller.kill()
        poller.wait(10)


def test_bad_listen_address_is_one_clear_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gossamer.cli.main", "control-plane", "--listen", "nowhere",
         "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert out.returncode == 2
    assert "--listen must be host:port" in out.stderr
    assert "Traceback" not in out.stderr


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--noproxy", "*", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def gossamer(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gossamer.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_https_api_for_real_clients_and_tokens_never_logged(runner: Runner, tmp_path: Path) -> None:
    proc, _ = runner.start()
    info = runner.info
    bundle, token_file = info["caBundle"], Path(info["adminTokenFile"])
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    admin = token_file.read_text().strip()
    port = info["api"].rsplit(":", 1)[1]
    auth = f"Authorization: Bearer {admin}"

    for host in ("127.0.0.1", "localhost"):
        ok = curl("--cacert", bundle, "-H", auth, f"https://{host}:{port}/healthz")
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["status"] == "ok"
    bare = curl("--cacert", bundle, "-w", "%{http_code}", "-o", os.devnull,
                f"https://127.0.0.1:{port}/healthz")  # fmt: skip
    assert bare.stdout == "401"
    assert (
        curl("--cacert", bundle, f"https://127.0.0.1:{port}/v1/ca/bundle").stdout
        == Path(bundle).read_text()
    )
    untrusted = curl("-H", auth, f"https://127.0.0.1:{port}/healthz")
    assert untrusted.returncode == 60  # the system's CAs do not know the mesh's root
    plain = curl("-H", auth, f"http://127.0.0.1:{port}/healthz")
    assert plain.returncode != 0
    assert "ok" not in plain.stdout

    env = {k: v for k, v in os.environ.items() if not k.startswith("GOSSAMER_")}
    env |= {"GOSSAMER_CA_BUNDLE": bundle, "GOSSAMER_TOKEN": admin}
    cp = ["--control-plane", info["api"]]
    made = gossamer(env, "token", "create", "--role", "viewer", "--description", "ci", *cp)
    assert made.returncode == 0, made.stderr
    viewer = next(line for line in made.stdout.splitlines() if line.startswith("gso_"))
    listed = gossamer(env, "token", "list", *cp)
    assert listed.returncode == 0, listed.stderr
    assert "viewer" in listed.stdout
    assert "ci" in listed.stdout
    assert "gso_" not in listed.stdout

    as_viewer = env | {"GOSSAMER_TOKEN": viewer}
    assert gossamer(as_viewer, "get", "services", *cp).returncode == 0
    service = tmp_path / "svc.yaml"
    service.write_text(f"apiVersion: {API}\nkind: Service\nmetadata: {{name: web}}\n")
    refused = gossamer(as_viewer, "apply", "-f", str(service), *cp)
    assert refused.returncode == 1
    assert "viewer role" in refused.stderr
    assert "Traceback" not in refused.stderr
    nobody = gossamer(env | {"GOSSAMER_TOKEN": ""}, "get", "services", *cp)
    assert "unauthenticated" in nobody.stderr
    assert "GOSSAMER_TOKEN" in nobody.stderr

    viewer_id = viewer.split(".")[0].removeprefix("gso_")
    revoked = gossamer(env, "token", "revoke", viewer_id, *cp)
    assert revoked.returncode == 0, revoked.stderr
    again = gossamer(as_viewer, "get", "services", *cp)
    assert "unknown or revoked" in again.stderr

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    log = runner.log.read_text()
    assert "POST /v1/tokens 200" in log  # the access log is there, and has no secrets
    for secret in (admin, viewer):
        assert secret.split(".")[1] not in log
    assert "PRIVATE KEY" not in log
