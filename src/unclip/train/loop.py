"""The one training loop every stage uses.

A stage supplies a model, ``loss_fn(model, batch) -> (loss, metrics)``, a resumable batch stream
(:class:`unclip.train.data.BatchStream`), a :class:`~unclip.train.config.TrainConfig` and a run
directory; optionally ``export_fn(model, run_dir)`` (writes the usable model, e.g. a component
directory) and ``sample_fn(model, step, run_dir) -> metrics | None`` (sample grids, quick evals).

The loop handles autocast, gradient accumulation, clipping, EMA, the warmup-cosine schedule, a
progress bar, ``log.csv`` (+ ``eval.csv`` for what ``sample_fn`` returns), atomic checkpoints
every ``save_every`` steps, SIGTERM/SIGINT (finish the step, save, return) and resume.

Resume contract: the state restores model, EMA, optimizer, step, RNG states and the data stream's
position, so a run stopped at a checkpoint and resumed computes the same weights, bit for bit on
the same machine and thread count, as one that never stopped (tested). A kill between
checkpoints loses the steps since the last one.

Several processes (torchrun, accelerate launch; :mod:`unclip.train.distributed`): the model and
loss run inside PyTorch's DistributedDataParallel, ``batch_size`` is the global batch, rank ``r``
reads micro-batches ``r, r + W, ...`` of the global stream, and the randomness of global
micro-batch ``k`` is seeded from ``(seed, k)``, so the same micro-batches give the same update on
any number of processes. Only rank 0 writes files; the checkpoint holds every rank's RNG and data
state. The device comes from the environment (``resolve_device``); nothing names cuda.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unclip.checkpoint import CheckpointError
from unclip.nn.precision import autocast, default_precision, resolve_device
from unclip.progress import progress
from unclip.train.config import TrainConfig
from unclip.train.data import BatchStream
from unclip.train.distributed import (
    all_reduce_max,
    all_reduce_mean,
    barrier,
    dist_info,
    gather_objects,
    max_over_ranks,
    micro_batch_seed,
    wrap_ddp,
)
from unclip.train.ema import EMA
from unclip.train.optim import WarmupCosine, make_optimizer
from unclip.train.state import (
    STATE_FILE,
    capture_rng,
    cleanup_temp_files,
    load_train_state,
    restore_rng,
    save_train_state,
    seed_everything,
)

logger = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]
ExportFn = Callable[[nn.Module, Path], None]
SampleFn = Callable[[nn.Module, int, Path], "dict[str, float] | None"]

LOG_FILE = "log.csv"
EVAL_FILE = "eval.csv"
MAX_BAD_STEPS = 10


@dataclasses.dataclass
class TrainResult:
    """What a call to :meth:`Trainer.run` did.

    Attributes:
        step: optimizer steps done in total (including before a resume).
        interrupted: stopped before ``config.steps`` (a signal, :meth:`Trainer.request_stop` or ``stop_at``).
        train_seconds: wall time spent in training steps, summed over resumed sessions.
        cpu_seconds: CPU time (all threads of this process) spent in training steps, summed over
            resumed sessions; on a shared machine the fair measure of training cost.
        images_per_second: samples per second of this session's steps.
        last_metrics: averaged metrics of the last log interval.
    """

    step: int
    interrupted: bool
    train_seconds: float
    cpu_seconds: float
    images_per_second: float
    last_metrics: dict[str, float]


def is_main_process() -> bool:
    """Rank 0 (or not distributed): the only process that writes files."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class _LossModule(nn.Module):
    """``loss_fn(model, batch)`` as a module, so DistributedDataParallel sees the whole forward."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_fn(self.model, batch)


class _CsvLog:
    """Append-only CSV whose columns are fixed by the first row; truncatable to a step on resume."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fields: list[str] | None = None
        if path.is_file():
            with path.open(newline="") as f:
                header = next(csv.reader(f), None)
            self.fields = header or None

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (they belong to steps a resume will redo)."""
        if not self.path.is_file():
            return
        with self.path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if int(float(r.get("step", 0) or 0)) <= step]
        if len(keep) != len(rows) and self.fields:
            with self.path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.fields)
                w.writeheader()
                w.writerows(keep)

    def write(self, row: dict[str, Any]) -> None:
        new = self.fields is None
        if new:
            self.fields = list(row)
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


class Trainer:
    """Train ``model`` with ``loss_fn`` on ``data``; see the module docstring.

    Args:
        model: the module to train (moved to the device).
        loss_fn: ``loss_fn(model, batch) -> (scalar loss, {name: float})``; called under autocast.
        data: resumable stream of micro-batches of ``config.micro_batch_size`` samples.
        config: optimisation and cadence.
        run_dir: where state.pt, log.csv, eval.csv and exports go.
        export_fn: writes the usable model (called with EMA weights applied when EMA is on).
        sample_fn: called every ``config.sample_every`` steps (EMA weights applied, eval mode).
        extra_state: JSON-like dict stored in the checkpoint (e.g. the stage's configs).
        device: defaults to the environment's (cuda if available, else cpu).
        init_from: a component directory (e.g. an earlier run's export) whose weights start a
            fresh run: fine-tuning. Ignored on resume (the checkpoint holds the weights).
        init_target: the part of ``model`` the component's weights belong to, when the trained
            module wraps the exported one with training-only parts (the CLIP's attribute probe).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: BatchStream,
        config: TrainConfig,
        run_dir: str | Path,
        *,
        export_fn: ExportFn | None = None,
        sample_fn: SampleFn | None = None,
        extra_state: dict[str, Any] | None = None,
        device: str | torch.device | None = None,
        init_from: str | Path | None = None,
        init_target: Callable[[nn.Module], nn.Module] | None = None,
    ) -> None:
        self.config = config
        self.init_from = Path(init_from) if init_from is not None else None
        self.init_target = init_target
        self.device = resolve_device(device)
        self.precision = default_precision(self.device) if config.precision == "auto" else config.precision
        self.dist = dist_info()
        self.model = model.to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.loss_fn = loss_fn
        if config.compile:
            # In place: the module's own calls run compiled; its class, parameters and state-dict
            # keys stay as they are, so EMA, checkpoints and exports do not change.
            self.model.compile()
        self._forward = wrap_ddp(_LossModule(self.model, loss_fn), self.device)
        # fp16 needs loss scaling; bf16 and fp32 do not.
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.data = data
        self.run_dir = Path(run_dir)
        self.export_fn = export_fn
        self.sample_fn = sample_fn
        self.extra_state = extra_state or {}
        self.optimizer = make_optimizer(self.model, config)
        self.schedule = WarmupCosine.from_config(config)
        self.ema = EMA(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.step = 0
        # The schedule's end: config.steps, or fewer under a time budget (see _fit_budget).
        self.total_steps = config.steps
        self.wall_seconds = 0.0  # the loop's wall time over all sessions (for the time budget)
        self.train_seconds = 0.0
        self.cpu_seconds = 0.0
        self._stop = False
        self._bad_steps = 0
        self._data_seconds = 0.0

    # --- state -------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint. Every rank must call it (it gathers the per-rank RNG and data state)."""
        ranks = gather_objects({"rng": capture_rng(), "data": self.data.state_dict()})
        return {
            "world_size": self.dist.world_size,
            "ranks": ranks,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step,
            "train_seconds": self.train_seconds,
            "cpu_seconds": self.cpu_seconds,
            # The schedule's end as the time budget set it (None: config.steps, which a resume
            # with a larger --steps may extend).
            "budget_steps": self.total_steps if self.config.time_budget > 0 else None,
            "wall_seconds": self.wall_seconds,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "schedule": self.schedule.state_dict(),
            "rng": capture_rng(),
            "data": self.data.state_dict(),
            "train_config": self.config.to_dict(),
            "extra": self.extra_state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.cpu_seconds = float(state.get("cpu_seconds", 0.0))
        if self.config.time_budget > 0 and state.get("budget_steps") is not None:
            self.total_steps = min(int(state["budget_steps"]), self.config.steps)
            self.schedule.total = max(self.total_steps, 1)
        self.wall_seconds = float(state.get("wall_seconds", 0.0))
        mine = state["ranks"][self.dist.rank] if state.get("ranks") else state
        self.data.load_state_dict(mine["data"])
        restore_rng(mine["rng"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def save(self) -> None:
        """Write state.pt atomically, then export the usable model (rank 0 writes; all ranks call)."""
        state = self.state_dict()
        if is_main_process():
            save_train_state(self.state_path, state)
            self.export()
        barrier()

    def export(self) -> None:
        if self.export_fn is None or not is_main_process():
            return
        with self._eval_weights() as m:
            self.export_fn(m, self.run_dir)

    def try_resume(self) -> bool:
        """Load ``run_dir/state.pt`` if present. Returns whether a checkpoint was loaded."""
        if is_main_process() and self.run_dir.is_dir():
            cleanup_temp_files(self.run_dir)
        barrier()
        if not self.state_path.is_file():
            return False
        state = load_train_state(self.state_path)
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.dist.world_size:
            raise CheckpointError(
                f"{self.state_path} was written by {saved_world} process(es) and this job has "
                f"{self.dist.world_size}: resume with the same number"
            )
        try:
            self.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError) as e:
            raise CheckpointError(
                f"{self.state_path} does not fit this model/optimizer/data ({str(e).splitlines()[0]}); "
                "use a new run directory"
            ) from None
        _CsvLog(self.run_dir / LOG_FILE).truncate_after(self.step)
        _CsvLog(self.run_dir / EVAL_FILE).truncate_after(self.step)
        logger.info("resumed from %s at step %d", self.state_path, self.step)
        return True

    def load_init_weights(self, directory: Path) -> None:
        """Start from the weights of a component directory (strict, but see ``new_zero_init_keys``)."""
        from unclip.checkpoint import WEIGHTS_FILE, load_state_dict, read_component_header

        header = read_component_header(directory)
        state = load_state_dict(directory / header.get("weights", WEIGHTS_FILE))
        target = self.init_target(self.model) if self.init_target is not None else self.model
        # Strict, except for parameters a module adds zero-initialised on top of an older model
        # (``new_zero_init_keys``): those may be missing and keep their zeros.
        optional = {
            f"{name}.{key}" if name else key
            for name, module in target.named_modules()
            if hasattr(module, "new_zero_init_keys")
            for key in module.new_zero_init_keys()
        }
        try:  # every other key and shape must match (copy_ converts the dtype)
            missing, unexpected = target.load_state_dict(state, strict=False)
            bad = [k for k in missing if k not in optional]
            if bad or unexpected:
                raise RuntimeError(f"missing keys {bad[:5]}, unexpected keys {list(unexpected)[:5]}")
        except RuntimeError as e:
            reason = " ".join(str(e).split())[:300]
            raise CheckpointError(
                f"--init-from {directory}: weights do not fit this model ({reason}); use the same model config"
            ) from None
        if self.ema is not None:
            self.ema = EMA(self.model, self.config.ema_decay)
        logger.info("initialised from %s", directory)

    def request_stop(self) -> None:
        """Finish the current step, save and return from :meth:`run` (also what signals do)."""
        self._stop = True

    # --- helpers -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _eval_weights(self) -> Iterator[nn.Module]:
        was_training = self.model.training
        self.model.eval()
        try:
            if self.ema is not None:
                with self.ema.applied(self.model) as m:
                    yield m
            else:
                yield self.model
        finally:
            self.model.train(was_training)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, _frame: Any) -> None:
            logger.warning("signal %d: finishing this step, saving, then stopping", signum)
            self._stop = True
            # A second signal stops immediately; the atomic save keeps the last checkpoint intact.
            signal.signal(signum, previous[signum])

        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _train_step(self) -> tuple[float, float, dict[str, float]]:
        """One optimizer step over ``grad_accum`` micro-batches. Returns (loss, grad norm, metrics)."""
        cfg = self.config
        lr = self.schedule.apply(self.optimizer, self.step)
        total = 0.0
        metrics: dict[str, float] = {}
        world, rank = self.dist.world_size, self.dist.rank
        for a in range(cfg.grad_accum):
            # Global micro-batch k: its data (the stream's share for this rank) and its randomness
            # are the same whichever process and accumulation slot computes it.
            k = (self.step * cfg.grad_accum + a) * world + rank
            torch.manual_seed(micro_batch_seed(cfg.seed, k))
            t0 = time.perf_counter()
            batch = next(self.data)
            self._data_seconds += time.perf_counter() - t0
            last = a == cfg.grad_accum - 1
            sync = self._forward.no_sync() if (world > 1 and not last) else contextlib.nullcontext()
            with sync:
                with autocast(self.device, self.precision):
                    loss, m = self._forward(batch)
                scaled = loss.float() / cfg.grad_accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += loss.item() / cfg.grad_accum
            for key, v in m.items():
                metrics[key] = metrics.get(key, 0.0) + float(v) / cfg.grad_accum
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if cfg.grad_clip > 0:
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        else:
            gnorm = float(
                torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
            )
        # Every rank takes the same decision (skip a bad step; stop on a signal to any rank).
        bad, self._stop = all_reduce_max(
            [not (math.isfinite(total) and math.isfinite(gnorm)), self._stop], self.device
        )
        if self.scaler is not None:
            # The scaler skips steps with inf/NaN gradients and lowers its scale: that is not an error.
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update(self.model)
        elif not bad:
            self.optimizer.step()
            self._bad_steps = 0
            if self.ema is not None:
                self.ema.update(self.model)
        else:
            self._bad_steps += 1
            logger.warning(
                "step %d: non-finite loss/gradient (%s, %s); update skipped", self.step, total, gnorm
            )
            if self._bad_steps >= MAX_BAD_STEPS:
                raise FloatingPointError(
                    f"{MAX_BAD_STEPS} non-finite steps in a row at step {self.step}; lower the lr or use fp32"
                )
        self.optimizer.zero_grad(set_to_none=True)
        metrics["lr"] = lr
        return total, gnorm, metrics

    def _fit_budget(self, mark: tuple[int, float] | None, bar: Any) -> None:
        """Under ``config.time_budget``, end the schedule at the step that fits the budget.

        Out of time: stop now. Otherwise, from the step rate since ``mark``, re-aim
        ``total_steps`` (never beyond ``config.steps``) at step 25 after the mark and then every
        100 steps, until 90 % of the way (the rate moves when other jobs share the machine), so the
        cosine decay finishes close to the budget and the last steps keep a settled schedule.
        """
        budget = self.config.time_budget
        # Every rank decides from the slowest rank's clock, so all stop at the same step.
        wall = max_over_ranks([self.wall_seconds], self.device)[0]
        if wall >= budget:
            self.total_steps = self.step  # ends the loop: the budget is the run's end, not an interruption
            return
        if mark is None or self.step >= 0.9 * self.total_steps:
            return
        since = self.step - mark[0]
        if since < 25 or (since - 25) % 100:
            return
        rate = since / max(wall - mark[1], 1e-9)
        # Keep 2 % of the budget for the final save and export.
        fit = self.step + int(rate * max(budget * 0.98 - wall, 0.0))
        total = max(min(fit, self.config.steps), self.step + 1)
        if total != self.total_steps:
            logger.info("time budget %.0f s: schedule ends at step %d (%.2f steps/s)", budget, total, rate)
            self.total_steps = total
            self.schedule.total = total
            bar.total = total
            bar.refresh()

    # --- the loop ----------------------------------------------------------------------------
    def run(self, resume: bool = True, stop_at: int | None = None) -> TrainResult:
        """Train up to ``config.steps``. With ``resume``, continue from run_dir/state.pt if present.

        ``stop_at`` saves and returns at that step instead (an interrupted result), leaving the
        learning-rate schedule as if the run went on: a resume continues it exactly.
        """
        cfg = self.config
        if is_main_process():
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if not (resume and self.try_resume()):
            seed_everything(cfg.seed)
            if self.init_from is not None:
                self.load_init_weights(self.init_from)
        log = _CsvLog(self.run_dir / LOG_FILE)
        eval_log = _CsvLog(self.run_dir / EVAL_FILE)
        self.model.train()
        start_step, session_seconds = self.step, 0.0
        acc: dict[str, float] = {}
        n_acc = 0
        last: dict[str, float] = {}
        quiet_rank = {} if is_main_process() else {"disable": True}
        bar = progress(total=self.total_steps, initial=self.step, desc="train", unit="step", **quiet_rank)
        data0 = self._data_seconds
        loop_t0, wall0 = time.perf_counter(), self.wall_seconds
        mark: tuple[int, float] | None = None  # (step, time) the budget's rate is measured from
        with self._signals(), bar:
            while self.step < (self.total_steps if stop_at is None else min(self.total_steps, stop_at)):
                t0, c0 = time.perf_counter(), time.process_time()
                loss, gnorm, metrics = self._train_step()
                dt = time.perf_counter() - t0
                session_seconds += dt
                self.train_seconds += dt
                self.cpu_seconds += time.process_time() - c0
                self.step += 1
                self.wall_seconds = wall0 + time.perf_counter() - loop_t0
                if cfg.time_budget > 0:
                    if self.step - start_step == 5:  # the first steps pay for warm-up: not counted
                        mark = (self.step, self.wall_seconds)
                    self._fit_budget(mark, bar)
                for k, v in {"loss": loss, "grad_norm": gnorm, **metrics}.items():
                    acc[k] = acc.get(k, 0.0) + v
                n_acc += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    last = {k: v / n_acc for k, v in acc.items()}
                    last["loss"] = all_reduce_mean([last["loss"]], self.device)[0]
                    # Share of the step time spent waiting for data (this rank's loader).
                    last["data_wait"] = (self._data_seconds - data0) / max(session_seconds, 1e-9)
                    ips = cfg.batch_size * (self.step - start_step) / max(session_seconds, 1e-9)
                    row = {
                        "step": self.step,
                        "train_seconds": self.train_seconds,
                        "cpu_seconds": self.cpu_seconds,
                        "images_per_s": ips,
                        **last,
                    }
                    if is_main_process():
                        log.write(row)
                    bar.set_postfix(loss=f"{last['loss']:.4f}", ips=f"{ips:.0f}")
                    acc, n_acc = {}, 0
                sample_due = cfg.sample_every and self.step % cfg.sample_every == 0
                if sample_due and self.sample_fn is not None and is_main_process():
                    # Sampling must not move the training RNG streams, or a resumed run would differ.
                    rng = capture_rng()
                    with self._eval_weights() as m, torch.no_grad():
                        res = self.sample_fn(m, self.step, self.run_dir)
                    restore_rng(rng)
                    if res and is_main_process():
                        eval_log.write(
                            {
                                "step": self.step,
                                "train_seconds": self.train_seconds,
                                "cpu_seconds": self.cpu_seconds,
                                **res,
                            }
                        )
                if self._stop:
                    break
                if self.step % cfg.save_every == 0 and self.step < self.total_steps:
                    self.save()
            interrupted = self.step < self.total_steps  # a signal, request_stop() or stop_at
            self.save()
        ips = cfg.batch_size * (self.step - start_step) / max(session_seconds, 1e-9)
        return TrainResult(self.step, interrupted, self.train_seconds, self.cpu_seconds, ips, last)


def train_loop(
    model: nn.Module,
    loss_fn: LossFn,
    data: BatchStream,
    config: TrainConfig,
    run_dir: str | Path,
    resume: bool = True,
    **kwargs: Any,
) -> TrainResult:
    """Functional form of ``Trainer(...).run(resume)``; keyword arguments go to :class:`Trainer`."""
    return Trainer(model, loss_fn, data, config, run_dir, **kwargs).run(resume=resume)
