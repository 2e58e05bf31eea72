"""The clock that request and connection durations are measured with: CLOCK_MONOTONIC, precisely.

Not the event loop's. uvloop's `loop.time()` is libuv's `uv_now()`: whole milliseconds, read once
per loop iteration, so a 0.4 ms request measured with it takes 0 or 1 ms and a latency histogram
of a fast service is mostly quantization. Deadlines and timers stay on the loop's clock: libuv
reads the same CLOCK_MONOTONIC, so a time on one is within an iteration of the other. Code that
measures takes this clock as an argument (`clock=`) where tests need to drive it; the exchange
reads `now` from this module, so a test can replace it here.
"""

from __future__ import annotations

import time

now = time.monotonic
