// Internal to the image code: turning chunks of pages.img into their raw bytes --
// checking them against the chunk table and decompressing them -- for the verifier and
// the page reader, and the ordered claiming of chunks by several threads.
#pragma once

#include "ckpt/xxh3.h"
#include <zstd.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>

#include "ckpt/chunk_table.h"
#include "ckpt/image_files.h"
#include "ckpt/pages_file.h"

namespace fsched::ckpt::image_detail {

// Throws ImageError: chunk `index` (c) of the file at path hashes to h, not c.xxh3.
[[noreturn]] void fail_checksum(const fs::path& path, std::size_t index, const ChunkInfo& c,
                                std::uint64_t h);

// Decompresses a zstd chunk's (checked) stored bytes src into dst (c.raw bytes).
// Throws ImageError naming path, the chunk and its offset if src is not a zstd frame of
// exactly c.raw bytes.
void zstd_decode_chunk(ZSTD_DCtx* dctx, const fs::path& path, std::size_t index, const ChunkInfo& c,
                       const std::byte* src, std::byte* dst);

// has been claimed -- and is finished once the threads are done -- so the error kept
// does not depend on the thread timing. Thread-safe.
class ChunkClaims {
 public:
  ChunkClaims(std::size_t first, std::size_t end) : next_(first), end_(end) {}

  // The next chunk to work on, or nothing once none is left or a chunk before it failed.
  std::optional<std::size_t> claim() {
    std::size_t i = next_.fetch_add(1, std::memory_order_relaxed);
    if (i >= end_ || i > bad_hint_.load(std::memory_order_relaxed)) return std::nullopt;
    return i;
  }
  // Chunk `index` failed with e (any index, claimed here or not).
  void failed(std::size_t index, std::exception_ptr e) {
    std::lock_guard lk(mu_);
    if (index < bad_) {
      bad_ = index;
      error_ = std::move(e);
      bad_hint_.store(index, std::memory_order_relaxed);
    }
  }
  // A failure of no chunk (a thread's allocation): kept unless a chunk failed; ends the
  // claims.
  void failed_outside(std::exception_ptr e) {
    std::lock_guard lk(mu_);
    if (!error_) error_ = std::move(e);
    next_.store(end_, std::memory_order_relaxed);
  }
  // The index of the chunk whose error is kept (the lowest that failed), or SIZE_MAX
  // if none failed; read it once the threads are done.
  std::size_t first_failed() const {
    std::lock_guard lk(mu_);
    return bad_;
  }
  // The error kept, or null; read it once the threads are done.
  std::exception_ptr error() const {
    std::lock_guard lk(mu_);
    return error_;
  }

 private:
  std::atomic<std::size_t> next_;
  const std::size_t end_;
  std::atomic<std::size_t> bad_hint_{
      std::numeric_limits<std::size_t>::max()};  // stops claims early
  mutable std::mutex mu_;
  std::size_t bad_ = std::numeric_limits<std::size_t>::max();  // guarded by mu_
  std::exception_ptr error_;                                   // guarded by mu_
};

// Where a chunk's bytes are: `data` points to its first byte. `in_file` says that it

// read; else into the buffer the chunk was decoded into.
struct ChunkBytes {
  const std::byte* data = nullptr;
  bool in_file = false;
};

// What one thread needs to turn chunks of pages.img into their raw bytes: a zstd
// context, a buffer for stored bytes and a hash state, each made on first use.
class ChunkDecoder {
 public:
  ChunkDecoder(const PagesFile& file, const ChunkTable& table, bool verified)
      : file_(file), table_(table), verified_(verified && file.map() != nullptr) {}

  // Chunk `index` (table.chunks[index].raw bytes). Of an image whose chunks were all
  // verified, a raw chunk is the mapped file itself (in_file), and a zstd chunk whose
  // pages are resident is decompressed from the mapping into `out` (max_raw bytes);
  // neither is copied or hashed again. Any other chunk is copied out of pages.img,
  // checked against its xxh3 and decompressed into `out` (a raw one copied there).
  // Throws fsched::ImageError naming pages.img, the chunk and its offset: truncated
  // file, checksum mismatch, bad zstd frame; or Error (errno) on a read error.
  ChunkBytes get(std::size_t index, std::byte* out);

 private:
  ZSTD_DCtx* dctx();

  const PagesFile& file_;
  const ChunkTable& table_;
  const bool verified_;
  std::unique_ptr<ZSTD_DCtx, DCtxFree> dctx_;
  std::unique_ptr<std::byte[]> stored_;
  std::unique_ptr<XXH3_state_t, XXH3StateFree> xxh_;
};

// Whole chunks [first, end) of one copy_to_process() call, shared between the caller's
// thread and the reader's worker: each claims the next chunk, decodes it into its own
// buffer and writes it into the process, so that both decompression and the filling of

}  // namespace fsched::ckpt::image_detail
