"""Shower data: HDF5 I/O (CaloGAN and CaloChallenge formats), the embedded shower simulators and
the DataModule."""

from caloflow.data.io import Showers, count_showers, file_geometry, read_showers, write_showers
from caloflow.errors import DataFormatError

__all__ = [
    "Showers",
    "file_geometry",
    "count_showers",
    "read_showers",
    "write_showers",
    "DataFormatError",
    "CaloDataModule",
]


def __getattr__(name):
    # the DataModule pulls in torch and Lightning; load it only when asked for
    if name == "CaloDataModule":
        from caloflow.data.datamodule import CaloDataModule

        return CaloDataModule
    raise AttributeError(name)
