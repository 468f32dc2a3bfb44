"""Reading /metrics in tests: the text format parsed into ``{(sample, labels): value}``."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_config

ADMIN = "test-admin-token-0123456789"

Samples = dict[tuple[str, frozenset], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def scrape(client: Any, token: str = ADMIN) -> Samples:
    r = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.get_data(as_text=True)
    assert r.headers["Content-Type"].startswith("text/plain; version=")
    return parse(r.get_data(as_text=True))


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series is absent (counters start there)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: Samples, name: str) -> dict[frozenset, float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


__all__ = ["ADMIN", "make_config", "parse", "scrape", "series", "value"]
