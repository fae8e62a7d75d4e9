"""The identity of a dataset on disk: a hash of its content, not of where it lies.

Every stage that reads images carries it in its spec, so new data re-runs those stages (and a
half-trained checkpoint of other data is never resumed), while the same data under another path
or on another machine re-runs nothing. Hashing reads every file once; afterwards a cache keyed by
the files' names, sizes and mtimes answers in the time of a directory listing.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..common.atomic import write_json
from ..common.errors import NasflowError
from .catalog import dataset_info
from .datasets import (_IMAGENET16_TEST_FILE, _IMAGENET16_TRAIN_FILES, _TORCHVISION, CACHE_DIR, SPLITS, _list_images,
                       folder_classes, resolve_source)

_VERSION = "1"


def data_id(dataset: str, root: str | os.PathLike, source: str = "auto", download: bool = False) -> str:
    """sha256 (16 hex digits) of the files `load_split` would read for both splits."""
    info = dataset_info(dataset)
    root = Path(root).expanduser()
    source = resolve_source(info, source, root, download)
    if source == "torchvision":
        folder = root / _TORCHVISION[info.name][1]
        if not folder.is_dir():
            if not download:
                raise NasflowError(f"{info.name} files {folder} are missing: put torchvision's folder there, "
                                   "allow downloading (data.download: true), or use an image-folder copy")
            return _torchvision_expected(info.name)  # what the checksummed download will bring
        files = [(name, folder / name) for name, _ in TORCHVISION_FILES[info.name]]
        return _identity(f"torchvision:{info.name}", files, root, digest="md5")
    if source == "imagenet16":
        names = [*_IMAGENET16_TRAIN_FILES, _IMAGENET16_TEST_FILE]
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise NasflowError(f"ImageNet16 files missing in {root}: {', '.join(missing)}")
        return _identity(f"imagenet16:{info.name}", [(n, root / n) for n in names], root)
    files = []
    for split in SPLITS:  # names built as strings: 60,000 relpath calls and Paths cost seconds per job
        classes = folder_classes(info, root, split)
        entries, labels = _list_images(root / split, classes)
        files += [(f"{split}/{classes[label]}/{e.name}", e) for e, label in zip(entries, labels)]
    if not files:
        raise NasflowError(f"no image files under {root}/train/<class>/ or {root}/test/<class>/")
    return _identity(f"folder:{info.name}", files, root)


# The CIFAR distributions' batch files and their published MD5 sums (torchvision checks the same on
# download), here so that planning a run never imports torchvision (about 10 s).
TORCHVISION_FILES = {
    "cifar10": (("data_batch_1", "c99cafc152244af753f735de768cd75f"), ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"), ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"), ("test_batch", "40351d587109b95175f43aff81a1287e")),
    "cifar100": (("train", "16019d7e3df5f24257cddd939b257f8d"), ("test", "f0ef6b0ae62326f3e7ffdfab6717acfc")),
}


def check_data_identity(dataset: str, expected: str, data: dict) -> None:
    """A stage was planned for data `expected`: refuse to train on anything else."""
    found = data_id(dataset, data["root"], data["source"], data["download"])
    if found != expected:
        raise NasflowError(f"the {dataset} data at {data['root']} (identity {found}) is not the data this stage was "
                           f"planned with ({expected}); it changed after the run started: start the run again")


def _torchvision_expected(dataset: str) -> str:
    return _combine(f"torchvision:{dataset}", TORCHVISION_FILES[dataset])


def _combine(kind: str, digests) -> str:
    """The identity from each file's (name, content digest): one formula for files on disk and for
    the published checksums of files still to be downloaded."""
    h = hashlib.sha256(f"{_VERSION}\0{kind}\n".encode())
    for name, digest in digests:
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()[:16]


def _identity(kind: str, files: list[tuple[str, Path | os.DirEntry]], root: Path, digest: str = "sha256") -> str:
    """Hash of (name, content digest) of every file; content digests come from the cache while
    a file's size and mtime are unchanged."""
    stat_key = _combine(kind, [(name, _size_and_mtime(path)) for name, path in files])
    cache_file = root / CACHE_DIR / f"identity-{kind.replace(':', '-')}.json"
    try:
        cached = json.loads(cache_file.read_text())
        if cached.get("stat_key") == stat_key:
            return cached["id"]
    except (OSError, ValueError, AttributeError, KeyError):
        pass
    ident = _combine(kind, [(name, _file_digest(path, digest)) for name, path in files])
    try:  # a cache is an optimisation: a read-only data root must not fail the run
        write_json(cache_file, {"stat_key": stat_key, "id": ident})
    except OSError:
        pass
    return ident


def _size_and_mtime(path: Path | os.DirEntry) -> str:
    try:
        st = path.stat()  # a DirEntry from the listing stats once
    except OSError:
        raise NasflowError(f"data file {path} is missing or unreadable; restore it or point data.root "
                           "at a complete copy") from None
    return f"{st.st_size}\0{st.st_mtime_ns}"


def _file_digest(path: Path, digest: str) -> str:
    h = hashlib.new(digest)
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise NasflowError(f"cannot read data file {path}: {e.strerror}") from None
    return h.hexdigest()
