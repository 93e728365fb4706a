"""LightningModules of caloflow."""
from caloflow.models.flows import FlowI, FlowII

__all__ = ["FlowI", "FlowII"]
