"""Errors that the command line reports as one line, without a traceback."""

from __future__ import annotations


class CaloflowError(Exception):
    """Base class of caloflow's user-facing errors (bad input, bad option, bad file)."""


class DataFormatError(CaloflowError, ValueError):
    """A file that is not a valid CaloGAN-format HDF5 file; the message names file, key and row."""


__all__ = ["CaloflowError", "DataFormatError"]
