"""setuptools needs setup.py only for cffi_modules (pyproject has no key
for it)."""

from setuptools import setup

setup(cffi_modules=["native/build_ffi.py:ffibuilder"])
