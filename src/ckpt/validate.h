// Semantic checks of a manifest, run before a restore creates any process: ids,
// parents before children, mappings, page runs, sizes. No kernel interface: pure
// checks of the image's data.
#pragma once

#include <cstdint>

#include "ckpt/manifest.h"

namespace fsched::ckpt {

// Checks every value the restore would otherwise meet half-way, and that the parts'
// data add up to `stream_bytes`, the image's page stream; throws Error("image: ...")
// naming the part.
void validate_manifest(const Manifest& m, std::uint64_t stream_bytes);

}  // namespace fsched::ckpt
