"""Scraping a relay's admin endpoint with treq, for the admin tests."""

from __future__ import annotations

import treq
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset], float]


async def get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    response = await treq.get(url, timeout=timeout)
    return response.code, (await response.text()) if response.code else ""


async def scrape(admin_url: str) -> tuple[str, Samples]:
    """The exposition's text and its samples by (name, labels)."""
    status, text = await get(admin_url + "/metrics")
    assert status == 200, status
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)
