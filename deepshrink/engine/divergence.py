"""Divergence is an error, not a model: the training loop's watch on its own loss and accuracy.

A run whose task loss turns non-finite, or whose loss over the last `window` steps stays far above
the chance loss ln(classes), or whose training accuracy over that window is still at chance once a
share of the budget has passed, is stopped with a `UserError` naming the likely cause and the
setting to change; the CLI prints it as one line and exits 2, and no model file is written.

Example::

    watch = DivergenceWatch(total_steps=469)
    watch.update(step, loss=2.31, correct=12, seen=128, num_classes=10)   # raises when diverged
"""
from __future__ import annotations

import math
from collections import deque

from ..errors import UserError

HINT = ("lower train.lr, or check the recipe's activation range (e.g. dorefa params.act_range=1.0 "
        "on a network without BatchNorm)")


class DivergenceWatch:
    """Checks a rolling window of training steps once `after` of the budget has passed.

    `loss_factor`: the window's mean task loss may not exceed `loss_factor * ln(classes)` (chance loss).
    `chance_factor`: the window's accuracy must exceed `chance_factor / classes`.
    Both checks need at least `min_steps` steps in the window, so tiny runs are never judged on noise.
    """

    def __init__(self, total_steps: int, after: float = 0.25, window: int = 50, min_steps: int = 50,
                 loss_factor: float = 2.0, chance_factor: float = 1.5):
        self.start_step = int(after * total_steps)
        self.total_steps = total_steps
        self.min_steps, self.loss_factor, self.chance_factor = min_steps, loss_factor, chance_factor
        self.recent: deque[tuple[float, int, int]] = deque(maxlen=window)  # (loss * seen, correct, seen)

    def update(self, step: int, loss: float, correct: int, seen: int, num_classes: int) -> None:
        if not math.isfinite(loss):
            raise UserError(f"training diverged: the loss is {loss} at step {step}; {HINT}")
        self.recent.append((loss * seen, correct, seen))
        if step < self.start_step or len(self.recent) < self.min_steps or num_classes < 2:
            return
        seen_all = sum(r[2] for r in self.recent)
        mean_loss = sum(r[0] for r in self.recent) / seen_all
        accuracy = sum(r[1] for r in self.recent) / seen_all
        chance_loss = math.log(num_classes)
        where = f"over the last {len(self.recent)} steps (step {step} of {self.total_steps})"
        if mean_loss > self.loss_factor * chance_loss:
            raise UserError(f"training diverged: mean loss {mean_loss:.2f} {where} is far above chance "
                            f"(ln {num_classes} = {chance_loss:.2f}); {HINT}")
        if accuracy <= self.chance_factor / num_classes:
            raise UserError(f"training diverged: training accuracy {100 * accuracy:.1f}% {where} is at chance "
                            f"({100 / num_classes:.1f}%); {HINT}")
