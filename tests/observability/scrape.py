"""Scraping and reading Prometheus text exposition in tests."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


async def scrape(url: str) -> list[Sample]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return [sample for family in text_string_to_metric_families(response.text) for sample in family.samples]


async def scrape_all(urls: dict[str, str]) -> dict[str, list[Sample]]:
    return {process: await scrape(url) for process, url in urls.items()}


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of every sample called `name` whose labels include `labels`."""
    return sum(
        sample.value
        for sample in samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def names(samples: list[Sample]) -> set[str]:
    return {sample.name for sample in samples}
