"""apply/get/delete/proxy-config/proxy-status against a fake operator API: output and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_fakes import FakeApi, fake_api

from gossamer.cli.main import main
from gossamer.cli.resources import ago, format_proxy_status, render_table, resolve_kind
from gossamer.runtime.ports import free_port
from gossamer.runtime.state import StateDir, write_json_atomic

SERVICE = {
    "apiVersion": "gossamer.dev/v1alpha1",
    "kind": "Service",
    "metadata": {"name": "pricing", "namespace": "default"},
    "spec": {
        "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}, "replicas": 2},
        ]
    },
}
ROUTE = """\
apiVersion: gossamer.dev/v1alpha1
kind: HTTPRoute
metadata:
  name: pricing
spec:
  parentRefs:
    - name: pricing
  rules:
    - backendRefs:
        - name: pricing
          subset: v1
          weight: 50
        - name: pricing
          subset: v2
          weight: {weight}
"""


@pytest.fixture
def api() -> FakeApi:
    with fake_api() as fake:
        yield fake


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_apply_prints_one_line_per_resource(api, tmp_path, capsys) -> None:
    path = tmp_path / "canary.yaml"
    path.write_text(ROUTE.format(weight=50))
    api.on("GET", "/v1/resources", 200, {"items": [SERVICE], "revision": 3})
    api.on(
        "POST",
        "/v1/apply?dryRun=false",
        200,
        {"results": [{"key": "HTTPRoute/default/pricing", "action": "configured"}], "revision": 4},
    )
    code, out, err = run(capsys, "apply", "-f", str(path), "--control-plane", api.url)
    assert (code, out, err) == (0, "HTTPRoute/default/pricing configured\n", "")
    method, _, body = api.calls[-1]
    assert method == "POST"
    assert body["resources"][0]["spec"]["rules"][0]["backendRefs"][1] == {
        "name": "pricing",
        "subset": "v2",
        "weight": 50,
    }


def test_apply_reports_file_errors_with_lines_before_any_request(api, tmp_path, capsys) -> None:
    path = tmp_path / "canary.yaml"
    path.write_text(ROUTE.format(weight=-5))
    code, _, err = run(capsys, "apply", "-f", str(path), "--control-plane", api.url)
    assert code == 1
    assert f"{path}:15:11: spec.rules[0].backendRefs[1].weight:" in err
    assert api.calls == []


def test_apply_checks_references_against_what_is_stored(api, tmp_path, capsys) -> None:
    path = tmp_path / "canary.yaml"
    path.write_text(ROUTE.format(weight=50).replace("subset: v2", "subset: v3"))
    api.on("GET", "/v1/resources", 200, {"items": [SERVICE], "revision": 3})
    code, _, err = run(capsys, "apply", "-f", str(path), "--control-plane", api.url)
    assert code == 1
    assert f"{path}:14:" in err
    assert "v3" in err
    assert [c[0] for c in api.calls] == ["GET"]


def test_api_errors_print_message_and_details(api, tmp_path, capsys) -> None:
    path = tmp_path / "canary.yaml"
    path.write_text(ROUTE.format(weight=50))
    api.on("GET", "/v1/resources", 200, {"items": [SERVICE], "revision": 3})
    error = {
        "code": "invalid",
        "message": "the request has 1 problem",
        "details": [{"path": "resources[0].spec.rules[0]", "message": "something is off"}],
    }
    api.on("POST", "/v1/apply?dryRun=false", 422, {"error": error})
    code, _, err = run(capsys, "apply", "-f", str(path), "--control-plane", api.url)
    assert code == 1
    assert err == (
        "gossamer apply: the request has 1 problem\n"
        "  resources[0].spec.rules[0]: something is off\n"
    )


def test_unreachable_control_plane(capsys) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = run(capsys, "get", "--control-plane", url)
    assert code == 1
    assert err == (
        f"gossamer get: no control plane at {url}: is the mesh up? (gossamer up -d FILE)\n"
    )


def test_control_plane_found_through_the_state_dir(api, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("GOSSAMER_CONTROL_PLANE", raising=False)
    state = StateDir(tmp_path / "state")
    code, _, err = run(capsys, "get", "--state-dir", str(state.root))
    assert code == 1
    assert f"no running mesh found in {state.root}" in err
    state.root.mkdir()
    write_json_atomic(state.status_path, {"controlPlane": api.url})
    api.on("GET", "/v1/resources", 200, {"items": [], "revision": 1})
    assert run(capsys, "get", "--state-dir", str(state.root)) == (0, "no resources\n", "")
    monkeypatch.setenv("GOSSAMER_CONTROL_PLANE", api.url)
    assert run(capsys, "get")[0] == 0


def test_get_table(api, capsys) -> None:
    mesh = {"kind": "Mesh", "metadata": {"name": "shop"}, "spec": {}}
    route = {
        "kind": "HTTPRoute",
        "metadata": {"name": "pricing", "namespace": "default"},
        "spec": {
            "parentRefs": [{"name": "pricing"}],
            "rules": [
                {
                    "backendRefs": [
                        {"name": "pricing", "subset": "v1", "weight": 90},
                        {"name": "pricing", "subset": "v2", "weight": 10},
                    ],
                    "retry": {"attempts": 2},
                }
            ],
        },
    }
    api.on("GET", "/v1/resources", 200, {"items": [route, SERVICE, mesh], "revision": 1})
    code, out, _ = run(capsys, "get", "--control-plane", api.url)
    assert code == 0
    assert out == (
        "NAMESPACE   KIND        NAME      DETAILS\n"
        "default     Mesh        shop      trust domain gossamer.local; LEAST_REQUEST\n"
        "default     Service     pricing   subsets v1x1, v2x2\n"
        "default     HTTPRoute   pricing   pricing -> pricing/v1 90%, pricing/v2 10%; retries\n"
    )


def test_get_kind_aliases_and_query(api, capsys) -> None:
    api.on("GET", "/v1/resources?kind=Service&namespace=shop", 200, {"items": [SERVICE]})
    code, out, _ = run(capsys, "get", "svc", "-n", "shop", "--control-plane", api.url, "-o", "json")
    assert code == 0
    assert json.loads(out) == {"items": [SERVICE]}
    code, _, err = run(capsys, "get", "routez", "--control-plane", api.url)
    assert code == 1
    assert (
        "unknown kind 'routez'; kinds are Mesh, Service, HTTPRoute, DestinationPolicy, "
        "AuthorizationPolicy" in err
    )
    assert resolve_kind("routes") == "HTTPRoute"


def test_get_one_as_yaml_and_not_found(api, capsys) -> None:
    api.on("GET", "/v1/resources/Service/default/pricing", 200, SERVICE)
    code, out, _ = run(
        capsys, "get", "Service", "pricing", "-o", "yaml", "--control-plane", api.url
    )
    assert code == 0
    assert out.startswith("apiVersion: gossamer.dev/v1alpha1\nkind: Service\nmetadata:\n")
    assert "  - name: v2\n" in out
    code, _, err = run(capsys, "get", "Service", "nope", "--control-plane", api.url)
    assert code == 1
    assert "no /v1/resources/Service/default/nope (not_found, HTTP 404)" in err


def test_delete(api, capsys) -> None:
    api.on(
        "DELETE",
        "/v1/resources/HTTPRoute/default/pricing",
        200,
        {"key": "HTTPRoute/default/pricing", "revision": 9},
    )
    code, out, _ = run(capsys, "delete", "httproute", "pricing", "--control-plane", api.url)
    assert (code, out) == (0, "HTTPRoute/default/pricing deleted\n")


PROXIES = [
    {
        "proxyId": "pricing-v2-0",
        "service": "pricing",
        "subset": "v2",
        "admin": "",
        "sentVersion": "b5a42518e164b070aa",
        "ackedVersion": "5ea7b6655def1975",
        "state": "NACK",
        "error": "route pricing:\n bad regex",
        "lastContact": 1000.0,
    },
    {
        "proxyId": "frontend-0",
        "service": "frontend",
        "subset": None,
        "admin": "",
        "sentVersion": "b5a42518e164b070",
        "ackedVersion": "b5a42518e164b070",
        "state": "ACK",
        "error": None,
        "lastContact": 998.2,
    },
]


def test_proxy_status_table() -> None:
    assert format_proxy_status(PROXIES, now=1002.0) == (
        "PROXY          SERVICE    SUBSET   VERSION                      STATE   LAST CONTACT"
        "   ERROR\n"
        "frontend-0     frontend   -        b5a42518e164                 ACK     3s ago\n"
        "pricing-v2-0   pricing    v2       5ea7b6655def->b5a42518e164   NACK    2s ago"
        "         route pricing: bad regex"
    )
    assert [ago(t, 10_000) for t in (None, 9_999.5, 9_000, 1)] == [
        "never",
        "0s ago",
        "16m ago",
        "2h ago",
    ]


def test_proxy_status_command(api, capsys) -> None:
    api.on("GET", "/v1/proxies", 200, {"items": PROXIES})
    code, out, _ = run(capsys, "proxy-status", "--control-plane", api.url)
    assert code == 0
    assert out.splitlines()[0].split() == [
        "PROXY",
        "SERVICE",
        "SUBSET",
        "VERSION",
        "STATE",
        "LAST",
        "CONTACT",
        "ERROR",
    ]
    assert "NACK" in out


def test_proxy_config_reads_the_proxy_admin(api, capsys) -> None:
    config = {
        "proxyId": "frontend-0",
        "version": "abc",
        "status": "ACK",
        "snapshot": {"clusters": [{"name": "pricing.default"}]},
    }
    api.on("GET", "/config", 200, config)
    api.on("GET", "/v1/proxies", 200, {"items": [{**PROXIES[1], "admin": api.address}]})
    code, out, _ = run(capsys, "proxy-config", "frontend-0", "--control-plane", api.url)
    assert code == 0
    assert out == (
        "proxyId: frontend-0\nversion: abc\nstatus: ACK\nsnapshot:\n  clusters:\n"
        "  - name: pricing.default\n"
    )
    code, out, _ = run(
        capsys, "proxy-config", "frontend-0", "-o", "json", "--control-plane", api.url
    )
    assert json.loads(out) == config
    code, _, err = run(capsys, "proxy-config", "nobody", "--control-plane", api.url)
    assert code == 1
    assert f"no proxy 'nobody' at {api.url}; known proxies: frontend-0" in err


def test_render_table_pads_columns() -> None:
    assert render_table(["A", "LONGER"], [["xx", "y"], ["", "z"]]) == (
        "A    LONGER\nxx   y\n     z"
    )


def test_apply_missing_file(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "apply", "-f", str(tmp_path / "nope.yaml"))
    assert code == 1
    assert "nope.yaml: no such file or directory" in err
