"""scripts/train_bundle.py: the bundle recipe's stage order, skipping and resuming (dry runs)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_bundle.py"
SHAPES_STAGES = [
    "clip", "clip_b", "clip_j", "embed", "prior", "prior_ar", "upsampler", "upsampler_ft", "decoder",
    "decoder_j", "decoder_f",
]  # fmt: skip
LINEAGE_STAGES = [
    "clip", "clip_b", "clip_j", "clip_k", "clip_l", "clip_n", "clip_p", "clip_p2", "embed", "prior",
    "prior_ar", "upsampler", "upsampler_ft", "upsampler_ft2", "decoder", "decoder_ft", "decoder_k",
    "decoder_n", "decoder_n2", "decoder_p",
]  # fmt: skip


def dry_run(out: Path, recipe: str = "shapes") -> list[str]:
    res = subprocess.run(
        [sys.executable, str(SCRIPT), recipe, "--out", str(out), "--dry-run"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    if recipe != "shapes-lineage":
        assert res.stdout.splitlines()[-1].startswith("planned: the lanes end after about")
    return [line.split("] ", 1)[1] for line in res.stdout.splitlines() if line.startswith("[")]


def load_script():
    spec = importlib.util.spec_from_file_location("train_bundle", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_bundle"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def upstream(stages: dict, name: str) -> set[str]:
    """Every stage ``name`` needs, directly or through other stages."""
    found = set(stages[name].needs)
    for n in stages[name].needs:
        found |= upstream(stages, n)
    return found


def test_dry_run_lists_every_stage_in_dependency_order(tmp_path):
    lines = dry_run(tmp_path)
    assert [line.split(" ", 1)[0] for line in lines] == SHAPES_STAGES
    assert all("--resume" not in line for line in lines)
    # min-SNR while the decoder learns shape, then the flat loss's short last phase (as the lineage)
    decoder = next(line for line in lines if line.startswith("decoder_j"))
    assert f"--clip {tmp_path}/clip_j/clip" in decoder and "--preset decoder-shapes " in decoder
    assert f"--init-from {tmp_path}/decoder/decoder" in decoder
    final = next(line for line in lines if line.startswith("decoder_f"))
    assert f"--clip {tmp_path}/clip_j/clip" in final and "--preset decoder-shapes-flat" in final
    assert f"--init-from {tmp_path}/decoder_j/decoder" in final


def test_the_recipes_fit_two_hours_by_construction():
    """Shapes: every stage after run H's curriculum has a time budget. Both recipes end in 2 h."""
    tb = load_script()
    for name, _, _, argv in tb.RECIPES["shapes"]:
        assert ("--time-budget" in argv) != (name in tb.UNBUDGETED["shapes"]), name
    for recipe in ("shapes", "emoji"):
        times = tb.plan(recipe)
        assert max(end for _, end in times.values()) <= 2 * 3600 - 300, recipe  # room to assemble, evaluate
    times = tb.plan("shapes")
    # the decoder waits for nothing but its CLIP: it starts when run H's tower is ready
    assert times["decoder"][0] == times["clip_b"][1]
    assert times["decoder_j"][0] == max(times["decoder"][1], times["clip_j"][1])
    assert times["decoder_f"][0] == times["decoder_j"][1]


def test_lineage_dry_run_lists_every_stage_in_dependency_order(tmp_path):
    lines = dry_run(tmp_path, "shapes-lineage")
    assert [line.split(" ", 1)[0] for line in lines] == LINEAGE_STAGES
    decoder = next(line for line in lines if line.startswith("decoder_p"))
    assert f"--clip {tmp_path}/clip_p2/clip" in decoder and "--preset decoder-shapes-flat" in decoder
    assert f"--init-from {tmp_path}/decoder_n2/decoder" in decoder


def test_every_input_a_stage_reads_is_made_by_a_stage_it_needs():
    """--init-from, --clip and --data paths under OUT come from a (transitively) needed stage."""
    tb = load_script()
    out = Path("/OUT")
    for bundle, recipe in tb.RECIPES.items():
        stages = {name: tb.Stage(name, lane, needs, argv) for name, lane, needs, argv in recipe}

        for name, stage in stages.items():
            assert all(list(stages).index(n) < list(stages).index(name) for n in stage.needs)
            for flag in ("--init-from", "--clip", "--data"):
                if flag not in stage.argv:
                    continue
                path = Path(stage.argv[stage.argv.index(flag) + 1].format(out=out))
                if out not in path.parents:
                    continue  # a dataset name such as "shapes"
                makers = {n for n, s in stages.items() if s.run_dir(out) in (path, *path.parents)}
                assert makers & upstream(stages, name), f"{bundle}/{name}: {flag} {path} is made by {makers}"
        # The assembled model takes each component from a stage of the recipe.
        assert set(tb.FINAL[bundle].values()) <= set(stages)


def test_finished_stages_are_skipped_and_interrupted_ones_resumed(tmp_path):
    (tmp_path / "clip.done").touch()
    for run in ("clip", "decoder"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "state.pt").touch()
    lines = dry_run(tmp_path)
    assert [line.split(" ", 1)[0] for line in lines] == SHAPES_STAGES[1:]
    # clip_b continues the clip stage's run directory; decoder continues its own
    assert [line.split(" ", 1)[0] for line in lines if line.endswith("--resume")] == ["clip_b", "decoder"]


def test_recipe_defaults_are_the_shipped_bundles_defaults():
    """The assembled model's sampling defaults match what each shipped bundle uses."""
    import json

    module = load_script()
    bundles = Path(__file__).resolve().parents[1] / "src" / "unclip" / "bundles"
    assert set(module.BUNDLE) == set(module.RECIPES) == set(module.FINAL)
    for name, defaults in module.DEFAULTS.items():
        shipped = json.loads((bundles / name / "model.json").read_text())["defaults"]
        assert {k: shipped[k] for k in defaults} == defaults, name


def test_a_lane_that_raises_fails_the_recipe(tmp_path, monkeypatch):
    """An exception in a lane (say, the command cannot start) stops the run before assembly."""
    tb = load_script()
    stages = [tb.Stage(n, lane, needs, argv) for n, lane, needs, argv in tb.RECIPES["shapes"]]
    runner = tb.Runner(tmp_path, stages, dry_run=False)

    def boom(stage, threads=1):
        raise FileNotFoundError("no such command")

    monkeypatch.setattr(runner, "run_stage", boom)
    assert not runner.run()
    assert sorted(runner.failed) == ["lane 1", "lane 2"]


def test_a_stage_started_after_the_other_lane_is_done_gets_both_cores(tmp_path, monkeypatch):
    """A stage that starts once every other lane's stages are done starts on 2 threads."""
    tb = load_script()
    stages = [
        tb.Stage("a", 1, (), ["--out", "{out}/a"]),
        tb.Stage("b", 2, (), ["--out", "{out}/b"]),
        tb.Stage("c", 2, ("a", "b"), ["--out", "{out}/c"]),
    ]
    runner = tb.Runner(tmp_path, stages, dry_run=False)
    started: dict[str, int] = {}

    def fake(stage, threads=1):
        started[stage.name] = threads
        runner.marker(stage.name).touch()
        return True

    monkeypatch.setattr(runner, "run_stage", fake)
    assert runner.run()
    assert started["c"] == 2  # a and b have no order between them; c always follows lane 1's end

    # A second invocation after lane 1 finished: lane 2's unfinished stage starts on both cores.
    runner = tb.Runner(tmp_path, stages, dry_run=False)
    runner.marker("c").unlink()
    started.clear()
    monkeypatch.setattr(runner, "run_stage", fake)
    assert runner.run()
    assert started == {"c": 2}
