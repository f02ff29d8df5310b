"""deepshrink.data: real data sets read from their own on-disk formats, without torchvision.

    from deepshrink.data import get_dataset, make_loader, subset
    train = get_dataset("cifar10", "train", root="~/.cache/deepshrink/cifar10-jpeg")
    loader = make_loader(train, 128, train=True, seed=0)       # float32 NCHW, int64 labels
    calib = subset(train, ratio=0.01)                          # stratified, saved, reused

One file per format: idx (MNIST, Fashion-MNIST), cifar (python batches), svhn (.mat), stl10 (.bin),
folder (class folders of JPEG/PNG), lmdb_store (LMDB of encoded images), plus digits (scikit-learn).
"""
from .args import add_data_args, dataset_from_args
from .base import STATS, DatasetMeta, LazyImageDataset, TensorImageDataset, data_record
from .datasets import DATASETS, DatasetSpec, get_dataset, list_datasets, register_dataset
from .loader import make_loader
from .roots import cache_dir, candidate_roots
from .subset import stratified_indices, subset

__all__ = ["DATASETS", "STATS", "DatasetMeta", "DatasetSpec", "LazyImageDataset", "TensorImageDataset",
           "add_data_args", "cache_dir", "candidate_roots", "data_record", "dataset_from_args", "get_dataset",
           "list_datasets", "make_loader", "register_dataset", "stratified_indices", "subset"]
