"""wrk --latency output parsing: units, percentiles, errors, and clear failures."""

import pytest
import wrkparse

OUTPUT = """Running 10s test @ http://127.0.0.1:40001/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.10ms  215.42us   4.35ms   86.56%
    Req/Sec    45.17k     3.13k   49.16k    80.00%
  Latency Distribution
     50%  803.00us
     75%    0.89ms
     90%    1.02ms
     99%    1.53ms
  451885 requests in 10.00s, 94.51MB read
  Non-2xx or 3xx responses: 5
  Socket errors: connect 0, read 2, write 0, timeout 1
Requests/sec:  45181.53
Transfer/sec:      9.45MB
"""


def test_parses_rps_percentiles_and_errors() -> None:
    r = wrkparse.parse(OUTPUT)
    assert r.rps == pytest.approx(45181.53)
    assert r.requests == 451885
    assert r.duration_s == pytest.approx(10.0)
    assert r.p(50) == pytest.approx(803.0)
    assert r.p(75) == pytest.approx(890.0)
    assert r.p(99) == pytest.approx(1530.0)
    assert r.non_2xx == 5
    assert r.socket_errors == {"connect": 0, "read": 2, "write": 0, "timeout": 1}
    assert r.errors == 8


def test_clean_run_has_no_errors_and_second_unit() -> None:
    text = OUTPUT.replace("  Non-2xx or 3xx responses: 5\n", "").replace(
        "  Socket errors: connect 0, read 2, write 0, timeout 1\n", ""
    )
    text = text.replace("99%    1.53ms", "99%    1.20s")
    r = wrkparse.parse(text)
    assert r.errors == 0
    assert r.p(99) == pytest.approx(1_200_000.0)


@pytest.mark.parametrize(
    ("value", "unit", "us"),
    [("23.00", "us", 23.0), ("1.5", "ms", 1500.0), ("2", "s", 2_000_000.0), ("1", "m", 6e7)],
)
def test_units_to_microseconds(value: str, unit: str, us: float) -> None:
    assert wrkparse.to_us(value, unit) == pytest.approx(us)


def test_unknown_unit_is_a_clear_error() -> None:
    with pytest.raises(wrkparse.WrkParseError, match="unknown wrk time unit 'ns'"):
        wrkparse.to_us("1", "ns")


def test_missing_latency_distribution_names_the_flag() -> None:
    text = OUTPUT.split("  Latency Distribution")[0] + "  10 requests in 1.00s, 1KB read\n"
    text += "Requests/sec:     10.00\n"
    with pytest.raises(wrkparse.WrkParseError, match="--latency"):
        wrkparse.parse(text)


def test_missing_rps_line_quotes_the_output() -> None:
    with pytest.raises(wrkparse.WrkParseError, match="unable to connect"):
        wrkparse.parse("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_missing_percentile_is_a_clear_error() -> None:
    with pytest.raises(wrkparse.WrkParseError, match=r"99\.9% latency"):
        wrkparse.parse(OUTPUT).p(99.9)
