"""LightningModules of caloflow: the two flows, the CaloGAN baseline and the classifier test."""

from caloflow.models.calogan import CaloGAN
from caloflow.models.classifiers import ShowerClassifier
from caloflow.models.flows import FlowI, FlowII

__all__ = ["CaloGAN", "FlowI", "FlowII", "ShowerClassifier"]
