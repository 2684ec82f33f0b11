"""scripts/train_bundle.py: the bundle recipe's stage order, skipping and resuming (dry runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_bundle.py"


def dry_run(out: Path) -> list[str]:
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "shapes", "--out", str(out), "--dry-run"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [line.split("] ", 1)[1] for line in res.stdout.splitlines()]


def test_dry_run_lists_every_stage_in_dependency_order(tmp_path):
    lines = dry_run(tmp_path)
    names = [line.split(" ", 1)[0] for line in lines]
    assert names == ["clip", "clip_b", "upsampler", "embed", "decoder", "decoder_ft", "prior", "prior_ar"]
    assert all("--resume" not in line for line in lines)
    decoder = next(line for line in lines if line.startswith("decoder"))
    assert f"--clip {tmp_path}/clip/clip" in decoder and "--preset decoder-shapes" in decoder


def test_finished_stages_are_skipped_and_interrupted_ones_resumed(tmp_path):
    (tmp_path / "clip.done").touch()
    for run in ("clip", "decoder"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "state.pt").touch()
    lines = dry_run(tmp_path)
    names = ["clip_b", "upsampler", "embed", "decoder", "decoder_ft", "prior", "prior_ar"]
    assert [line.split(" ", 1)[0] for line in lines] == names
    # clip_b continues the clip stage's run directory; decoder continues its own
    assert [line.split(" ", 1)[0] for line in lines if line.endswith("--resume")] == ["clip_b", "decoder"]
