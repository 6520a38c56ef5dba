// The on-disk checkpoint image: a directory holding a versioned manifest and a
// stream of page data stored as zstd-compressed, xxh3-checksummed chunks.
//
// Layout of an image directory DIR (files 0600, directory 0700):
//   DIR/manifest.json   the manifest (JSON object, see manifest.h); the writer adds
//                       "format_version", "engine_version" and the chunk table "chunks"
//   DIR/manifest.xxh3   16 lowercase hex digits: XXH3-64 of manifest.json's bytes
//   DIR/pages.img       concatenated chunks; each chunk is one zstd frame holding up
//                       to kChunkRawBytes bytes of the logical page stream
// The page stream is one logical byte string: the dumper appends the contents of
// memory pages in a fixed order and the restorer reads them back in that order, so
// the manifest only needs sizes, not offsets.
//
// Crash safety: the writer builds DIR.tmp/, fsyncs every file and the directory,
// then renames DIR.tmp to DIR and fsyncs the parent, so a directory named DIR is
// always complete. An ImageWriter destroyed before commit() removes DIR.tmp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>

#include <nlohmann/json.hpp>

namespace fsched::ckpt {

inline constexpr int kImageFormatVersion = 1;
// Raw (uncompressed) bytes per chunk of the page stream.
inline constexpr std::size_t kChunkRawBytes = 4u << 20;

// Writes an image. Not thread-safe; append_pages() may hand full chunks to an
// internal worker thread so that compression overlaps with reading the job's memory.
// Memory use is bounded by a few chunks whatever the image size.
// A failure in the worker is reported by the next append_pages() or commit(). Once a
// call has thrown (except commit() refusing a non-object manifest) the writer stays
// failed: every further call throws; destroy it to remove DIR.tmp.
class ImageWriter {
 public:
  // Creates DIR.tmp (mode 0700; a stale DIR.tmp from a crashed dump is removed first).
  // zstd_level: zstd compression level (1..19, or negative for the fast levels).
  // Throws fsched::Error naming the path if DIR already exists or DIR.tmp cannot be
  // created (EACCES, ENOSPC, ENOENT of the parent ...).
  static std::unique_ptr<ImageWriter> create(const std::filesystem::path& dir, int zstd_level);

  virtual ~ImageWriter() = default;

  // Appends bytes to the logical page stream. Throws fsched::Error on a write
  // failure (ENOSPC, EIO) naming pages.img.
  virtual void append_pages(std::span<const std::byte> data) = 0;

  // Bytes appended so far (logical, uncompressed).
  virtual std::uint64_t logical_bytes() const = 0;
  // Bytes written to pages.img so far (compressed); final after commit().
  virtual std::uint64_t stored_bytes() const = 0;

  // Flushes the last chunk, stores `manifest` (adding format_version, engine_version
  // and chunks), writes manifest.xxh3, fsyncs, renames DIR.tmp to DIR.
  // Throws fsched::Error on any failure; DIR then does not exist.
  virtual void commit(nlohmann::json manifest) = 0;

  // Path of the finished image (DIR).
  virtual const std::filesystem::path& path() const = 0;
};

// Reads the logical page stream of an image sequentially. It does not depend on the
// ImageReader that made it staying alive. After a chunk error every read() throws.
class PageReader {
 public:
  virtual ~PageReader() = default;
  // Fills `out` with the next out.size() bytes of the stream. Throws fsched::Error
  // naming the chunk index and pages.img offset on a checksum mismatch, a zstd error
  // or a stream shorter than requested. A read past the end of the stream throws
  // before consuming anything.
  virtual void read(std::span<std::byte> out) = 0;
};

// Opens an image for restore or inspection.
class ImageReader {
 public:
  // Reads manifest.json and manifest.xxh3 and checks the checksum, that the manifest
  // parses and that format_version == kImageFormatVersion.
  // Throws fsched::Error with the path and what is wrong ("DIR is not a checkpoint
  // image (no manifest.json)", "manifest checksum mismatch", "image format 2, this
  // engine reads 1", ...). Also checks that the chunk table is well-formed (offsets
  // contiguous from 0, sizes in range, totals consistent); it does not read pages.img.
  static std::unique_ptr<ImageReader> open(const std::filesystem::path& dir);

  virtual ~ImageReader() = default;
  virtual const nlohmann::json& manifest() const = 0;
  virtual const std::filesystem::path& path() const = 0;

  // Reads all of pages.img and checks every chunk's size and xxh3 against the chunk
  // table, and that pages.img has no trailing bytes. Throws fsched::Error naming the
  // first bad chunk (index, file offset). Does not decompress.
  virtual void verify_chunks() const = 0;

  // A sequential reader of the logical page stream from its start. It may decompress
  // the next chunk on a worker thread while the caller consumes the current one.
  virtual std::unique_ptr<PageReader> pages() const = 0;
};

}  // namespace fsched::ckpt
