from __future__ import annotations

import dataclasses
import json
import pickle

import pytest
import torch
from torch import nn

from unclip.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    add_kind,
    load_component,
    save_component,
)
from unclip.config import Config


@dataclasses.dataclass(frozen=True)
class TinyConfig(Config):
    dim: int = 4


class Tiny(nn.Module):
    def __init__(self, cfg: TinyConfig):
        super().__init__()
        self.lin = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


add_kind("test_tiny", TinyConfig, Tiny)


def test_save_load_identical(tmp_path):
    torch.manual_seed(0)
    m = Tiny(TinyConfig(dim=5))
    save_component(m, TinyConfig(dim=5), "test_tiny", tmp_path / "c")
    m2, cfg, header = load_component(tmp_path / "c")
    assert cfg == TinyConfig(dim=5)
    assert header["format_version"] == FORMAT_VERSION
    x = torch.randn(3, 5)
    assert torch.equal(m(x), m2(x))


def test_newer_format_refused(tmp_path):
    save_component(Tiny(TinyConfig()), TinyConfig(), "test_tiny", tmp_path / "c")
    p = tmp_path / "c" / "component.json"
    h = json.loads(p.read_text())
    h["format_version"] = FORMAT_VERSION + 1
    p.write_text(json.dumps(h))
    with pytest.raises(CheckpointError, match="newer"):
        load_component(tmp_path / "c")


def test_unknown_config_key_and_kind(tmp_path):
    save_component(Tiny(TinyConfig()), TinyConfig(), "test_tiny", tmp_path / "c")
    p = tmp_path / "c" / "component.json"
    h = json.loads(p.read_text())
    h["config"]["dimm"] = 3
    p.write_text(json.dumps(h))
    with pytest.raises(Exception, match="unknown key"):
        load_component(tmp_path / "c")
    h["config"] = {"dim": 4}
    h["kind"] = "no_such_kind"
    p.write_text(json.dumps(h))
    with pytest.raises(CheckpointError, match="unknown component kind"):
        load_component(tmp_path / "c")


def test_pickle_and_corrupt_weights_refused(tmp_path):
    save_component(Tiny(TinyConfig()), TinyConfig(), "test_tiny", tmp_path / "c")
    w = tmp_path / "c" / "model.safetensors"
    w.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="pickle"):
        load_component(tmp_path / "c")
    w.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_component(tmp_path / "c")
    w.unlink()
    with pytest.raises(CheckpointError, match="not found"):
        load_component(tmp_path / "c")


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a component directory"):
        load_component(tmp_path / "nope")


def test_bf16_storage(tmp_path):
    m = Tiny(TinyConfig())
    save_component(m, TinyConfig(), "test_tiny", tmp_path / "c", dtype=torch.bfloat16)
    m2, _, _ = load_component(tmp_path / "c")
    assert m2.lin.weight.dtype == torch.float32
    torch.testing.assert_close(m2.lin.weight, m.lin.weight.to(torch.bfloat16).float())
