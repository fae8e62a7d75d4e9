"""Dataset loading: image folders (with cache), torchvision CIFAR errors, NB201 ImageNet16 pickles."""
from __future__ import annotations

import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline_steps.common.errors import NasflowError
from pipeline_steps.data import datasets
from pipeline_steps.data.catalog import DATASETS, dataset_info
from pipeline_steps.data.datasets import load_split

CLASSES = [f"class_{c}" for c in "jihgfedcba"]  # created out of order; labels follow sorted names
CIFAR10_TGZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.gz"


def colour(label: int, index: int, split: str) -> tuple[int, int, int]:
    return (label * 20 + index, 100 + (split == "test") * 50, 255 - label)


def make_folder(root: Path, classes=CLASSES, size=32, n_train=3, n_test=2) -> Path:
    sorted_classes = sorted(classes)
    for split, n in (("train", n_train), ("test", n_test)):
        for name in classes:
            label = sorted_classes.index(name)
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                img = Image.new("RGB", (size, size), colour(label, i, split))
                img.putpixel((1, 0), (1, 2, 3))  # x=1, y=0 -> array [:, 0, 1]
                img.save(root / split / name / f"{i:03d}.png")
    return root


def test_registry():
    assert set(DATASETS) == {"cifar10", "cifar100", "imagenet16-120"}
    assert dataset_info("cifar100").num_classes == 100
    info = dataset_info("imagenet16-120")
    assert (info.num_classes, info.image_size) == (120, 16)
    assert info.mean[0] == pytest.approx(122.68 / 255) and info.std[2] == pytest.approx(65.09 / 255)
    with pytest.raises(NasflowError, match="mnist.*cifar10"):
        dataset_info("mnist")


@pytest.mark.parametrize("split,n", [("train", 3), ("test", 2)])
def test_folder_round_trip_and_cache(tmp_path, split, n):
    root = make_folder(tmp_path)
    images, labels = load_split("cifar10", split, source="folder", root=str(root))
    assert images.shape == (10 * n, 3, 32, 32) and images.dtype == np.uint8
    assert images.flags.c_contiguous
    assert labels.dtype == np.int64
    assert labels.tolist() == [c for c in range(10) for _ in range(n)]
    for k, (label, i) in enumerate((c, i) for c in range(10) for i in range(n)):
        assert images[k, :, 5, 5].tolist() == list(colour(label, i, split))
        assert images[k, :, 0, 1].tolist() == [1, 2, 3]

    cache_file = root / ".nasflow-cache" / f"cifar10-folder-{split}.npz"
    assert cache_file.is_file()
    assert not [p for p in cache_file.parent.iterdir() if p != cache_file]  # no temp files left
    again = load_split("cifar10", split, source="folder", root=str(root))
    np.testing.assert_array_equal(again[0], images)
    np.testing.assert_array_equal(again[1], labels)
    assert again[0].flags.c_contiguous and again[1].dtype == np.int64


def test_cache_is_used_and_refreshed_when_folder_changes(tmp_path, monkeypatch):
    root = make_folder(tmp_path)
    first = load_split("cifar10", "test", root=str(root))  # auto -> folder
    monkeypatch.setattr(datasets, "_decode_images", lambda *a: pytest.fail("cache not used"))
    np.testing.assert_array_equal(load_split("cifar10", "test", root=str(root))[0], first[0])
    monkeypatch.undo()
    Image.new("RGB", (32, 32), (9, 9, 9)).save(root / "test" / "class_a" / "zzz.png")
    images, labels = load_split("cifar10", "test", root=str(root))
    assert len(images) == 21 and labels[2] == 0 and images[2, 0, 0, 0] == 9


def test_no_cache_and_unwritable_cache(tmp_path, monkeypatch):
    root = make_folder(tmp_path)
    load_split("cifar10", "test", root=str(root), cache=False)
    assert not (root / ".nasflow-cache").exists()

    def read_only(path):
        raise PermissionError(f"read-only: {path}")
    monkeypatch.setattr(datasets, "atomic_path", read_only)
    images, labels = load_split("cifar10", "test", root=str(root))
    assert images.shape == (20, 3, 32, 32) and not (root / ".nasflow-cache").exists()


def test_folder_errors(tmp_path):
    root = make_folder(tmp_path / "nine", classes=CLASSES[:9])
    with pytest.raises(NasflowError, match="9 class folders.*10 classes"):
        load_split("cifar10", "train", source="folder", root=str(root))
    missing = tmp_path / "nowhere"
    for source in ("auto", "folder", "torchvision", "imagenet16"):
        dataset = "imagenet16-120" if source == "imagenet16" else "cifar10"
        with pytest.raises(NasflowError, match=str(missing)):
            load_split(dataset, "train", source=source, root=str(missing))
    mixed = make_folder(tmp_path / "mixed", size=8)
    Image.new("RGB", (9, 9)).save(mixed / "test" / CLASSES[0] / "999.png")
    with pytest.raises(NasflowError, match="9x9, expected 8x8"):
        load_split("cifar10", "test", root=str(mixed))
    small = make_folder(tmp_path / "small", size=8)  # a small copy of one consistent size loads
    assert load_split("cifar10", "test", root=str(small))[0].shape[-2:] == (8, 8)


def test_unknown_names(tmp_path):
    root = make_folder(tmp_path)
    with pytest.raises(NasflowError, match="'svhn'"):
        load_split("svhn", "train", root=str(root))
    with pytest.raises(NasflowError, match="'valid'.*train, test"):
        load_split("cifar10", "valid", root=str(root))
    with pytest.raises(NasflowError, match="'lmdb'.*folder"):
        load_split("cifar10", "train", source="lmdb", root=str(root))


def test_torchvision_missing_files_hint(tmp_path):
    with pytest.raises(NasflowError) as err:
        load_split("cifar10", "train", source="torchvision", root=str(tmp_path), download=False)
    message = str(err.value)
    assert "cifar-10-batches-py" in message and str(tmp_path) in message and "source: folder" in message
    with pytest.raises(NasflowError, match="cifar-100-python"):
        load_split("cifar100", "test", root=str(tmp_path))  # auto -> torchvision
    with pytest.raises(NasflowError, match="only serves"):
        load_split("imagenet16-120", "test", source="torchvision", root=str(tmp_path))


class FakeCIFAR10:
    """Stands in for torchvision.datasets.CIFAR10: files 'present' unless `present` is False."""
    base_folder = "cifar-10-batches-py"
    present = True

    def __init__(self, root, train=True, download=False):
        if download:
            raise OSError("<urlopen error [Errno -2] Name or service not known>")
        if not self.present:
            raise RuntimeError("Dataset not found or corrupted.")
        n = 6 if train else 4
        self.data = np.arange(n * 32 * 32 * 3, dtype=np.int64).astype(np.uint8).reshape(n, 32, 32, 3)
        self.targets = list(range(n))


def test_torchvision_arrays_and_failed_download(tmp_path, monkeypatch):
    # A stand-in class keeps the test offline and avoids importing torchvision (seconds).
    monkeypatch.setattr(datasets, "_torchvision_class", lambda name: {"CIFAR10": FakeCIFAR10}[name])
    (tmp_path / "cifar-10-batches-py").mkdir()
    images, labels = load_split("cifar10", "test", source="torchvision", root=str(tmp_path))
    expected = FakeCIFAR10(tmp_path, train=False).data.transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(images, expected)
    assert images.flags.c_contiguous and labels.dtype == np.int64 and labels.tolist() == [0, 1, 2, 3]

    monkeypatch.setattr(FakeCIFAR10, "present", False)
    with pytest.raises(NasflowError, match="incomplete or corrupt.*allow downloading"):
        load_split("cifar10", "train", source="torchvision", root=str(tmp_path))
    with pytest.raises(NasflowError, match="could not be downloaded.*Name or service not known"):
        load_split("cifar10", "train", source="torchvision", root=str(tmp_path / "new"), download=True)
    assert list((tmp_path / "new").iterdir()) == []  # the temp download dir is gone


def test_unreadable_image_leaves_no_cache(tmp_path):
    root = make_folder(tmp_path)
    (root / "test" / "class_c" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(NasflowError, match="broken.jpg"):
        load_split("cifar10", "test", root=str(root))
    assert not (root / ".nasflow-cache").exists()
    (root / "test" / "class_c" / "notes.txt").write_text("ignored: not an image extension")
    (root / "test" / "class_c" / "broken.jpg").unlink()
    assert load_split("cifar10", "test", root=str(root))[0].shape == (20, 3, 32, 32)


def write_nb201_pickle(path: Path, labels: list[int], seed: int) -> np.ndarray:
    data = np.random.default_rng(seed).integers(0, 256, size=(len(labels), 3 * 16 * 16), dtype=np.uint8)
    with open(path, "wb") as f:
        pickle.dump({"data": data, "labels": labels, "mean": np.zeros(3072)}, f)
    return data


def test_imagenet16(tmp_path):
    batches = {}
    for i in range(1, 11):
        labels = [1, 120, 121, 130, 5 + i]
        batches[i] = (write_nb201_pickle(tmp_path / f"train_data_batch_{i}", labels, i), labels)
    val = write_nb201_pickle(tmp_path / "val_data", [130, 3, 120, 121], 99)

    images, labels = load_split("imagenet16-120", "train", root=str(tmp_path))  # auto -> imagenet16
    assert images.shape == (30, 3, 16, 16) and images.dtype == np.uint8 and images.flags.c_contiguous
    assert labels.dtype == np.int64
    assert labels.tolist() == [x for i in range(1, 11) for x in (0, 119, 4 + i)]
    raw_batch2 = batches[2][0]
    # Row 3 of the result is batch 2's first sample; CHW-flattened: channel c, row y, col x at c*256+y*16+x.
    assert images[3, 2, 5, 7] == raw_batch2[0, 2 * 256 + 5 * 16 + 7]
    np.testing.assert_array_equal(images[4].reshape(-1), raw_batch2[1])

    test_images, test_labels = load_split("imagenet16-120", "test", source="imagenet16", root=str(tmp_path))
    assert test_labels.tolist() == [2, 119]
    np.testing.assert_array_equal(test_images.reshape(2, -1), val[[1, 2]])

    (tmp_path / "train_data_batch_7").unlink()
    with pytest.raises(NasflowError, match="train_data_batch_7") as err:
        load_split("imagenet16-120", "train", root=str(tmp_path))
    assert str(tmp_path) in str(err.value)
    with pytest.raises(NasflowError, match="only serves imagenet16-120"):
        load_split("cifar10", "test", source="imagenet16", root=str(tmp_path))


def test_real_cifar10_test_split(tmp_path):
    if not CIFAR10_TGZ.is_file():
        pytest.skip(f"{CIFAR10_TGZ} not present")
    subprocess.run(["tar", "-xzf", str(CIFAR10_TGZ), "-C", str(tmp_path), "test"], check=True)
    images, labels = load_split("cifar10", "test", source="folder", root=str(tmp_path))
    assert images.shape == (10000, 3, 32, 32) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
    means = images.mean(axis=(0, 2, 3)) / 255
    np.testing.assert_allclose(means, (0.4942, 0.4851, 0.4504), atol=0.01)
