// Implementation of the checkpoint image format (see image.h).
//
// Writer: the caller copies page data into a chunk buffer; a full chunk is handed
// to one worker thread that compresses it (one zstd frame per chunk), hashes the
// stored bytes with XXH3-64 and write(2)s them to pages.img while the caller fills
// the next buffer. Buffers: the one being filled, the one being compressed and the
// compressed output, so memory stays at ~3 chunks whatever the image size.
//
// Reader: a worker thread reads, checks and decompresses chunk k+1 while the caller
// copies out of chunk k (double buffering).
#include "ckpt/image.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "common/error.h"
#include "common/fd.h"

#ifndef FSCHED_VERSION
#error "FSCHED_VERSION must be defined by the build (see src/ckpt/CMakeLists.txt)"
#endif

namespace fsched::ckpt {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr const char* kManifestName = "manifest.json";
constexpr const char* kManifestSumName = "manifest.xxh3";
constexpr const char* kPagesName = "pages.img";
// Read size of verify_chunks().
constexpr std::size_t kVerifyBlockBytes = 8u << 20;

struct ChunkInfo {
  std::uint64_t offset = 0;  // in pages.img
  std::uint64_t stored = 0;  // compressed bytes in pages.img
  std::uint64_t raw = 0;     // logical bytes
  std::uint64_t xxh3 = 0;    // of the stored bytes
};

struct ChunkTable {
  std::vector<ChunkInfo> chunks;
  std::uint64_t logical_bytes = 0;
  std::uint64_t stored_bytes = 0;
  std::uint64_t max_raw = 0;
  std::uint64_t max_stored = 0;
};

struct CCtxFree {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct DCtxFree {
  void operator()(ZSTD_DCtx* c) const { ZSTD_freeDCtx(c); }
};
struct XXH3StateFree {
  void operator()(XXH3_state_t* s) const { XXH3_freeState(s); }
};

std::string hex64(std::uint64_t v) { return fmt::format("{:016x}", v); }

// Parses exactly 16 hex digits.
std::optional<std::uint64_t> parse_hex64(std::string_view s) {
  if (s.size() != 16) return std::nullopt;
  std::uint64_t v = 0;
  for (char c : s) {
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else return std::nullopt;
    v = (v << 4) | static_cast<std::uint64_t>(d);
  }
  return v;
}

// Strips a trailing separator so that DIR/ and DIR name the same image.
fs::path normalize_dir(const fs::path& dir) {
  fs::path p = dir;
  while (!p.empty() && !p.has_filename() && p != p.root_path()) p = p.parent_path();
  return p;
}

fs::path parent_dir(const fs::path& dir) {
  fs::path parent = dir.parent_path();
  return parent.empty() ? fs::path(".") : parent;
}

// write(2) all of [p, p+n), retrying short writes and EINTR. `what` describes the
// write for the error message ("PATH: write of chunk 3 at offset 123").
template <typename Describe>
void write_all(int fd, const std::byte* p, std::size_t n, Describe&& what) {
  std::size_t done = 0;
  while (done < n) {
    ssize_t w = ::write(fd, p + done, n - done);
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
// at end of file.
std::size_t pread_full(int fd, std::byte* p, std::size_t n, std::uint64_t offset,
                       const fs::path& path) {
  std::size_t done = 0;
  while (done < n) {
    ssize_t r = ::pread(fd, p + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      fail_errno("{}: read at offset {} failed", path.native(), offset + done);
    }
    if (r == 0) break;
    done += static_cast<std::size_t>(r);
  }
  return done;
}

// read(2) up to n bytes, retrying short reads; returns fewer than n only at EOF.
std::size_t read_full(int fd, std::byte* p, std::size_t n, std::uint64_t offset,
                      const fs::path& path) {
  std::size_t done = 0;
  while (done < n) {
    ssize_t r = ::read(fd, p + done, n - done);
    if (r < 0) {
      if (errno == EINTR) continue;
      fail_errno("{}: read at offset {} failed", path.native(), offset + done);
    }
    if (r == 0) break;
    done += static_cast<std::size_t>(r);
  }
  return done;
}

void fsync_fd(int fd, const fs::path& path) {
  if (::fsync(fd) != 0) fail_errno("{}: fsync failed", path.native());
}

// Reads a whole (small) file; nullopt if it (or its directory) does not exist.
std::optional<std::string> read_small_file(const fs::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT || errno == ENOTDIR) return std::nullopt;
    fail_errno("{}: cannot open", path.native());
  }
  std::string out;
  char buf[64 * 1024];
  for (;;) {
    ssize_t r = ::read(fd.get(), buf, sizeof buf);
    if (r < 0) {
      if (errno == EINTR) continue;
      fail_errno("{}: read failed", path.native());
    }
    if (r == 0) break;
    out.append(buf, static_cast<std::size_t>(r));
  }
  return out;
}

// Creates (O_EXCL) a 0600 file in dirfd, writes `data` and fsyncs it.
void write_new_file(int dirfd, const fs::path& path, std::string_view data) {
  UniqueFd fd(::openat(dirfd, path.filename().c_str(),
                       O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd) fail_errno("{}: cannot create", path.native());
  if (::fchmod(fd.get(), 0600) != 0) fail_errno("{}: cannot chmod 0600", path.native());
  write_all(fd.get(), reinterpret_cast<const std::byte*>(data.data()), data.size(),
            [&] { return fmt::format("{}: write", path.native()); });
  fsync_fd(fd.get(), path);
}

// ---------------------------------------------------------------------------
// Writer

class ImageWriterImpl final : public ImageWriter {
 public:
  ImageWriterImpl(fs::path dir, fs::path tmp, int level)
      : dir_(std::move(dir)), tmp_(std::move(tmp)), pages_path_(tmp_ / kPagesName),
        level_(level) {}

  ~ImageWriterImpl() override {
    stop_worker();
    if (!committed_) {
      pages_fd_.reset();
      dirfd_.reset();
      std::error_code ec;
      fs::remove_all(tmp_, ec);  // best effort; never throws
    }
  }

  // Called right after DIR.tmp was created; on failure the destructor removes it.
  void init() {
    if (::chmod(tmp_.c_str(), 0700) != 0) fail_errno("{}: cannot chmod 0700", tmp_.native());
    dirfd_ = UniqueFd(::open(tmp_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dirfd_) fail_errno("{}: cannot open directory", tmp_.native());
    pages_fd_ = UniqueFd(
        ::openat(dirfd_.get(), kPagesName, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
    if (!pages_fd_) fail_errno("{}: cannot create", pages_path_.native());
    if (::fchmod(pages_fd_.get(), 0600) != 0)
      fail_errno("{}: cannot chmod 0600", pages_path_.native());
    cctx_.reset(ZSTD_createCCtx());
    if (!cctx_) fail("{}: cannot create zstd compression context", dir_.native());
    worker_ = std::thread([this] { worker_loop(); });
  }

  void append_pages(std::span<const std::byte> data) override {
    check_usable();
    while (!data.empty()) {
      if (!fill_) fill_ = std::make_unique_for_overwrite<std::byte[]>(kChunkRawBytes);
      std::size_t n = std::min(data.size(), kChunkRawBytes - fill_len_);
      std::memcpy(fill_.get() + fill_len_, data.data(), n);
      fill_len_ += n;
      logical_ += n;
      data = data.subspan(n);
      if (fill_len_ == kChunkRawBytes) submit();
    }
  }

  std::uint64_t logical_bytes() const override { return logical_; }
  std::uint64_t stored_bytes() const override {
    return stored_.load(std::memory_order_relaxed);
  }
  const fs::path& path() const override { return dir_; }

  void commit(json manifest) override {
    check_usable();
    if (!manifest.is_object())
      fail("{}: cannot commit: manifest must be a JSON object, got {}", dir_.native(),
           manifest.type_name());
    broken_ = true;  // until commit succeeds; a failed commit cannot be retried
    if (fill_len_ > 0) submit();
    wait_idle();
    stop_worker();
    fill_.reset();
    work_.reset();

    json chunks = json::array();
    std::uint64_t stored = 0;
    for (const ChunkInfo& c : chunks_) {
      chunks.push_back(
          {{"offset", c.offset}, {"stored", c.stored}, {"raw", c.raw}, {"xxh3", hex64(c.xxh3)}});
      stored += c.stored;
    }
    manifest["format_version"] = kImageFormatVersion;
    manifest["engine_version"] = FSCHED_VERSION;
    manifest["chunks"] = std::move(chunks);
    manifest["pages_logical_bytes"] = logical_;
    manifest["pages_stored_bytes"] = stored;

    std::string text;
    try {
      text = manifest.dump(1) + "\n";
    } catch (const json::exception& e) {
      fail("{}: cannot serialize manifest: {}", dir_.native(), e.what());
    }
    std::string sum = hex64(XXH3_64bits(text.data(), text.size())) + "\n";

    fsync_fd(pages_fd_.get(), pages_path_);
    pages_fd_.reset();
    write_new_file(dirfd_.get(), tmp_ / kManifestName, text);
    write_new_file(dirfd_.get(), tmp_ / kManifestSumName, sum);
    fsync_fd(dirfd_.get(), tmp_);
    dirfd_.reset();

    // RENAME_NOREPLACE: never replace an image (or empty dir) that appeared meanwhile.
    if (::renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, dir_.c_str(), RENAME_NOREPLACE) != 0) {
      if (errno != EINVAL) {
        fail_errno("cannot rename {} to {}", tmp_.native(), dir_.native());
      }
      // File system without RENAME_NOREPLACE support.
      struct stat st;
      if (::lstat(dir_.c_str(), &st) == 0)
        fail("cannot rename {} to {}: {} already exists", tmp_.native(), dir_.native(),
             dir_.native());
      if (::rename(tmp_.c_str(), dir_.c_str()) != 0)
        fail_errno("cannot rename {} to {}", tmp_.native(), dir_.native());
    }
    try {
      fs::path parent = parent_dir(dir_);
      UniqueFd pfd(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (!pfd) fail_errno("{}: cannot open parent directory to fsync it", parent.native());
      fsync_fd(pfd.get(), parent);
    } catch (...) {
      // Keep the promise that a failed commit leaves no DIR behind.
      std::error_code ec;
      fs::remove_all(dir_, ec);
      throw;
    }
    committed_ = true;
    broken_ = false;
  }

 private:
  void check_usable() {
    if (committed_) fail("{}: image writer already committed", dir_.native());
    {
      std::lock_guard lk(mu_);
      if (error_) std::rethrow_exception(error_);
    }
    if (broken_) fail("{}: image writer unusable after an earlier failed commit", dir_.native());
  }

  // Hands the full fill_ buffer to the worker (waiting for it to finish the previous
  // chunk) and takes the worker's previous input buffer to fill next.
  void submit() {
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return !job_ || error_; });
      if (error_) std::rethrow_exception(error_);
      std::swap(fill_, work_);
      job_len_ = fill_len_;
      job_ = true;
    }
    cv_.notify_all();
    fill_len_ = 0;
  }

  void wait_idle() {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return !job_ || error_; });
    if (error_) std::rethrow_exception(error_);
  }

  void stop_worker() noexcept {
    if (!worker_.joinable()) return;
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  void worker_loop() {
    for (;;) {
      std::size_t len;
      {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return job_ || stop_; });
        if (stop_) return;  // a pending job is abandoned (destructor) or there is none
        len = job_len_;
      }
      bool ok = true;
      try {
        ChunkInfo info = write_chunk(work_.get(), len);
        std::lock_guard lk(mu_);
        chunks_.push_back(info);
        job_ = false;
      } catch (...) {
        std::lock_guard lk(mu_);
        error_ = std::current_exception();
        job_ = false;
        ok = false;
      }
      cv_.notify_all();
      if (!ok) return;  // the caller rethrows error_ on its next call
    }
  }

  // Worker thread: compress, hash and write one chunk.
  ChunkInfo write_chunk(const std::byte* src, std::size_t len) {
    std::size_t index = chunks_.size();  // only the worker appends to chunks_
    std::uint64_t offset = stored_.load(std::memory_order_relaxed);
    if (!out_) {
      out_cap_ = ZSTD_compressBound(kChunkRawBytes);
      out_ = std::make_unique_for_overwrite<std::byte[]>(out_cap_);
    }
    std::size_t n = ZSTD_compressCCtx(cctx_.get(), out_.get(), out_cap_, src, len, level_);
    if (ZSTD_isError(n))
      fail("{}: zstd compression of chunk {} (file offset {}, {} bytes) failed: {}",
           pages_path_.native(), index, offset, len, ZSTD_getErrorName(n));
    std::uint64_t h = XXH3_64bits(out_.get(), n);
    write_all(pages_fd_.get(), out_.get(), n, [&] {
      return fmt::format("{}: write of chunk {} at offset {}", pages_path_.native(), index,
                         offset);
    });
    stored_.store(offset + n, std::memory_order_relaxed);
    return ChunkInfo{offset, n, len, h};
  }

  const fs::path dir_, tmp_, pages_path_;
  const int level_;
  UniqueFd dirfd_, pages_fd_;
  std::unique_ptr<ZSTD_CCtx, CCtxFree> cctx_;

  // Caller side.
  std::unique_ptr<std::byte[]> fill_;
  std::size_t fill_len_ = 0;
  std::uint64_t logical_ = 0;
  bool committed_ = false;
  bool broken_ = false;

  // Shared with the worker; guarded by mu_ (work_ is the worker's while job_ is set).
  std::thread worker_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::unique_ptr<std::byte[]> work_;
  std::size_t job_len_ = 0;
  bool job_ = false;
  bool stop_ = false;
  std::exception_ptr error_;
  std::vector<ChunkInfo> chunks_;
  std::atomic<std::uint64_t> stored_{0};

  // Worker only.
  std::unique_ptr<std::byte[]> out_;
  std::size_t out_cap_ = 0;
};

// ---------------------------------------------------------------------------
// Reader

// Checks one chunk's stored bytes and decompresses them into dst (c.raw bytes).
void decode_chunk(ZSTD_DCtx* dctx, const fs::path& path, std::size_t index, const ChunkInfo& c,
                  const std::byte* src, std::byte* dst) {
  std::uint64_t h = XXH3_64bits(src, c.stored);
  if (h != c.xxh3)
    fail("{}: chunk {} at offset {}: checksum mismatch (xxh3 of {} stored bytes is {}, "
         "manifest says {})",
         path.native(), index, c.offset, c.stored, hex64(h), hex64(c.xxh3));
  unsigned long long content = ZSTD_getFrameContentSize(src, c.stored);
  if (content == ZSTD_CONTENTSIZE_ERROR)
    fail("{}: chunk {} at offset {}: not a zstd frame", path.native(), index, c.offset);
  if (content != c.raw)
    fail("{}: chunk {} at offset {}: zstd frame holds {} bytes, manifest says {}", path.native(),
         index, c.offset,
         content == ZSTD_CONTENTSIZE_UNKNOWN ? std::string("an unknown number of")
                                             : std::to_string(content),
         c.raw);
  std::size_t r = ZSTD_decompressDCtx(dctx, dst, c.raw, src, c.stored);
  if (ZSTD_isError(r))
    fail("{}: chunk {} at offset {}: zstd decompression failed: {}", path.native(), index,
         c.offset, ZSTD_getErrorName(r));
  if (r != c.raw)
    fail("{}: chunk {} at offset {}: decompressed to {} bytes, manifest says {}", path.native(),
         index, c.offset, r, c.raw);
}

class PageReaderImpl final : public PageReader {
 public:
  PageReaderImpl(std::shared_ptr<const ChunkTable> table, fs::path pages_path)
      : table_(std::move(table)), path_(std::move(pages_path)) {
    if (table_->chunks.empty()) return;
    fd_ = UniqueFd(::open(path_.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd_) fail_errno("{}: cannot open", path_.native());
    (void)::posix_fadvise(fd_.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
    dctx_.reset(ZSTD_createDCtx());
    if (!dctx_) fail("{}: cannot create zstd decompression context", path_.native());
    cur_ = std::make_unique_for_overwrite<std::byte[]>(table_->max_raw);
    next_ = std::make_unique_for_overwrite<std::byte[]>(table_->max_raw);
    stored_buf_ = std::make_unique_for_overwrite<std::byte[]>(table_->max_stored);
    request_ = true;  // chunk 0 into next_
    worker_ = std::thread([this] { worker_loop(); });
  }

  ~PageReaderImpl() override {
    if (!worker_.joinable()) return;
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  void read(std::span<std::byte> out) override {
    if (failed_) std::rethrow_exception(failed_);
    std::uint64_t left = table_->logical_bytes - pos_;
    if (out.size() > left)
      fail("{}: read of {} bytes at stream offset {} goes past the end of the page stream "
           "({} bytes, {} left)",
           path_.native(), out.size(), pos_, table_->logical_bytes, left);
    while (!out.empty()) {
      if (cur_pos_ == cur_len_) next_chunk();
      std::size_t n = std::min(out.size(), cur_len_ - cur_pos_);
      std::memcpy(out.data(), cur_.get() + cur_pos_, n);
      cur_pos_ += n;
      pos_ += n;
      out = out.subspan(n);
    }
  }

 private:
  // Takes the chunk the worker decoded into next_ and asks it for the one after.
  void next_chunk() {
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return !request_; });
      if (error_) {
        failed_ = error_;
        std::rethrow_exception(failed_);
      }
      std::swap(cur_, next_);
      cur_len_ = table_->chunks[consumed_].raw;
      cur_pos_ = 0;
      ++consumed_;
      if (consumed_ < table_->chunks.size()) request_ = true;
    }
    cv_.notify_all();
  }

  void worker_loop() {
    std::size_t index = 0;
    for (;;) {
      {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return request_ || stop_; });
        if (stop_) return;
      }
      std::exception_ptr err;
      try {
        const ChunkInfo& c = table_->chunks[index];
        std::size_t got = pread_full(fd_.get(), stored_buf_.get(), c.stored, c.offset, path_);
        if (got < c.stored)
          fail("{}: chunk {} at offset {}: truncated: file ends at offset {}, {} of {} stored "
               "bytes missing",
               path_.native(), index, c.offset, c.offset + got, c.stored - got, c.stored);
        decode_chunk(dctx_.get(), path_, index, c, stored_buf_.get(), next_.get());
      } catch (...) {
        err = std::current_exception();
      }
      {
        std::lock_guard lk(mu_);
        error_ = err;
        request_ = false;
      }
      cv_.notify_all();
      if (err) return;
      ++index;
    }
  }

  const std::shared_ptr<const ChunkTable> table_;
  const fs::path path_;
  UniqueFd fd_;
  std::unique_ptr<ZSTD_DCtx, DCtxFree> dctx_;  // worker only

  // Caller side.
  std::unique_ptr<std::byte[]> cur_;
  std::size_t cur_len_ = 0, cur_pos_ = 0;
  std::size_t consumed_ = 0;  // chunks taken from the worker
  std::uint64_t pos_ = 0;     // logical stream position
  std::exception_ptr failed_;

  // Shared; guarded by mu_ (next_ and stored_buf_ are the worker's while request_ is set).
  std::thread worker_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::unique_ptr<std::byte[]> next_;
  std::unique_ptr<std::byte[]> stored_buf_;
  bool request_ = false;
  bool stop_ = false;
  std::exception_ptr error_;
};

class ImageReaderImpl final : public ImageReader {
 public:
  ImageReaderImpl(fs::path dir, json manifest, std::shared_ptr<const ChunkTable> table)
      : dir_(std::move(dir)), pages_path_(dir_ / kPagesName), manifest_(std::move(manifest)),
        table_(std::move(table)) {}

  const json& manifest() const override { return manifest_; }
  const fs::path& path() const override { return dir_; }

  void verify_chunks() const override {
    UniqueFd fd(::open(pages_path_.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) fail_errno("{}: cannot open", pages_path_.native());
    (void)::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
    struct stat st;
    if (::fstat(fd.get(), &st) != 0) fail_errno("{}: cannot stat", pages_path_.native());
    const auto file_size = static_cast<std::uint64_t>(st.st_size);

    std::unique_ptr<XXH3_state_t, XXH3StateFree> state(XXH3_createState());
    if (!state) throw std::bad_alloc();
    XXH3_64bits_reset(state.get());

    const auto& chunks = table_->chunks;
    std::size_t block_size =
        static_cast<std::size_t>(std::min<std::uint64_t>(kVerifyBlockBytes, file_size + 1));
    auto buf = std::make_unique_for_overwrite<std::byte[]>(std::max<std::size_t>(block_size, 1));
    std::size_t ci = 0;          // current chunk
    std::uint64_t in_chunk = 0;  // bytes of chunk ci hashed so far
    std::uint64_t pos = 0;       // file offset of buf[0]
    for (;;) {
      std::size_t n = read_full(fd.get(), buf.get(), block_size, pos, pages_path_);
      if (n == 0) break;
      std::size_t i = 0;
      while (i < n) {
        if (ci == chunks.size())
          fail("{}: trailing bytes after the last chunk: chunk table ends at offset {} but the "
               "file is {} bytes",
               pages_path_.native(), pos + i, std::max(file_size, pos + n));
        const ChunkInfo& c = chunks[ci];
        if (in_chunk == 0 && c.offset != pos + i)
          fail("{}: chunk {}: manifest says offset {}, previous chunks end at offset {}",
               pages_path_.native(), ci, c.offset, pos + i);
        std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(n - i, c.stored - in_chunk));
        XXH3_64bits_update(state.get(), buf.get() + i, take);
        i += take;
        in_chunk += take;
        if (in_chunk == c.stored) {
          std::uint64_t h = XXH3_64bits_digest(state.get());
          if (h != c.xxh3)
            fail("{}: chunk {} at offset {}: checksum mismatch (xxh3 of {} stored bytes is {}, "
                 "manifest says {})",
                 pages_path_.native(), ci, c.offset, c.stored, hex64(h), hex64(c.xxh3));
          ++ci;
          in_chunk = 0;
          XXH3_64bits_reset(state.get());
        }
      }
      pos += n;
    }
    if (ci < chunks.size()) {
      const ChunkInfo& c = chunks[ci];
      fail("{}: truncated: chunk {} at offset {} needs {} stored bytes but the file ends at "
           "offset {} ({} bytes missing in total, {} of {} chunks incomplete)",
           pages_path_.native(), ci, c.offset, c.stored, pos, table_->stored_bytes - pos,
           chunks.size() - ci, chunks.size());
    }
  }

  std::unique_ptr<PageReader> pages() const override {
    return std::make_unique<PageReaderImpl>(table_, pages_path_);
  }

 private:
  const fs::path dir_, pages_path_;
  const json manifest_;
  const std::shared_ptr<const ChunkTable> table_;
};

std::uint64_t get_u64(const json& obj, const char* key, const fs::path& mpath,
                      const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end()) fail("{}: {}missing \"{}\"", mpath.native(), where, key);
  if (!it->is_number_unsigned())
    fail("{}: {}\"{}\" must be a non-negative integer, got {}", mpath.native(), where, key,
         it->dump());
  return it->get<std::uint64_t>();
}

std::shared_ptr<const ChunkTable> parse_chunk_table(const json& m, const fs::path& mpath) {
  auto table = std::make_shared<ChunkTable>();
  auto it = m.find("chunks");
  if (it == m.end()) fail("{}: missing chunk table \"chunks\"", mpath.native());
  if (!it->is_array()) fail("{}: \"chunks\" must be an array", mpath.native());
  const std::uint64_t max_stored = ZSTD_compressBound(kChunkRawBytes);
  table->chunks.reserve(it->size());
  for (std::size_t i = 0; i < it->size(); ++i) {
    const json& e = (*it)[i];
    std::string where = fmt::format("chunk {}: ", i);
    if (!e.is_object()) fail("{}: {}entry must be an object", mpath.native(), where);
    ChunkInfo c;
    c.offset = get_u64(e, "offset", mpath, where);
    c.stored = get_u64(e, "stored", mpath, where);
    c.raw = get_u64(e, "raw", mpath, where);
    auto h = e.find("xxh3");
    std::optional<std::uint64_t> hv;
    if (h != e.end() && h->is_string()) hv = parse_hex64(h->get_ref<const std::string&>());
    if (!hv) fail("{}: {}\"xxh3\" must be a string of 16 hex digits", mpath.native(), where);
    c.xxh3 = *hv;
    if (c.offset != table->stored_bytes)
      fail("{}: {}offset {} is not where the previous chunks end ({})", mpath.native(), where,
           c.offset, table->stored_bytes);
    if (c.raw == 0 || c.raw > kChunkRawBytes)
      fail("{}: {}raw size {} out of range 1..{}", mpath.native(), where, c.raw, kChunkRawBytes);
    if (c.stored == 0 || c.stored > max_stored)
      fail("{}: {}stored size {} out of range 1..{}", mpath.native(), where, c.stored,
           max_stored);
    table->stored_bytes += c.stored;
    table->logical_bytes += c.raw;
    table->max_raw = std::max(table->max_raw, c.raw);
    table->max_stored = std::max(table->max_stored, c.stored);
    table->chunks.push_back(c);
  }
  std::uint64_t logical = get_u64(m, "pages_logical_bytes", mpath, "");
  std::uint64_t stored = get_u64(m, "pages_stored_bytes", mpath, "");
  if (logical != table->logical_bytes)
    fail("{}: pages_logical_bytes is {} but the chunks hold {} bytes", mpath.native(), logical,
         table->logical_bytes);
  if (stored != table->stored_bytes)
    fail("{}: pages_stored_bytes is {} but the chunks store {} bytes", mpath.native(), stored,
         table->stored_bytes);
  return table;
}

}  // namespace

std::unique_ptr<ImageWriter> ImageWriter::create(const std::filesystem::path& dir_arg,
                                                 int zstd_level) {
  fs::path dir = normalize_dir(dir_arg);
  if (dir.empty()) fail("cannot create checkpoint image: empty path");
  if (zstd_level < ZSTD_minCLevel() || zstd_level > ZSTD_maxCLevel())
    fail("{}: invalid zstd level {} (valid: {}..{})", dir.native(), zstd_level, ZSTD_minCLevel(),
         ZSTD_maxCLevel());
  struct stat st;
  if (::lstat(dir.c_str(), &st) == 0)
    fail("cannot create checkpoint image {}: it already exists", dir.native());
  if (errno != ENOENT) fail_errno("cannot create checkpoint image {}", dir.native());

  fs::path tmp = dir;
  tmp += ".tmp";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  if (ec)
    fail("cannot create checkpoint image {}: cannot remove stale {}: {}", dir.native(),
         tmp.native(), ec.message());
  if (::mkdir(tmp.c_str(), 0700) != 0)
    fail_errno("cannot create checkpoint image {}: mkdir {}", dir.native(), tmp.native());
  // From here on the writer owns DIR.tmp and its destructor removes it on failure.
  auto w = std::make_unique<ImageWriterImpl>(dir, tmp, zstd_level);
  w->init();
  return w;
}

std::unique_ptr<ImageReader> ImageReader::open(const std::filesystem::path& dir_arg) {
  fs::path dir = normalize_dir(dir_arg);
  fs::path mpath = dir / kManifestName;
  fs::path spath = dir / kManifestSumName;

  std::optional<std::string> text = read_small_file(mpath);
  if (!text) {
    std::error_code ec;
    fs::file_status st = fs::status(dir, ec);
    if (!fs::exists(st)) fail("{} is not a checkpoint image (no such directory)", dir.native());
    if (!fs::is_directory(st)) fail("{} is not a checkpoint image (not a directory)", dir.native());
    fail("{} is not a checkpoint image (no manifest.json)", dir.native());
  }
  std::optional<std::string> sum_text = read_small_file(spath);
  if (!sum_text) fail("{}: missing (cannot check {})", spath.native(), mpath.native());
  std::string_view sv = *sum_text;
  if (!sv.empty() && sv.back() == '\n') sv.remove_suffix(1);
  std::optional<std::uint64_t> want = parse_hex64(sv);
  if (!want) fail("{}: malformed, expected 16 hex digits", spath.native());
  std::uint64_t got = XXH3_64bits(text->data(), text->size());
  if (got != *want)
    fail("{}: manifest checksum mismatch: xxh3 is {}, manifest.xxh3 says {}", mpath.native(),
         hex64(got), hex64(*want));

  json m;
  try {
    m = json::parse(*text);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", mpath.native(), e.what());
  }
  if (!m.is_object()) fail("{}: manifest is not a JSON object", mpath.native());
  auto fv = m.find("format_version");
  if (fv == m.end()) fail("{}: missing \"format_version\"", mpath.native());
  if (!fv->is_number_integer())
    fail("{}: \"format_version\" must be an integer, got {}", mpath.native(), fv->dump());
  if (fv->get<std::int64_t>() != kImageFormatVersion)
    fail("{}: image format {}, this engine reads {}", dir.native(), fv->get<std::int64_t>(),
         kImageFormatVersion);
  auto table = parse_chunk_table(m, mpath);
  return std::make_unique<ImageReaderImpl>(dir, std::move(m), std::move(table));
}

}  // namespace fsched::ckpt
