"""Pricing in two versions: v1 answers a number, v2 (the canary) a structured, discounted price.

The version comes from PRICING_VERSION, which mesh.yaml sets per subset.
"""

from __future__ import annotations

import os
import re
from typing import Any

from shoplib import REPLICA, serve

VERSION = os.environ.get("PRICING_VERSION", "v1")
BASE_CENTS = {1: 450, 2: 2200, 3: 18900, 4: 1550, 5: 4900}


def price(m: re.Match[str]) -> tuple[int, Any]:
    product = int(m.group(1))
    cents = BASE_CENTS.get(product)
    if cents is None:
        return 404, {"error": f"no price for product {product}"}
    if VERSION == "v1":
        return 200, {"id": product, "price": cents / 100, "version": "v1", "replica": REPLICA}
    discounted = cents * 90 // 100
    return 200, {
        "id": product,
        "version": "v2",
        "replica": REPLICA,
        "amount": {"value": discounted, "currency": "EUR", "exponent": 2},
        "was": {"value": cents, "currency": "EUR", "exponent": 2},
        "display": f"EUR {discounted / 100:.2f} (was {cents / 100:.2f})",
    }


if __name__ == "__main__":
    serve({r"/price/(\d+)": price})
