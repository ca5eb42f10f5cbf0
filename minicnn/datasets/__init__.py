"""Datasets, loaded as Keras loads them: `minicnn.datasets.fashion_mnist.load_data()`.

idx.py reads the IDX format, download.py fetches a file safely, fashion_mnist.py finds,
verifies and loads Fashion-MNIST.
"""
from . import fashion_mnist
from .download import DownloadError
from .fashion_mnist import ChecksumError, DataNotFoundError
from .idx import read_idx

__all__ = ["fashion_mnist", "read_idx", "ChecksumError", "DataNotFoundError", "DownloadError"]
