"""The shop's front page and /api/products: catalog, then pricing and inventory for each product.

Every call goes through this replica's sidecar (HTTP_PROXY), so the page shows the mesh at work:
which pricing version answered (90/10 split, or 50/50 after canary-50.yaml) and inventory answers
that got through despite its failures (retries).
"""

from __future__ import annotations

import contextvars
import html
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from shoplib import REPLICA, CallError, get_json, serve


def _price(product_id: int) -> dict[str, Any]:
    try:
        body, _ = get_json(f"http://pricing/price/{product_id}")
    except CallError as exc:
        return {"error": str(exc)}
    if body.get("version") == "v2":
        text = body.get("display", "?")
    else:
        text = f"EUR {body.get('price', 0):.2f}"
    return {"text": text, "version": body.get("version"), "replica": body.get("replica")}


def _stock(product_id: int) -> dict[str, Any]:
    try:
        body, _ = get_json(f"http://inventory/stock/{product_id}")
    except CallError as exc:
        return {"error": str(exc)}
    return {"inStock": body.get("inStock"), "replica": body.get("replica")}


def products() -> dict[str, Any]:
    catalog, _ = get_json("http://catalog/products")
    items = catalog["products"]
    ids = [p["id"] for p in items]
    context = contextvars.copy_context()  # the request's trace headers, for the pool's threads
    with ThreadPoolExecutor(max_workers=8) as pool:
        prices = list(pool.map(lambda i: context.copy().run(_price, i), ids))
        stocks = list(pool.map(lambda i: context.copy().run(_stock, i), ids))
    out = []
    for item, price, stock in zip(items, prices, stocks, strict=True):
        out.append({**item, "price": price, "stock": stock})
    versions = Counter(p.get("version") or "error" for p in prices)
    return {"frontend": REPLICA, "products": out, "pricingVersions": dict(versions)}


def api_products(_: re.Match[str]) -> tuple[int, Any]:
    try:
        return 200, products()
    except CallError as exc:
        return 502, {"error": str(exc)}


def page() -> str:
    try:
        data = products()
    except CallError as exc:
        return f"<h1>Gossamer shop</h1><p>catalog unavailable: {html.escape(str(exc))}</p>"
    rows = []
    for p in data["products"]:
        price, stock = p["price"], p["stock"]
        price_cell = html.escape(price.get("text") or price.get("error", "?"))
        version = html.escape(str(price.get("version") or "-"))
        if "error" in stock:
            stock_cell = "unavailable"
        else:
            stock_cell = "sold out" if not stock["inStock"] else f"{stock['inStock']} in stock"
        rows.append(
            f"<tr><td>{html.escape(p['name'])}</td><td>{html.escape(p['description'])}</td>"
            f"<td>{price_cell}</td><td class=v{version}>pricing {version}</td>"
            f"<td>{html.escape(stock_cell)}</td></tr>"
        )
    versions = ", ".join(f"{v}: {n}" for v, n in sorted(data["pricingVersions"].items()))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Gossamer shop</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:.3em 1em;text-align:left}}
.vv2{{color:#b0f;font-weight:bold}}</style></head>
<body><h1>Gossamer shop</h1>
<table><tr><th>Product</th><th>Description</th><th>Price</th><th>Answered by</th><th>Stock</th></tr>
{"".join(rows)}
</table>
<p>Pricing versions on this page: {html.escape(versions)}. Reload to see the traffic split.</p>
<p><small>served by {html.escape(data["frontend"])};
JSON at <a href="/api/products">/api/products</a></small></p></body></html>
"""


if __name__ == "__main__":
    serve({r"/api/products": api_products}, html=page)
