"""Retrain a shipped bundle from scratch, stage by stage, resumable (docs/bundles.md).

    python scripts/train_bundle.py shapes --out runs/bundle-shapes          # 2 h on 2 cores
    python scripts/train_bundle.py emoji --out runs/bundle-emoji            # needs the emoji sources
    python scripts/train_bundle.py shapes --out runs/bundle-shapes --dry-run

``shapes`` is the 2-hour recipe: every stage after run H's curriculum has a ``--time-budget``, so
the lanes end within two hours by construction (:func:`plan`). ``shapes-lineage`` is the CPU
lineage of the v5 bundle (about 5.7 h). The shipped v6 continues that lineage's ``clip_p2`` and
``decoder_p`` on a GPU (scripts/gpu_shapes.sh, then scripts/gpu_shapes_decoder.sh) and retrains
the priors on this CPU (docs/bundles.md, "v6: the GPU run").

Each stage is one ``unclip`` command whose ``--out`` is a run directory under ``--out``. Stages run in
two lanes, one per core (``OMP_NUM_THREADS=1`` each), and a stage starts when the stages it needs
are done:

    shapes, lane 1: clip -> clip_b -> clip_j -> embed -> prior -> prior_ar -> (upsampler) upsampler_ft
            lane 2: upsampler -> (clip_b) decoder -> (clip_j) decoder_j -> decoder_f
    shapes-lineage, lane 1: clip -> clip_b -> clip_j -> clip_k -> clip_l -> clip_n -> clip_p -> clip_p2
                    -> embed -> prior -> prior_ar -> upsampler -> upsampler_ft -> upsampler_ft2
            lane 2: (clip_b) decoder -> decoder_ft -> (clip_k) decoder_k -> (clip_n) decoder_n -> decoder_n2
                    -> (clip_p2) decoder_p
    emoji:  see RECIPES
    then:   assemble (bf16 model directory, components named by FINAL) -> evaluate --quick

When one lane has nothing left to do while the other is still training, the running stage is
stopped at its next step (SIGTERM: it saves a checkpoint) and resumed with two threads, so the
second core is not left idle; the lane's later stages, and the evaluation, start with two
threads. A finished stage leaves ``OUT/<stage>.done`` and is skipped on the next invocation; an
interrupted training stage is resumed from its last atomic checkpoint (``--resume``).
``OUT/recipe.json`` records every command, its exit status and its wall time. Stop with Ctrl-C at
any moment and run the same command again to continue.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path


def clip_finetune(
    name: str, after: str, init: str, *, shape_weight: int, steps: int, lr: str, seed: int
) -> tuple[str, int, tuple[str, ...], list[str]]:
    """A lane-1 stage fine-tuning a shapes CLIP from ``init`` with the attribute probe (runs J-L)."""
    return (
        name, 1, (after,),
        ["train", "clip", "--data", "shapes", "--preset", "clip-shapes-resnet", "--aux-attributes", "1",
         "--init-from", init, "--aux-shape-weight", str(shape_weight), "--steps", str(steps), "--lr", lr,
         "--warmup", "50", "--seed", str(seed), "--out", "{out}/" + name],
    )  # fmt: skip


#: CLIP run H, the first two stages of both shapes recipes: the attribute probe alone for 500 steps,
#: then InfoNCE + probe; the probe's shape weight rises from 3 to 6 at step 1018 because shape was
#: slipping (docs/clip.md).
RUN_H = [
    (
        "clip", 1, (),
        ["train", "clip", "--data", "shapes", "--preset", "clip-shapes-resnet", "--aux-attributes", "1",
         "--aux-shape-weight", "3", "--probe-first", "500", "--steps", "1800", "--stop-at", "1018",
         "--out", "{out}/clip"],
    ),
    (
        "clip_b", 1, ("clip",),
        ["train", "clip", "--data", "shapes", "--preset", "clip-shapes-resnet", "--aux-attributes", "1",
         "--aux-shape-weight", "6", "--probe-first", "500", "--steps", "1800", "--out", "{out}/clip"],
    ),
]  # fmt: skip


#: Stage recipes per bundle: (name, lane, needs, argv after ``unclip -q``). ``{out}`` is --out.
RECIPES: dict[str, list[tuple[str, int, tuple[str, ...], list[str]]]] = {
    # The 2-hour recipe (docs/bundles.md): every stage after run H's curriculum under --time-budget,
    # so the whole recipe fits two hours on two cores by construction (plan()). Run H (25 min), then
    # one fine-tune that does what runs J-P did in turn: a higher shape weight, the global-colour
    # path (zero-initialised, so it starts where run H ended), the background probe term and
    # background edits (20 min). The decoder starts on run H's tower while that fine-tune runs
    # and then follows it (the lineage's CLIP-hopping, once). A first try that put the colour path
    # and background term into run H's curriculum read colour 60 / shape 35 / fill 57 % at step
    # 1,750 against run H's 80 / 60 / 100, and was stopped. The decoder trains with min-SNR
    # weighting and ends with a flat-loss phase, as the lineage did: a flat loss throughout read
    # colour 92 / shape 10 % at n = 48, min-SNR alone 65 / 33 at 2,000 steps (docs/bundles.md).
    "shapes": [
        *RUN_H,
        (
            "clip_j", 1, ("clip_b",),
            ["train", "clip", "--data", "shapes", "--preset", "clip-shapes-resnet-color", "--aux-attributes", "1",
             "--init-from", "{out}/clip/clip", "--aux-shape-weight", "12", "--aux-background-weight", "5",
             "--background-edits", "0.25", "--steps", "1500", "--time-budget", "1200", "--lr", "3e-4",
             "--warmup", "50", "--seed", "1", "--out", "{out}/clip_j"],
        ),
        (
            "embed", 1, ("clip_j",),
            ["embed", "--clip", "{out}/clip_j/clip", "--data", "shapes", "--limit", "100000", "--out", "{out}/embed"],
        ),
        (
            "prior", 1, ("embed",),
            ["train", "prior", "--kind", "diffusion", "--data", "{out}/embed", "--preset",
             "prior-diffusion-shapes-bundle", "--steps", "2800", "--time-budget", "960", "--out", "{out}/prior"],
        ),
        (
            "prior_ar", 1, ("embed",),
            ["train", "prior", "--kind", "ar", "--data", "{out}/embed", "--preset", "prior-ar-shapes-bundle",
             "--time-budget", "420", "--out", "{out}/prior_ar"],
        ),
        # The upsampler's blur phase fills lane 2 until run H's tower is ready; its sharp phase
        # fills lane 1 after the priors (docs/decoder.md).
        (
            "upsampler", 2, (),
            ["train", "upsampler", "--data", "shapes", "--preset", "upsampler-32-128", "--steps", "1500",
             "--time-budget", "1580", "--out", "{out}/upsampler"],
        ),
        (
            "upsampler_ft", 1, ("upsampler", "prior_ar"),
            ["train", "upsampler", "--data", "shapes", "--preset", "upsampler-32-128-sharp", "--steps", "1800",
             "--time-budget", "1500", "--init-from", "{out}/upsampler/upsampler", "--out", "{out}/upsampler_ft"],
        ),
        (
            "decoder", 2, ("clip_b", "upsampler"),
            ["train", "decoder", "--data", "shapes", "--clip", "{out}/clip/clip", "--preset", "decoder-shapes",
             "--steps", "3000", "--time-budget", "1140", "--out", "{out}/decoder"],
        ),
        (
            "decoder_j", 2, ("decoder", "clip_j"),
            ["train", "decoder", "--data", "shapes", "--clip", "{out}/clip_j/clip", "--preset", "decoder-shapes",
             "--steps", "6000", "--time-budget", "2700", "--lr", "5e-4", "--warmup", "100", "--sample-every", "1000",
             "--seed", "2", "--init-from", "{out}/decoder/decoder", "--out", "{out}/decoder_j"],
        ),
        # The lineage's last phase (decoder_p): the unweighted v loss, which weights the noisiest
        # steps where a 32 px image's colour and background are decided (docs/decoder.md, v5).
        (
            "decoder_f", 2, ("decoder_j",),
            ["train", "decoder", "--data", "shapes", "--clip", "{out}/clip_j/clip", "--preset", "decoder-shapes-flat",
             "--steps", "2000", "--time-budget", "1140", "--lr", "4e-4", "--warmup", "100", "--sample-every", "500",
             "--seed", "6", "--init-from", "{out}/decoder_j/decoder", "--out", "{out}/decoder_f"],
        ),
    ],
    # The v5 bundle's whole CPU lineage (about 5.7 h; docs/bundles.md): each CLIP was improved in
    # turn and the decoder and priors followed it.
    "shapes-lineage": [
        *RUN_H,
        # Runs J, K, L: fine-tunes of run H at rising shape weights (zero-shot shape 60 -> 96 %).
        clip_finetune("clip_j", "clip_b", "{out}/clip/clip", shape_weight=6, steps=1500, lr="3e-4", seed=1),
        clip_finetune("clip_k", "clip_j", "{out}/clip_j/clip", shape_weight=12, steps=1500, lr="3e-4", seed=2),
        clip_finetune("clip_l", "clip_k", "{out}/clip_k/clip", shape_weight=20, steps=1200, lr="2e-4", seed=3),
        # Run N: the global-colour path and a background probe term put the background into the
        # image embedding (linear probe 34 -> 97 %, docs/clip.md "Background"). The bundle's CLIP.
        (
            "clip_n", 1, ("clip_l",),
            ["train", "clip", "--data", "shapes", "--preset", "clip-shapes-resnet-color", "--aux-attributes", "1",
             "--init-from", "{out}/clip_l/clip", "--aux-shape-weight", "20", "--aux-background-weight", "5",
             "--steps", "600", "--lr", "2e-4", "--warmup", "50", "--seed", "4", "--out", "{out}/clip_n"],
        ),
        # Runs P, P2: background edits teach the text tower the background (zero-shot 21 -> 60 %,
        # docs/clip.md "Background on the text side"). The bundle's CLIP.
        (
            "clip_p", 1, ("clip_n",),
            ["train", "clip", "--data", "shapes", "--preset", "clip-shapes-resnet-color", "--aux-attributes", "1",
             "--init-from", "{out}/clip_n/clip", "--aux-shape-weight", "20", "--aux-background-weight", "5",
             "--background-edits", "0.5", "--steps", "600", "--lr", "2e-4", "--warmup", "50", "--seed", "7",
             "--out", "{out}/clip_p"],
        ),
        (
            "clip_p2", 1, ("clip_p",),
            ["train", "clip", "--data", "shapes", "--preset", "clip-shapes-resnet-color", "--aux-attributes", "1",
             "--init-from", "{out}/clip_p/clip", "--aux-shape-weight", "20", "--aux-background-weight", "5",
             "--background-edits", "0.25", "--steps", "400", "--lr", "1.5e-4", "--warmup", "30", "--seed", "8",
             "--sample-every", "200", "--out", "{out}/clip_p2"],
        ),
        (
            "embed", 1, ("clip_p2",),
            ["embed", "--clip", "{out}/clip_p2/clip", "--data", "shapes", "--limit", "50000", "--out", "{out}/embed"],
        ),
        (
            "prior", 1, ("embed",),
            ["train", "prior", "--kind", "diffusion", "--data", "{out}/embed",
             "--preset", "prior-diffusion-shapes-bundle", "--out", "{out}/prior"],
        ),
        (
            "prior_ar", 1, ("embed",),
            ["train", "prior", "--kind", "ar", "--data", "{out}/embed", "--preset", "prior-ar-shapes-bundle",
             "--out", "{out}/prior_ar"],
        ),
        # The upsampler: the paper's blur corruption, then a second phase with a blur range from 0
        # (it had learnt to sharpen inputs that were already sharp; docs/decoder.md).
        (
            "upsampler", 1, (),
            ["train", "upsampler", "--data", "shapes", "--preset", "upsampler-32-128", "--steps", "1500",
             "--out", "{out}/upsampler"],
        ),
        (
            "upsampler_ft", 1, ("upsampler",),
            ["train", "upsampler", "--data", "shapes", "--preset", "upsampler-32-128-sharp",
             "--init-from", "{out}/upsampler/upsampler", "--out", "{out}/upsampler_ft"],
        ),
        (
            "upsampler_ft2", 1, ("upsampler_ft",),
            ["train", "upsampler", "--data", "shapes", "--preset", "upsampler-32-128-sharp", "--steps", "1200",
             "--lr", "3e-4", "--init-from", "{out}/upsampler_ft/upsampler", "--out", "{out}/upsampler_ft2"],
        ),
        # The decoder follows its CLIP: 3,000 + 5,200 steps on run H's embeddings, 2,000 on run K's,
        # 2,500 + 1,059 on run N's (the second phase stopped when run P2 was ready), then 2,000 on
        # run P2's without min-SNR weighting (docs/decoder.md), each phase a fresh schedule from the
        # last one's weights.
        (
            "decoder", 2, ("clip_b",),
            ["train", "decoder", "--data", "shapes", "--clip", "{out}/clip/clip", "--preset", "decoder-shapes",
             "--steps", "3000", "--out", "{out}/decoder"],
        ),
        (
            "decoder_ft", 2, ("decoder",),
            ["train", "decoder", "--data", "shapes", "--clip", "{out}/clip/clip", "--preset", "decoder-shapes",
             "--steps", "5200", "--lr", "5e-4", "--warmup", "100", "--sample-every", "500",
             "--init-from", "{out}/decoder/decoder", "--out", "{out}/decoder_ft"],
        ),
        (
            "decoder_k", 2, ("decoder_ft", "clip_k"),
            ["train", "decoder", "--data", "shapes", "--clip", "{out}/clip_k/clip", "--preset", "decoder-shapes",
             "--steps", "2000", "--lr", "5e-4", "--warmup", "100", "--sample-every", "500",
             "--init-from", "{out}/decoder_ft/decoder", "--out", "{out}/decoder_k"],
        ),
        (
            "decoder_n", 2, ("decoder_k", "clip_n"),
            ["train", "decoder", "--data", "shapes", "--clip", "{out}/clip_n/clip", "--preset", "decoder-shapes",
             "--steps", "2500", "--lr", "5e-4", "--warmup", "100", "--sample-every", "500",
             "--init-from", "{out}/decoder_k/decoder", "--out", "{out}/decoder_n"],
        ),
        (
            "decoder_n2", 2, ("decoder_n",),
            ["train", "decoder", "--data", "shapes", "--clip", "{out}/clip_n/clip", "--preset", "decoder-shapes",
             "--steps", "3000", "--stop-at", "1059", "--lr", "4e-4", "--warmup", "100", "--sample-every", "1000",
             "--seed", "5", "--init-from", "{out}/decoder_n/decoder", "--out", "{out}/decoder_n2"],
        ),
        (
            "decoder_p", 2, ("decoder_n2", "clip_p2"),
            ["train", "decoder", "--data", "shapes", "--clip", "{out}/clip_p2/clip", "--preset", "decoder-shapes-flat",
             "--steps", "2000", "--lr", "4e-4", "--warmup", "100", "--sample-every", "500", "--seed", "6",
             "--init-from", "{out}/decoder_n2/decoder", "--out", "{out}/decoder_p"],
        ),
    ],
    # The emoji corpus at 64 px (OpenMoji held out as an unseen style). MiniLM-locked CLIP (the
    # text tower that knows paraphrases); a separately trained judge CLIP with our own text tower
    # for the evaluation; bundle-size priors; the shapes bundle's decoder architecture at 32 px;
    # a x2 upsampler to the corpus's 64 px. The decoder's 3,800 steps took 97 min on a CPU shared
    # with two other jobs (1.5 s/step); its time budget caps that, so the recipe fits 2 h.
    "emoji": [
        (
            "data", 1, (),
            ["data", "emoji", "--heldout-style", "openmoji", "--size", "64", "--out", "{out}/data"],
        ),
        (
            "clip", 1, ("data",),
            ["train", "clip", "--data", "{out}/data", "--preset", "clip-emoji-minilm", "--steps", "200",
             "--out", "{out}/clip"],
        ),
        (
            "judge", 2, ("data",),
            ["train", "clip", "--data", "{out}/data", "--preset", "clip-emoji-small", "--stop-at", "286",
             "--out", "{out}/judge"],
        ),
        (
            "embed", 2, ("clip",),
            ["embed", "--clip", "{out}/clip/clip", "--data", "{out}/data", "--out", "{out}/embed"],
        ),
        (
            "decoder", 1, ("clip",),
            ["train", "decoder", "--data", "{out}/data", "--clip", "{out}/clip/clip", "--preset", "decoder-shapes",
             "--steps", "3800", "--time-budget", "5700", "--sample-every", "500", "--out", "{out}/decoder"],
        ),
        (
            "prior", 2, ("embed",),
            ["train", "prior", "--kind", "diffusion", "--data", "{out}/embed", "--val-size", "500",
             "--preset", "prior-diffusion-shapes-bundle", "--out", "{out}/prior"],
        ),
        (
            "prior_ar", 2, ("embed",),
            ["train", "prior", "--kind", "ar", "--data", "{out}/embed", "--val-size", "500",
             "--preset", "prior-ar-shapes-bundle", "--out", "{out}/prior_ar"],
        ),
        (
            "upsampler", 2, ("data",),
            ["train", "upsampler", "--data", "{out}/data", "--preset", "upsampler-emoji-32-64",
             "--out", "{out}/upsampler"],
        ),
    ],
}  # fmt: skip
#: Measured wall seconds of the stages that run without a --time-budget (one thread), for
#: :func:`plan`: shapes run H's two phases at about 0.9 s per step and embedding at about 330
#: scenes/s; the emoji stages as docs/bundles.md lists them.
UNBUDGETED = {
    "shapes": {"clip": 930, "clip_b": 680, "embed": 310},
    "emoji": {"data": 150, "clip": 822, "judge": 1200, "embed": 192, "prior": 288, "prior_ar": 582,
              "upsampler": 594},
}  # fmt: skip
#: Seconds each stage takes to start (imports, data, model) and to save at the end, beyond its budget.
OVERHEAD = 20


def plan(recipe: str) -> dict[str, tuple[float, float]]:
    """Each stage's (start, end) in seconds from the recipe's start, as the lanes schedule it.

    A stage starts when its lane's previous stage and the stages it needs have ended; it lasts its
    ``--time-budget`` (or its :data:`UNBUDGETED` time) plus :data:`OVERHEAD`. ``KeyError`` for a
    stage with neither.
    """
    times: dict[str, tuple[float, float]] = {}
    lane_end: dict[int, float] = {}
    for name, lane, needs, argv in RECIPES[recipe]:
        if "--time-budget" in argv:
            budget = float(argv[argv.index("--time-budget") + 1])
        else:
            budget = UNBUDGETED[BUNDLE[recipe]][name]
        start = max([lane_end.get(lane, 0.0), *(times[n][1] for n in needs)])
        times[name] = (start, start + budget + OVERHEAD)
        lane_end[lane] = times[name][1]
    return times


#: The bundle each recipe trains (several recipes may train one bundle).
BUNDLE = {"shapes": "shapes", "shapes-lineage": "shapes", "emoji": "emoji"}
DEFAULTS = {
    # DPM-Solver++(2M) 20 matches DDIM 50's fidelity and FD at 0.4x its time (bench/quality_per_compute.py).
    "shapes": {"decoder_steps": 20, "decoder_sampler": "dpmpp_2m", "upsampler_steps": [3]},
    "emoji": {"decoder_steps": 25, "upsampler_steps": [6]},
}
#: The stage whose run directory provides each component of the assembled model.
FINAL = {
    "shapes": {"clip": "clip_j", "decoder": "decoder_f", "prior": "prior", "prior_ar": "prior_ar",
               "upsampler": "upsampler_ft"},
    "shapes-lineage": {"clip": "clip_p2", "decoder": "decoder_p", "prior": "prior", "prior_ar": "prior_ar",
               "upsampler": "upsampler_ft2"},
    "emoji": {"clip": "clip", "decoder": "decoder", "prior": "prior", "prior_ar": "prior_ar",
              "upsampler": "upsampler"},
}  # fmt: skip
#: The quick evaluation that ends each recipe (after ``evaluate --model OUT/model``).
EVALS = {
    "shapes": ["--suite", "shapes", "--quick"],
    "emoji": ["--suite", "emoji", "--quick", "--data", "{out}/data", "--eval-clip", "{out}/judge/clip"],
}


@dataclass
class Stage:
    name: str
    lane: int
    needs: tuple[str, ...]
    argv: list[str]

    def run_dir(self, out: Path) -> Path:
        """The stage's ``--out`` (several stages may continue one run)."""
        return Path(self.argv[self.argv.index("--out") + 1].format(out=out))


class Runner:
    """Runs the stages of one recipe, two lanes in parallel, recording times in recipe.json."""

    def __init__(self, out: Path, stages: list[Stage], dry_run: bool) -> None:
        self.out, self.stages, self.dry_run = out, stages, dry_run
        self.lock = threading.Lock()
        self.failed: list[str] = []
        self.record_path = out / "recipe.json"
        self.record = json.loads(self.record_path.read_text()) if self.record_path.is_file() else {}
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.widen: set[str] = set()  # stages stopped to be resumed with two threads
        self.wide: set[str] = set()  # stages running on two threads

    def marker(self, name: str) -> Path:
        return self.out / f"{name}.done"

    def command(self, stage: Stage) -> list[str]:
        # The unclip of this interpreter (as `unclip`, without needing its bin/ on PATH).
        argv = [sys.executable, "-m", "unclip", "-q", *(a.format(out=self.out) for a in stage.argv)]
        run_dir = stage.run_dir(self.out)
        resumable = (run_dir / "state.pt").is_file() or (stage.name == "embed" and run_dir.is_dir())
        return [*argv, "--resume"] if resumable else argv

    def run_stage(self, stage: Stage, threads: int = 1) -> bool:
        cmd = self.command(stage)
        print(
            f"[{time.strftime('%H:%M:%S')}] {stage.name} ({threads} thread(s)): {shlex.join(cmd)}", flush=True
        )
        if self.dry_run:
            return True
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        start = time.time()
        pid_file = self.out / f"{stage.name}.pid"
        with open(self.out / f"{stage.name}.log", "a") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            pid_file.write_text(str(proc.pid))
            with self.lock:
                self.running[stage.name] = proc
                if threads > 1:
                    self.wide.add(stage.name)
            code = proc.wait()
            with self.lock:
                del self.running[stage.name]
                self.wide.discard(stage.name)
            pid_file.unlink(missing_ok=True)
        seconds = time.time() - start
        with self.lock:
            runs = self.record.setdefault(stage.name, [])
            runs.append(
                {
                    "command": shlex.join(cmd),
                    "threads": threads,
                    "exit": code,
                    "wall_seconds": round(seconds, 1),
                }
            )
            tmp = self.record_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.record, indent=2) + "\n")
            tmp.replace(self.record_path)
            widen = stage.name in self.widen
            self.widen.discard(stage.name)
        print(
            f"[{time.strftime('%H:%M:%S')}] {stage.name}: exit {code} after {seconds / 60:.1f} min",
            flush=True,
        )
        if widen and code != 0 and (stage.run_dir(self.out) / "state.pt").is_file():
            return self.run_stage(stage, threads=2)  # stopped by widen_other(): resume on both cores
        if code == 0:
            self.marker(stage.name).touch()
        return code == 0

    def widen_other(self) -> None:
        """This lane is finished: stop a training stage still running so it resumes with 2 threads."""
        with self.lock:
            dirs = {s.name: s.run_dir(self.out) for s in self.stages}
            for name, proc in self.running.items():
                if name not in self.widen | self.wide and (dirs[name] / "state.pt").is_file():
                    self.widen.add(name)
                    proc.send_signal(signal.SIGTERM)  # the trainer saves at the end of this step
                    print(f"[{time.strftime('%H:%M:%S')}] {name}: restarting on two threads", flush=True)

    def running_elsewhere(self, name: str) -> bool:
        """Whether another invocation is running this stage now (its pid file names a live process)."""
        try:
            os.kill(int((self.out / f"{name}.pid").read_text()), 0)
        except (OSError, ValueError):
            return False
        return True

    def lane(self, number: int) -> None:
        try:
            self._lane(number)
        except Exception as e:  # a lane that dies must fail the recipe, not let it assemble
            print(f"lane {number} failed: {e!r}", flush=True)
            with self.lock:
                self.failed.append(f"lane {number}")

    def _lane(self, number: int) -> None:
        selected = {s.name for s in self.stages}
        for stage in [s for s in self.stages if s.lane == number]:
            while self.running_elsewhere(stage.name):
                time.sleep(5)
            if self.marker(stage.name).is_file():
                continue
            while not all(self.marker(n).is_file() for n in stage.needs):
                missing = [
                    n for n in stage.needs
                    if not self.marker(n).is_file() and n not in selected and not self.running_elsewhere(n)
                ]  # fmt: skip
                if missing:
                    print(f"{stage.name} needs stage(s) {', '.join(missing)}: run them first", flush=True)
                    with self.lock:
                        self.failed.append(stage.name)
                    return
                if self.failed:
                    return
                time.sleep(5)
            # Every other lane's stages are done: this one has both cores from the start.
            others_done = all(self.marker(s.name).is_file() for s in self.stages if s.lane != number)
            if not self.run_stage(stage, threads=2 if others_done else 1):
                with self.lock:
                    self.failed.append(stage.name)
                return
        if not self.failed:
            self.widen_other()

    def run(self) -> bool:
        lanes = sorted({s.lane for s in self.stages})
        if self.dry_run:  # print the commands in dependency order
            for s in self.stages:
                if not self.marker(s.name).is_file():
                    self.run_stage(s)
            return True
        threads = [threading.Thread(target=self.lane, args=(n,), daemon=True) for n in lanes]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(timeout=1.0)
        return not self.failed


def assemble(out: Path, bundle: str) -> Path:
    """The bf16 model directory ``OUT/model`` from the finished stages (see :data:`FINAL`)."""
    model = out / "model"
    stages = {name: Stage(name, lane, needs, argv) for name, lane, needs, argv in RECIPES[bundle]}
    src = {part: str(stages[stage].run_dir(out)) for part, stage in FINAL[bundle].items()}
    cmd = [
        sys.executable, str(Path(__file__).with_name("assemble_model.py")), "--out", str(model),
        "--clip", src["clip"], "--decoder", src["decoder"], "--prior", src["prior"],
        "--prior-ar", src["prior_ar"], "--upsampler", src["upsampler"], "--dtype", "bf16",
        "--defaults", json.dumps(DEFAULTS[BUNDLE[bundle]]),
    ]  # fmt: skip
    subprocess.check_call(cmd)
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", choices=sorted(RECIPES))
    ap.add_argument("--out", required=True, help="folder of the stage run directories")
    ap.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    ap.add_argument("--no-eval", action="store_true", help="skip `unclip evaluate --quick` at the end")
    ap.add_argument("--stages", help="comma-separated stages to run now (default: all, then assemble)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = [Stage(name, lane, needs, argv) for name, lane, needs, argv in RECIPES[a.bundle]]
    if a.stages:
        wanted = a.stages.split(",")
        unknown = sorted(set(wanted) - {s.name for s in stages})
        if unknown:
            ap.error(
                f"unknown stage(s) {', '.join(unknown)}; the {a.bundle} recipe has {', '.join(s.name for s in stages)}"
            )
        stages = [s for s in stages if s.name in wanted]
    runner = Runner(out, stages, a.dry_run)
    if not runner.run():
        print(f"stage {', '.join(runner.failed)} failed; see {out}/<stage>.log, then run again to resume")
        return 1
    if a.dry_run and not a.stages:
        try:
            end = max(stop for _, stop in plan(a.bundle).values())
            print(f"planned: the lanes end after about {end / 60:.0f} min (before assembly and evaluation)")
        except KeyError:
            pass  # a recipe whose stages are not all budgeted or measured
    if a.dry_run or a.stages:
        return 0
    model = assemble(out, a.bundle)
    print(f"model: {model}")
    if not a.no_eval and not (out / "eval.done").is_file():
        eval_stage = Stage(
            "eval",
            1,
            (),
            ["evaluate", "--model", str(model), *EVALS[BUNDLE[a.bundle]], "--out", "{out}/eval"],
        )
        if not runner.run_stage(eval_stage, threads=2):  # the lanes are done: both cores
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
