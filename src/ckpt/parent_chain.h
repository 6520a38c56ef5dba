// Restore of an incremental image (docs/incremental.md): the chain of parent images
// below it, verified before any process exists, and the pages each process takes from
// it (Vma::parent_runs), by address: from the newest link that has data there.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "ckpt/image.h"
#include "ckpt/manifest.h"

namespace fsched::ckpt {

// Most links a chain may have (an image names its parent, which names its own ...).
inline constexpr std::size_t kMaxChainLinks = 64;

namespace chain_detail {
// One stretch of a process's address space (or of an object) in one link: stored at
// `off` in the link's page stream, or (off == ~0) taken from the link's parent.
struct Seg {
  std::uint64_t start, end, off;
};
// A stretch of one link's page stream that goes into the process or object: stream
// offset, address (or offset in the object), length in bytes.
struct Piece {
  std::uint64_t off, addr, len;
};
}  // namespace chain_detail

class ParentChain {
 public:
  // Opens every link below `m`, the manifest of the image in `dir`: each parent must
  // be a directory holding an image signed with `key` (ImageReader::open), whose
  // image_id is the one its child names, which is an incremental image, a full image
  // or a pre-dump (a full image or a pre-dump ends the chain), and whose chunks all
  // verify. The chunks of `head` (the reader of the image in `dir`, unless null) and
  // of every link are verified together once all the links are open
  // (verify_images). A parent's `dir` is resolved against its child's parent
  // directory when relative. Throws ImageError naming the link (missing, replaced by
  // another image, damaged, a cycle or more than kMaxChainLinks links), or what
  // verify_chunks() throws for `head`.
  static std::unique_ptr<ParentChain> open(const std::filesystem::path& dir, const Manifest& m,
                                           std::span<const std::byte> key,
                                           const ImageReader* head = nullptr);

  // Writes into host process `host_pid`, process `pid` of the job, the pages of
  // `ranges` ({start, end} byte addresses, page aligned, ascending, not overlapping) as
  // the chain has them; where no link has data the memory is left as mapped (zeros,
  // or a file's contents). The memory must be mapped writable. Throws Error naming
  // the link and address when a read or a write fails.
  void fill(int pid, pid_t host_pid, std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges);

  // Writes into shared memory object or deleted file `key` (ShmObject::key,
  // DeletedFile::key), open for writing as `fd`
  // and `size` bytes long, the pages of `runs` ({first page, count}, ascending) as the
  // chain has them (pwrite(2); nothing past `size`); where no link has data the object
  // is left as it is. Throws Error naming the object when a read or a write fails.
  void fill_object(const std::string& key, int fd, std::uint64_t size,
                   const std::vector<std::pair<std::uint64_t, std::uint64_t>>& runs);

  // Writes into the `size` bytes of memory at `base` in this process, SysV segment
  // `key` (sysv_object_key) as the restorer attached it, the pages of `runs` ({first
  // page, count}, ascending) as the chain has them (process_vm_writev(2) to this
  // process; nothing past `size`); where
  // no link has data the memory is left as it is. A segment has no fd to pwrite(2)
  // through, and the restorer maps it anyway to fill it from the page stream. Throws
  // Error naming the segment when a read fails.
  void fill_memory(const std::string& key, std::byte* base, std::uint64_t size,
                   const std::vector<std::pair<std::uint64_t, std::uint64_t>>& runs);

  // The image directories of the links, newest first.
  std::vector<std::filesystem::path> links() const;

  ~ParentChain();

 private:
  struct Link;
  using Seg = chain_detail::Seg;
  using Piece = chain_detail::Piece;
  ParentChain() = default;
  // A write of n bytes at src to offset `to` of an object (fill_key).
  using ObjectWrite = std::function<void(const std::byte* src, std::size_t n, std::uint64_t to)>;
  // fill_object() and fill_memory(): the pages of `runs` of object `key` (`size` bytes)
  // as the chain has them, each stretch handed to `write` (never past `size`).
  void fill_key(const std::string& key, std::uint64_t size,
                const std::vector<std::pair<std::uint64_t, std::uint64_t>>& runs,
                const ObjectWrite& write);
  // The common walk of fill(), fill_object() and fill_memory(): for each link, newest first, the
  // pieces of `ranges` it stores are handed to `deliver`, with a reader of the link's
  // page stream standing at the first of them; those it takes from its parent go on to
  // the next link. `segs_of` gives a link's segments (null: none).
  void fill_ranges(const std::function<const std::vector<Seg>*(Link&)>& segs_of,
                   std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges,
                   const std::function<void(Link&, PageReader&, std::span<const Piece>,
                                            std::uint64_t, std::uint64_t)>& deliver);
  std::vector<std::unique_ptr<Link>> links_;
  // The chunk buffers of the links' readers, which are made one at a time.
  std::shared_ptr<ChunkBufferPool> buffers_ = std::make_shared<ChunkBufferPool>();
};

// The directory of the parent named by `m` (an incremental image in `dir`).
std::filesystem::path parent_dir(const std::filesystem::path& dir, const Manifest& m);

}  // namespace fsched::ckpt
