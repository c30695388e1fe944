"""Builds the C++ extension glotta._native at install time (pip install -e . / pip install .)."""
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ext = Pybind11Extension(
    "glotta._native",
    sorted(glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=["-O3"],
)
setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
