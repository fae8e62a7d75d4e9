"""The data a stage trains on is part of what it depends on: its content hash, not its path."""
from __future__ import annotations

import hashlib
import shutil

import pytest
import yaml

from pipeline_steps.common.errors import NasflowError
from pipeline_steps.data import identity as data_identity
from pipeline_steps.data.identity import TORCHVISION_FILES, check_data_identity, data_id
from tests.project import copy_project, jobs_to_run, snakemake, tiny_params


@pytest.fixture
def copy_of(tmp_path, tiny_folder):
    def make(name):
        return shutil.copytree(tiny_folder, tmp_path / name, ignore=shutil.ignore_patterns(".nasflow-cache"))
    return make


def test_same_content_elsewhere_has_the_same_identity(copy_of, tiny_folder):
    assert data_id("cifar10", copy_of("elsewhere"), "folder") == data_id("cifar10", tiny_folder, "folder")


def test_one_changed_image_changes_the_identity(copy_of):
    a, b = copy_of("a"), copy_of("b")
    image = next((b / "train" / "class03").iterdir())
    image.write_bytes(image.read_bytes() + b"\0")
    assert data_id("cifar10", a, "folder") != data_id("cifar10", b, "folder")


def test_moved_image_changes_the_identity(copy_of):
    """An image under another class is another label: other data."""
    a, b = copy_of("a"), copy_of("b")
    image = next((b / "train" / "class03").iterdir())
    image.rename(b / "train" / "class04" / f"moved-{image.name}")
    assert data_id("cifar10", a, "folder") != data_id("cifar10", b, "folder")


def test_cached_identity_reads_no_file_until_one_changes(copy_of, monkeypatch):
    root = copy_of("cached")
    first = data_id("cifar10", root, "folder")
    real = data_identity._file_digest
    monkeypatch.setattr(data_identity, "_file_digest", lambda *a: pytest.fail("read a file again"))
    assert data_id("cifar10", root, "folder") == first
    image = next((root / "test" / "class01").iterdir())
    image.write_bytes(image.read_bytes() + b"\0")
    monkeypatch.setattr(data_identity, "_file_digest", real)
    assert data_id("cifar10", root, "folder") != first


def test_torchvision_files_before_and_after_download_have_one_identity(tmp_path, monkeypatch):
    """Absent files that will be downloaded are identified by their published checksums, which
    are what the downloaded files hash to."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    files = []
    for i in range(3):
        (folder / f"batch{i}").write_bytes(bytes([i]) * 1000)
        files.append((f"batch{i}", hashlib.md5(bytes([i]) * 1000).hexdigest()))
    monkeypatch.setitem(TORCHVISION_FILES, "cifar10", tuple(files))
    present = data_id("cifar10", tmp_path, "torchvision")
    absent = data_id("cifar10", tmp_path / "not-yet", "torchvision", download=True)
    assert present == absent
    (folder / "batch1").write_bytes(b"other")
    assert data_id("cifar10", tmp_path, "torchvision") != absent


def test_checksums_are_torchvisions():
    import torchvision.datasets as tv

    for name, cls in (("cifar10", tv.CIFAR10), ("cifar100", tv.CIFAR100)):
        assert [tuple(x) for x in (*cls.train_list, *cls.test_list)] == list(TORCHVISION_FILES[name])


def test_stage_refuses_data_changed_after_planning(copy_of):
    root = copy_of("planned")
    planned = data_id("cifar10", root, "folder")
    image = next((root / "train" / "class00").iterdir())
    image.write_bytes(image.read_bytes() + b"\0")
    with pytest.raises(NasflowError, match="not the data this stage was planned with"):
        check_data_identity("cifar10", planned, {"root": str(root), "source": "folder", "download": False})


@pytest.mark.e2e
def test_new_data_reruns_and_the_same_data_elsewhere_does_not(tmp_path, tiny_folder):
    data = shutil.copytree(tiny_folder, tmp_path / "data")
    project = copy_project(tmp_path / "project")
    tiny_params(project, data)
    base = project / "params" / "nasflow.yaml"
    cfg = yaml.safe_load(base.read_text())
    cfg["methods"], cfg["seeds"], cfg["diagnostics"]["ranking"]["enabled"] = ["darts"], [0], False
    base.write_text(yaml.safe_dump(cfg, sort_keys=False))
    local = project / "params" / "local.yaml"
    snakemake(cwd=project)
    first = yaml.safe_load((project / "results" / "nb201" / "cifar10" / "seed0" / "darts" / "lookup" /
                            "result.json").read_text())

    moved = shutil.copytree(data, tmp_path / "moved", ignore=shutil.ignore_patterns(".nasflow-cache"))
    local.write_text(local.read_text().replace(str(data), str(moved)))
    assert jobs_to_run(snakemake("-n", cwd=project)) == {}

    image = next((data / "train" / "class05").iterdir())  # new data under the first path
    image.write_bytes(image.read_bytes() + b"\0")
    local.write_text(local.read_text().replace(str(moved), str(data)))
    todo = jobs_to_run(snakemake("-n", cwd=project))
    assert todo.get("supernet") == 1 and todo.get("benchmark_lookup") == 1, todo
    assert first["data_fingerprint"]
