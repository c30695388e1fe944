// Only registers the bound concerns; each lives in its own file.
#include "module.h"

PYBIND11_MODULE(_native, m) {
  m.doc() = "glotta's C++ hot paths (tar reading, packing, mixing). No torch: numpy buffers only.";
  glotta::register_tar(m);
  glotta::register_tar_write(m);
  glotta::register_pack(m);
  glotta::register_lanes(m);
  glotta::register_mix(m);
  glotta::register_text(m);
  glotta::register_index_lookup(m);
  glotta::register_index_heads(m);
  glotta::register_seed(m);
}
