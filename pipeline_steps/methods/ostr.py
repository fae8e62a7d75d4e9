"""OStr-DARTS (operation strength, METHODS.md 6): the DARTS supernet, read out by gradient statistics.

  1. supernet  The DARTS supernet, unchanged (shared with DARTS and DARTS-PT when settings agree).
               Every alpha step adds |dL/dalpha|, |dL/dalpha|/theta and |dL/dtheta| of its batch
               to per-epoch sums (scores/ostr.py): no extra forward or backward pass.
  2. derive    op*_e = argmax_{o != none} OStr[e, o] of the final epoch (or of the epoch where the
               architecture has been unchanged for `early_stop_epochs` epochs: Algorithm 1's early
               stop, found in the history, so the supernet job stays shared). DARTS space: keep the
               two inputs of each node with the largest max_{o != none} OStr, as the DARTS parse does.
  3. lookup    Also traces the architecture every criterion selects after every epoch (magnitude,
               OStr, OStr*, naive pruning): the paper's trajectory figures.

Variants: `ostr` (OStr-DARTS, mean |dL/dalpha|), `ostr_star` (OStr-DARTS*, the per-batch division by
softmax(alpha)), `ostr_naive` (Table V's naive pruning baseline, `naive_pruning: gw | theta_gw`).
"""
from __future__ import annotations

import torch

from ..common.errors import NasflowError
from ..spaces import Space
from .base import Method, magnitude_derive, record_mask

CRITERIA = ("magnitude", "ostr", "ostr_star", "naive")


class OStr(Method):
    params_key = "ostr"

    def __init__(self, name: str, criterion: str):
        super().__init__(name)
        self.criterion = criterion

    def derive_settings(self, cfg: dict, space: str) -> dict:
        p = self.params(cfg)
        return {"criterion": self.criterion, "naive_pruning": p["naive_pruning"],
                "early_stop_epochs": p["early_stop_epochs"], "allow_none": False}

    def derive(self, space: Space, record: dict, settings: dict):
        criterion = settings["criterion"]
        if criterion == "magnitude":
            return magnitude_derive(space, record, allow_none=True)
        if "scores" not in record:
            raise NasflowError(f"epoch {record.get('epoch')} has no operation-strength statistics: "
                               f"{self.name} needs a supernet trained bilevel (alpha steps)")
        key = settings["naive_pruning"] if criterion == "naive" else criterion
        scores = {k: torch.tensor(v, dtype=torch.float64) for k, v in record["scores"][key].items()}
        return space.derive(scores, record_mask(record), False)  # never `none` (the code slices it off)

    def select_record(self, space: Space, history: list[dict], settings: dict) -> int:
        """Early stop (Algorithm 1): the first epoch whose architecture equals that of the previous
        `early_stop_epochs` epochs; the last epoch when off or never stable."""
        patience = settings["early_stop_epochs"]
        if patience:
            archs = [str(self.derive(space, r, settings)) for r in history]
            for t in range(patience, len(archs)):
                if len(set(archs[t - patience:t + 1])) == 1:
                    return t
        return len(history) - 1

    def criteria(self, settings: dict) -> dict[str, dict]:
        return {c: {**settings, "criterion": c} for c in CRITERIA}
