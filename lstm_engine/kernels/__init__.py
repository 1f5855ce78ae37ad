"""Numba kernels: arrays and integers in, no Python objects, no validation."""
