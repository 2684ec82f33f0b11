from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from unclip.config import Config, ConfigError


@dataclasses.dataclass(frozen=True)
class Inner(Config):
    width: int = 8
    mults: tuple[int, ...] = (1, 2)


@dataclasses.dataclass(frozen=True)
class Outer(Config):
    name: str = "x"
    scale: float = 1.0
    kind: Literal["a", "b"] = "a"
    inner: Inner = Inner()
    extra: int | None = None


def test_round_trip():
    cfg = Outer(name="y", scale=2.0, kind="b", inner=Inner(width=4, mults=(1, 2, 4)), extra=3)
    again = Outer.from_dict(cfg.to_dict())
    assert again == cfg
    assert Outer.from_json(cfg.to_json()) == cfg


def test_unknown_key_rejected_with_names():
    with pytest.raises(ConfigError, match=r"unknown key.*widht"):
        Outer.from_dict({"inner": {"widht": 3}})


def test_wrong_types_rejected():
    with pytest.raises(ConfigError, match="expected an integer"):
        Inner.from_dict({"width": "8"})
    with pytest.raises(ConfigError, match="not one of"):
        Outer.from_dict({"kind": "c"})
    with pytest.raises(ConfigError, match="expected a list"):
        Inner.from_dict({"mults": 3})
    with pytest.raises(ConfigError, match=r"expected true or false|expected an integer"):
        Inner.from_dict({"width": True})


def test_frozen_and_replace():
    cfg = Outer()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "z"  # type: ignore[misc]
    assert cfg.replace(scale=3).scale == 3.0
    with pytest.raises(ConfigError):
        cfg.replace(nope=1)


def test_int_promoted_to_float():
    assert Outer.from_dict({"scale": 2}).scale == 2.0


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Outer.from_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        Outer.from_json(bad)


@dataclasses.dataclass(frozen=True)
class FixedTuple(Config):
    rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)


def test_fixed_length_tuple():
    assert FixedTuple.from_dict({"rgb": [1, 0.5, 0]}).rgb == (1.0, 0.5, 0.0)
    with pytest.raises(ConfigError, match="expected 3 items"):
        FixedTuple.from_dict({"rgb": [1, 2]})
