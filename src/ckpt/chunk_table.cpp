// The chunk table (chunk_table.h): what the writer records and the reader checks
// before it reads a byte of pages.img.
#include "ckpt/chunk_table.h"

#include <zstd.h>

#include <algorithm>
#include <optional>

#include "ckpt/image_files.h"

namespace fsched::ckpt::image_detail {

using json = nlohmann::json;

json chunk_table_json(const std::vector<ChunkInfo>& chunks) {
  json out = json::array();
  for (const ChunkInfo& c : chunks) {
    json e = {{"offset", c.offset}, {"stored", c.stored}, {"raw", c.raw}, {"xxh3", hex64(c.xxh3)}};
    if (!c.zstd) e["zstd"] = false;
    out.push_back(std::move(e));
  }
  return out;
}

std::uint64_t get_u64(const json& obj, const char* key, const fs::path& mpath,
                      const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end()) bad_image("{}: {}missing \"{}\"", mpath.native(), where, key);
  if (!it->is_number_unsigned())
    bad_image("{}: {}\"{}\" must be a non-negative integer, got {}", mpath.native(), where, key,
              it->dump());
  return it->get<std::uint64_t>();
}

// Every number of a manifest is an integer (manifest.h); a float, which the writer never
// stores, would make its mapping to ckpt::Manifest undefined (get<int>() of 1e300).

std::shared_ptr<const ChunkTable> parse_chunk_table(const json& m, const fs::path& mpath) {
  auto table = std::make_shared<ChunkTable>();
  auto it = m.find("chunks");
  if (it == m.end()) bad_image("{}: missing chunk table \"chunks\"", mpath.native());
  if (!it->is_array()) bad_image("{}: \"chunks\" must be an array", mpath.native());
  const std::uint64_t max_stored = ZSTD_compressBound(kChunkRawBytes);
  table->chunks.reserve(it->size());
  for (std::size_t i = 0; i < it->size(); ++i) {
    const json& e = (*it)[i];
    std::string where = fmt::format("chunk {}: ", i);
    if (!e.is_object()) bad_image("{}: {}entry must be an object", mpath.native(), where);
    ChunkInfo c;
    c.offset = get_u64(e, "offset", mpath, where);
    c.stored = get_u64(e, "stored", mpath, where);
    c.raw = get_u64(e, "raw", mpath, where);
    auto h = e.find("xxh3");
    std::optional<std::uint64_t> hv;
    if (h != e.end() && h->is_string()) hv = parse_hex64(h->get_ref<const std::string&>());
    if (!hv) bad_image("{}: {}\"xxh3\" must be a string of 16 hex digits", mpath.native(), where);
    c.xxh3 = *hv;
    if (auto z = e.find("zstd"); z != e.end()) {
      if (!z->is_boolean())
        bad_image("{}: {}\"zstd\" must be true or false", mpath.native(), where);
      c.zstd = z->get<bool>();
    }
    if (c.offset != align_up(table->file_bytes))
      bad_image(
          "{}: {}offset {} is not the first multiple of {} after the end of the previous "
          "chunks ({})",
          mpath.native(), where, c.offset, kChunkAlignBytes, table->file_bytes);
    if (c.raw == 0 || c.raw > kChunkRawBytes)
      bad_image("{}: {}raw size {} out of range 1..{}", mpath.native(), where, c.raw,
                kChunkRawBytes);
    if (c.stored == 0 || c.stored > max_stored)
      bad_image("{}: {}stored size {} out of range 1..{}", mpath.native(), where, c.stored,
                max_stored);
    if (!c.zstd && c.stored != c.raw)
      bad_image("{}: {}stored uncompressed (\"zstd\": false) but stored size {} is not raw size {}",
                mpath.native(), where, c.stored, c.raw);
    table->stored_bytes += c.stored;
    table->file_bytes = c.offset + c.stored;
    table->logical_bytes += c.raw;
    table->max_raw = std::max(table->max_raw, c.raw);
    if (c.zstd) table->max_zstd_stored = std::max(table->max_zstd_stored, c.stored);
    table->chunks.push_back(c);
  }
  std::uint64_t logical = get_u64(m, "pages_logical_bytes", mpath, "");
  std::uint64_t stored = get_u64(m, "pages_stored_bytes", mpath, "");
  if (logical != table->logical_bytes)
    bad_image("{}: pages_logical_bytes is {} but the chunks hold {} bytes", mpath.native(), logical,
              table->logical_bytes);
  if (stored != table->stored_bytes)
    bad_image("{}: pages_stored_bytes is {} but the chunks store {} bytes", mpath.native(), stored,
              table->stored_bytes);
  return table;
}

// Manifest "sections", each entry {"name": a known section, "offset": integer}; the

}  // namespace fsched::ckpt::image_detail
