// Implementation of the checkpoint image format (see image.h).
//
// Writer: the caller copies page data into a chunk buffer; a full chunk is handed
// to one of kWriterThreads worker threads that compresses it (one zstd frame per
// chunk, or the raw bytes when the frame would not be meaningfully smaller), hashes
// the stored bytes with XXH3-64 and, in its turn, writes them to pages.img, while the
// caller fills the next buffer and the other worker compresses the next chunk.
// Buffers: the one being filled, and an input and an output buffer per worker, so
// memory stays at ~5 chunks whatever the image size. Chunks are aligned in pages.img
// and buffers in memory so that pages.img can be written with O_DIRECT on request.
//
// Reader: a worker thread copies chunk k+1's stored bytes out of pages.img (see
// PagesFile), checks them and decompresses them while the caller consumes chunk k
// through next() (double buffering). A raw chunk is copied straight into the buffer
// next() hands out views of.
//
// Verifier: chunks are claimed in order by kVerifyThreads threads and hashed in place
// in the mapped file where resident; errors are collected by chunk index so that the
// first bad chunk is reported whatever the thread timing.
#include "ckpt/image.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <climits>
#include <array>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <exception>
#include <limits>
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
// Unit of reading pages.img: residency check, copy or pread, hash. Small enough that
// a block just copied is still in the L2 cache when it is hashed.
constexpr std::size_t kIoBlockBytes = 512u << 10;
// verify_chunks() starts another thread only for this many stored bytes per thread.
constexpr std::uint64_t kVerifyBytesPerThread = 8u << 20;
// verify_chunks() asks the kernel to read the chunk this many chunks ahead of the one
// it starts to hash.
constexpr std::size_t kVerifyPrefetchChunks = 4;
// Smallest page size we assume (sizes the mincore(2) vector).
constexpr std::size_t kMinPageBytes = 4096;
// Unit of write(2) to pages.img. On our VMs (kernel 6.18, ext4) filling the page cache
// with 4 MiB writes ran 2-3x slower than with 64-512 KiB ones: 2 GiB in 4.1-6.6 s
// against 1.3-3.6 s, six interleaved pairs of dumps (fsched-ckpt dump --leave-running
// of a 2 GiB random memhog, phase "pages").
constexpr std::size_t kWriteBlockBytes = 512u << 10;
static_assert(kWriteBlockBytes % kChunkAlignBytes == 0 && kChunkRawBytes % kChunkAlignBytes == 0);
// The writer's compressibility probe: this many slices of this many bytes per chunk.
constexpr std::size_t kSamples = 4;
// copy_to_process() starts a helper thread for this many bytes at least.
constexpr std::uint64_t kCopyHelperMinBytes = 32u << 20;
// Compression threads of the image writer (at most one per usable CPU). The dumper
// reads the job's memory on its own thread meanwhile.
constexpr unsigned kWriterThreads = 2;
constexpr std::size_t kSampleBytes = 16u << 10;

struct ChunkInfo {
  std::uint64_t offset = 0;  // in pages.img
  std::uint64_t stored = 0;  // bytes in pages.img
  std::uint64_t raw = 0;     // logical bytes
  std::uint64_t xxh3 = 0;    // of the stored bytes
  bool zstd = true;          // a zstd frame; else the raw bytes (stored == raw)
};

struct ChunkTable {
  std::vector<ChunkInfo> chunks;
  std::uint64_t logical_bytes = 0;
  std::uint64_t stored_bytes = 0;
  std::uint64_t max_raw = 0;
  std::uint64_t max_zstd_stored = 0;  // largest stored size of a zstd chunk (0: none)
  std::uint64_t file_bytes = 0;       // size of pages.img: the end of the last chunk
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

constexpr std::uint64_t align_up(std::uint64_t n) {
  return (n + kChunkAlignBytes - 1) / kChunkAlignBytes * kChunkAlignBytes;
}
// Output buffer of the writer's zstd frames: the bound for a full chunk, whole blocks
// for O_DIRECT.
constexpr std::size_t kFrameCapacity = align_up(ZSTD_COMPRESSBOUND(kChunkRawBytes));

// Buffers that O_DIRECT can write from: kChunkAlignBytes-aligned, sizes rounded up.
struct AlignedFree {
  void operator()(std::byte* p) const { ::operator delete[](p, std::align_val_t{kChunkAlignBytes}); }
};
using AlignedBuffer = std::unique_ptr<std::byte[], AlignedFree>;
AlignedBuffer aligned_buffer(std::size_t bytes) {
  return AlignedBuffer(static_cast<std::byte*>(
      ::operator new[](align_up(bytes), std::align_val_t{kChunkAlignBytes})));
}

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
  write_all(fd.get(), reinterpret_cast<const std::byte*>(data.data()), data.size(), 0,
            [&] { return fmt::format("{}: write", path.native()); });
  fsync_fd(fd.get(), path);
}

// ---------------------------------------------------------------------------
// Writer

// CPUs this process may run on (at least 1).
unsigned usable_cpus() {
  cpu_set_t set;
  if (::sched_getaffinity(0, sizeof set, &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return static_cast<unsigned>(n);
  }
  unsigned n = std::thread::hardware_concurrency();
  return n ? n : 1;
}

// One compression thread of the writer, with its own zstd context and buffers.
struct Worker {
  std::thread thread;
  std::unique_ptr<ZSTD_CCtx, CCtxFree> cctx;
  AlignedBuffer in;        // the chunk to compress (swapped with the caller's fill buffer)
  AlignedBuffer out;       // its zstd frame (kFrameCapacity bytes)
  std::size_t len = 0;     // bytes in `in`
  std::uint64_t seq = 0;   // chunk index
  bool busy = false;       // has a chunk not yet written (guarded by the writer's mu_)
};

// A chunk ready to be written: `stored` bytes at `data` (the worker's in or out).
struct Encoded {
  std::byte* data;
  std::size_t stored;
  bool zstd;
  std::uint64_t xxh3;
};

class ImageWriterImpl final : public ImageWriter {
 public:
  ImageWriterImpl(fs::path dir, fs::path tmp, int level, bool direct_io)
      : dir_(std::move(dir)), tmp_(std::move(tmp)), pages_path_(tmp_ / kPagesName),
        level_(level), direct_(direct_io) {}

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
    // A file system without O_DIRECT (EINVAL) gets buffered writes.
    const int flags = O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC;
    if (direct_) pages_fd_ = UniqueFd(::openat(dirfd_.get(), kPagesName, flags | O_DIRECT, 0600));
    if (!direct_ || (!pages_fd_ && errno == EINVAL)) {
      direct_ = false;
      pages_fd_ = UniqueFd(::openat(dirfd_.get(), kPagesName, flags, 0600));
    }
    if (!pages_fd_) fail_errno("{}: cannot create", pages_path_.native());
    if (::fchmod(pages_fd_.get(), 0600) != 0)
      fail_errno("{}: cannot chmod 0600", pages_path_.native());
    const unsigned n = std::max(1u, std::min(kWriterThreads, usable_cpus()));
    for (unsigned i = 0; i < n; ++i) {
      auto w = std::make_unique<Worker>();
      w->cctx.reset(ZSTD_createCCtx());
      if (!w->cctx) fail("{}: cannot create zstd compression context", dir_.native());
      workers_.push_back(std::move(w));
    }
    for (auto& w : workers_) w->thread = std::thread([this, wp = w.get()] { worker_loop(*wp); });
  }

  void append_pages(std::span<const std::byte> data) override {
    check_usable();
    while (!data.empty()) {
      if (!fill_) fill_ = aligned_buffer(kChunkRawBytes);
      std::size_t n = std::min(data.size(), kChunkRawBytes - fill_len_);
      std::memcpy(fill_.get() + fill_len_, data.data(), n);
      fill_len_ += n;
      logical_ += n;
      data = data.subspan(n);
      if (fill_len_ == kChunkRawBytes) submit();
    }
  }

  std::span<std::byte> append_space() override {
    check_usable();
    if (fill_len_ == kChunkRawBytes) submit();
    if (!fill_) fill_ = aligned_buffer(kChunkRawBytes);
    return {fill_.get() + fill_len_, kChunkRawBytes - fill_len_};
  }

  void append_done(std::size_t n) override {
    if (n > kChunkRawBytes - fill_len_)
      fail("{}: append_done({}) beyond the {} bytes of free chunk space", dir_.native(), n,
           kChunkRawBytes - fill_len_);
    fill_len_ += n;
    logical_ += n;
    if (fill_len_ == kChunkRawBytes) submit();
  }

  void set_eager_writeback(bool on) override { eager_writeback_.store(on, std::memory_order_relaxed); }

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
    workers_.clear();

    json chunks = json::array();
    std::uint64_t stored = 0;
    for (const ChunkInfo& c : chunks_) {
      json e = {
          {"offset", c.offset}, {"stored", c.stored}, {"raw", c.raw}, {"xxh3", hex64(c.xxh3)}};
      if (!c.zstd) e["zstd"] = false;
      chunks.push_back(std::move(e));
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

    // Writes were whole blocks: cut the zeros after the last chunk.
    if (::ftruncate(pages_fd_.get(), static_cast<off_t>(file_end_)) != 0)
      fail_errno("{}: cannot truncate to {} bytes", pages_path_.native(), file_end_);
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

  // Hands the full fill_ buffer to an idle worker (waiting for one) and takes that
  // worker's previous input buffer to fill next.
  void submit() {
    {
      std::unique_lock lk(mu_);
      Worker* idle = nullptr;
      cv_.wait(lk, [&] {
        for (auto& w : workers_)
          if (!w->busy) idle = w.get();
        return idle || error_;
      });
      if (error_) std::rethrow_exception(error_);
      std::swap(fill_, idle->in);
      idle->len = fill_len_;
      idle->seq = submitted_++;
      idle->busy = true;
    }
    cv_.notify_all();
    fill_len_ = 0;
  }

  // Waits until every submitted chunk is written.
  void wait_idle() {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return chunks_.size() == submitted_ || error_; });
    if (error_) std::rethrow_exception(error_);
  }

  void stop_worker() noexcept {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& w : workers_)
      if (w->thread.joinable()) w->thread.join();
  }

  // Compresses and hashes its chunks while the other workers do theirs, then waits for
  // its turn to write: chunks reach pages.img in stream order.
  void worker_loop(Worker& w) {
    for (;;) {
      {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return w.busy || stop_; });
        if (stop_) return;  // a pending job is abandoned (destructor) or there is none
      }
      bool ok = true;
      try {
        Encoded e = encode(w);
        {
          std::unique_lock lk(mu_);
          cv_.wait(lk, [&] { return chunks_.size() == w.seq || error_ || stop_; });
          if (error_ || stop_) {
            w.busy = false;
            cv_.notify_all();
            return;
          }
        }
        ChunkInfo info = write_chunk(w, e);  // alone: the other workers wait for their turn
        std::lock_guard lk(mu_);
        chunks_.push_back(info);
        w.busy = false;
      } catch (...) {
        std::lock_guard lk(mu_);
        if (!error_) error_ = std::current_exception();
        w.busy = false;
        ok = false;
      }
      cv_.notify_all();
      if (!ok) return;  // the caller rethrows error_ on its next call
    }
  }

  // Whether zstd may shrink this chunk below kStoreRawPercent %. zstd needs about
  // 3 ms per 4 MiB chunk to find random bytes incompressible, more than hashing and
  // writing them together, so kSamples slices spread over the chunk are tried first;
  // only if one of them shrinks is the whole chunk compressed. A chunk judged wrongly
  // is merely stored raw.
  bool may_compress(Worker& w, const std::byte* src, std::size_t len) {
    if (len < kSamples * kSampleBytes * 4) return true;
    for (std::size_t i = 0; i < kSamples; ++i) {
      const std::byte* at = src + (len - kSampleBytes) * i / (kSamples - 1);
      std::size_t n = ZSTD_compressCCtx(w.cctx.get(), w.out.get(), kFrameCapacity, at, kSampleBytes, level_);
      if (ZSTD_isError(n) || std::uint64_t{n} * 100 < std::uint64_t{kSampleBytes} * kStoreRawPercent)
        return true;
    }
    return false;
  }

  // Worker thread: compresses and hashes chunk w.seq (w.in, w.len bytes). A chunk
  // zstd does not shrink below kStoreRawPercent % is stored raw: the reader then skips
  // zstd's framing and copy.
  Encoded encode(Worker& w) {
    if (!w.out) w.out = aligned_buffer(kFrameCapacity);
    std::byte* src = w.in.get();
    const std::size_t len = w.len;
    std::size_t n = len;
    bool zstd = false;
    if (may_compress(w, src, len)) {
      n = ZSTD_compressCCtx(w.cctx.get(), w.out.get(), kFrameCapacity, src, len, level_);
      if (ZSTD_isError(n))
        fail("{}: zstd compression of chunk {} (stream offset {}, {} bytes) failed: {}",
             pages_path_.native(), w.seq, w.seq * kChunkRawBytes, len, ZSTD_getErrorName(n));
      zstd = std::uint64_t{n} * 100 < std::uint64_t{len} * kStoreRawPercent;
      if (!zstd) n = len;
    }
    std::byte* data = zstd ? w.out.get() : src;
    return Encoded{data, n, zstd, XXH3_64bits(data, n)};
  }

  // Worker thread, in its turn: writes chunk w.seq, encoded as e, after the last one.
  ChunkInfo write_chunk(Worker& w, const Encoded& e) {
    const std::uint64_t index = w.seq, offset = align_up(file_end_);
    std::byte* data = e.data;
    const std::size_t n = e.stored;
    // Whole blocks for O_DIRECT: both buffers' capacities are multiples of the alignment.
    std::size_t padded = static_cast<std::size_t>(align_up(n));
    std::memset(data + n, 0, padded - n);
    for (std::size_t o = 0; o < padded; o += kWriteBlockBytes)
      write_block(data + o, std::min(kWriteBlockBytes, padded - o), offset + o, [&] {
        return fmt::format("{}: write of chunk {} at offset {}, from its byte {},",
                           pages_path_.native(), index, offset, o);
      });
    // Buffered writes: start writing this chunk to the disk now, so that the fsync of
    // commit() waits for the last few chunks instead of the whole image. Not while the
    // job is frozen for a dump that thaws it before the commit: on a slow disk this
    // call blocks.
    if (!direct_ && eager_writeback_.load(std::memory_order_relaxed))
      ::sync_file_range(pages_fd_.get(), static_cast<off_t>(offset), static_cast<off_t>(n),
                        SYNC_FILE_RANGE_WRITE);
    file_end_ = offset + n;
    stored_.fetch_add(n, std::memory_order_relaxed);
    return ChunkInfo{offset, n, w.len, e.xxh3, e.zstd};
  }

  // write_all() to pages.img. If the file system refuses an O_DIRECT write (EINVAL:
  // another alignment, or no O_DIRECT for this file), the file goes on with buffered
  // writes, from the start of the block again.
  template <typename Describe>
  void write_block(const std::byte* p, std::size_t n, std::uint64_t off, Describe&& what) {
    try {
      write_all(pages_fd_.get(), p, n, off, what);
    } catch (const Error& e) {
      int fl = direct_ && e.err() == EINVAL ? ::fcntl(pages_fd_.get(), F_GETFL) : -1;
      if (fl < 0 || ::fcntl(pages_fd_.get(), F_SETFL, fl & ~O_DIRECT) != 0) throw;
      direct_ = false;
      write_all(pages_fd_.get(), p, n, off, what);
    }
  }

  const fs::path dir_, tmp_, pages_path_;
  const int level_;
  UniqueFd dirfd_, pages_fd_;

  // Caller side.
  AlignedBuffer fill_;
  std::size_t fill_len_ = 0;
  std::uint64_t logical_ = 0;
  bool committed_ = false;
  bool broken_ = false;

  // Shared with the workers; guarded by mu_ (a Worker's job fields are its own while
  // it is busy).
  std::vector<std::unique_ptr<Worker>> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::uint64_t submitted_ = 0;  // chunks handed to workers
  bool stop_ = false;
  std::exception_ptr error_;
  std::vector<ChunkInfo> chunks_;  // of the chunks written: chunk chunks_.size() is next
  std::atomic<std::uint64_t> stored_{0};
  std::atomic<bool> eager_writeback_{false};

  // The worker whose turn it is to write (and the caller after stop_worker()).
  bool direct_ = false;         // pages_fd_ has O_DIRECT
  std::uint64_t file_end_ = 0;  // end of the last chunk written
};

// ---------------------------------------------------------------------------
// Reader

// pages.img opened for reading. Unless mmap(2) fails it is also mapped (read-only,
// shared): a block whose pages are all in the page cache (mincore(2)) is then read
// from the mapping -- a user-space memcpy, or hashing in place -- which on the
// machines we measured is 3-5x faster than the in-kernel copy of pread(2) (2 GiB warm:
// ~0.3 s instead of ~1 s); every other block is read with pread(2), so that a short
// file or an I/O error is reported as an fsched::Error, not SIGBUS. The exceptions:
// the file truncated, or a page evicted and then failing to read back, between the
// mincore() and the access; or an I/O error on a page the kernel was still reading
// ahead (mincore counts it). Committed images are never modified. Thread-safe: no
// state changes after construction.
class PagesFile {
 public:
  explicit PagesFile(fs::path path) : path_(std::move(path)) {
    fd_ = UniqueFd(::open(path_.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd_) fail_errno("{}: cannot open", path_.native());
    (void)::posix_fadvise(fd_.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
    struct stat st;
    if (::fstat(fd_.get(), &st) != 0) fail_errno("{}: cannot stat", path_.native());
    size_ = static_cast<std::uint64_t>(st.st_size);
    long page = ::sysconf(_SC_PAGESIZE);
    page_ = page > 0 ? static_cast<std::size_t>(page) : kMinPageBytes;
    if (size_ > 0 && size_ <= std::numeric_limits<std::size_t>::max() &&
        page_ >= kMinPageBytes) {
      void* p = ::mmap(nullptr, static_cast<std::size_t>(size_), PROT_READ, MAP_SHARED,
                       fd_.get(), 0);
      if (p != MAP_FAILED) map_ = static_cast<const std::byte*>(p);  // else pread only
    }
  }
  ~PagesFile() {
    if (map_) ::munmap(const_cast<std::byte*>(map_), static_cast<std::size_t>(size_));
  }
  PagesFile(const PagesFile&) = delete;
  PagesFile& operator=(const PagesFile&) = delete;

  const fs::path& path() const { return path_; }
  // File size when opened.
  std::uint64_t size() const { return size_; }
  // Starts reading [off, off+n) into the page cache without waiting (posix_fadvise(2)
  // WILLNEED; nothing for pages already there). Best effort.
  void prefetch(std::uint64_t off, std::uint64_t n) const {
    (void)::posix_fadvise(fd_.get(), static_cast<off_t>(off), static_cast<off_t>(n),
                          POSIX_FADV_WILLNEED);
  }

  // The whole file mapped read-only, or nullptr. Only for handing to the kernel
  // (process_vm_writev(2) fails with EFAULT where we would get SIGBUS).
  const std::byte* map() const { return map_; }

  // Copies [off, off+n) into dst and feeds the copy to `state` (unless null) block by
  // block (each block hashed right after it was copied, while it is in the cache).
  // Returns the number of bytes copied, fewer than n only at end of file. Throws on
  // read errors.
  std::size_t copy_hash(std::uint64_t off, std::size_t n, std::byte* dst,
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

  // Feeds [off, off+n) to `state`: in place where resident, else through `scratch`
  // (kIoBlockBytes). Returns the bytes hashed, fewer than n only at end of file.
  std::size_t hash(std::uint64_t off, std::size_t n, XXH3_state_t* state,
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

 private:
  // [off, off+n) (n <= kIoBlockBytes) in the mapping if it lies within the mapped file
  // and all its pages are in the page cache; else nullptr.
  const std::byte* resident(std::uint64_t off, std::size_t n) const {
    if (!map_ || off > size_ || n > size_ - off || n == 0) return nullptr;
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

  const fs::path path_;
  UniqueFd fd_;
  std::uint64_t size_ = 0;
  std::size_t page_ = kMinPageBytes;
  const std::byte* map_ = nullptr;
};

[[noreturn]] void fail_checksum(const fs::path& path, std::size_t index, const ChunkInfo& c,
                                std::uint64_t h) {
  fail("{}: chunk {} at offset {}: checksum mismatch (xxh3 of {} stored bytes is {}, "
       "manifest says {})",
       path.native(), index, c.offset, c.stored, hex64(h), hex64(c.xxh3));
}

// Decompresses a zstd chunk's (checked) stored bytes src into dst (c.raw bytes).
void zstd_decode_chunk(ZSTD_DCtx* dctx, const fs::path& path, std::size_t index,
                       const ChunkInfo& c, const std::byte* src, std::byte* dst) {
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

// One process_vm_writev(2) of `local` (the page stream from offset `pos`) to `remote`.
void write_to_process(pid_t pid, const iovec& local, std::span<const iovec> remote,
                      std::uint64_t pos, const fs::path& path) {
  ssize_t w = ::process_vm_writev(pid, &local, 1, remote.data(), remote.size(), 0);
  if (w == static_cast<ssize_t>(local.iov_len)) return;
  auto at = reinterpret_cast<std::uint64_t>(remote[0].iov_base);
  if (w < 0)
    fail_errno("{}: cannot write {} bytes of the page stream at offset {} into process {} at {:#x}",
               path.native(), local.iov_len, pos, pid, at);
  fail("{}: only {} of {} bytes of the page stream at offset {} reached process {} at {:#x} (a "
       "remote range unmapped, or pages.img shortened since it was verified)",
       path.native(), w, local.iov_len, pos, pid, at);
}

// A second thread for PageReader::copy_to_process(): takes one write at a time when it
// is idle (offer() never waits), so the two threads share the work whatever their
// speeds. Its local buffers must stay valid until finish(): only the read-only
// mapping of pages.img is offered, never a reader buffer that is reused.
class CopyHelper {
 public:
  CopyHelper(pid_t pid, const fs::path& path) : pid_(pid), path_(path) {
    thread_ = std::thread([this] { loop(); });
  }
  ~CopyHelper() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  CopyHelper(const CopyHelper&) = delete;
  CopyHelper& operator=(const CopyHelper&) = delete;

  // Hands the write to the helper if it is idle and has not failed; false otherwise
  // (the caller then does it).
  bool offer(const iovec& local, std::span<const iovec> remote, std::uint64_t pos) {
    {
      std::lock_guard lk(mu_);
      if (busy_ || error_) return false;
      local_ = local;
      remote_.assign(remote.begin(), remote.end());
      pos_ = pos;
      busy_ = true;
    }
    cv_.notify_all();
    return true;
  }

  // Waits for the write in progress; rethrows the helper's error, if any.
  void finish() { finish_before(std::numeric_limits<std::uint64_t>::max()); }
  // Likewise, but rethrows only the error of a write at a stream offset before `pos`.
  void finish_before(std::uint64_t pos) {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return !busy_; });
    if (error_ && pos_ < pos) std::rethrow_exception(error_);
  }

 private:
  void loop() {
    std::unique_lock lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return busy_ || stop_; });
      if (stop_) return;
      lk.unlock();
      std::exception_ptr err;
      try {
        write_to_process(pid_, local_, remote_, pos_, path_);
      } catch (...) {
        err = std::current_exception();
      }
      lk.lock();
      error_ = err;
      busy_ = false;
      cv_.notify_all();
    }
  }

  const pid_t pid_;
  const fs::path& path_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool busy_ = false, stop_ = false;  // guarded by mu_
  std::exception_ptr error_;          // guarded by mu_
  iovec local_{};                     // the helper's while busy_
  std::vector<iovec> remote_;
  std::uint64_t pos_ = 0;
};

class PageReaderImpl final : public PageReader {
 public:
  PageReaderImpl(std::shared_ptr<const ChunkTable> table, fs::path pages_path, bool verified)
      : table_(std::move(table)), path_(std::move(pages_path)) {
    if (table_->chunks.empty()) return;
    file_ = std::make_unique<PagesFile>(path_);
    direct_ = verified && file_->map() != nullptr;
    if (table_->max_zstd_stored > 0) {
      dctx_.reset(ZSTD_createDCtx());
      if (!dctx_) fail("{}: cannot create zstd decompression context", path_.native());
      stored_buf_ = std::make_unique_for_overwrite<std::byte[]>(table_->max_zstd_stored);
    }
    xxh_.reset(XXH3_createState());
    if (!xxh_) throw std::bad_alloc();
    cur_ = std::make_unique_for_overwrite<std::byte[]>(table_->max_raw);
    next_ = std::make_unique_for_overwrite<std::byte[]>(table_->max_raw);
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

  std::span<const std::byte> next(std::size_t max) override {
    if (failed_) std::rethrow_exception(failed_);
    if (max == 0) return {};
    if (pos_ == table_->logical_bytes)
      fail("{}: read at stream offset {} goes past the end of the page stream ({} bytes, "
           "0 left)",
           path_.native(), pos_, table_->logical_bytes);
    if (cur_pos_ == cur_len_) next_chunk();
    if (cur_direct_) materialize();
    std::size_t n = std::min(max, cur_len_ - cur_pos_);
    std::span<const std::byte> view(cur_.get() + cur_pos_, n);
    cur_pos_ += n;
    pos_ += n;
    return view;
  }

  void copy_to_process(pid_t pid, std::span<const iovec> remote) override {
    if (failed_) std::rethrow_exception(failed_);
    std::uint64_t total = 0;
    for (const iovec& r : remote) total += r.iov_len;
    std::uint64_t left = table_->logical_bytes - pos_;
    if (total > left)
      fail("{}: copy of {} bytes at stream offset {} goes past the end of the page stream "
           "({} bytes, {} left)",
           path_.native(), total, pos_, table_->logical_bytes, left);
    // Each call covers what is left of the current chunk or of the remote ranges,
    // whichever ends first, split into at most IOV_MAX (limits.h) remote iovecs. Calls
    // that read the mapping of a verified raw chunk may go to a helper thread while this
    // one goes on: filling fresh pages of the target is the cost of a restore, and on our
    // 2-CPU VMs two threads wrote 2 GiB 3-5x faster than one.
    std::optional<CopyHelper> helper;
    if (direct_ && total >= kCopyHelperMinBytes && usable_cpus() > 1) helper.emplace(pid, path_);
    std::vector<iovec> part;
    std::size_t ri = 0;        // current remote range
    std::uint64_t rdone = 0;   // bytes of it already written
    while (ri < remote.size()) {
      if (remote[ri].iov_len == rdone) {
        ++ri;
        rdone = 0;
        continue;
      }
      if (cur_pos_ == cur_len_) next_chunk();
      const std::byte* src = cur_direct_ ? cur_direct_ + cur_pos_ : cur_.get() + cur_pos_;
      std::size_t avail = cur_len_ - cur_pos_;
      part.clear();
      std::size_t len = 0;
      std::size_t rj = ri;
      std::uint64_t rjdone = rdone;
      while (len < avail && rj < remote.size() && part.size() < std::size_t{IOV_MAX}) {
        std::size_t take = static_cast<std::size_t>(
            std::min<std::uint64_t>(remote[rj].iov_len - rjdone, avail - len));
        if (take) part.push_back({static_cast<std::byte*>(remote[rj].iov_base) + rjdone, take});
        len += take;
        rjdone += take;
        if (rjdone == remote[rj].iov_len) {
          ++rj;
          rjdone = 0;
        }
      }
      iovec local{const_cast<std::byte*>(src), len};
      if (!(helper && cur_direct_ && helper->offer(local, part, pos_))) {
        try {
          write_to_process(pid, local, part, pos_, path_);
        } catch (...) {
          if (helper) helper->finish_before(pos_);  // an earlier failure is the one to report
          throw;
        }
      }
      cur_pos_ += len;
      pos_ += len;
      ri = rj;
      rdone = rjdone;
    }
    if (helper) helper->finish();
  }

  void read(std::span<std::byte> out) override {
    if (failed_) std::rethrow_exception(failed_);
    std::uint64_t left = table_->logical_bytes - pos_;
    if (out.size() > left)
      fail("{}: read of {} bytes at stream offset {} goes past the end of the page stream "
           "({} bytes, {} left)",
           path_.native(), out.size(), pos_, table_->logical_bytes, left);
    while (!out.empty()) {
      std::span<const std::byte> v = next(out.size());
      std::memcpy(out.data(), v.data(), v.size());
      out = out.subspan(v.size());
    }
  }

 private:
  // Takes the chunk the worker decoded into next_ and asks it for the one after (into
  // the buffer the caller's previous views pointed into).
  void next_chunk() {
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return !request_; });
      if (error_) {
        failed_ = error_;
        std::rethrow_exception(failed_);
      }
      std::swap(cur_, next_);
      const ChunkInfo& c = table_->chunks[consumed_];
      cur_len_ = c.raw;
      cur_pos_ = 0;
      cur_direct_ = is_direct(c) ? file_->map() + c.offset : nullptr;
      ++consumed_;
      if (consumed_ < table_->chunks.size()) request_ = true;
    }
    cv_.notify_all();
  }

  // A raw chunk of an image whose chunks were all verified is not copied or hashed
  // again: copy_to_process() hands it from the page cache to the kernel, and next()
  // copies it out only if asked for it (materialize()).
  bool is_direct(const ChunkInfo& c) const { return direct_ && !c.zstd; }

  // Copies the unread rest of the current direct chunk into cur_, for next().
  void materialize() {
    const ChunkInfo& c = table_->chunks[consumed_ - 1];
    std::size_t want = cur_len_ - cur_pos_;
    std::size_t got = file_->copy_hash(c.offset + cur_pos_, want, cur_.get() + cur_pos_, nullptr);
    if (got < want) {
      try {
        fail("{}: chunk {} at offset {}: truncated since it was verified: file ends at offset {}",
             path_.native(), consumed_ - 1, c.offset, c.offset + cur_pos_ + got);
      } catch (...) {
        failed_ = std::current_exception();
        throw;
      }
    }
    cur_direct_ = nullptr;
  }

  // Worker: reads, checks and decodes chunk `index` into next_.
  void decode(std::size_t index) {
    const ChunkInfo& c = table_->chunks[index];
    if (is_direct(c)) return;
    // A raw chunk goes straight into next_; the check is on the copy handed out.
    std::byte* dst = c.zstd ? stored_buf_.get() : next_.get();
    XXH3_64bits_reset(xxh_.get());
    std::size_t got = file_->copy_hash(c.offset, c.stored, dst, xxh_.get());
    if (got < c.stored)
      fail("{}: chunk {} at offset {}: truncated: file ends at offset {}, {} of {} stored "
           "bytes missing",
           path_.native(), index, c.offset, c.offset + got, c.stored - got, c.stored);
    std::uint64_t h = XXH3_64bits_digest(xxh_.get());
    if (h != c.xxh3) fail_checksum(path_, index, c, h);
    if (c.zstd) zstd_decode_chunk(dctx_.get(), path_, index, c, stored_buf_.get(), next_.get());
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
        decode(index);
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
  std::unique_ptr<PagesFile> file_;
  std::unique_ptr<ZSTD_DCtx, DCtxFree> dctx_;        // worker only
  std::unique_ptr<XXH3_state_t, XXH3StateFree> xxh_;  // worker only

  // Caller side.
  std::unique_ptr<std::byte[]> cur_;  // chunk being consumed; views point into it
  const std::byte* cur_direct_ = nullptr;  // the current chunk in the mapped file, if direct
  bool direct_ = false;               // raw chunks are direct (set before the worker starts)
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
    verified_ = false;
    PagesFile file(pages_path_);
    const auto& chunks = table_->chunks;
    const std::uint64_t file_size = file.size();
    // Chunks wholly inside the file are hashed; the first one that is not (if any) is
    // reported as a truncation, but only once all chunks before it are known good.
    std::size_t complete = 0;
    while (complete < chunks.size() &&
           chunks[complete].offset + chunks[complete].stored <= file_size)
      ++complete;

    std::atomic<std::size_t> next{0};
    std::mutex mu;
    std::size_t bad = std::numeric_limits<std::size_t>::max();  // guarded by mu
    std::atomic<std::size_t> bad_hint{bad};  // lets threads stop early
    std::exception_ptr bad_err;              // guarded by mu; the error of chunk `bad`

    auto work = [&] {
      try {
        std::unique_ptr<XXH3_state_t, XXH3StateFree> state(XXH3_createState());
        if (!state) throw std::bad_alloc();
        auto scratch = std::make_unique_for_overwrite<std::byte[]>(kIoBlockBytes);  // for pread
        for (;;) {
          // Chunks are claimed in increasing order, so every chunk before the first bad
          // one has been claimed -- and is finished before the threads are joined.
          std::size_t i = next.fetch_add(1, std::memory_order_relaxed);
          if (i >= complete || i > bad_hint.load(std::memory_order_relaxed)) return;
          try {
            const ChunkInfo& c = chunks[i];
            // The threads' interleaved chunks defeat the kernel's sequential readahead
            // on a file not in the page cache (an image written with O_DIRECT): ask for
            // the chunks kVerifyPrefetchChunks ahead explicitly (from the disk at ~1 GB/s
            // instead of ~0.5).
            if (std::size_t a = i + kVerifyPrefetchChunks; a < complete)
              file.prefetch(chunks[a].offset, chunks[a].stored);
            XXH3_64bits_reset(state.get());
            std::size_t got = file.hash(c.offset, c.stored, state.get(), scratch.get());
            if (got < c.stored) fail_truncated(i, c.offset + got);  // shrunk meanwhile
            std::uint64_t h = XXH3_64bits_digest(state.get());
            if (h != c.xxh3) fail_checksum(pages_path_, i, c, h);
          } catch (...) {
            std::lock_guard lk(mu);
            if (i < bad) {
              bad = i;
              bad_err = std::current_exception();
              bad_hint.store(i, std::memory_order_relaxed);
            }
          }
        }
      } catch (...) {  // allocation failure: report it unless a chunk error comes first
        std::lock_guard lk(mu);
        if (!bad_err) bad_err = std::current_exception();
        next.store(complete, std::memory_order_relaxed);
      }
    };

    // One thread per usable CPU up to kVerifyThreads, each with kVerifyBytesPerThread
    // stored bytes at least (starting a thread costs more than hashing a few MiB).
    const std::uint64_t to_hash =
        complete ? chunks[complete - 1].offset + chunks[complete - 1].stored : 0;
    std::size_t nthreads = static_cast<std::size_t>(std::min<std::uint64_t>(
        {kVerifyThreads, usable_cpus(), to_hash / kVerifyBytesPerThread}));
    std::vector<std::thread> helpers;
    for (std::size_t t = 1; t < nthreads; ++t) {
      try {
        helpers.emplace_back(work);
      } catch (const std::system_error&) {
        break;  // cannot start a thread: the others do its share
      }
    }
    work();
    for (auto& t : helpers) t.join();
    if (bad_err) std::rethrow_exception(bad_err);

    if (complete < chunks.size()) fail_truncated(complete, file_size);
    if (file_size > table_->file_bytes)
      fail("{}: trailing bytes after the last chunk: chunk table ends at offset {} but the "
           "file is {} bytes",
           pages_path_.native(), table_->file_bytes, file_size);
    verified_ = true;
  }

  std::unique_ptr<PageReader> pages() const override {
    return std::make_unique<PageReaderImpl>(table_, pages_path_, verified_);
  }

 private:
  // Chunk `index` is incomplete because pages.img ends at offset `end`.
  [[noreturn]] void fail_truncated(std::size_t index, std::uint64_t end) const {
    const auto& chunks = table_->chunks;
    const ChunkInfo& c = chunks[index];
    fail("{}: truncated: chunk {} at offset {} needs {} stored bytes but the file ends at "
         "offset {} ({} bytes missing in total, {} of {} chunks incomplete)",
         pages_path_.native(), index, c.offset, c.stored, end, table_->file_bytes - end,
         chunks.size() - index, chunks.size());
  }

  const fs::path dir_, pages_path_;
  const json manifest_;
  const std::shared_ptr<const ChunkTable> table_;
  mutable bool verified_ = false;  // verify_chunks() found every chunk good
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
    if (auto z = e.find("zstd"); z != e.end()) {
      if (!z->is_boolean()) fail("{}: {}\"zstd\" must be true or false", mpath.native(), where);
      c.zstd = z->get<bool>();
    }
    if (c.offset != align_up(table->file_bytes))
      fail("{}: {}offset {} is not the first multiple of {} after the end of the previous "
           "chunks ({})",
           mpath.native(), where, c.offset, kChunkAlignBytes, table->file_bytes);
    if (c.raw == 0 || c.raw > kChunkRawBytes)
      fail("{}: {}raw size {} out of range 1..{}", mpath.native(), where, c.raw, kChunkRawBytes);
    if (c.stored == 0 || c.stored > max_stored)
      fail("{}: {}stored size {} out of range 1..{}", mpath.native(), where, c.stored,
           max_stored);
    if (!c.zstd && c.stored != c.raw)
      fail("{}: {}stored uncompressed (\"zstd\": false) but stored size {} is not raw size {}",
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
    fail("{}: pages_logical_bytes is {} but the chunks hold {} bytes", mpath.native(), logical,
         table->logical_bytes);
  if (stored != table->stored_bytes)
    fail("{}: pages_stored_bytes is {} but the chunks store {} bytes", mpath.native(), stored,
         table->stored_bytes);
  return table;
}

}  // namespace

std::unique_ptr<ImageWriter> ImageWriter::create(const std::filesystem::path& dir_arg,
                                                 int zstd_level, bool direct_io) {
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
  auto w = std::make_unique<ImageWriterImpl>(dir, tmp, zstd_level, direct_io);
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
