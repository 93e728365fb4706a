"""CaloGAN-format data: geometry, HDF5 I/O, the embedded shower simulator and the DataModule."""

from caloflow.data.io import Showers, count_showers, read_showers, write_showers
from caloflow.errors import DataFormatError
from caloflow.geometry import LAYER_SHAPES, LAYER_SLICES, N_VOXELS

__all__ = [
    "LAYER_SHAPES",
    "LAYER_SLICES",
    "N_VOXELS",
    "Showers",
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
