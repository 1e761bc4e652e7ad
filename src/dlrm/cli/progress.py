"""tqdm progress bars driven by the library's progress events."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


class TrainProgress:
    """Renders ``dlrm.training.loop`` events: a bar in samples with rate and ETA."""

    def __init__(self, disable: bool = False) -> None:
        self.bar: tqdm | None = None
        self.disable = disable

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "start":
            batch = event["batch_size"]
            self.bar = tqdm(total=event["total_steps"] * batch, initial=event["step"] * batch,
                            unit="samples", unit_scale=True, dynamic_ncols=True,
                            disable=self.disable, file=sys.stderr, desc="train")
        elif kind == "step" and self.bar is not None:
            self.bar.update(event["samples"])
            if event["step"] % 50 == 0:
                self.bar.set_postfix(loss=f"{event['loss']:.4f}", refresh=False)
        elif kind == "eval" and self.bar is not None:
            self.bar.write(f"step {event['step']}: val auc {event['auc']:.4f} "
                           f"logloss {event['logloss']:.4f} acc {event['accuracy']:.4f}")
        elif kind == "end" and self.bar is not None:
            self.bar.close()
