"""Triton kernels of fastmix, installed as ``fastmix.kernels``."""
