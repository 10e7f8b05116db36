"""DeiT distillation loss (hard or soft) against a frozen teacher."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DistillationLoss"]


class DistillationLoss(nn.Module):
    """DeiT distillation: `(1 - alpha) * base(out, y) + alpha * distill(out_dist, teacher(x))`.

    soft: KL(student_dist / tau || teacher / tau) * tau^2 (sum over classes, mean over the batch);
    hard: cross-entropy of `out_dist` against the teacher's argmax. A model that returns a single output
    (no distillation head) is distilled through that output.
    """

    def __init__(self, base: nn.Module, teacher: nn.Module, kind: str, alpha: float, tau: float):
        super().__init__()
        if kind not in ("soft", "hard"):
            raise ValueError(f"kind must be 'soft' or 'hard', got {kind!r}")
        self.base, self.teacher, self.kind, self.alpha, self.tau = base, teacher, kind, alpha, tau

    def forward(self, x: torch.Tensor, outputs, target: torch.Tensor) -> torch.Tensor:
        out, out_dist = outputs if isinstance(outputs, (tuple, list)) else (outputs, outputs)
        base = self.base(out, target)
        with torch.no_grad():
            t = self.teacher(x).float()
        out_dist = out_dist.float()
        if self.kind == "soft":
            T = self.tau
            dist = F.kl_div(F.log_softmax(out_dist / T, dim=1), F.log_softmax(t / T, dim=1), reduction="sum",
                            log_target=True) * (T * T) / out_dist.shape[0]
        else:
            dist = F.cross_entropy(out_dist, t.argmax(dim=1))
        return base * (1 - self.alpha) + dist * self.alpha

