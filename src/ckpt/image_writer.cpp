// The image writer (image.h): the caller copies page data into a chunk buffer; a
// full chunk is handed to one of kWriterThreads worker threads that compresses it (one
// zstd frame per chunk, or the raw bytes when the frame would not be meaningfully
// smaller), hashes the stored bytes with XXH3-64 and, in its turn, writes them to
// pages.img, while the caller fills the next buffer and the other worker compresses the
// next chunk. Buffers: the one being filled, and an input and an output buffer per
// worker, so memory stays at ~5 chunks whatever the image size. Chunks are aligned in
// pages.img and buffers in memory so that pages.img can be written with O_DIRECT on
// request.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "ckpt/xxh3.h"
#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <utility>
#include <vector>

#include "ckpt/chunk_table.h"
#include "ckpt/image.h"
#include "ckpt/image_files.h"
#include "ckpt/imagekey.h"
#include "common/error.h"
#include "common/fd.h"

#ifndef FSCHED_VERSION
#error "FSCHED_VERSION must be defined by the build (see src/ckpt/CMakeLists.txt)"
#endif

namespace fsched::ckpt {
namespace {

using namespace image_detail;
using json = nlohmann::json;

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

// Output buffer of the writer's zstd frames: the bound for a full chunk, whole blocks
// for O_DIRECT.
constexpr std::size_t kFrameCapacity = align_up(ZSTD_COMPRESSBOUND(kChunkRawBytes));

// Buffers that O_DIRECT can write from: kChunkAlignBytes-aligned, sizes rounded up.
struct AlignedFree {
  void operator()(std::byte* p) const {
    ::operator delete[](p, std::align_val_t{kChunkAlignBytes});
  }
};
using AlignedBuffer = std::unique_ptr<std::byte[], AlignedFree>;
AlignedBuffer aligned_buffer(std::size_t bytes) {
  return AlignedBuffer(static_cast<std::byte*>(
      ::operator new[](align_up(bytes), std::align_val_t{kChunkAlignBytes})));
}

// One compression thread of the writer, with its own zstd context and buffers.
struct Worker {
  std::thread thread;
  std::unique_ptr<ZSTD_CCtx, CCtxFree> cctx;
  AlignedBuffer in;       // the chunk to compress (swapped with the caller's fill buffer)
  AlignedBuffer out;      // its zstd frame (kFrameCapacity bytes)
  std::size_t len = 0;    // bytes in `in`
  std::uint64_t seq = 0;  // chunk index
  bool busy = false;      // has a chunk not yet written (guarded by the writer's mu_)
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
      : dir_(std::move(dir)),
        tmp_(std::move(tmp)),
        pages_path_(tmp_ / kPagesName),
        level_(level),
        direct_(direct_io) {}

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

  void set_eager_writeback(bool on) override {
    eager_writeback_.store(on, std::memory_order_relaxed);
  }

  void hold(std::uint64_t budget) override {
    check_usable();
    const std::uint64_t n = budget / kChunkRawBytes;
    if (n < 2) return;
    try {
      spare_.reserve(static_cast<std::size_t>(n));
      held_.reserve(static_cast<std::size_t>(n));
      while (spare_.size() < n) {
        AlignedBuffer b = aligned_buffer(kChunkRawBytes);
        // Best effort: a kernel without it (EINVAL) leaves the faults to the copy.
        (void)::madvise(b.get(), kChunkRawBytes, MADV_POPULATE_WRITE);
        spare_.push_back(std::move(b));
      }
    } catch (const std::bad_alloc&) {
      spare_.clear();  // no memory for it: the dump goes on as without hold
      spare_.shrink_to_fit();
      return;
    }
    if (!fill_) {  // the chunk filled first is one of them too
      fill_ = std::move(spare_.back());
      spare_.pop_back();
    }
    holding_ = true;
  }

  void append_deferred(std::size_t n, DeferredFill fill) override {
    check_usable();
    auto shared = std::make_shared<DeferredFill>(std::move(fill));
    for (std::uint64_t off = 0; off < n;) {
      auto space = append_space();
      const std::size_t k = std::min<std::uint64_t>(space.size(), n - off);
      if (holding_)
        deferred_.push_back({space.first(k), off, shared});
      else
        (*shared)(off, space.first(k));
      // A chunk handed on here was filled first: release_held() fills every piece.
      append_done(k);
      off += k;
    }
  }

  void release_held() override {
    fill_deferred();
    holding_ = false;
    spare_.clear();
    for (Held& h : held_) hand_to_worker(std::move(h.buf), h.len);  // rethrows a worker's error
    held_.clear();
  }

  std::uint64_t held_bytes() const override {
    if (!holding_) return 0;
    std::uint64_t n = fill_len_;
    for (const Held& h : held_) n += h.len;
    return n;
  }

  void begin_section(Section sec) override {
    check_usable();
    std::size_t i = section_index(sec);
    if (!sections_.empty() && i <= section_index(sections_.back().first))
      fail(
          "{}: section \"{}\" begun after \"{}\": sections go in the order of sections.h, "
          "each once",
          dir_.native(), section_name(sec), section_name(sections_.back().first));
    sections_.emplace_back(sec, logical_);
  }

  std::uint64_t logical_bytes() const override { return logical_; }
  std::uint64_t stored_bytes() const override { return stored_.load(std::memory_order_relaxed); }
  const fs::path& path() const override { return dir_; }
  void sign_with(std::vector<std::byte> key) override { key_ = std::move(key); }

  void commit(json manifest) override {
    check_usable();
    if (!manifest.is_object())
      fail("{}: cannot commit: manifest must be a JSON object, got {}", dir_.native(),
           manifest.type_name());
    broken_ = true;  // until commit succeeds; a failed commit cannot be retried
    if (fill_len_ > 0) submit();
    release_held();
    wait_idle();
    stop_worker();
    fill_.reset();
    workers_.clear();

    std::uint64_t stored = 0;
    for (const ChunkInfo& c : chunks_) stored += c.stored;
    manifest["format_version"] = kImageFormatVersion;
    manifest["engine_version"] = FSCHED_VERSION;
    manifest["chunks"] = chunk_table_json(chunks_);
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

  // The pieces of deferred appends (append_deferred), filled before any chunk holding
  // one leaves the held set.
  void fill_deferred() {
    for (Deferred& d : deferred_) (*d.fill)(d.offset, d.dst);
    deferred_.clear();
  }

  // Hands the full fill_ buffer on, and takes an empty one to fill next: kept (hold())
  // while the budget lasts, else to a worker after the held chunks.
  void submit() {
    if (holding_ && !spare_.empty()) {
      held_.push_back({std::move(fill_), fill_len_});
      fill_ = std::move(spare_.back());
      spare_.pop_back();
      fill_len_ = 0;
      return;
    }
    if (holding_) release_held();
    fill_ = hand_to_worker(std::move(fill_), fill_len_);
    fill_len_ = 0;
  }

  // Hands chunk `buf` (len bytes) to an idle worker, waiting for one; returns that
  // worker's previous input buffer (null at first).
  AlignedBuffer hand_to_worker(AlignedBuffer buf, std::size_t len) {
    {
      std::unique_lock lk(mu_);
      Worker* idle = nullptr;
      cv_.wait(lk, [&] {
        for (auto& w : workers_)
          if (!w->busy) idle = w.get();
        return idle || error_;
      });
      if (error_) std::rethrow_exception(error_);
      std::swap(buf, idle->in);
      idle->len = len;
      idle->seq = submitted_++;
      idle->busy = true;
    }
    cv_.notify_all();
    return buf;
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
      std::size_t n =
          ZSTD_compressCCtx(w.cctx.get(), w.out.get(), kFrameCapacity, at, kSampleBytes, level_);
      if (ZSTD_isError(n) ||
          std::uint64_t{n} * 100 < std::uint64_t{kSampleBytes} * kStoreRawPercent)
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
  // hold(): full chunks kept in stream order, and the populated buffers still free.
  struct Held {
    AlignedBuffer buf;
    std::size_t len;
  };
  bool holding_ = false;
  std::vector<Held> held_;
  // append_deferred() pieces not yet filled: only while holding_, in held or fill_
  // buffers, whose memory does not move while they are held.
  struct Deferred {
    std::span<std::byte> dst;
    std::uint64_t offset;
    std::shared_ptr<DeferredFill> fill;
  };
  std::vector<Deferred> deferred_;
  std::vector<AlignedBuffer> spare_;  // populated, not yet filled

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

}  // namespace fsched::ckpt
