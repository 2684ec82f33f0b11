"""Retrain the shapes suite's independent evaluation CNN and write its weights.

    OMP_NUM_THREADS=1 python scripts/train_eval_features.py [--seed 0] [--minutes 4] [--out DIR]

Renders fresh scenes of every composition (held-out ones included) at 32 px with their exact
labels, trains :class:`unclip.eval.features.ShapesFeatureNet` on one CPU thread for at most
``--minutes`` of optimisation (seeded; the step count reached depends on the machine's speed),
measures held-out accuracy on 2,000 other scenes and writes ``model.safetensors`` +
``config.json`` (default: the shipped ``src/unclip/eval/weights/shapes-features/``).
See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json

import torch

from unclip.eval.features import WEIGHTS_DIR, save_features, train_features


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=4.0, help="optimisation time budget")
    p.add_argument("--num-train", type=int, default=20_000)
    p.add_argument("--num-test", type=int, default=2_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(WEIGHTS_DIR))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, record = train_features(
        seed=args.seed,
        num_train=args.num_train,
        num_test=args.num_test,
        max_seconds=60.0 * args.minutes,
    )
    out = save_features(model, record, args.out)
    print(json.dumps(record["test_accuracy"], indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
