"""Small stand-ins for pyinfra hosts, enough for ``tasks.settings.parse_inventory``."""

from __future__ import annotations

from dataclasses import dataclass, field

from tasks.settings import Settings, SettingsError, parse_inventory


class _Data:
    def __init__(self, values: dict):
        self._values = values

    def dict(self) -> dict:
        return dict(self._values)


@dataclass
class FakeHost:
    name: str
    data_values: dict = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)

    @property
    def data(self) -> _Data:
        return _Data(self.data_values)


def control_plane(name: str = "cp1", **data) -> FakeHost:
    return FakeHost(name, data, ["control_plane"])


def worker(name: str = "w1", **data) -> FakeHost:
    return FakeHost(name, data, ["workers"])


def parse(*hosts: FakeHost) -> dict[str, Settings]:
    return parse_inventory(hosts)


def settings(**data) -> Settings:
    """One control-plane host's settings from this data."""
    return parse(control_plane("cp1", **data))["cp1"]


def problems(*hosts: FakeHost) -> list[str]:
    """The problems parse_inventory reports for these hosts (it must report some)."""
    try:
        parse_inventory(hosts)
    except SettingsError as error:
        assert str(error).startswith("invalid podnet settings:\n")
        return error.problems
    raise AssertionError("the inventory was accepted")
