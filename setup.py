"""Shim for Beam's --setup_file (Dataflow workers install the job's package from its sdist).

Everything is declared in pyproject.toml. Beam builds the sdist with `python -m build` when the
`build` module is installed in the launching environment, else with `python setup.py sdist`,
which needs this file: `--setup_file ./setup.py` works in both cases (docs/runners.md).
"""
from setuptools import setup

setup()
