"""Build script: everything static lives in pyproject.toml; this file only adds the C engine.

The cffi builder in csrc/ is compiled into ``minicnn._kernels``. A compile failure must not
break the install: minicnn then runs on its pure-NumPy engine (see minicnn/kernels/).
"""
from setuptools import setup

setup()
