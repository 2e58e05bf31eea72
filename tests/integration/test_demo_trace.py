"""One request through the real demo shop yields one connected trace across all its services.

The shop (examples/shop, copied to a temporary directory) runs as shipped, with one change: its
Mesh samples 100% and exports over OTLP http/protobuf to a real receiver in this process
(tests/proxy/test_tracing_receiver.py). Its services copy the trace headers from the request they
serve to the calls they make (examples/shop/services/shoplib.py), so one GET of the published
frontend's /api/products must come back as a single tree: front door -> frontend -> catalog,
pricing and inventory, a CLIENT and a SERVER span per hop.
"""

from __future__ import annotations

import http.client
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshlib import SHOP, Mesh, split, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "proxy"))
from test_tracing_receiver import CLIENT, SERVER, ReceivedSpan, Receiver, start_receiver

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

MESH_HEAD = "kind: Mesh\nmetadata:\n  name: shop\nspec:\n"
PRODUCTS = 5  # the catalog's: the frontend asks pricing and inventory about each
# Which proxies may record a span of each service (the front door is the frontend's too).
INSTANCES = {
    "frontend": {"frontend-publish", "frontend-0"},
    "catalog": {"catalog-0"},
    "pricing": {"pricing-v1-0", "pricing-v2-0"},
    "inventory": {"inventory-0", "inventory-1"},
}


def traced_shop(root: Path, endpoint: str) -> Path:
    """The demo shop copied under `root`, its Mesh extended to trace everything to `endpoint`."""
    shop = root / "shop"
    shutil.copytree(SHOP, shop, ignore=shutil.ignore_patterns("__pycache__"))
    file = shop / "mesh.yaml"
    text = file.read_text()
    assert MESH_HEAD in text, f"{SHOP / 'mesh.yaml'} no longer starts its Mesh as expected"
    tracing = (
        "  tracing:\n"
        "    samplingPercentage: 100\n"
        f'    otlp: {{protocol: http/protobuf, endpoint: "{endpoint}", timeout: 5s}}\n'
    )
    file.write_text(text.replace(MESH_HEAD, MESH_HEAD + tracing, 1))
    return file


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Receiver]]:
    root = tmp_path_factory.mktemp("demo-trace")
    receiver = start_receiver("http/protobuf")
    mesh = Mesh(root, traced_shop(root, receiver.endpoint))
    try:
        mesh.up("--timeout", "25")
        yield mesh, receiver
    finally:
        mesh.down()
        mesh.kill_all()
        receiver.close()


def _front_door_span(receiver: Receiver) -> ReceivedSpan | None:
    found = [
        s
        for s in list(receiver.spans)
        if s.resource.get("service.instance.id") == "frontend-publish"
        and s.attributes.get("url.path") == "/api/products"
    ]
    assert len(found) <= 1, f"one request, several front-door spans: {found}"
    return found[0] if found else None


def _complete(receiver: Receiver, trace_id: str) -> list[ReceivedSpan] | None:
    """The trace's spans once every hop is in: the front door's CLIENT and the frontend's SERVER,
    a CLIENT per call the frontend made (catalog once, pricing and inventory per product), and
    under each CLIENT one SERVER per try it sent (its retries + 1). None until then."""
    spans = [s for s in list(receiver.spans) if s.trace_id == trace_id]
    clients = [s for s in spans if s.kind == CLIENT]
    servers = defaultdict(list)
    for s in spans:
        if s.kind == SERVER:
            servers[s.parent_id].append(s)
    if len(clients) < 2 + 2 * PRODUCTS:
        return None
    if any(len(servers[c.span_id]) < c.attributes["gossamer.retries"] + 1 for c in clients):
        return None
    return spans


def test_one_shop_request_yields_one_tree_across_every_service(
    shop: tuple[Mesh, Receiver],
) -> None:
    """GET /api/products on the published frontend, with no trace header: the front door starts
    the trace; every hop below it (frontend, catalog, pricing, inventory, retries included) is a
    CLIENT span in the caller's proxy and a SERVER span in the callee's, all in that one trace,
    parent links forming one tree rooted at the front door, each span naming its own proxy."""
    mesh, receiver = shop
    published = mesh.status()["published"]["frontend"].removeprefix("http://")
    conn = http.client.HTTPConnection(*split(published), timeout=15)
    try:
        conn.request("GET", "/api/products")
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200, body
    assert b"Silk thread" in body

    root = wait_for("the front door's span", lambda: _front_door_span(receiver), deadline=10.0)
    assert root.kind == CLIENT
    assert root.parent_id == "", "the request carried no context: the front door starts the trace"
    spans = wait_for(
        "every hop of the request's trace", lambda: _complete(receiver, root.trace_id), 15.0
    )

    # One tree: unique span ids, every parent in the trace, every span reachable from the root.
    by_id = {s.span_id: s for s in spans}
    assert len(by_id) == len(spans), "span ids repeat"
    children: dict[str, list[ReceivedSpan]] = defaultdict(list)
    for s in spans:
        if s is not root:
            assert s.parent_id in by_id, f"{s.name} of {s.resource} has a parent outside the trace"
            children[s.parent_id].append(s)
    reached, todo = set(), [root]
    while todo:
        s = todo.pop()
        reached.add(s.span_id)
        todo += children[s.span_id]
    assert reached == set(by_id), "spans not connected to the front door's"

    # Every span is its proxy's, with the resource and attributes of that proxy's service.
    for s in spans:
        service = s.resource["service.name"]
        instance = s.resource["service.instance.id"]
        assert instance in INSTANCES.get(service, set()), s.resource
        assert s.resource["service.namespace"] == "default"
        assert s.attributes["gossamer.service"] == f"{service}.default"
        assert s.attributes["gossamer.proxy_id"] == instance
        assert s.scope == "gossamer.proxy"
        direction = "outbound" if s.kind == CLIENT else "inbound"
        assert s.attributes["gossamer.direction"] == direction, s
        # mTLS between sidecars: both ends of a hop are named by their SPIFFE IDs.
        if s is not root:
            assert s.attributes["gossamer.source_identity"].endswith("/sa/frontend"), s.attributes

    # Each CLIENT span's children are the SERVER spans of the service it called, one per try.
    for client in (s for s in spans if s.kind == CLIENT):
        # `<service>.default`, or `<service>.default.<subset>` for pricing's split
        called, _, subset = client.attributes["gossamer.upstream_cluster"].partition(".default")
        subset = subset.removeprefix(".")
        below = children[client.span_id]
        assert below, f"no SERVER span under {client.name} to {called}"
        assert len(below) == client.attributes["gossamer.retries"] + 1
        for server in below:
            assert server.kind == SERVER
            assert server.resource["service.name"] == called
            if subset:
                assert server.resource["service.instance.id"].startswith(f"{called}-{subset}-")
        if client is not root:
            assert client.attributes["gossamer.destination_identity"].endswith(f"/sa/{called}")

    # The shape: front door -> frontend -> catalog once, pricing and inventory per product.
    (front,) = children[root.span_id]
    assert root.attributes["gossamer.upstream_cluster"] == "frontend.default"
    assert front.resource["service.instance.id"] == "frontend-0"
    assert front.attributes["url.path"] == "/api/products"
    calls = sorted(
        (c.attributes["gossamer.upstream_cluster"].split(".")[0], c.attributes["url.path"])
        for c in children[front.span_id]
    )
    assert calls == sorted(
        [("catalog", "/products")]
        + [("pricing", f"/price/{i}") for i in range(1, PRODUCTS + 1)]
        + [("inventory", f"/stock/{i}") for i in range(1, PRODUCTS + 1)]
    )
    leaves = [s for s in spans if s.kind == SERVER and s is not front]
    assert all(not children[s.span_id] for s in leaves), "catalog, pricing, inventory call on"
    assert {s.resource["service.name"] for s in spans} == set(INSTANCES)
    assert root.start <= front.start
    assert front.end <= root.end
    assert time.time_ns() - root.start < 120 * 10**9, "the front door's span is not on wall time"
