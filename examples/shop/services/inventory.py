"""Inventory: stock per product. FAIL_RATE=0.2 makes it answer 503 to a fifth of the requests.

The failures are there so that the mesh's retries show: the frontend rarely sees one.
"""

from __future__ import annotations

import os
import random
import re
from typing import Any

from shoplib import REPLICA, serve

FAIL_RATE = float(os.environ.get("FAIL_RATE", "0") or 0)
STOCK = {1: 120, 2: 14, 3: 2, 4: 31, 5: 0}


def stock(m: re.Match[str]) -> tuple[int, Any]:
    if random.random() < FAIL_RATE:
        return 503, {"error": "inventory is having a bad moment", "replica": REPLICA}
    product = int(m.group(1))
    if product not in STOCK:
        return 404, {"error": f"no stock record for product {product}"}
    return 200, {"id": product, "inStock": STOCK[product], "replica": REPLICA}


if __name__ == "__main__":
    serve({r"/stock/(\d+)": stock})
