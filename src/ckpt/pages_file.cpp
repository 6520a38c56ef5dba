// pages.img opened for reading (pages_file.h).
#include "ckpt/pages_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <limits>
#include <optional>

#include "ckpt/image_files.h"

namespace fsched::ckpt::image_detail {

PagesFile::PagesFile(fs::path path) : path_(std::move(path)) {
  fd_ = UniqueFd(::open(path_.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (!fd_ && errno == ELOOP)
    bad_image("{}: is a symbolic link, not an image file", path_.native());
  // An image without its pages is a bad image, whatever node reads it.
  if (!fd_ && errno == ENOENT)
    throw ImageError(fmt::format("{}: cannot open", path_.native()), ENOENT);
  if (!fd_) fail_errno("{}: cannot open", path_.native());
  struct stat st;
  if (::fstat(fd_.get(), &st) != 0) fail_errno("{}: cannot stat", path_.native());
  // A FIFO or a device would block or never end; the chunk table bounds a file.
  if (!S_ISREG(st.st_mode)) bad_image("{}: not a regular file", path_.native());
  (void)::posix_fadvise(fd_.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  size_ = static_cast<std::uint64_t>(st.st_size);
  long page = ::sysconf(_SC_PAGESIZE);
  page_ = page > 0 ? static_cast<std::size_t>(page) : kMinPageBytes;
  if (size_ > 0 && size_ <= std::numeric_limits<std::size_t>::max() && page_ >= kMinPageBytes) {
    void* p = ::mmap(nullptr, static_cast<std::size_t>(size_), PROT_READ, MAP_SHARED, fd_.get(), 0);
    if (p != MAP_FAILED) map_ = static_cast<const std::byte*>(p);  // else pread only
  }
}

PagesFile::~PagesFile() {
  if (map_) ::munmap(const_cast<std::byte*>(map_), static_cast<std::size_t>(size_));
}

void PagesFile::prefetch(std::uint64_t off, std::uint64_t n) const {
  if (n == 0) return;
  if (resident(off, 1) && resident(off + n - 1, 1)) return;
  (void)::posix_fadvise(fd_.get(), static_cast<off_t>(off), static_cast<off_t>(n),
                        POSIX_FADV_WILLNEED);
}

const std::byte* PagesFile::resident_range(std::uint64_t off, std::uint64_t n) const {
  if (n == 0) return nullptr;
  for (std::uint64_t done = 0; done < n; done += kIoBlockBytes)
    if (!resident(off + done,
                  static_cast<std::size_t>(std::min<std::uint64_t>(kIoBlockBytes, n - done))))
      return nullptr;
  return map_ + off;
}

std::size_t PagesFile::copy_hash(std::uint64_t off, std::size_t n, std::byte* dst,
                                 XXH3_state_t* state) const {
  std::size_t done = 0;
  while (done < n) {
    std::size_t len = std::min(kIoBlockBytes, n - done);
    std::size_t got = len;
    if (const std::byte* src = resident(off + done, len))
      std::memcpy(dst + done, src, len);
    else
      got = pread_full(fd_.get(), dst + done, len, off + done, path_);
    if (state) XXH3_64bits_update(state, dst + done, got);
    done += got;
    if (got < len) break;
  }
  return done;
}

std::size_t PagesFile::hash(std::uint64_t off, std::size_t n, XXH3_state_t* state,
                            std::byte* scratch) const {
  std::size_t done = 0;
  while (done < n) {
    std::size_t len = std::min(kIoBlockBytes, n - done);
    std::size_t got = len;
    if (const std::byte* src = resident(off + done, len)) {
      XXH3_64bits_update(state, src, len);
    } else {
      got = pread_full(fd_.get(), scratch, len, off + done, path_);
      XXH3_64bits_update(state, scratch, got);
    }
    done += got;
    if (got < len) break;
  }
  return done;
}

namespace {

// cachestat(2) (Linux 6.5, include/uapi/linux/mman.h), which Debian 12's headers
// predate: the same number on every architecture.
constexpr long kSysCachestat = 451;
struct CachestatRange {
  std::uint64_t off, len;
};
struct Cachestat {
  std::uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
};
std::atomic<bool> g_no_cachestat{false};  // the kernel said ENOSYS once

// Whether every page of [off, off + n) (n >= 1) of fd is in the page cache, by
// cachestat(2); nothing if it cannot tell (no such system call, or a file system
// without a page cache for it). It walks the page cache's folios where mincore(2)
// looks up each page: over 2 GiB of pages.img in kIoBlockBytes blocks, 5-10 ms
// against 20-85 ms for mincore on these machines -- verify_chunks() asks for every
// block.
std::optional<bool> all_cached(int fd, std::uint64_t off, std::size_t n, std::size_t page) {
  if (g_no_cachestat.load(std::memory_order_relaxed)) return std::nullopt;
  CachestatRange range{off, n};
  Cachestat cs{};
  if (::syscall(kSysCachestat, fd, &range, &cs, 0) != 0) {
    if (errno == ENOSYS) g_no_cachestat.store(true, std::memory_order_relaxed);
    return std::nullopt;
  }
  const std::uint64_t first = off / page, last = (off + n - 1) / page;
  return cs.nr_cache >= last - first + 1;
}

}  // namespace

const std::byte* PagesFile::resident(std::uint64_t off, std::size_t n) const {
  if (!map_ || off > size_ || n > size_ - off || n == 0) return nullptr;
  if (std::optional<bool> cached = all_cached(fd_.get(), off, n, page_))
    return *cached ? map_ + off : nullptr;
  auto start = reinterpret_cast<std::uintptr_t>(map_ + off);
  auto end = start + n;
  start &= ~static_cast<std::uintptr_t>(page_ - 1);
  std::array<unsigned char, kIoBlockBytes / kMinPageBytes + 2> vec;
  std::size_t pages = (end - start + page_ - 1) / page_;
  if (pages > vec.size()) return nullptr;
  if (::mincore(reinterpret_cast<void*>(start), end - start, vec.data()) != 0) return nullptr;
  for (std::size_t i = 0; i < pages; ++i)
    if (!(vec[i] & 1)) return nullptr;
  return map_ + off;
}

}  // namespace fsched::ckpt::image_detail
