// Internal to the image code: how ImageReader::pages() makes a PageReader (image.h).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <utility>
#include <vector>

#include "ckpt/chunk_table.h"
#include "ckpt/image.h"
#include "ckpt/pages_file.h"
#include "ckpt/sections.h"

namespace fsched::ckpt::image_detail {

// A reader of the page stream of `table` in pages_path. file: pages.img as
// verify_chunks() mapped it, or null to open it here (unless the stream is empty);
// verified: every chunk was found good by verify_chunks(), so raw chunks may be handed
// out of the mapping. sections: manifest "sections", for enter_section(). start: the
// stream offset (bytes) of the first byte to read; from 0 the worker starts decoding
// chunk 0 at once, else nothing is decoded until it is read (ImageReader::pages_at).
// pool: where the chunk buffers come from and go back to, or null to allocate them.
// Throws like PagesFile's constructor, or ImageError if start is past the stream's end.
std::unique_ptr<PageReader> make_page_reader(
    std::shared_ptr<const ChunkTable> table, std::filesystem::path pages_path,
    std::shared_ptr<const PagesFile> file, bool verified,
    std::vector<std::pair<Section, std::uint64_t>> sections, std::uint64_t start,
    std::shared_ptr<ChunkBufferPool> pool);

}  // namespace fsched::ckpt::image_detail
