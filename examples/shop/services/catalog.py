"""The catalog: which products the shop sells."""

from __future__ import annotations

import re
from typing import Any

from shoplib import serve

PRODUCTS = [
    {"id": 1, "name": "Silk thread", "description": "Fine, strong, 100 m spool"},
    {"id": 2, "name": "Spindle", "description": "Beech wood, hand turned"},
    {"id": 3, "name": "Loom", "description": "Table loom, 40 cm weaving width"},
    {"id": 4, "name": "Shuttle", "description": "Boat shuttle with bobbin"},
    {"id": 5, "name": "Gossamer scarf", "description": "Lighter than air"},
]


def products(_: re.Match[str]) -> tuple[int, Any]:
    return 200, {"products": PRODUCTS}


def product(m: re.Match[str]) -> tuple[int, Any]:
    for p in PRODUCTS:
        if p["id"] == int(m.group(1)):
            return 200, p
    return 404, {"error": f"no product {m.group(1)}"}


if __name__ == "__main__":
    serve({r"/products": products, r"/products/(\d+)": product})
