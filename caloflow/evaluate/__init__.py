"""Judging generators: physics features, separation power, figures, the classifier test."""
