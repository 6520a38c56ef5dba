// Internal to the image code (image.h): file names, small file and buffer helpers and
// the error helper shared by the writer, the reader and the chunk table. Not for the
// rest of the engine.
#pragma once

#include <unistd.h>
#include "ckpt/xxh3.h"
#include <zstd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "ckpt/image.h"
#include "common/error.h"

namespace fsched::ckpt::image_detail {

namespace fs = std::filesystem;

constexpr const char* kManifestName = "manifest.json";
constexpr const char* kManifestSumName = "manifest.xxh3";
constexpr const char* kManifestHmacName = "manifest.hmac";
constexpr const char* kPagesName = "pages.img";

struct CCtxFree {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct DCtxFree {
  void operator()(ZSTD_DCtx* c) const { ZSTD_freeDCtx(c); }
};
struct XXH3StateFree {
  void operator()(XXH3_state_t* s) const { XXH3_freeState(s); }
};

inline std::string hex64(std::uint64_t v) { return fmt::format("{:016x}", v); }

// Throws ImageError: the image is bad or does not match (corrupt, tampered with, of
// another format), which no retry anywhere can cure; unlike fail(), whose Error is
// transient (a read error, a missing context, a process that went away).
template <typename... Args>
[[noreturn]] void bad_image(fmt::format_string<Args...> f, Args&&... args) {
  throw ImageError(fmt::format(f, std::forward<Args>(args)...));
}

constexpr std::uint64_t align_up(std::uint64_t n) {
  return (n + kChunkAlignBytes - 1) / kChunkAlignBytes * kChunkAlignBytes;
}

// Parses exactly 16 hex digits.
std::optional<std::uint64_t> parse_hex64(std::string_view s);

// Strips a trailing separator so that DIR/ and DIR name the same image.
fs::path normalize_dir(const fs::path& dir);

// The directory holding `dir` ("." for a relative name without one).
fs::path parent_dir(const fs::path& dir);

// pwrite(2) all of [p, p+n) at file offset `off`, retrying short writes and EINTR.
// `what` describes the write for the error message ("PATH: write of chunk 3 at offset
// 123"); the Error carries the write's errno.
template <typename Describe>
void write_all(int fd, const std::byte* p, std::size_t n, std::uint64_t off, Describe&& what) {
  std::size_t done = 0;
  while (done < n) {
    ssize_t w = ::pwrite(fd, p + done, n - done, static_cast<off_t>(off + done));
    if (w < 0) {
      if (errno == EINTR) continue;
      fail_errno("{} failed after {} of {} bytes", what(), done, n);
    }
    if (w == 0) {
      errno = ENOSPC;
      fail_errno("{} failed after {} of {} bytes (write returned 0)", what(), done, n);
    }
    done += static_cast<std::size_t>(w);
  }
}

// pread(2) up to n bytes at `offset`, retrying short reads; returns fewer than n only
// at end of file. Throws Error (errno) naming `path` on a read error.
std::size_t pread_full(int fd, std::byte* p, std::size_t n, std::uint64_t offset,
                       const fs::path& path);

// fsync(2); throws Error (errno) naming `path`.
void fsync_fd(int fd, const fs::path& path);

// Reads a whole (small) file of at most `limit` bytes; nullopt if it (or its
// directory) does not exist. Refuses anything but a regular file (ImageError): a link
// to /dev/zero would be read without end, a FIFO would block. Error (errno) on a failed
// open or read.
std::optional<std::string> read_small_file(const fs::path& path,
                                           std::size_t limit = kMaxManifestBytes);

// Creates (O_EXCL) a 0600 file in dirfd, writes `data` and fsyncs it. Throws Error.
void write_new_file(int dirfd, const fs::path& path, std::string_view data);

// CPUs this process may run on (at least 1).
unsigned usable_cpus();

}  // namespace fsched::ckpt::image_detail
