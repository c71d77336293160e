"""Where a worker forwards a request for a key another worker owns: the owner's advertised URL
(scheme, host, port), the request's path and query kept."""

from __future__ import annotations

import pytest
from yarl import URL

from agents.web.api import forwarded_url


@pytest.mark.parametrize(
    ("owner", "expected"),
    [
        ("http://worker-1.workers:6066", "http://worker-1.workers:6066/best-promotion?m=a&c=1"),
        ("https://nb-2.example.com:8443", "https://nb-2.example.com:8443/best-promotion?m=a&c=1"),
        ("http://127.0.0.3:7001", "http://127.0.0.3:7001/best-promotion?m=a&c=1"),
    ],
)
def test_forwarded_url_is_the_owners_with_the_requests_path(owner: str, expected: str) -> None:
    request = URL("http://localhost:8080/best-promotion?m=a&c=1")
    assert forwarded_url(request, URL(owner)) == URL(expected)
