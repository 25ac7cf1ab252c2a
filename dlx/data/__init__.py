"""Data: MNIST and CIFAR-10 from their official files, a DataLoader that batches on the
device, and batch transforms that run there.

    train = dlx.data.CIFAR10(train=True, download=True)     # root: DLX_DATA_DIR or ~/.cache/dlx
    aug = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(),
                     T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))])
    loader = dlx.data.DataLoader(train, batch_size=128, shuffle=True, seed=0,
                                 device="cuda", transform=aug)
    for x, y in loader: ...                                  # x float32 (N, 3, 32, 32), y int64
"""

from . import transforms
from .datasets import CIFAR10, MNIST, ArrayDataset, UnsafePickleError, read_idx, restricted_loads
from .download import (
    DataFormatError,
    DownloadError,
    UnsafeArchiveError,
    default_root,
    download_file,
    extract_tar,
)
from .loader import DataLoader
from .transforms import Compose, Normalize, RandomCrop, RandomHorizontalFlip

__all__ = [
    "CIFAR10",
    "MNIST",
    "ArrayDataset",
    "Compose",
    "DataFormatError",
    "DataLoader",
    "DownloadError",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "UnsafeArchiveError",
    "UnsafePickleError",
    "default_root",
    "download_file",
    "extract_tar",
    "read_idx",
    "restricted_loads",
    "transforms",
]
