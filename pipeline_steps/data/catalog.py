"""The datasets the pipeline knows: classes, image size, and the normalisation statistics."""
from __future__ import annotations

from dataclasses import dataclass

from ..common.errors import NasflowError


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("cifar10", 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        DatasetInfo("cifar100", 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
        DatasetInfo("imagenet16-120", 120, 16,
                    tuple(x / 255 for x in (122.68, 116.66, 104.01)),
                    tuple(x / 255 for x in (63.22, 61.26, 65.09))),
    )
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise NasflowError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}") from None
