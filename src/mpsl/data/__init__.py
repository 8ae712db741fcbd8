"""Datasets (registered by name), their specs, and client partitions."""

from mpsl.data.partition import PARTITIONS, partition
from mpsl.data.sources import DATASETS, load_dataset, prepare_dataset
from mpsl.data.spec import Dataset, DatasetSpec, ModalitySpec, SplitData

__all__ = ["DATASETS", "PARTITIONS", "Dataset", "DatasetSpec", "ModalitySpec", "SplitData",
           "load_dataset", "partition", "prepare_dataset"]

import mpsl.data.datasets  # noqa: F401  (registers the file datasets)
