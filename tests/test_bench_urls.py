"""The `urls` benchmark (bench/urls.py): its site binds loopback addresses only, and a tiny run
of the section (no img2dataset) keeps exactly the good pictures, every fault refused."""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path

import pytest

from bench.url_site import FAULTS, Site, SiteOptions, check_loopback, hosts
from bench.urls import Plan, measure

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


@pytest.mark.parametrize("address", ["0.0.0.0", "10.0.0.1", "192.168.1.10", "8.8.8.8", "::"])
def test_the_site_refuses_any_address_outside_loopback(address: str) -> None:
    with pytest.raises(ValueError):
        check_loopback(address)

    async def listen() -> list[asyncio.Server]:
        site = Site([b"picture"], SiteOptions())
        with pytest.raises(ValueError):
            await site.listen([address])
        return site.listeners

    assert asyncio.run(listen()) == []


def test_the_site_listens_on_each_loopback_address_it_names() -> None:
    addresses = hosts(300)
    assert all(ipaddress.ip_address(a) in LOOPBACK for a in addresses)

    async def bound() -> list[str]:
        site = Site([b"picture"], SiteOptions())
        await site.listen(addresses[:3])
        names = [s.getsockname()[0] for server in site.listeners for s in server.sockets]
        site.close()
        return names

    assert asyncio.run(bound()) == ["127.0.1.1", "127.0.1.2", "127.0.1.3"]


@pytest.mark.timeout(120)
def test_a_tiny_run_keeps_the_good_pictures_and_refuses_every_fault(tmp_path: Path) -> None:
    plan = Plan(
        urls=66,
        hosts=3,
        pictures=3,
        failure_share=len(FAULTS) / 66,
        latency_ms=10,
        deadline_s=1.0,
        rounds=1,
        img2dataset=False,
        whole_builder=False,
    )
    result = measure(True, tmp_path, plan)
    assert result.kinds == {"ok": 55} | {fault: 1 for fault in FAULTS}
    (ours,) = result.runs
    assert ours.kept == {"ok": 55} and ours.failed == len(FAULTS)
    numbers = result.to_json()
    assert numbers["urls_per_s"] > 0 and numbers["urls_peak_rss_mb"] > 0
    assert numbers["img2dataset_urls_per_s"] is None
    assert "img2dataset: not run" in result.to_markdown()
