"""ClusterStats.count: the inlined counter and histogram updates match the metric children's."""

from __future__ import annotations

from gossamer.proxy.stats import LATENCY_BUCKETS, ClusterStats, DataPlaneMetrics
from gossamer.telemetry.metrics import Registry


def test_count_matches_inc_and_observe() -> None:
    """Counting through ClusterStats renders the same as counting through the children's API."""
    ours, theirs = Registry(), Registry()
    stats = ClusterStats(DataPlaneMetrics(ours), "outbound", "c")
    ref = DataPlaneMetrics(theirs)
    classes = ("1xx", "2xx", "3xx", "4xx", "5xx")
    for klass in classes:  # ClusterStats creates every series up front
        ref.requests.labels("outbound", "c", klass)
    samples = [(200, 0.0004), (204, 0.0005), (302, 0.003), (404, 0.2), (503, 11.0), (99, 0.01)]
    for status, seconds in samples:
        stats.count(status, seconds)
        index = status // 100 - 1
        klass = classes[index if 0 <= index < 5 else 4]
        ref.requests.labels("outbound", "c", klass).inc()
        ref.duration.labels("outbound", "c").observe(seconds)
    ref.retries.labels("c")
    ref.upstream_active.labels("c")
    ref.upstream_total.labels("c")
    assert ours.render() == theirs.render()
    # An exact bucket bound counts in that bucket ("less than or equal"): 0.0004 and 0.0005.
    assert LATENCY_BUCKETS[0] == 0.0005
    assert stats.duration.counts[0] == 2
