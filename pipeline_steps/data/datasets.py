"""Datasets on disk -> uint8 arrays (N, 3, H, W) and int64 labels (N,).

Normalisation and augmentation happen later, on the GPU; this module only decodes.
Sources: an image-folder copy, torchvision's CIFAR python batches, or the
NAS-Bench-201 downsampled ImageNet16 pickles.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..common.atomic import atomic_path
from ..common.errors import NasflowError
from .catalog import DatasetInfo, dataset_info


SPLITS = ("train", "test")
SOURCES = ("auto", "folder", "torchvision", "imagenet16")
CACHE_DIR = ".nasflow-cache"
# Bump when the cache layout or decoding changes, so old caches are ignored.
_CACHE_VERSION = "1"
# dataset -> (torchvision.datasets class, the folder it extracts under root)
_TORCHVISION = {"cifar10": ("CIFAR10", "cifar-10-batches-py"), "cifar100": ("CIFAR100", "cifar-100-python")}
_IMAGENET16_TRAIN_FILES = tuple(f"train_data_batch_{i}" for i in range(1, 11))
_IMAGENET16_TEST_FILE = "val_data"


def load_split(dataset: str, split: str, *, source: str = "auto", root: str,
               download: bool = False, cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (N, 3, H, W) C-contiguous and labels int64 (N,) for one split."""
    info = dataset_info(dataset)
    if split not in SPLITS:
        raise NasflowError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    root_path = Path(root).expanduser()
    source = resolve_source(info, source, root_path, download)
    if source == "folder":
        images, labels = _load_folder(info, split, root_path, cache)
    elif source == "torchvision":
        images, labels = _load_torchvision(info, split, root_path, download)
    else:
        images, labels = _load_imagenet16(info, split, root_path)
    return np.ascontiguousarray(images, dtype=np.uint8), np.ascontiguousarray(labels, dtype=np.int64)


def resolve_source(info: DatasetInfo, source: str, root: Path, download: bool) -> str:
    """The source `auto` stands for at `root`; a root that cannot serve the data is an error."""
    if source not in SOURCES:
        raise NasflowError(f"unknown data source {source!r}; valid sources: {', '.join(SOURCES)}")
    if root.exists() and not root.is_dir():
        raise NasflowError(f"data root {root} is a file, not a folder: point data.root at the folder that holds "
                           "the dataset")
    if not root.is_dir() and not (download and source in ("auto", "torchvision")):
        raise NasflowError(f"data root {root} does not exist (dataset {info.name}): set data.root in "
                           "params/local.yaml or NASFLOW_DATA_ROOT, or allow data.download")
    if source != "auto":
        return source
    if (root / "train").is_dir() or (root / "test").is_dir():
        return "folder"
    return "imagenet16" if info.name == "imagenet16-120" else "torchvision"


# ----------------------------------------------------------------- image folder

def _load_folder(info: DatasetInfo, split: str, root: Path, cache: bool):
    split_dir = root / split
    classes = folder_classes(info, root, split)
    files, labels = _list_images(split_dir, classes)
    if not files:
        raise NasflowError(f"no image files under {split_dir}/<class>/")

    if not cache:
        return _decode_images(files, info.image_size), np.asarray(labels, dtype=np.int64)
    # The cache holds a fingerprint of the file list, sizes and mtimes: a changed folder re-decodes.
    cache_file = root / CACHE_DIR / f"{info.name}-folder-{split}.npz"
    fingerprint = _fingerprint(files, [classes[label] for label in labels])
    cached = _read_cache(cache_file, fingerprint)
    if cached is not None:
        return cached
    images, labels = _decode_images(files, info.image_size), np.asarray(labels, dtype=np.int64)
    _write_cache(cache_file, fingerprint, images, labels)
    return images, labels


def folder_classes(info: DatasetInfo, root: Path, split: str) -> list[str]:
    """The class folder names of one split, checked against the dataset and the other split."""
    split_dir = root / split
    if not split_dir.is_dir():
        raise NasflowError(f"no image folder {split_dir} (expected {root}/{split}/<class>/<image files>)")
    classes = _class_names(split_dir)
    if len(classes) != info.num_classes:
        raise NasflowError(f"{split_dir} has {len(classes)} class folders but {info.name} has "
                           f"{info.num_classes} classes")
    # Labels are indices into the sorted class names, so train and test must name the same classes.
    other_dir = root / ("test" if split == "train" else "train")
    if other_dir.is_dir() and _class_names(other_dir) != classes:
        raise NasflowError(f"class folders differ between {split_dir} and {other_dir}")
    return classes


def _class_names(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _image_extensions() -> set[str]:
    from PIL import Image
    Image.init()
    return {ext.lower() for ext in Image.registered_extensions()}


def _list_images(split_dir: Path, classes: list[str]) -> tuple[list[os.DirEntry], list[int]]:
    """Image files sorted by class index then file name; skips hidden and non-image files."""
    extensions = _image_extensions()
    files, labels = [], []
    for label, name in enumerate(classes):
        entries = sorted((e for e in os.scandir(split_dir / name)
                          if e.is_file() and not e.name.startswith(".")
                          and os.path.splitext(e.name)[1].lower() in extensions),
                         key=lambda e: e.name)
        files += entries
        labels += [label] * len(entries)
    return files, labels


def _fingerprint(files: list[os.DirEntry], class_names: list[str]) -> str:
    """Each file's path under the split folder, size and mtime (names built as strings: relpath
    over 60,000 files costs a second per job)."""
    digest = hashlib.sha256(_CACHE_VERSION.encode())
    for entry, name in zip(files, class_names):
        st = entry.stat()
        digest.update(f"{name}/{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _decode_images(files: list[os.DirEntry], size: int) -> np.ndarray:
    """All images must share one square size: the dataset's, or another one (small test copies)."""
    from PIL import Image, UnidentifiedImageError
    images = None
    for i, entry in enumerate(files):
        try:
            with Image.open(entry.path) as img:
                rgb = img.convert("RGB")
        except (OSError, UnidentifiedImageError) as e:
            raise NasflowError(f"cannot read image {entry.path}: {e}") from None
        if images is None:
            if rgb.size[0] != rgb.size[1]:
                raise NasflowError(f"image {entry.path} is {rgb.size[0]}x{rgb.size[1]}, expected square images")
            images = np.empty((len(files), rgb.size[1], rgb.size[0], 3), dtype=np.uint8)
        if rgb.size != images.shape[1:3][::-1]:
            raise NasflowError(f"image {entry.path} is {rgb.size[0]}x{rgb.size[1]}, expected "
                               f"{images.shape[2]}x{images.shape[1]} like the others (dataset size {size})")
        images[i] = np.asarray(rgb)
    return images.transpose(0, 3, 1, 2)  # NHWC -> NCHW; made contiguous by load_split


def _read_cache(path: Path, fingerprint: str):
    """Cached (images, labels) if the file exists and matches `fingerprint`; None otherwise."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["fingerprint"]) != fingerprint:
                return None
            return data["images"], data["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # unreadable or from another layout: decode again and overwrite


def _write_cache(path: Path, fingerprint: str, images: np.ndarray, labels: np.ndarray) -> None:
    # A cache is an optimisation: a read-only or full disk must not fail the load.
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, images=np.ascontiguousarray(images), labels=labels,
                         fingerprint=np.array(fingerprint))
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; others sharing the data root may read it
    except OSError:
        pass


# ---------------------------------------------------------------- torchvision

def _load_torchvision(info: DatasetInfo, split: str, root: Path, download: bool):
    if info.name not in _TORCHVISION:
        raise NasflowError(f"source 'torchvision' only serves {', '.join(_TORCHVISION)}, "
                           f"not {info.name}; use source 'imagenet16' or 'folder'")
    class_name, folder = _TORCHVISION[info.name]
    # Fail before importing torchvision (seconds) when the files plainly are not there.
    if not download and not (root / folder).is_dir():
        raise NasflowError(_torchvision_hint(info, root, "are missing", offer_download=True))
    cls = _torchvision_class(class_name)
    train = split == "train"
    try:
        ds = cls(str(root), train=train, download=False)
    except RuntimeError:  # torchvision's "Dataset not found or corrupted"
        if not download:
            raise NasflowError(_torchvision_hint(info, root, "are incomplete or corrupt",
                                                 offer_download=True)) from None
        _download_torchvision(info, cls, root)
        ds = cls(str(root), train=train, download=False)
    images = np.asarray(ds.data, dtype=np.uint8).transpose(0, 3, 1, 2)  # (N, H, W, 3) -> NCHW
    return images, np.asarray(ds.targets, dtype=np.int64)


def _torchvision_class(class_name: str):
    import torchvision.datasets
    return getattr(torchvision.datasets, class_name)


def _download_torchvision(info: DatasetInfo, cls, root: Path) -> None:
    """Download into a temp dir beside the target and move the extracted folder in only when complete."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".nasflow-download-", dir=root))
    except OSError as e:
        raise NasflowError(f"cannot write to data root {root}: {e}") from None
    folder = _TORCHVISION[info.name][1]
    try:
        cls(str(tmp), train=True, download=True)  # fetches and extracts both splits
        if (root / folder).exists():  # a corrupt earlier copy: replace it
            shutil.rmtree(root / folder)
        os.replace(tmp / folder, root / folder)
    except Exception as e:  # no internet, checksum mismatch, disk full...
        raise NasflowError(_torchvision_hint(info, root, f"could not be downloaded ({e})")) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _torchvision_hint(info: DatasetInfo, root: Path, problem: str, offer_download: bool = False) -> str:
    folder = _TORCHVISION[info.name][1]
    return (f"{info.name} files {root / folder} {problem}: put torchvision's '{folder}' folder under "
            f"{root}, {'allow downloading, ' if offer_download else ''}or point at an image-folder copy "
            f"({root}/train/<class>/..., {root}/test/<class>/...) with source: folder")


# ---------------------------------------------------------------- ImageNet16

def _load_imagenet16(info: DatasetInfo, split: str, root: Path):
    if info.name != "imagenet16-120":
        raise NasflowError(f"source 'imagenet16' only serves imagenet16-120, not {info.name}")
    names = _IMAGENET16_TRAIN_FILES if split == "train" else (_IMAGENET16_TEST_FILE,)
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise NasflowError(f"ImageNet16 files missing in {root}: {', '.join(missing)} (expected "
                           f"{', '.join(_IMAGENET16_TRAIN_FILES)} and {_IMAGENET16_TEST_FILE}, "
                           f"from the NAS-Bench-201 authors' downsampled ImageNet)")
    size = info.image_size
    image_parts, label_parts = [], []
    for name in names:
        try:
            with open(root / name, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, size, size)
            labels = np.asarray(entry["labels"], dtype=np.int64)
        except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
            raise NasflowError(f"cannot read ImageNet16 file {root / name}: {e!r}") from None
        if len(data) != len(labels):
            raise NasflowError(f"{root / name}: {len(data)} images but {len(labels)} labels")
        if len(labels) and labels.min() < 1:
            raise NasflowError(f"{root / name}: labels must be 1-based, found {labels.min()}")
        # Filter per file so the full 1.28M-image train set is never held at once.
        keep = labels <= info.num_classes
        image_parts.append(data[keep])
        label_parts.append(labels[keep] - 1)  # stored 1-based
    return np.concatenate(image_parts), np.concatenate(label_parts)
