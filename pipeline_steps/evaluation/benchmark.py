"""NAS-Bench-201 lookup: final (200-epoch, seed-averaged) accuracies of every cell, keyed by arch string.

Three sources give the same table: the packaged compact parquet (default, no download), the
official NAS-Bench-201 `.pth` file, or the NATS-Bench topology archive. The last two are walked
once through their own API and cached as parquet, because reading them takes minutes and ~28 GB.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ..common.atomic import atomic_path
from ..common.errors import NasflowError
from ..spaces.nb201 import EDGES, ops_to_str, str_to_ops

log = logging.getLogger(__name__)

METRICS = (
    "cifar10_valid_acc",
    "cifar10_test_acc",
    "cifar100_valid_acc",
    "cifar100_test_acc",
    "imagenet16_120_valid_acc",
    "imagenet16_120_test_acc",
)
REQUIRED_COLUMNS = ("arch_str", "nb201_index", *METRICS)
RANK_METRIC = "cifar10_test_acc"
NUM_CELLS = 5 ** len(EDGES)
SOURCES = ("table", "official", "nats")
PACKAGED_TABLE = Path(__file__).parents[1] / "assets" / "nb201_accuracies.parquet"
DEFAULT_CACHE_DIR = "~/.cache/nasflow"

# (column, API dataset name, key in get_more_info's answer). CIFAR-10 is split in two API
# datasets: 'cifar10-valid' is trained on train only (has the valid split), 'cifar10' on
# train+valid (its test accuracy is the number the papers report).
API_COLUMNS = (
    ("cifar10_valid_acc", "cifar10-valid", "valid-accuracy"),
    ("cifar10_test_acc", "cifar10", "test-accuracy"),
    ("cifar100_valid_acc", "cifar100", "valid-accuracy"),
    ("cifar100_test_acc", "cifar100", "test-accuracy"),
    ("imagenet16_120_valid_acc", "ImageNet16-120", "valid-accuracy"),
    ("imagenet16_120_test_acc", "ImageNet16-120", "test-accuracy"),
)


class Benchmark:
    """All cells' accuracies, indexed by canonical arch string, with their C10-test rank."""

    def __init__(self, table: pd.DataFrame):
        frame = table.reset_index() if table.index.name == "arch_str" else table
        _check_columns(frame, "benchmark table")
        frame = frame.loc[:, list(REQUIRED_COLUMNS)].copy()
        if frame[list(METRICS)].isna().any().any():
            raise NasflowError("benchmark table has missing accuracies; rebuild it from the official file")
        frame["arch_str"] = [ops_to_str(str_to_ops(a)) for a in frame["arch_str"]]
        if frame["arch_str"].duplicated().any():
            dup = frame.loc[frame["arch_str"].duplicated(), "arch_str"].iloc[0]
            raise NasflowError(f"benchmark table lists arch {dup!r} more than once")
        frame["nb201_index"] = frame["nb201_index"].astype("int64")
        for m in METRICS:
            frame[m] = frame[m].astype("float64")
        # 'min': tied cells share the best rank, so rank = 1 + number of strictly better cells.
        frame["rank"] = frame[RANK_METRIC].rank(ascending=False, method="min").astype("int64")
        self._frame = frame.set_index("arch_str")

    @property
    def table(self) -> pd.DataFrame:
        """A copy, so a caller cannot corrupt the process-wide memoised benchmark."""
        return self._frame.copy()

    def __len__(self) -> int:
        return len(self._frame)

    def lookup(self, arch: str) -> dict[str, Any]:
        canonical = ops_to_str(str_to_ops(arch))  # malformed -> NasflowError naming the string
        if canonical not in self._frame.index:
            raise NasflowError(f"arch {arch!r} is well-formed but not in the benchmark table ({len(self)} cells)")
        row = self._frame.loc[canonical]
        out: dict[str, Any] = {
            "arch_str": canonical,
            "nb201_index": int(row["nb201_index"]),
            "rank": int(row["rank"]),
        }
        out.update({m: float(row[m]) for m in METRICS})
        return out

    def optimal(self) -> dict[str, float]:
        """Per-metric maximum over all cells (each may come from a different cell)."""
        return {m: float(self._frame[m].max()) for m in METRICS}


_LOADED: dict[tuple[str, str | None], Benchmark] = {}


def load_benchmark(source: str = "table", path: str | None = None, cache_dir: str | None = None) -> Benchmark:
    """The benchmark from `source`, read once per (source, path) in this process."""
    if source not in SOURCES:
        raise NasflowError(f"unknown benchmark source {source!r}; valid sources: {', '.join(SOURCES)}")
    key = (source, str(Path(path).expanduser().resolve()) if path else None)
    if key not in _LOADED:
        if source == "table":
            table = read_table(Path(path).expanduser() if path else PACKAGED_TABLE)
        else:
            table = _cached_api_table(source, path, cache_dir)
        _LOADED[key] = Benchmark(table)
    return _LOADED[key]


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise NasflowError(
            f"benchmark table {str(path)!r} not found; fix benchmark.path in params, or leave it unset "
            "to use the packaged table"
        )
    try:
        frame = pd.read_parquet(path)
    except Exception as e:  # a truncated or foreign file: say which one
        raise NasflowError(f"cannot read benchmark table {str(path)!r} as parquet: {e}") from e
    _check_columns(frame, str(path))
    return frame


def table_from_api(api: Any) -> pd.DataFrame:
    """Walk a NAS-Bench-201-style API (official or NATS tss) into the compact table."""
    rows = []
    total = len(api)
    for i in range(total):
        arch = api.arch(i) if hasattr(api, "arch") else api.meta_archs[i]
        ops = str_to_ops(str(arch))
        row: dict[str, Any] = {"arch_str": ops_to_str(ops), "nb201_index": i}
        row.update({f"op_{k}": op for k, op in enumerate(ops)})
        infos: dict[str, dict] = {}
        for column, dataset, field in API_COLUMNS:
            if dataset not in infos:
                infos[dataset] = _final_info(api, i, dataset)
            if field not in infos[dataset]:
                raise NasflowError(f"benchmark API gave no {field!r} for cell {i} on {dataset!r}")
            row[column] = float(infos[dataset][field])
        rows.append(row)
        if (i + 1) % 1000 == 0:
            log.info("read %d/%d cells from the benchmark API", i + 1, total)
    return pd.DataFrame(rows)


def _final_info(api: Any, index: int, dataset: str) -> dict:
    # Keywords, not positions: the defaults (hp='12', is_random=True) give 12-epoch results of one
    # random seed, and the v1.0 API reads a second positional argument as "use 12-epoch results".
    try:
        return api.get_more_info(index, dataset, hp="200", is_random=False)
    except TypeError as e:
        if "hp" in str(e):
            raise NasflowError(
                "the installed NAS-Bench-201 API is too old (no hp= argument); "
                "pip install --upgrade nas-bench-201"
            ) from e
        raise


def _cached_api_table(source: str, path: str | None, cache_dir: str | None) -> pd.DataFrame:
    if not path:
        raise NasflowError(f"benchmark.source {source!r} needs benchmark.path: the downloaded benchmark file")
    src = Path(path).expanduser()
    if not src.exists():
        raise NasflowError(f"benchmark file {str(src)!r} not found; check benchmark.path in params")
    st = src.stat()
    # Keyed by name, size and mtime: a replaced benchmark file gets a fresh cache.
    cache = Path(cache_dir or DEFAULT_CACHE_DIR).expanduser() / f"{source}-{src.name}-{st.st_size}-{st.st_mtime_ns}.parquet"
    if cache.is_file():
        return read_table(cache)
    make_api = _official_api if source == "official" else _nats_api
    log.info("building the benchmark table from %s (takes minutes, once)", src)
    table = table_from_api(make_api(src))
    with atomic_path(cache) as tmp:
        table.to_parquet(tmp, index=False)
    log.info("cached the benchmark table at %s", cache)
    return table


def _official_api(src: Path) -> Any:
    try:
        from nas_201_api import NASBench201API
    except ImportError as e:
        raise NasflowError("benchmark.source 'official' needs the NAS-Bench-201 API: pip install nas-bench-201") from e
    import torch

    # The API's own torch.load uses weights_only=True on modern torch, which refuses the numpy
    # scalars pickled in the file; the file is the trusted official download.
    data = torch.load(src, map_location="cpu", weights_only=False)
    return _create(lambda: NASBench201API(data, verbose=False), src)


def _nats_api(src: Path) -> Any:
    try:
        import nats_bench
    except ImportError as e:
        raise NasflowError("benchmark.source 'nats' needs the NATS-Bench API: pip install nats_bench") from e
    # fast_mode reads the '-simple' archive directory one cell at a time (get_more_info loads each
    # cell on demand); a single .pickle.pbz2 file must be opened with fast_mode off.
    return _create(lambda: nats_bench.create(str(src), "tss", fast_mode=src.is_dir(), verbose=False), src)


def _create(factory: Callable[[], Any], src: Path) -> Any:
    try:
        return factory()
    except (AssertionError, ValueError, KeyError) as e:
        raise NasflowError(f"cannot open benchmark file {str(src)!r}: {e}") from e


def _check_columns(frame: pd.DataFrame, what: str) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise NasflowError(f"{what} lacks columns {missing}; expected {list(REQUIRED_COLUMNS)}")


def format_row(row: dict, total: int = NUM_CELLS) -> str:
    """A lookup result for `nasflow lookup '<arch>'`."""
    pairs = (("CIFAR-10", "cifar10"), ("CIFAR-100", "cifar100"), ("ImageNet16-120", "imagenet16_120"))
    lines = [
        f"arch            {row['arch_str']}",
        f"nb201 index     {row['nb201_index']}",
        f"rank            {row['rank']} of {total} (by CIFAR-10 test accuracy)",
        f"{'':16}{'valid':>8}{'test':>8}",
    ]
    for label, prefix in pairs:
        lines.append(f"{label:16}{row[prefix + '_valid_acc']:8.2f}{row[prefix + '_test_acc']:8.2f}")
    return "\n".join(lines)
