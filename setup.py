"""setuptools needs setup.py only for cffi_modules (no pyproject key for it)."""

from setuptools import setup

setup(cffi_modules=["native/build_ffi.py:ffibuilder"])
