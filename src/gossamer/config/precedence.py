"""The Gateway API's precedence between HTTPRoute matches: which rule a request meets first.

The translator orders a virtual host's rules by it, and `gossamer analyze` finds shadowed rules by
it, so the two can never disagree.
"""

from __future__ import annotations

from gossamer.config.models import HTTPRouteMatch

_PATH_RANK = {"Exact": 3, "RegularExpression": 2, "PathPrefix": 1}


def match_precedence(match: HTTPRouteMatch | None) -> tuple[int, int, str, int, int, int]:
    """The sort key of one match (smaller sorts first) by the Gateway API's criteria 1-4."""
    if match is None or match.path is None:
        kind, value = "PathPrefix", "/"
    else:
        kind, value = match.path.type, match.path.value
    has_method = match is not None and match.method is not None
    headers = len(match.headers) if match is not None else 0
    query = len(match.query_params) if match is not None else 0
    return (-_PATH_RANK[kind], -len(value), value, -int(has_method), -headers, -query)
