"""Parameters: load params/ (base file + profile), validate against the schema, hash stage specs."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from ..common.errors import NasflowError
from .machine import LOCAL_FILE, deep_merge, machine_keys, machine_settings, reject_machine_keys

PARAMS_FILE = "nasflow.yaml"
SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "not found"
        raise NasflowError(f"parameter file {path} {what}; run from the project root or pass --params-dir")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise NasflowError(f"{path}{where} is not valid YAML: {getattr(e, 'problem', None) or e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise NasflowError(f"cannot read parameter file {path}: {e}") from None
    if data is None:
        raise NasflowError(f"parameter file {path} is empty; restore it from git (git checkout -- {path})")
    if not isinstance(data, dict):
        raise NasflowError(f"{path} must hold a mapping of parameters (key: value lines), not {type(data).__name__}")
    return data


def load_params(params_dir: str | os.PathLike = "params", overrides: dict | None = None) -> dict:
    """params/nasflow.yaml, then params/profiles/<profile>.yaml over it, both over this machine's
    settings (machine.py), then `overrides`; validated."""
    params_dir = Path(params_dir)
    base_file = params_dir / PARAMS_FILE
    cfg = _read_yaml(base_file)
    reject_machine_keys(cfg, str(base_file), params_dir)
    profile = (overrides or {}).get("profile", cfg.get("profile"))
    profile_file = params_dir / "profiles" / f"{profile}.yaml"
    if not isinstance(profile, str) or not profile_file.is_file():
        names = sorted(p.stem for p in (params_dir / "profiles").glob("*.yaml"))
        raise NasflowError(f"unknown profile {profile!r}; valid profiles: {', '.join(names)} (params/profiles/)")
    profile_cfg = _read_yaml(profile_file)
    reject_machine_keys(profile_cfg, str(profile_file), params_dir)
    cfg = deep_merge(machine_settings(params_dir), deep_merge(cfg, profile_cfg))
    cfg = deep_merge(cfg, overrides or {})
    validate(cfg)
    return cfg


def coerce_scalars(obj: Any) -> Any:
    """Snakemake's `--config key={a: false}` leaves nested values as strings; read them as YAML
    scalars (true, 3, 0.5, null), as they would be in a params file."""
    if isinstance(obj, dict):
        return {k: coerce_scalars(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [coerce_scalars(v) for v in obj]
    if isinstance(obj, str):
        try:
            value = yaml.safe_load(obj)
        except yaml.YAMLError:
            return obj
        if value is None or isinstance(value, (bool, int, float, list, dict)):
            return value
    return obj


def validate(cfg: dict) -> None:
    """Raise one NasflowError naming the first bad value, before anything runs."""
    _validate_schema(cfg)
    check_tracking_uri(cfg["tracking"].get("uri"))
    from ..methods import get_method  # late: the methods load torch and the spaces

    for name in cfg["methods"]:
        get_method(name).check(cfg)
    for method, section in cfg["method"].items():
        name = section.get("preset", "shared")
        if name == "shared":
            continue
        if name not in section.get("presets", {}):
            raise NasflowError(f"invalid parameter method.{method}.preset = {name!r}: valid presets are shared, "
                               f"{', '.join(section.get('presets', {}))}")
        for space, override in section["presets"][name].items():  # the supernet it would train must be valid
            merged = {**cfg, "search": {**cfg["search"], **override.get("search", {})},
                      "space": {**cfg["space"], space: {**cfg["space"][space], **override.get("space", {})}}}
            try:
                _validate_schema(merged)
            except NasflowError as e:
                raise NasflowError(f"preset method.{method}.presets.{name}.{space}: {e}") from None


TRACKING_SCHEMES = ("sqlite:///", "http://", "https://", "file:///")


def check_tracking_uri(uri: str | None) -> None:
    """The tracking URIs a stage can use from any working directory: absolute SQLite or file paths,
    or an MLflow server."""
    if uri is None:
        return
    if not isinstance(uri, str) or not uri.startswith(TRACKING_SCHEMES):
        raise NasflowError(f"invalid parameter tracking.uri = {uri!r}: use null (sqlite:///<project>/mlflow.db), "
                           "sqlite:////absolute/path.db, file:///absolute/dir or http(s)://host:port")
    if uri.startswith("sqlite:///") and not uri[len("sqlite:///"):].startswith("/"):
        raise NasflowError(f"invalid parameter tracking.uri = {uri!r}: the path must be absolute "
                           "(sqlite:////abs/path.db: four slashes), since jobs run in other directories")


def _validate_schema(cfg: dict) -> None:
    import jsonschema

    schema = yaml.safe_load(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if not errors:
        return
    err = jsonschema.exceptions.best_match(errors)
    where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
    if err.validator in ("additionalProperties", "unevaluatedProperties"):
        msg = f"unknown parameter in {where}: {err.message.split('(')[-1].rstrip(')')}"
    elif err.validator == "required":
        msg = f"missing parameter in {where}: {err.message}"
    else:
        msg = f"invalid parameter {where} = {err.instance!r}: {err.message}"
    if tuple(str(p) for p in err.absolute_path) in machine_keys(SCHEMA.parents[2] / "params"):
        raise NasflowError(f"{msg} (a machine setting: fix it in params/{LOCAL_FILE}, the NASFLOW_* environment "
                           "or --config)")
    raise NasflowError(f"{msg} (fix it in params/{PARAMS_FILE}, params/profiles/{cfg.get('profile')}.yaml or --config)")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def spec_key(spec: dict) -> str:
    """Short hash of exactly the parameters a stage reads: same settings, same path, one job."""
    return hashlib.sha256(canonical_json(spec).encode()).hexdigest()[:10]
