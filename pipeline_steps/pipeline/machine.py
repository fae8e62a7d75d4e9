"""Machine settings: where the data and the tracking server are, which device, how many cores
and GPUs. They change no result, so they live apart from the DVC-tracked parameters:
params/machine.yaml (defaults, tracked), params/local.yaml (this machine, git-ignored), then
NASFLOW_* environment variables. Parameters passed explicitly (`--config`) win over all three.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml

from ..common.errors import NasflowError

MACHINE_FILE = "machine.yaml"
LOCAL_FILE = "local.yaml"

# environment variable -> key path; values are read as YAML scalars (true, 4, null).
ENVIRONMENT = {
    "NASFLOW_DATA_ROOT": ("data", "root"),
    "NASFLOW_DATA_SOURCE": ("data", "source"),
    "NASFLOW_DATA_DOWNLOAD": ("data", "download"),
    "NASFLOW_TRACKING_URI": ("tracking", "uri"),
    "NASFLOW_TRACKING_ENABLED": ("tracking", "enabled"),
    "NASFLOW_DEVICE": ("device",),
    "NASFLOW_CORES": ("cores",),
    "NASFLOW_GPUS": ("gpus",),
    "NASFLOW_GPU_SLOTS": ("gpu_slots",),
}
# Values a string-typed setting keeps as text although YAML would read them otherwise.
_TEXT_KEYS = {("data", "root"), ("tracking", "uri"), ("data", "source"), ("device",)}


def _read(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise NasflowError(f"{path}{where} is not valid YAML: {getattr(e, 'problem', None) or e}") from None
    except OSError as e:
        raise NasflowError(f"cannot read {path}: {e.strerror}") from None
    if not isinstance(data, dict):
        raise NasflowError(f"{path} must hold a mapping of settings (key: value lines), not {type(data).__name__}")
    return data


def deep_merge(base: dict, override: dict) -> dict:
    """`override` over `base`, section by section (the params files and machine settings layer this way)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def machine_keys(params_dir: str | os.PathLike = "params") -> set[tuple[str, ...]]:
    """The key paths machine.yaml defines (a section's own keys, not the section)."""
    return set(_leaves(_read(Path(params_dir) / MACHINE_FILE)))


def machine_settings(params_dir: str | os.PathLike = "params", environ: dict | None = None) -> dict:
    """machine.yaml, then local.yaml over it, then the environment."""
    params_dir = Path(params_dir)
    settings = _read(params_dir / MACHINE_FILE)
    local = params_dir / LOCAL_FILE
    if local.is_file():
        own = _read(local)
        allowed = machine_keys(params_dir)
        for path in _leaves(own):
            if path not in allowed:
                raise NasflowError(f"{local}: {'.'.join(path)} is not a machine setting (machine settings: "
                                   f"{', '.join(sorted('.'.join(p) for p in allowed))}); "
                                   "result-changing parameters belong in params/nasflow.yaml")
        settings = deep_merge(settings, own)
    env = os.environ if environ is None else environ
    for name, path in ENVIRONMENT.items():
        if env.get(name) is None:
            continue
        value = env[name] if path in _TEXT_KEYS else _scalar(name, env[name])
        node = settings
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    return settings


def reject_machine_keys(cfg: dict, source: str, params_dir: str | os.PathLike = "params") -> None:
    """A machine setting in a DVC-tracked params file would make every other machine's copy look
    changed: it belongs in params/local.yaml."""
    for path in machine_keys(params_dir):
        node = cfg
        for k in path:
            if not isinstance(node, dict) or k not in node:
                break
            node = node[k]
        else:
            env = next((n for n, p in ENVIRONMENT.items() if p == path), None)
            raise NasflowError(f"{source} sets {'.'.join(path)}, a machine setting: move it to params/{LOCAL_FILE} "
                               f"(git-ignored){f' or {env}' if env else ''}, so that the tracked parameters stay "
                               "the same on every machine")


def without_machine_keys(cfg: dict, params_dir: str | os.PathLike = "params") -> dict:
    """The parameters that decide results: `cfg` less every machine setting."""
    import copy

    out = copy.deepcopy(cfg)
    for path in machine_keys(params_dir):
        node = out
        for k in path[:-1]:
            node = node.get(k, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return out


def _leaves(d: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for k, v in d.items():
        out += _leaves(v, prefix + (k,)) if isinstance(v, dict) else [prefix + (k,)]
    return out


def _scalar(name: str, text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise NasflowError(f"environment variable {name}={text!r} is not a value (a number, true/false or null)") \
            from None
