"""`gossamer ca status/rotate/import` against a real control plane serving HTTPS on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from gossamer.cli.main import main
from gossamer.control.api import create_app
from gossamer.control.server import ControlPlane
from gossamer.security.bundle import TrustBundle, fingerprint
from gossamer.security.ca import CertificateAuthority


class _Server(uvicorn.Server):
    """uvicorn's server that says when it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.listening.set()


class Served:
    def __init__(self, cp: ControlPlane, url: str) -> None:
        self.cp = cp
        self.url = url


@asynccontextmanager
async def serve(state: Path) -> AsyncIterator[Served]:
    """The control plane's parts and its HTTPS API, wired as `gossamer control-plane` wires them
    (the API's SSLContext attached to the CA, so a rotation re-issues its certificate)."""
    cp = await ControlPlane.open(state, clock=time.time, debounce=0.01)
    await cp.start()
    serving = cp.ca.issue_control_plane_cert(["127.0.0.1"])
    config = uvicorn.Config(
        create_app(cp),
        host="127.0.0.1",
        port=0,
        ssl_certfile=str(serving.cert_file),
        ssl_keyfile=str(serving.key_file),
        log_level="warning",
        lifespan="off",
        loop="none",
        timeout_graceful_shutdown=1,
    )
    config.load()
    assert config.ssl is not None
    cp.ca.attach_server_context(config.ssl)
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            await server.listening.wait()
        port = server.servers[0].sockets[0].getsockname()[1]
        yield Served(cp, f"https://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await task
        await cp.close()


@pytest.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    state = tmp_path / "cp"
    async with serve(state) as s:
        monkeypatch.setenv("GOSSAMER_TOKEN", s.cp.admin_token_file.read_text().strip())
        monkeypatch.setenv("GOSSAMER_CA_BUNDLE", str(s.cp.ca.bundle_path))
        monkeypatch.setenv("GOSSAMER_STATE_DIR", str(tmp_path / "no-mesh"))
        yield s


async def gossamer(
    capsys: pytest.CaptureFixture[str], served: Served, *args: str
) -> tuple[int, str, str]:
    """Run the CLI in a thread (it blocks on HTTP) while this loop serves the API."""
    argv: Sequence[str] = [*args, "--control-plane", served.url]
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_status_shows_the_root_that_issues(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await gossamer(capsys, served, "ca", "status")
    assert code == 0, err
    signer = served.cp.ca.signer_fingerprint()
    assert "trust domain: gossamer.local" in out
    assert signer[:16] in out
    assert "issues SVIDs" in out
    assert "rotation: none so far" in out
    code, out, _ = await gossamer(capsys, served, "ca", "status", "--json")
    assert code == 0
    assert json.loads(out)["signer"] == signer


async def test_rotate_and_wait_prints_phases_and_retires_the_old_root(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    old = served.cp.ca.signer_fingerprint()
    code, out, err = await gossamer(capsys, served, "ca", "rotate", "--wait", "--timeout", "20s")
    assert code == 0, err
    new = served.cp.ca.signer_fingerprint()
    assert new != old
    assert "started: a new root" in out
    assert f"CA {new[:16]} issues, CA {old[:16]} retired" in out
    assert TrustBundle.from_pem(served.cp.ca.bundle_path.read_bytes()).fingerprints() == [new]
    # The CLI still verifies the API: its certificate moved to the new root with the bundle.
    code, out, err = await gossamer(capsys, served, "ca", "status")
    assert code == 0, err
    assert "is done" in out


async def test_import_an_intermediate_and_bad_files(
    served: Served, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    root = CertificateAuthority.create_root("gossamer.local")
    inter = root.create_intermediate()
    files = {
        "cert": inter.cert_pem(),
        "key": inter.private_key_pem(),
        "chain": root.cert_pem(),
        "junk": b"not pem at all",
        "other-key": CertificateAuthority.create_root("gossamer.local").private_key_pem(),
    }
    for name, data in files.items():
        (tmp_path / f"{name}.pem").write_bytes(data)
    f = {name: str(tmp_path / f"{name}.pem") for name in files}

    code, _, err = await gossamer(
        capsys, served, "ca", "import", "--cert", f["junk"], "--key", f["key"]
    )
    assert code == 2
    assert "not a PEM file" in err
    code, _, err = await gossamer(
        capsys, served, "ca", "import", "--cert", f["cert"], "--key", f["other-key"]
    )
    assert code == 1
    assert "does not match" in err
    assert "Traceback" not in err
    assert served.cp.ca.rotation is None

    code, out, err = await gossamer(
        capsys,
        served,
        "ca",
        "import",
        "--cert",
        f["cert"],
        "--key",
        f["key"],
        "--chain",
        f["chain"],
        "--no-wait",
    )
    assert code == 0, err
    assert "started: your CA" in out
    rotation = served.cp.ca.rotation
    assert rotation is not None
    assert rotation.new == fingerprint(inter.cert)
    assert rotation.imported

    code, _, err = await gossamer(capsys, served, "ca", "rotate", "--timeout", "nonsense")
    assert code == 2
    assert "--timeout" in err
