"""The local stack's default ports are outside the kernel's ephemeral port range, so
no outgoing connection can hold one when a service (re)starts."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from shardctl.cli.dev import load_devstack

LINUX_DEFAULT_EPHEMERAL = (32768, 60999)


def _ephemeral_ranges() -> list[tuple[int, int]]:
    ranges = [LINUX_DEFAULT_EPHEMERAL]
    here = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if here.exists():
        low, high = (int(n) for n in here.read_text().split())
        ranges.append((low, high))
    return ranges


def test_default_ports_are_outside_the_ephemeral_range() -> None:
    ports = asdict(load_devstack().Ports())
    for low, high in _ephemeral_ranges():
        inside = {name: port for name, port in ports.items() if low <= port <= high}
        assert inside == {}, f"in the ephemeral range {low}-{high}: {inside}"


def test_default_ports_are_distinct() -> None:
    ports = asdict(load_devstack().Ports())
    assert len(set(ports.values())) == len(ports), ports
