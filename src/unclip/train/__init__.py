"""Training: the shared loop (:mod:`unclip.train.loop`) and one module per stage.

Nothing in the library imports this package; the CLI and scripts do.
"""

from __future__ import annotations

from unclip.train.config import TrainConfig
from unclip.train.loop import Trainer, TrainResult, train_loop

__all__ = ["TrainConfig", "TrainResult", "Trainer", "train_loop"]
