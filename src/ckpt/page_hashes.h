// Per-page hashes: the fallback of issue 14 for memory whose written pages the kernel
// cannot report (docs/incremental.md). A dump with TrackMethod::kHash reads every
// page of a mapping, hashes it (XXH3-128, xxhash.h) and compares the hash with the
// one its parent image holds for the same process and address: an equal page is
// taken from the parent chain (Vma::parent_runs), another is stored (Vma::runs). The
// image then holds the hash of each page of both lists, in the page stream's
// "page_hashes" section (sections.h), for the next dump: first per shared memory
// object with ShmObject::track kHash (Manifest::shm order), then per deleted file with
// DeletedFile::track kHash (Manifest::deleted_files order), then per live process in
// manifest order, per mapping with Vma::track kHash in order, then (format 12) per SysV
// segment with SysvShm::track kHash (Manifest::sysv_shm order), one kPageHashBytes hash
// per page of runs and parent_runs merged in page order. The segments come last, though
// their section comes before the pages, so that the section of an image without them
// reads as before. Shared memory (shm objects, deleted files, SysV segments) is hashed
// by every dump that tracks, whatever the method: the kernel's written bits are per
// process and miss writes through another mapper or the object's fd. No kernel
// interface: the pages come from memory.cpp, shmem.cpp and sysvshm.cpp.
//
// Equal hashes mean equal pages up to a 128-bit collision, which only the job's own
// data could provoke and which could then only hand the job an older copy of its own
// page.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "ckpt/image.h"
#include "ckpt/manifest.h"

namespace fsched::ckpt {

// Bytes of one page's hash in the "page_hashes" section (XXH3-128 in its canonical,
// big-endian form, XXH128_canonicalFromHash).
inline constexpr std::size_t kPageHashBytes = 16;

using PageHash = std::array<std::byte, kPageHashBytes>;

// The hash of one 4096-byte page at `page`.
PageHash hash_page(const std::byte* page);

// The hashes a parent image holds, by process (pid in the job) and page address.
class ParentHashes {
 public:
  // Reads the "page_hashes" section of the image `reader` (opened: its signature
  // checked; its manifest parsed as `m`), a full, incremental or pre-dump image, and
  // only that section (the pages before it are passed over, and their chunks not
  // checked). An image without hashed mappings gives an empty table. Throws
  // ImageError naming the image when the section is missing, is not the stream's
  // last bytes exactly, or its mappings' runs are out of order, overlap or go past
  // the mapping; Error on a read failure.
  static ParentHashes load(const ImageReader& reader, const Manifest& m);

  // Whether the image hashed any process's mapping (a --track-method hash dump on it
  // can be incremental).
  bool any_mappings() const { return any_mappings_; }

  // Looks pages up in increasing address order for one process: far cheaper than a
  // search per page over the hundreds of thousands of pages of a large job.
  class Cursor {
   public:
    // The hash the image holds for the page at `addr`, or null. `addr` must not be
    // below the one asked for before.
    const PageHash* find(std::uint64_t addr);

   private:
    friend class ParentHashes;
    using Entry = std::pair<std::uint64_t, PageHash>;
    const Entry* it_ = nullptr;
    const Entry* end_ = nullptr;
  };
  // A cursor over process `pid`'s pages, by address (none if the image has none of it).
  Cursor cursor(int pid) const;
  // A cursor over the pages of shared memory object or deleted file `key`
  // (ShmObject::key, DeletedFile::key), by page index (none if the image did not hash
  // it).
  Cursor object_cursor(const std::string& key) const;
  // The same for an object that is taken from the parent only while its size is the
  // same (a SysV segment, sysv_object_key: an id given again to a new segment): none
  // if the image's object `key` had another size than `size` bytes.
  Cursor object_cursor(const std::string& key, std::uint64_t size) const;

 private:
  using List = std::vector<std::pair<std::uint64_t, PageHash>>;
  bool any_mappings_ = false;
  std::map<int, List> by_pid_;
  std::map<std::string, List> by_object_;
  std::map<std::string, std::uint64_t> object_size_;  // bytes, by key
};

// A dump's hashing: the parent's hashes to compare with (null for a full image) and
// the hashes of the image being written: `out` in section order, then `tail` (the
// SysV segments', which the section holds after the processes' mappings').
struct PageHashing {
  const ParentHashes* parent = nullptr;
  std::vector<PageHash> out;
  std::vector<PageHash> tail;
};

}  // namespace fsched::ckpt
