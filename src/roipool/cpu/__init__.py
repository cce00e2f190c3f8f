"""Numba CPU kernels. Inputs here are already validated and channels-last."""
