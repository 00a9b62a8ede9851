"""Synthetic data sets used to train and evaluate fastv's default model."""

from fastv.zoo.datasets import shapes

__all__ = ["shapes"]
