// glotta._native: one register_* function per bound concern (CTranslate2's layout).
#pragma once
#include <pybind11/pybind11.h>

namespace glotta {
void register_tar(pybind11::module_& m);
void register_tar_write(pybind11::module_& m);
void register_pack(pybind11::module_& m);
void register_lanes(pybind11::module_& m);
void register_mix(pybind11::module_& m);
void register_text(pybind11::module_& m);
void register_index_lookup(pybind11::module_& m);
void register_index_heads(pybind11::module_& m);
void register_seed(pybind11::module_& m);
}  // namespace glotta
