"""Measured speed and memory of a model with and without a method."""
