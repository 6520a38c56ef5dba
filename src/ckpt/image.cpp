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
// next() hands out views of. copy_to_process() shares whole chunks with the worker
// instead: each thread decodes a chunk and writes it into the process (SharedCopy).
// Of a verified image, raw chunks go from the page cache straight to the kernel and
// zstd chunks are decompressed from it, neither copied nor hashed again.
//
// Verifier: chunks are claimed in order by kVerifyThreads threads and hashed in place
// in the mapped file where resident; errors are collected by chunk index so that the
// first bad chunk is reported whatever the thread timing.
#include "ckpt/image.h"
#include "ckpt/imagekey.h"

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
constexpr const char* kManifestHmacName = "manifest.hmac";
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

// Reads a whole (small) file of at most `limit` bytes; nullopt if it (or its
// directory) does not exist. Refuses anything but a regular file: a link to /dev/zero
// would be read without end, a FIFO would block.
std::optional<std::string> read_small_file(const fs::path& path,
                                           std::size_t limit = kMaxManifestBytes) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT || errno == ENOTDIR) return std::nullopt;
    if (errno == ELOOP) bad_image("{}: is a symbolic link, not an image file", path.native());
    fail_errno("{}: cannot open", path.native());
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) < 0) fail_errno("{}: fstat", path.native());
  if (!S_ISREG(st.st_mode)) bad_image("{}: not a regular file", path.native());
  if (static_cast<std::uint64_t>(st.st_size) > limit)
    bad_image("{}: {} bytes, more than the {} an image file may have", path.native(), st.st_size,
              limit);
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
    if (out.size() > limit) bad_image("{}: grew past {} bytes while read", path.native(), limit);
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

  void begin_section(Section sec) override {
    check_usable();
    std::size_t i = section_index(sec);
    if (!sections_.empty() && i <= section_index(sections_.back().first))
      fail("{}: section \"{}\" begun after \"{}\": sections go in the order of sections.h, "
           "each once",
           dir_.native(), section_name(sec), section_name(sections_.back().first));
    sections_.emplace_back(sec, logical_);
  }

  std::uint64_t logical_bytes() const override { return logical_; }
  std::uint64_t stored_bytes() const override {
    return stored_.load(std::memory_order_relaxed);
  }
  const fs::path& path() const override { return dir_; }
  void sign_with(std::vector<std::byte> key) override { key_ = std::move(key); }

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
    json sections = json::array();
    for (auto [sec, offset] : sections_)
      sections.push_back(SectionStart{std::string(section_name(sec)), offset});
    manifest["sections"] = std::move(sections);
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
    if (!key_.empty())
      write_new_file(dirfd_.get(), tmp_ / kManifestHmacName, image_hmac(key_, text) + "\n");
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
  std::vector<std::byte> key_;  // sign_with(): the image key for manifest.hmac
  std::vector<std::pair<Section, std::uint64_t>> sections_;  // begin_section(): where each starts

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
    fd_ = UniqueFd(::open(path_.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
    if (!fd_ && errno == ELOOP) bad_image("{}: is a symbolic link, not an image file", path_.native());
    if (!fd_ && errno == ENOENT) bad_image("{}: missing", path_.native());
    if (!fd_) fail_errno("{}: cannot open", path_.native());
    struct stat st;
    if (::fstat(fd_.get(), &st) != 0) fail_errno("{}: cannot stat", path_.native());
    // A FIFO or a device would block or never end; the chunk table bounds a file.
    if (!S_ISREG(st.st_mode)) bad_image("{}: not a regular file", path_.native());
    (void)::posix_fadvise(fd_.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
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
  // WILLNEED). Nothing if its first and last pages are there: asking the kernel walks
  // every page of the range, which cost verify_chunks() ~25 ms per GiB and thread on
  // an image in the page cache. Best effort.
  void prefetch(std::uint64_t off, std::uint64_t n) const {
    if (n == 0) return;
    if (resident(off, 1) && resident(off + n - 1, 1)) return;
    (void)::posix_fadvise(fd_.get(), static_cast<off_t>(off), static_cast<off_t>(n),
                          POSIX_FADV_WILLNEED);
  }

  // The whole file mapped read-only, or nullptr. Only for handing to the kernel
  // (process_vm_writev(2) fails with EFAULT where we would get SIGBUS).
  const std::byte* map() const { return map_; }

  // [off, off+n) in the mapping if it lies within the mapped file and all its pages
  // are in the page cache (mincore(2)), for reading in place; else nullptr.
  const std::byte* resident_range(std::uint64_t off, std::uint64_t n) const {
    if (n == 0) return nullptr;
    for (std::uint64_t done = 0; done < n; done += kIoBlockBytes)
      if (!resident(off + done, static_cast<std::size_t>(std::min<std::uint64_t>(kIoBlockBytes, n - done))))
        return nullptr;
    return map_ + off;
  }

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
  bad_image("{}: chunk {} at offset {}: checksum mismatch (xxh3 of {} stored bytes is {}, "
       "manifest says {})",
       path.native(), index, c.offset, c.stored, hex64(h), hex64(c.xxh3));
}

// Decompresses a zstd chunk's (checked) stored bytes src into dst (c.raw bytes).
void zstd_decode_chunk(ZSTD_DCtx* dctx, const fs::path& path, std::size_t index,
                       const ChunkInfo& c, const std::byte* src, std::byte* dst) {
  unsigned long long content = ZSTD_getFrameContentSize(src, c.stored);
  if (content == ZSTD_CONTENTSIZE_ERROR)
    bad_image("{}: chunk {} at offset {}: not a zstd frame", path.native(), index, c.offset);
  if (content != c.raw)
    bad_image("{}: chunk {} at offset {}: zstd frame holds {} bytes, manifest says {}", path.native(),
         index, c.offset,
         content == ZSTD_CONTENTSIZE_UNKNOWN ? std::string("an unknown number of")
                                             : std::to_string(content),
         c.raw);
  std::size_t r = ZSTD_decompressDCtx(dctx, dst, c.raw, src, c.stored);
  if (ZSTD_isError(r))
    bad_image("{}: chunk {} at offset {}: zstd decompression failed: {}", path.native(), index,
         c.offset, ZSTD_getErrorName(r));
  if (r != c.raw)
    bad_image("{}: chunk {} at offset {}: decompressed to {} bytes, manifest says {}", path.native(),
         index, c.offset, r, c.raw);
}

// A position in a list of remote ranges: `done` bytes into range `ri`.
struct RemoteCursor {
  std::size_t ri = 0;
  std::uint64_t done = 0;
};

// Moves c forward by n bytes (at most the bytes left after c).
void advance(std::span<const iovec> remote, RemoteCursor& c, std::uint64_t n) {
  while (n > 0) {
    std::uint64_t take = std::min<std::uint64_t>(n, remote[c.ri].iov_len - c.done);
    c.done += take;
    n -= take;
    if (c.done == remote[c.ri].iov_len) {
      ++c.ri;
      c.done = 0;
    }
  }
}

// Writes len bytes from src -- the page stream from offset `pos` -- into process pid,
// filling the remote ranges from c on, and moves c past them. One process_vm_writev(2)
// per IOV_MAX (limits.h) remote ranges. len must not exceed the bytes left after c.
void write_to_process(pid_t pid, const std::byte* src, std::size_t len,
                      std::span<const iovec> remote, RemoteCursor& c, std::uint64_t pos,
                      const fs::path& path) {
  std::vector<iovec> part;
  while (len > 0) {
    part.clear();
    std::size_t n = 0;
    while (n < len && part.size() < std::size_t{IOV_MAX}) {
      const iovec& r = remote[c.ri];
      std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(r.iov_len - c.done, len - n));
      if (take) part.push_back({static_cast<std::byte*>(r.iov_base) + c.done, take});
      n += take;
      c.done += take;
      if (c.done == r.iov_len) {
        ++c.ri;
        c.done = 0;
      }
    }
    iovec local{const_cast<std::byte*>(src), n};
    ssize_t w = ::process_vm_writev(pid, &local, 1, part.data(), part.size(), 0);
    if (w != static_cast<ssize_t>(n)) {
      auto at = reinterpret_cast<std::uint64_t>(part[0].iov_base);
      if (w < 0)
        fail_errno("{}: cannot write {} bytes of the page stream at offset {} into process {} "
                   "at {:#x}",
                   path.native(), n, pos, pid, at);
      fail("{}: only {} of {} bytes of the page stream at offset {} reached process {} at "
           "{:#x} (a remote range unmapped, or pages.img shortened since it was verified)",
           path.native(), w, n, pos, pid, at);
    }
    src += n;
    len -= n;
    pos += n;
  }
}

// Chunks [first, end) claimed in increasing order by several threads, with the error
// of the first one that failed. Since claims go in order, every chunk before that one
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
  // The error kept, or null; read it once the threads are done.
  std::exception_ptr error() const {
    std::lock_guard lk(mu_);
    return error_;
  }

 private:
  std::atomic<std::size_t> next_;
  const std::size_t end_;
  std::atomic<std::size_t> bad_hint_{std::numeric_limits<std::size_t>::max()};  // stops claims early
  mutable std::mutex mu_;
  std::size_t bad_ = std::numeric_limits<std::size_t>::max();  // guarded by mu_
  std::exception_ptr error_;                                   // guarded by mu_
};

// Where a chunk's bytes are: `data` points to its first byte. `in_file` says that it
// points into the mapped pages.img (see PagesFile::map()), which only the kernel may
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
  // Throws fsched::Error naming pages.img, the chunk and its offset: truncated file,
  // checksum mismatch, bad zstd frame; or errno on a read error.
  ChunkBytes get(std::size_t index, std::byte* out) {
    const ChunkInfo& c = table_.chunks[index];
    if (verified_) {
      if (!c.zstd) return {file_.map() + c.offset, true};
      if (const std::byte* src = file_.resident_range(c.offset, c.stored)) {
        zstd_decode_chunk(dctx(), file_.path(), index, c, src, out);
        return {out, false};
      }
    }
    if (c.zstd && !stored_) stored_ = std::make_unique_for_overwrite<std::byte[]>(table_.max_zstd_stored);
    std::byte* dst = c.zstd ? stored_.get() : out;
    if (!xxh_) {
      xxh_.reset(XXH3_createState());
      if (!xxh_) throw std::bad_alloc();
    }
    XXH3_64bits_reset(xxh_.get());
    std::size_t got = file_.copy_hash(c.offset, c.stored, dst, xxh_.get());
    if (got < c.stored)
      bad_image("{}: chunk {} at offset {}: truncated: file ends at offset {}, {} of {} stored "
           "bytes missing",
           file_.path().native(), index, c.offset, c.offset + got, c.stored - got, c.stored);
    std::uint64_t h = XXH3_64bits_digest(xxh_.get());
    if (h != c.xxh3) fail_checksum(file_.path(), index, c, h);
    if (c.zstd) zstd_decode_chunk(dctx(), file_.path(), index, c, stored_.get(), out);
    return {out, false};
  }

 private:
  ZSTD_DCtx* dctx() {
    if (!dctx_) {
      dctx_.reset(ZSTD_createDCtx());
      if (!dctx_) fail("{}: cannot create zstd decompression context", file_.path().native());
    }
    return dctx_.get();
  }

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
// fresh pages (the cost of a restore) run on two CPUs. The failure reported is the
// first in the stream whatever the timing (see ChunkClaims).
struct SharedCopy {
  struct Start {
    RemoteCursor at;      // where the chunk's first byte goes
    std::uint64_t pos;    // its stream offset
  };

  SharedCopy(pid_t target, std::span<const iovec> ranges, const ChunkTable& chunk_table,
             const fs::path& pages_path, std::size_t first_chunk, std::size_t end_chunk)
      : pid(target), remote(ranges), table(chunk_table), path(pages_path), first(first_chunk),
        claims(first_chunk, end_chunk) {}

  const pid_t pid;
  const std::span<const iovec> remote;
  const ChunkTable& table;
  const fs::path& path;
  const std::size_t first;
  std::vector<Start> starts;  // of chunks first..end-1
  ChunkClaims claims;

  // Claims and copies chunks until none is left or one before them failed.
  void run(ChunkDecoder& dec, std::byte* buf) {
    while (std::optional<std::size_t> i = claims.claim()) {
      try {
        ChunkBytes b = dec.get(*i, buf);
        RemoteCursor at = starts[*i - first].at;
        write_to_process(pid, b.data, table.chunks[*i].raw, remote, at, starts[*i - first].pos,
                         path);
      } catch (...) {
        claims.failed(*i, std::current_exception());
      }
    }
  }
};

class PageReaderImpl final : public PageReader {
 public:
  // file: pages.img as verify_chunks() mapped it, or null to open it.
  PageReaderImpl(std::shared_ptr<const ChunkTable> table, fs::path pages_path,
                 std::shared_ptr<const PagesFile> file, bool verified,
                 std::vector<std::pair<Section, std::uint64_t>> sections)
      : table_(std::move(table)), path_(std::move(pages_path)), file_(std::move(file)),
        sections_(std::move(sections)) {
    if (table_->chunks.empty()) return;
    if (!file_) file_ = std::make_shared<const PagesFile>(path_);
    mine_.emplace(*file_, *table_, verified);
    theirs_.emplace(*file_, *table_, verified);
    share_ = usable_cpus() > 1;
    buf_ = std::make_unique_for_overwrite<std::byte[]>(table_->max_raw);
    next_ = std::make_unique_for_overwrite<std::byte[]>(table_->max_raw);
    task_ = Task::kDecode;  // chunk 0 into next_
    want_ = 0;
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
      bad_image("{}: read at stream offset {} goes past the end of the page stream ({} bytes, "
           "0 left)",
           path_.native(), pos_, table_->logical_bytes);
    if (cur_pos_ == cur_len_) take_chunk(true);
    if (cur_.in_file) materialize();
    std::size_t n = std::min(max, cur_len_ - cur_pos_);
    std::span<const std::byte> view(cur_.data + cur_pos_, n);
    cur_pos_ += n;
    pos_ += n;
    return view;
  }

  void copy_to_process(pid_t pid, std::span<const iovec> remote) override {
    if (failed_) std::rethrow_exception(failed_);
    std::uint64_t left = 0;
    for (const iovec& r : remote) left += r.iov_len;
    if (left > table_->logical_bytes - pos_)
      bad_image("{}: copy of {} bytes at stream offset {} goes past the end of the page stream "
           "({} bytes, {} left)",
           path_.native(), left, pos_, table_->logical_bytes, table_->logical_bytes - pos_);
    RemoteCursor at;
    auto from_current = [&] {
      std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left, cur_len_ - cur_pos_));
      write_to_process(pid, cur_.data + cur_pos_, n, remote, at, pos_, path_);
      cur_pos_ += n;
      pos_ += n;
      left -= n;
    };
    if (cur_pos_ < cur_len_) from_current();
    if (share_ && left > 0) copy_shared(pid, remote, at, left);
    while (left > 0) {
      take_chunk(true);
      from_current();
    }
  }

  std::uint64_t position() const override { return pos_; }

  void enter_section(Section sec) override {
    auto it = std::find_if(sections_.begin(), sections_.end(),
                           [&](const auto& e) { return e.first == sec; });
    if (it == sections_.end())
      bad_image("{}: the manifest records no start of page-stream section \"{}\"",
                path_.native(), section_name(sec));
    if (it->second != pos_)
      bad_image("{}: page-stream section \"{}\" starts at stream offset {} in the manifest, "
                "but the restore reached it at offset {}: the sections before it were read "
                "with other sizes than they were dumped",
                path_.native(), section_name(sec), it->second, pos_);
  }

  void read(std::span<std::byte> out) override {
    if (failed_) std::rethrow_exception(failed_);
    std::uint64_t left = table_->logical_bytes - pos_;
    if (out.size() > left)
      bad_image("{}: read of {} bytes at stream offset {} goes past the end of the page stream "
           "({} bytes, {} left)",
           path_.native(), out.size(), pos_, table_->logical_bytes, left);
    while (!out.empty()) {
      std::span<const std::byte> v = next(out.size());
      std::memcpy(out.data(), v.data(), v.size());
      out = out.subspan(v.size());
    }
  }

 private:
  enum class Task { kNone, kDecode, kCopy };

  // Makes the chunk the worker decoded (chunk consumed_) the current one and, if
  // `prefetch`, asks the worker for the one after it (into the buffer the caller's
  // previous views pointed into).
  void take_chunk(bool prefetch) {
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return task_ == Task::kNone; });
      if (error_) {
        failed_ = error_;
        std::rethrow_exception(failed_);
      }
      std::swap(buf_, next_);
      cur_ = decoded_;  // its data stays where it was: the buffers swapped owners only
      cur_len_ = table_->chunks[consumed_].raw;
      cur_pos_ = 0;
      ++consumed_;
      if (prefetch && consumed_ < table_->chunks.size()) {
        want_ = consumed_;
        task_ = Task::kDecode;
      }
    }
    cv_.notify_all();
  }

  // The whole chunks among the next `left` bytes (the current chunk used up), through
  // a SharedCopy with the worker if there are at least two. Advances `at` and `left`
  // past them. After a failure the reader is failed.
  void copy_shared(pid_t pid, std::span<const iovec> remote, RemoteCursor& at,
                   std::uint64_t& left) {
    const auto& chunks = table_->chunks;
    std::size_t k0 = consumed_, k1 = consumed_;
    std::uint64_t bytes = 0;
    while (k1 < chunks.size() && bytes + chunks[k1].raw <= left) bytes += chunks[k1++].raw;
    if (k1 - k0 < 2) return;

    // Chunk k0 is the one the worker decoded or is decoding; the others go in turn to
    // whichever thread is free.
    take_chunk(false);
    SharedCopy job(pid, remote, *table_, path_, k0 + 1, k1);
    RemoteCursor end = at;
    std::uint64_t pos = pos_;
    advance(remote, end, cur_len_);
    pos += cur_len_;
    job.starts.reserve(k1 - k0 - 1);
    for (std::size_t k = k0 + 1; k < k1; ++k) {
      job.starts.push_back({end, pos});
      advance(remote, end, chunks[k].raw);
      pos += chunks[k].raw;
    }
    {
      std::lock_guard lk(mu_);
      job_ = &job;
      task_ = Task::kCopy;
    }
    cv_.notify_all();
    try {
      write_to_process(pid, cur_.data, cur_len_, remote, at, pos_, path_);
    } catch (...) {
      job.claims.failed(k0, std::current_exception());
    }
    job.run(*mine_, buf_.get());  // chunk k0 is written: its buffer is free
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return task_ == Task::kNone; });
      job_ = nullptr;
    }
    at = end;
    pos_ = pos;
    left -= bytes;
    consumed_ = k1;
    cur_ = {};
    cur_len_ = cur_pos_ = 0;
    if (std::exception_ptr e = job.claims.error()) {
      failed_ = e;
      std::rethrow_exception(failed_);
    }
    if (consumed_ < chunks.size()) {
      {
        std::lock_guard lk(mu_);
        want_ = consumed_;
        task_ = Task::kDecode;
      }
      cv_.notify_all();
    }
  }

  // Copies the unread rest of the current chunk, which is in the mapped file, into
  // the chunk buffer, for next().
  void materialize() {
    const ChunkInfo& c = table_->chunks[consumed_ - 1];
    std::size_t want = cur_len_ - cur_pos_;
    std::size_t got = file_->copy_hash(c.offset + cur_pos_, want, buf_.get() + cur_pos_, nullptr);
    if (got < want) {
      try {
        bad_image("{}: chunk {} at offset {}: truncated since it was verified: file ends at offset {}",
             path_.native(), consumed_ - 1, c.offset, c.offset + cur_pos_ + got);
      } catch (...) {
        failed_ = std::current_exception();
        throw;
      }
    }
    cur_ = {buf_.get(), false};
  }

  void worker_loop() {
    for (;;) {
      Task task;
      std::size_t want;
      SharedCopy* job;
      {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return task_ != Task::kNone || stop_; });
        if (stop_) return;
        task = task_;
        want = want_;
        job = job_;
      }
      std::exception_ptr err;
      if (task == Task::kCopy) {
        job->run(*theirs_, next_.get());  // records its own errors
      } else {
        try {
          decoded_ = theirs_->get(want, next_.get());
        } catch (...) {
          err = std::current_exception();
        }
      }
      {
        std::lock_guard lk(mu_);
        error_ = err;
        task_ = Task::kNone;
      }
      cv_.notify_all();
      if (err) return;
    }
  }

  const std::shared_ptr<const ChunkTable> table_;
  const fs::path path_;
  std::shared_ptr<const PagesFile> file_;
  const std::vector<std::pair<Section, std::uint64_t>> sections_;  // manifest "sections"
  bool share_ = false;  // more than one usable CPU: copy_to_process() uses the worker too

  // Caller side.
  std::optional<ChunkDecoder> mine_;  // for SharedCopy
  std::unique_ptr<std::byte[]> buf_;  // the current chunk's buffer
  ChunkBytes cur_;                    // the current chunk: in buf_ or in the mapped file
  std::size_t cur_len_ = 0, cur_pos_ = 0;
  std::size_t consumed_ = 0;  // chunks taken from the worker
  std::uint64_t pos_ = 0;     // logical stream position
  std::exception_ptr failed_;

  // Shared; guarded by mu_. While task_ is not kNone, next_, decoded_ and theirs_ are
  // the worker's.
  std::thread worker_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<ChunkDecoder> theirs_;
  std::unique_ptr<std::byte[]> next_;
  ChunkBytes decoded_;             // chunk want_, once decoded
  Task task_ = Task::kNone;
  std::size_t want_ = 0;           // the chunk to decode (kDecode)
  SharedCopy* job_ = nullptr;      // the copy to join (kCopy)
  bool stop_ = false;
  std::exception_ptr error_;
};

class ImageReaderImpl final : public ImageReader {
 public:
  ImageReaderImpl(fs::path dir, json manifest, std::shared_ptr<const ChunkTable> table,
                  std::vector<std::pair<Section, std::uint64_t>> sections)
      : dir_(std::move(dir)), pages_path_(dir_ / kPagesName), manifest_(std::move(manifest)),
        table_(std::move(table)), sections_(std::move(sections)) {}

  const json& manifest() const override { return manifest_; }
  const fs::path& path() const override { return dir_; }

  void verify_chunks() const override {
    verified_ = false;
    verified_file_.reset();
    auto shared_file = std::make_shared<const PagesFile>(pages_path_);
    const PagesFile& file = *shared_file;
    const auto& chunks = table_->chunks;
    const std::uint64_t file_size = file.size();
    // Chunks wholly inside the file are hashed; the first one that is not (if any) is
    // reported as a truncation, but only once all chunks before it are known good.
    std::size_t complete = 0;
    while (complete < chunks.size() &&
           chunks[complete].offset + chunks[complete].stored <= file_size)
      ++complete;

    ChunkClaims claims(0, complete);
    auto work = [&] {
      try {
        std::unique_ptr<XXH3_state_t, XXH3StateFree> state(XXH3_createState());
        if (!state) throw std::bad_alloc();
        auto scratch = std::make_unique_for_overwrite<std::byte[]>(kIoBlockBytes);  // for pread
        while (std::optional<std::size_t> claimed = claims.claim()) {
          std::size_t i = *claimed;
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
            claims.failed(i, std::current_exception());
          }
        }
      } catch (...) {  // allocation failure: report it unless a chunk error comes first
        claims.failed_outside(std::current_exception());
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
    if (std::exception_ptr e = claims.error()) std::rethrow_exception(e);

    if (complete < chunks.size()) fail_truncated(complete, file_size);
    if (file_size > table_->file_bytes)
      bad_image("{}: trailing bytes after the last chunk: chunk table ends at offset {} but the "
           "file is {} bytes",
           pages_path_.native(), table_->file_bytes, file_size);
    verified_ = true;
    verified_file_ = std::move(shared_file);
  }

  std::unique_ptr<PageReader> pages() const override {
    return std::make_unique<PageReaderImpl>(table_, pages_path_, verified_ ? verified_file_ : nullptr,
                                            verified_, sections_);
  }

 private:
  // Chunk `index` is incomplete because pages.img ends at offset `end`.
  [[noreturn]] void fail_truncated(std::size_t index, std::uint64_t end) const {
    const auto& chunks = table_->chunks;
    const ChunkInfo& c = chunks[index];
    bad_image("{}: truncated: chunk {} at offset {} needs {} stored bytes but the file ends at "
         "offset {} ({} bytes missing in total, {} of {} chunks incomplete)",
         pages_path_.native(), index, c.offset, c.stored, end, table_->file_bytes - end,
         chunks.size() - index, chunks.size());
  }

  const fs::path dir_, pages_path_;
  const json manifest_;
  const std::shared_ptr<const ChunkTable> table_;
  const std::vector<std::pair<Section, std::uint64_t>> sections_;
  mutable bool verified_ = false;  // verify_chunks() found every chunk good
  // pages.img as verify_chunks() mapped and read it: readers reuse the mapping, whose
  // page tables are then already filled.
  mutable std::shared_ptr<const PagesFile> verified_file_;
};

std::uint64_t get_u64(const json& obj, const char* key, const fs::path& mpath,
                      const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end()) bad_image("{}: {}missing \"{}\"", mpath.native(), where, key);
  if (!it->is_number_unsigned())
    bad_image("{}: {}\"{}\" must be a non-negative integer, got {}", mpath.native(), where, key,
         it->dump());
  return it->get<std::uint64_t>();
}

// Every number of a manifest is an integer (manifest.h); a float, which the writer never
// stores, would make its mapping to ckpt::Manifest undefined (get<int>() of 1e300).
// The error names the first one by its JSON pointer.
void check_integers_only(const json& m, const fs::path& mpath) {
  std::vector<const json*> todo{&m};
  while (!todo.empty()) {
    const json* v = todo.back();
    todo.pop_back();
    if (v->is_number_float()) {
      const json flat = m.flatten();  // {"/json/pointer": value} of every leaf
      for (auto& [where, x] : flat.items())
        if (x.is_number_float())
          bad_image("{}: {}: {} is not an integer (every number of a manifest is)", mpath.native(),
               where, x.dump());
    }
    if (v->is_structured())
      for (const json& x : *v) todo.push_back(&x);
  }
}

std::shared_ptr<const ChunkTable> parse_chunk_table(const json& m, const fs::path& mpath) {
  auto table = std::make_shared<ChunkTable>();
  auto it = m.find("chunks");
  if (it == m.end()) bad_image("{}: missing chunk table \"chunks\"", mpath.native());
  if (!it->is_array()) bad_image("{}: \"chunks\" must be an array", mpath.native());
  const std::uint64_t max_stored = ZSTD_compressBound(kChunkRawBytes);
  table->chunks.reserve(it->size());
  for (std::size_t i = 0; i < it->size(); ++i) {
    const json& e = (*it)[i];
    std::string where = fmt::format("chunk {}: ", i);
    if (!e.is_object()) bad_image("{}: {}entry must be an object", mpath.native(), where);
    ChunkInfo c;
    c.offset = get_u64(e, "offset", mpath, where);
    c.stored = get_u64(e, "stored", mpath, where);
    c.raw = get_u64(e, "raw", mpath, where);
    auto h = e.find("xxh3");
    std::optional<std::uint64_t> hv;
    if (h != e.end() && h->is_string()) hv = parse_hex64(h->get_ref<const std::string&>());
    if (!hv) bad_image("{}: {}\"xxh3\" must be a string of 16 hex digits", mpath.native(), where);
    c.xxh3 = *hv;
    if (auto z = e.find("zstd"); z != e.end()) {
      if (!z->is_boolean()) bad_image("{}: {}\"zstd\" must be true or false", mpath.native(), where);
      c.zstd = z->get<bool>();
    }
    if (c.offset != align_up(table->file_bytes))
      bad_image("{}: {}offset {} is not the first multiple of {} after the end of the previous "
           "chunks ({})",
           mpath.native(), where, c.offset, kChunkAlignBytes, table->file_bytes);
    if (c.raw == 0 || c.raw > kChunkRawBytes)
      bad_image("{}: {}raw size {} out of range 1..{}", mpath.native(), where, c.raw, kChunkRawBytes);
    if (c.stored == 0 || c.stored > max_stored)
      bad_image("{}: {}stored size {} out of range 1..{}", mpath.native(), where, c.stored,
           max_stored);
    if (!c.zstd && c.stored != c.raw)
      bad_image("{}: {}stored uncompressed (\"zstd\": false) but stored size {} is not raw size {}",
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
    bad_image("{}: pages_logical_bytes is {} but the chunks hold {} bytes", mpath.native(), logical,
         table->logical_bytes);
  if (stored != table->stored_bytes)
    bad_image("{}: pages_stored_bytes is {} but the chunks store {} bytes", mpath.native(), stored,
         table->stored_bytes);
  return table;
}

// Manifest "sections", each entry {"name": a known section, "offset": integer}; the
// order, completeness and sizes are validate_manifest()'s to check (validate.cpp).
std::vector<std::pair<Section, std::uint64_t>> parse_sections(const json& m,
                                                              const fs::path& mpath) {
  auto it = m.find("sections");
  if (it == m.end()) bad_image("{}: missing page-stream sections \"sections\"", mpath.native());
  if (!it->is_array()) bad_image("{}: \"sections\" must be an array", mpath.native());
  std::vector<std::pair<Section, std::uint64_t>> out;
  for (std::size_t i = 0; i < it->size(); ++i) {
    const json& e = (*it)[i];
    std::string where = fmt::format("section {}: ", i);
    if (!e.is_object()) bad_image("{}: {}entry must be an object", mpath.native(), where);
    auto n = e.find("name");
    if (n == e.end() || !n->is_string())
      bad_image("{}: {}\"name\" must be a string", mpath.native(), where);
    std::optional<Section> sec = section_from_name(n->get_ref<const std::string&>());
    if (!sec) bad_image("{}: {}unknown section {}", mpath.native(), where, n->dump());
    out.emplace_back(*sec, get_u64(e, "offset", mpath, where));
  }
  return out;
}

// Who wrote the image, for messages: "x.y.z" or "unknown".
std::string engine_of(const json& m) {
  auto it = m.find("engine_version");
  return it != m.end() && it->is_string() ? it->get<std::string>() : "unknown";
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

std::unique_ptr<ImageReader> ImageReader::open(const std::filesystem::path& dir_arg,
                                               std::span<const std::byte> key) {
  fs::path dir = normalize_dir(dir_arg);
  fs::path mpath = dir / kManifestName;
  fs::path spath = dir / kManifestSumName;

  std::optional<std::string> text = read_small_file(mpath);
  if (!text) {
    std::error_code ec;
    fs::file_status st = fs::status(dir, ec);
    if (!fs::exists(st)) fail("{} is not a checkpoint image (no such directory)", dir.native());
    if (!fs::is_directory(st)) bad_image("{} is not a checkpoint image (not a directory)", dir.native());
    bad_image("{} is not a checkpoint image (no manifest.json)", dir.native());
  }
  if (!key.empty()) {
    // First of all: nothing of a manifest is believed before its HMAC is.
    fs::path hpath = dir / kManifestHmacName;
    std::optional<std::string> mac = read_small_file(hpath, 1024);
    if (!mac) bad_image("{}: missing: the image is not signed with the cluster's image key", hpath.native());
    std::string_view mv = *mac;
    if (!mv.empty() && mv.back() == '\n') mv.remove_suffix(1);
    std::vector<std::byte> k(key.begin(), key.end());
    if (!hmac_equal(mv, image_hmac(k, *text)))
      bad_image("{}: HMAC mismatch: the manifest or its chunk table was changed after the dump, or the "
           "image was signed with another image key",
           mpath.native());
  }
  std::optional<std::string> sum_text = read_small_file(spath);
  if (!sum_text) bad_image("{}: missing (cannot check {})", spath.native(), mpath.native());
  std::string_view sv = *sum_text;
  if (!sv.empty() && sv.back() == '\n') sv.remove_suffix(1);
  std::optional<std::uint64_t> want = parse_hex64(sv);
  if (!want) bad_image("{}: malformed, expected 16 hex digits", spath.native());
  std::uint64_t got = XXH3_64bits(text->data(), text->size());
  if (got != *want)
    bad_image("{}: manifest checksum mismatch: xxh3 is {}, manifest.xxh3 says {}", mpath.native(),
         hex64(got), hex64(*want));

  json m;
  try {
    m = json::parse(*text);
  } catch (const json::exception& e) {
    bad_image("{}: invalid JSON: {}", mpath.native(), e.what());
  }
  if (!m.is_object()) bad_image("{}: manifest is not a JSON object", mpath.native());
  check_integers_only(m, mpath);
  auto fv = m.find("format_version");
  if (fv == m.end()) bad_image("{}: missing \"format_version\"", mpath.native());
  if (!fv->is_number_integer())
    bad_image("{}: \"format_version\" must be an integer, got {}", mpath.native(), fv->dump());
  // Only the format decides: any engine build that wrote this format is fine.
  if (fv->get<std::int64_t>() != kImageFormatVersion)
    bad_image("{}: image format {} (written by engine {}), this engine reads format {} only",
              dir.native(), fv->get<std::int64_t>(), engine_of(m), kImageFormatVersion);
  auto table = parse_chunk_table(m, mpath);
  auto sections = parse_sections(m, mpath);
  return std::make_unique<ImageReaderImpl>(dir, std::move(m), std::move(table),
                                           std::move(sections));
}

}  // namespace fsched::ckpt
