"""Training an upsampler (``unclip train upsampler``) with the shared loop [paper §2.1, App. C].

Each training example is a random crop, a quarter of the target side (Tab. 3 "crop fraction
0.25"), of a high-resolution image, paired with the same region of its low-resolution version
after the stage's corruption (blur or BSR-like, :mod:`unclip.models.degrade`) and resizing to the
target size; the conditioning crop is then noise-augmented at a random level that the network is
told. Several crops are cut from each image (``crops_per_image``) because rendering or decoding a
high-resolution image costs more than the network does on a crop.

On the shapes world the low-resolution image is the scene rendered at the low resolution (what
the decoder learns to produce), otherwise the high-resolution image area-downsampled.

Every ``sample_every`` steps held-out low-res renders are upsampled at full size with the default
few-step DDIM sampler: a grid (bicubic / ours / truth) goes to ``RUN/samples/``, and PSNR against
the true high-res render, PSNR of plain bicubic, and (shapes) the oracle accuracy of the result go
to ``RUN/eval.csv``. The usable model is ``RUN/upsampler/``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unclip.checkpoint import save_component
from unclip.errors import UserError
from unclip.models.degrade import degrade
from unclip.train.config import TrainConfig
from unclip.train.data import BatchStream, describe_data, open_data
from unclip.train.decoder import (
    EVAL_SEED_OFFSET,
    SAMPLES_DIR,
    ShapesPairs,
    check_fresh,
    oracle_metrics,
    save_grid,
    write_run_record,
)
from unclip.train.loop import Trainer, TrainResult

logger = logging.getLogger(__name__)

EXPORT_DIR = "upsampler"


class CropBatches:
    """(high-res crop, degraded + resized low-res crop) pairs from an image stream; resumable.

    Args:
        inner: a stream of batches with ``image`` (N, 3, S, S) at the target size and, for shapes,
            ``image_<low>`` renders at the low resolution.
        upsampler: the model (for its config and resize filter).
        crops_per_image: crops cut from each image; the batch holds N * crops_per_image crops.
    """

    def __init__(self, inner: BatchStream, upsampler: Any, crops_per_image: int) -> None:
        self.inner, self.model, self.k = inner, upsampler, crops_per_image
        self.batch_size = inner.batch_size * crops_per_image

    def __iter__(self) -> CropBatches:
        return self

    @torch.no_grad()
    def __next__(self) -> dict[str, torch.Tensor]:
        cfg = self.model.config
        batch = next(self.inner)
        hi = batch["image"].float()
        if hi.shape[-1] != cfg.target_size or hi.shape[-2] != cfg.target_size:
            raise UserError(f"expected {cfg.target_size} px training images, got {tuple(hi.shape[-2:])}")
        lo = batch.get(f"image_{cfg.low_res_size}")
        if lo is None:
            lo = F.interpolate(hi, size=cfg.low_res_size, mode="area")
        # The corruption hits the low-res image itself, before resizing (paper App. C).
        cond = self.model.resize(
            degrade(lo.float(), cfg.degradation, blur_sigma=cfg.blur_sigma), cfg.target_size
        )
        n, c, s = hi.shape[0], cfg.crop_size, cfg.target_size
        # Random crop offsets from the global RNG (captured in checkpoints, so resumes replay them).
        ys = torch.randint(0, s - c + 1, (n * self.k,))
        xs = torch.randint(0, s - c + 1, (n * self.k,))
        src = torch.arange(n).repeat_interleave(self.k)
        # One gather for all crops: rows/cols index grids of shape (N*k, c).
        rows = (ys[:, None] + torch.arange(c))[:, :, None]
        cols = (xs[:, None] + torch.arange(c))[:, None, :]
        hi_c = hi.permute(0, 2, 3, 1)[src[:, None, None], rows, cols].permute(0, 3, 1, 2)
        lo_c = cond.permute(0, 2, 3, 1)[src[:, None, None], rows, cols].permute(0, 3, 1, 2)
        return {"image": hi_c.contiguous(), "low_res": lo_c.contiguous()}

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


def upsampler_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """The shared loop's ``loss_fn``: noise-augment the condition at a random level, diffusion loss."""
    device = next(model.parameters()).device
    cfg = model.config  # type: ignore[attr-defined]
    diffusion = model.diffusion  # type: ignore[attr-defined]
    image, base = batch["image"].to(device), batch["low_res"].to(device)
    b = image.shape[0]
    level = torch.randint(0, cfg.max_noise_level + 1, (b,), device=device)
    cond = model.augment(base, level)  # type: ignore[operator]
    t = diffusion.sample_timesteps(b, device=device)
    out = diffusion.training_losses(
        model,
        model.to_target(image, base),  # type: ignore[operator]
        t,
        model_kwargs={"low_res": cond, "noise_level": level},
        loss_weighting=cfg.loss_weighting,
        min_snr_gamma=cfg.min_snr_gamma,
    )
    return out["loss"].mean(), {"mse": float(out["mse"].detach().mean())}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR in dB of images in [-1, 1] (computed on [0, 1] pixels, 8-bit rounded)."""
    qa = ((a.clamp(-1, 1) + 1) * 127.5).round() / 255.0
    qb = ((b.clamp(-1, 1) + 1) * 127.5).round() / 255.0
    mse = ((qa - qb) ** 2).flatten(1).mean(1).clamp(min=1e-10)
    return float((10 * torch.log10(1.0 / mse)).mean())


def upsampler_eval_batch(data: str, cfg: Any, n: int, seed: int) -> dict[str, Any]:
    """Held-out (low-res, high-res) pairs: shapes renders from an unused seed, else the data's first."""
    if describe_data(data) == "shapes":
        batch = next(ShapesPairs(cfg.target_size, [cfg.low_res_size], n, seed=seed + EVAL_SEED_OFFSET))
        return {"low_res": batch[f"image_{cfg.low_res_size}"], "image": batch["image"], "spec": batch["spec"]}
    batch = next(open_data(data, cfg.target_size, n, seed=seed + 1))
    return {
        "low_res": F.interpolate(batch["image"], size=cfg.low_res_size, mode="area"),
        "image": batch["image"],
    }


@torch.no_grad()
def evaluate_upsampler(
    model: nn.Module, pairs: dict[str, Any], steps: int | str = 27, noise_level: int = 0, seed: int = 0
) -> tuple[dict[str, float], torch.Tensor]:
    """PSNR (ours and bicubic) and, with specs, oracle accuracy of ours and of bicubic.

    Returns:
        (metrics, upsampled images (N, 3, S, S)).
    """
    gen = torch.Generator().manual_seed(seed)
    out = model.sample(pairs["low_res"], steps=steps, noise_level=noise_level, generator=gen)  # type: ignore[operator]
    size = pairs["image"].shape[-1]
    bicubic = F.interpolate(pairs["low_res"], size=size, mode="bicubic", align_corners=False).clamp(-1, 1)
    metrics = {"psnr": psnr(out, pairs["image"]), "psnr_bicubic": psnr(bicubic, pairs["image"])}
    if "spec" in pairs:
        metrics.update({f"oracle_{k}": v for k, v in oracle_metrics(out, pairs["spec"]).items()})
        metrics.update({f"bicubic_{k}": v for k, v in oracle_metrics(bicubic, pairs["spec"]).items()})
    return metrics, out


def make_sample_fn(pairs: dict[str, Any], steps: int | str, grid_columns: int = 8) -> Any:
    """The loop's ``sample_fn``: grid rows bicubic / ours / truth, plus PSNR and oracle metrics."""

    def sample_fn(model: nn.Module, step: int, run_dir: Path) -> dict[str, float]:
        metrics, out = evaluate_upsampler(model, pairs, steps)
        k = min(grid_columns, out.shape[0])
        size = out.shape[-1]
        bicubic = F.interpolate(pairs["low_res"][:k], size=size, mode="bicubic", align_corners=False)
        save_grid([bicubic, out[:k], pairs["image"][:k]], run_dir / SAMPLES_DIR / f"step-{step:06d}.png")
        return metrics

    return sample_fn


def train_upsampler(
    model: dict[str, Any],
    train_config: TrainConfig,
    data: str,
    run_dir: str | Path,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    init_from: str | Path | None = None,
    crops_per_image: int = 4,
    eval_samples: int = 16,
    sample_steps: int | str = 27,
    gradient_checkpointing: bool = False,
    num_workers: int = 0,
    device: str | None = None,
) -> TrainResult:
    """Train an upsampler into ``run_dir`` (see the module docstring).

    Args:
        model: the :class:`~unclip.models.upsampler.UpsamplerConfig` dict.
        train_config: optimisation and cadence; ``batch_size`` counts crops.
        data: a ``--data`` spec; images are brought to the target size.
        run_dir: the run directory.
        resume: continue the run in ``run_dir``.
        init_from: a component directory whose weights start a fresh run (fine-tuning).
        stop_at: save and stop at this step (the schedule still spans all the steps).
        crops_per_image: crops per high-resolution image (must divide the micro-batch).
        eval_samples: held-out images upsampled at each ``sample_every``.
        sample_steps: sampler steps for those.
        gradient_checkpointing: trade compute for memory in the UNet.
        num_workers: data loader workers (folders and shards).
        device: default from the environment.
    """
    from unclip.models.upsampler import Upsampler, UpsamplerConfig

    run_dir = Path(run_dir)
    check_fresh(run_dir, resume)
    config = UpsamplerConfig.from_dict(model)
    mb = train_config.micro_batch_size
    if crops_per_image < 1 or mb % crops_per_image:
        raise UserError(f"--crops-per-image {crops_per_image} must divide the micro-batch size {mb}")
    torch.manual_seed(train_config.seed)
    up = Upsampler(config)
    up.unet.enable_gradient_checkpointing(gradient_checkpointing)
    n_img = mb // crops_per_image
    if describe_data(data) == "shapes":
        inner: BatchStream = ShapesPairs(
            config.target_size, [config.low_res_size], n_img, seed=train_config.seed
        )
    else:
        inner = open_data(data, config.target_size, n_img, seed=train_config.seed, num_workers=num_workers)
    stream = CropBatches(inner, up, crops_per_image)
    record = {"stage": "upsampler", "model": config.to_dict(), "train": train_config.to_dict(), "data": data}
    write_run_record(run_dir, record, resume)
    sample_fn = None
    if train_config.sample_every and eval_samples > 0:
        sample_fn = make_sample_fn(
            upsampler_eval_batch(data, config, eval_samples, train_config.seed), sample_steps
        )

    def export(m: nn.Module, out: Path) -> None:
        save_component(m, config, "upsampler", out / EXPORT_DIR, extra={"data": data})

    logger.info(
        "upsampler: %.2fM parameters, %d -> %d px, crops %d px",
        sum(p.numel() for p in up.parameters()) / 1e6,
        config.low_res_size,
        config.target_size,
        config.crop_size,
    )
    trainer = Trainer(
        up,
        upsampler_loss,
        stream,
        train_config,
        run_dir,
        export_fn=export,
        sample_fn=sample_fn,
        device=device,
        init_from=init_from,
    )
    return trainer.run(resume=resume, stop_at=stop_at)


__all__ = ["CropBatches", "evaluate_upsampler", "psnr", "train_upsampler", "upsampler_loss"]
