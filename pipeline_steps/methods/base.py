"""The method interface every method file implements (and the defaults most of them keep).

A method is the supernet it trains (one training job is shared by every method whose supernet
settings agree), the stages it runs on that supernet's state, and its rule for reading an
architecture out of a history record.
"""
from __future__ import annotations

import torch

from ..spaces import Space
from ..supernet.state import SupernetState, mixing_weights


class Method:
    """Defaults: a bilevel DARTS supernet, no stages after it, magnitude derive from the last record."""

    params_key = "darts"         # the params section method.<params_key> this method reads

    def __init__(self, name: str):
        self.name = name

    # ----------------------------------------------------------------- params
    def params(self, cfg: dict) -> dict:
        return {k: v for k, v in cfg["method"][self.params_key].items() if k != "presets"}

    def preset(self, cfg: dict, space: str) -> dict:
        """The supernet overrides of the selected preset for this space ({} for `shared`)."""
        section = cfg["method"][self.params_key]
        name = section.get("preset", "shared")
        return {} if name == "shared" else section["presets"][name].get(space, {})

    def load_state(self, state: SupernetState, ckpt: dict) -> None:
        """Load a checkpoint of this method into a fresh state (a method that reshapes the network,
        e.g. SE-NAS's expansion, rebuilds that shape first)."""
        state.load_state_dict(ckpt)

    def check(self, cfg: dict) -> None:
        """Checks of this method's params the schema cannot express; raise one NasflowError."""

    # ----------------------------------------------------------------- supernet
    def supernet_mode(self, cfg: dict) -> str:
        return "bilevel"

    def supernet(self, cfg: dict, space: str) -> dict:
        """Train mode, the `search` / `space` settings that differ from the shared ones, and how many
        first epochs keep alpha frozen (`alpha_warmup`, 0: none)."""
        preset = self.preset(cfg, space)
        return {"mode": self.supernet_mode(cfg), "search": preset.get("search", {}), "space": preset.get("space", {}),
                "alpha_warmup": 0}

    # ----------------------------------------------------------------- stages after the supernet
    def stages(self, cfg: dict, space: str) -> list[str]:
        return []

    def stage_settings(self, cfg: dict, space: str, stage: str) -> dict:
        return {}

    def prepare_stage(self, stage: str, state: SupernetState, settings: dict) -> None:
        """Replace what the stage trains with (e.g. a tuning optimiser) before its resume point is loaded."""

    def run_stage(self, stage: str, run, settings: dict) -> None:
        raise NotImplementedError(f"{self.name} has no stage {stage!r}")

    # ----------------------------------------------------------------- derive
    def derive_settings(self, cfg: dict, space: str) -> dict:
        return {"allow_none": self.params(cfg).get("allow_none_in_derive", True)}

    def select_record(self, space: Space, history: list[dict], settings: dict) -> int:
        """Index of the history record the final architecture is read from."""
        return len(history) - 1

    def derive(self, space: Space, record: dict, settings: dict):
        """Magnitude: on every edge the alive op with the largest softmax(alpha)."""
        return magnitude_derive(space, record, settings["allow_none"])

    def criteria(self, settings: dict) -> dict[str, dict]:
        """Selection rules whose per-epoch architectures the lookup traces (label -> derive settings)."""
        return {self.name: settings}


def record_mask(record: dict) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(m, dtype=torch.bool) for k, m in record["mask"].items()}


def magnitude_derive(space: Space, record: dict, allow_none: bool):
    mask = record_mask(record)
    weights = {k: mixing_weights(torch.as_tensor(a), mask[k], "softmax") for k, a in record["alpha"].items()}
    return space.derive(weights, mask, allow_none)
