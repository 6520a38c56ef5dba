// Internal to the image code: the chunk table of pages.img (manifest "chunks", see
// image.h for its format) in memory, and its conversion from and to JSON.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace fsched::ckpt::image_detail {

// One chunk of pages.img.
struct ChunkInfo {
  std::uint64_t offset = 0;  // in pages.img
  std::uint64_t stored = 0;  // bytes in pages.img
  std::uint64_t raw = 0;     // logical bytes
  std::uint64_t xxh3 = 0;    // of the stored bytes
  bool zstd = true;          // a zstd frame; else the raw bytes (stored == raw)
};

// The whole table, with the totals the reader sizes its buffers by.
struct ChunkTable {
  std::vector<ChunkInfo> chunks;
  std::uint64_t logical_bytes = 0;
  std::uint64_t stored_bytes = 0;
  std::uint64_t max_raw = 0;
  std::uint64_t max_zstd_stored = 0;  // largest stored size of a zstd chunk (0: none)
  std::uint64_t file_bytes = 0;       // size of pages.img: the end of the last chunk
};

// Manifest "chunks" of the chunks written, in stream order (the writer's side).
nlohmann::json chunk_table_json(const std::vector<ChunkInfo>& chunks);

// Parses and checks manifest "chunks" and the totals "pages_logical_bytes" and
// "pages_stored_bytes" of manifest m (read from mpath): offsets aligned to
// kChunkAlignBytes right after the previous chunk, sizes in range, "zstd" a boolean,
// stored == raw for a raw chunk, totals consistent. Throws ImageError naming mpath and
// the chunk.
std::shared_ptr<const ChunkTable> parse_chunk_table(const nlohmann::json& m,
                                                    const std::filesystem::path& mpath);

// obj[key] as a non-negative integer; throws ImageError naming mpath, `where` (a prefix
// such as "chunk 3: ") and the key if it is missing or not one.
std::uint64_t get_u64(const nlohmann::json& obj, const char* key,
                      const std::filesystem::path& mpath, const std::string& where);

}  // namespace fsched::ckpt::image_detail
