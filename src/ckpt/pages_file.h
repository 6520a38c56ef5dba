// Internal to the image code: pages.img opened for reading, by the verifier
// (image_reader.cpp) and the page reader (page_reader.cpp).
#pragma once

#include "ckpt/xxh3.h"

#include <cstddef>
#include <cstdint>
#include <filesystem>

#include "common/fd.h"

namespace fsched::ckpt::image_detail {

// Unit of reading pages.img: residency check, copy or pread, hash. Small enough that
// a block just copied is still in the L2 cache when it is hashed.
constexpr std::size_t kIoBlockBytes = 512u << 10;
// Smallest page size we assume (sizes the mincore(2) vector).
constexpr std::size_t kMinPageBytes = 4096;

// pages.img opened for reading. Unless mmap(2) fails it is also mapped (read-only,
// shared): a block whose pages are all in the page cache (cachestat(2), or mincore(2)
// on kernels before 6.5) is then read
// from the mapping -- a user-space memcpy, or hashing in place -- which on the
// machines we measured is 3-5x faster than the in-kernel copy of pread(2) (2 GiB warm:
// ~0.3 s instead of ~1 s); every other block is read with pread(2), so that a short
// file or an I/O error is reported as an fsched::Error, not SIGBUS. The exceptions:
// the file truncated, or a page evicted and then failing to read back, between the
// check and the access; or an I/O error on a page the kernel was still reading ahead
// (both checks count it). Committed images are never modified. Thread-safe: no
// state changes after construction.
class PagesFile {
 public:
  // Opens (and maps) path. Throws ImageError if it is missing, a symbolic link or not a
  // regular file; Error (errno) if it cannot be opened or stat'ed.
  explicit PagesFile(std::filesystem::path path);
  ~PagesFile();
  PagesFile(const PagesFile&) = delete;
  PagesFile& operator=(const PagesFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // File size when opened.
  std::uint64_t size() const { return size_; }
  // Starts reading [off, off+n) into the page cache without waiting (posix_fadvise(2)
  // WILLNEED). Nothing if its first and last pages are there: asking the kernel walks
  // every page of the range, which cost verify_chunks() ~25 ms per GiB and thread on
  // an image in the page cache. Best effort.
  void prefetch(std::uint64_t off, std::uint64_t n) const;

  // The whole file mapped read-only, or nullptr. Only for handing to the kernel
  // (process_vm_writev(2) fails with EFAULT where we would get SIGBUS).
  const std::byte* map() const { return map_; }

  // [off, off+n) in the mapping if it lies within the mapped file and all its pages
  // are in the page cache (cachestat(2), else mincore(2)), for reading in place; else
  // nullptr.
  const std::byte* resident_range(std::uint64_t off, std::uint64_t n) const;

  // Copies [off, off+n) into dst and feeds the copy to `state` (unless null) block by
  // block (each block hashed right after it was copied, while it is in the cache).
  // Returns the number of bytes copied, fewer than n only at end of file. Throws on
  // read errors.
  std::size_t copy_hash(std::uint64_t off, std::size_t n, std::byte* dst,
                        XXH3_state_t* state) const;

  // Feeds [off, off+n) to `state`: in place where resident, else through `scratch`
  // (kIoBlockBytes). Returns the bytes hashed, fewer than n only at end of file.
  std::size_t hash(std::uint64_t off, std::size_t n, XXH3_state_t* state, std::byte* scratch) const;

 private:
  // [off, off+n) (n <= kIoBlockBytes) in the mapping if it lies within the mapped file
  // and all its pages are in the page cache; else nullptr.
  const std::byte* resident(std::uint64_t off, std::size_t n) const;

  const std::filesystem::path path_;
  UniqueFd fd_;
  std::uint64_t size_ = 0;
  std::size_t page_ = kMinPageBytes;
  const std::byte* map_ = nullptr;
};

}  // namespace fsched::ckpt::image_detail
