// The page reader (image.h PageReader): a worker thread copies chunk k+1's stored bytes
// out of pages.img (see PagesFile), checks them and decompresses them while the caller
// consumes chunk k through next() (double buffering). A raw chunk is copied straight
// into the buffer next() hands out views of. deliver() shares whole chunks with the
// worker instead: each thread decodes a chunk and hands it to the sink
// (SharedDelivery). Of a verified image, raw chunks go from the page cache straight to
// the sink and zstd chunks are decompressed from it, neither copied nor hashed again.
#include "ckpt/page_reader.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "ckpt/chunk_decode.h"
#include "ckpt/image_files.h"
#include "common/error.h"

namespace fsched::ckpt::image_detail {
namespace {

// Whole chunks [first, end) of one deliver() call, shared between the caller's thread
// and the reader's worker: each claims the next chunk, decodes it into its own buffer
// and hands it to the sink, so that both decompression and the sink's work (filling a
// process's fresh pages: the cost of a restore) run on two CPUs. The failure reported
// is the first in the stream whatever the timing (see ChunkClaims).
struct SharedDelivery {
  SharedDelivery(PageSink& to, const ChunkTable& chunk_table, std::size_t first_chunk,
                 std::size_t end_chunk, std::size_t first_skip)
      : sink(to),
        table(chunk_table),
        first(first_chunk),
        skip(first_skip),
        claims(first_chunk, end_chunk) {}

  PageSink& sink;
  const ChunkTable& table;
  const std::size_t first;
  const std::size_t skip;             // bytes of chunk `first` before the delivery (a skip_to())
  std::vector<std::uint64_t> starts;  // offsets in the delivery of chunks first..end-1
  ChunkClaims claims;

  // Claims and delivers chunks until none is left or one before them failed.
  void run(ChunkDecoder& dec, std::byte* buf) {
    while (std::optional<std::size_t> i = claims.claim()) {
      try {
        ChunkBytes b = dec.get(*i, buf);
        const std::size_t from = *i == first ? skip : 0;
        sink.put(b.data + from, table.chunks[*i].raw - from, starts[*i - first]);
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
                 std::vector<std::pair<Section, std::uint64_t>> sections, std::uint64_t start,
                 std::shared_ptr<ChunkBufferPool> pool)
      : table_(std::move(table)),
        path_(std::move(pages_path)),
        file_(std::move(file)),
        sections_(std::move(sections)),
        pool_(std::move(pool)) {
    if (start > table_->logical_bytes)
      bad_image("{}: reader to start at stream offset {} (stream of {} bytes)", path_.native(),
                start, table_->logical_bytes);
    if (table_->chunks.empty()) return;
    if (!file_) file_ = std::make_shared<const PagesFile>(path_);
    mine_.emplace(*file_, *table_, verified);
    theirs_.emplace(*file_, *table_, verified);
    share_ = usable_cpus() > 1;
    auto buffer = [&] {
      return pool_ ? pool_->take(table_->max_raw)
                   : std::make_unique_for_overwrite<std::byte[]>(table_->max_raw);
    };
    buf_ = buffer();
    next_ = buffer();
    if (start == 0) {
      task_ = Task::kDecode;  // chunk 0 into next_
      want_ = 0;
      ahead_ = true;
    } else {
      skip_lazily(start);  // nothing decoded until it is needed
    }
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
    if (pool_) {
      pool_->give(std::move(buf_), table_->max_raw);
      pool_->give(std::move(next_), table_->max_raw);
    }
  }

  std::span<const std::byte> next(std::size_t max) override {
    if (failed_) std::rethrow_exception(failed_);
    if (max == 0) return {};
    if (pos_ == table_->logical_bytes)
      bad_image(
          "{}: read at stream offset {} goes past the end of the page stream ({} bytes, "
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

  void deliver(std::uint64_t len, PageSink& sink) override {
    if (failed_) std::rethrow_exception(failed_);
    if (len > table_->logical_bytes - pos_)
      bad_image(
          "{}: copy of {} bytes at stream offset {} goes past the end of the page stream "
          "({} bytes, {} left)",
          path_.native(), len, pos_, table_->logical_bytes, table_->logical_bytes - pos_);
    std::uint64_t at = 0, left = len;
    auto from_current = [&] {
      std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left, cur_len_ - cur_pos_));
      if (n > 0) sink.put(cur_.data + cur_pos_, n, at);
      cur_pos_ += n;
      pos_ += n;
      left -= n;
      at += n;
    };
    if (cur_pos_ < cur_len_) from_current();
    if (share_ && left > 0) deliver_shared(sink, at, left);
    while (left > 0) {
      take_chunk(true);
      from_current();
    }
  }

  const fs::path& path() const override { return path_; }

  void skip_to(std::uint64_t off) override {
    if (failed_) std::rethrow_exception(failed_);
    if (off < pos_ || off > table_->logical_bytes)
      bad_image("{}: skip to stream offset {} from offset {} (stream of {} bytes)", path_.native(),
                off, pos_, table_->logical_bytes);
    if (off - pos_ <= cur_len_ - cur_pos_) {  // within the current chunk
      cur_pos_ += static_cast<std::size_t>(off - pos_);
      pos_ = off;
      return;
    }
    skip_lazily(off);
  }

  std::uint64_t position() const override { return pos_; }

  void enter_section(Section sec) override {
    auto it = std::find_if(sections_.begin(), sections_.end(),
                           [&](const auto& e) { return e.first == sec; });
    if (it == sections_.end())
      bad_image("{}: the manifest records no start of page-stream section \"{}\"", path_.native(),
                section_name(sec));
    if (it->second != pos_)
      bad_image(
          "{}: page-stream section \"{}\" starts at stream offset {} in the manifest, "
          "but the restore reached it at offset {}: the sections before it were read "
          "with other sizes than they were dumped",
          path_.native(), section_name(sec), it->second, pos_);
  }

  void read(std::span<std::byte> out) override {
    if (failed_) std::rethrow_exception(failed_);
    std::uint64_t left = table_->logical_bytes - pos_;
    if (out.size() > left)
      bad_image(
          "{}: read of {} bytes at stream offset {} goes past the end of the page stream "
          "({} bytes, {} left)",
          path_.native(), out.size(), pos_, table_->logical_bytes, left);
    while (!out.empty()) {
      std::span<const std::byte> v = next(out.size());
      std::memcpy(out.data(), v.data(), v.size());
      out = out.subspan(v.size());
    }
  }

 private:
  enum class Task { kNone, kDecode, kDeliver };

  // Makes chunk consumed_ the current one, entered lead_ bytes in: the one the worker
  // decoded ahead, or decoded now by the worker if it was not asked. If `prefetch`,
  // asks the worker for the one after it (into the buffer the caller's previous views
  // pointed into).
  void take_chunk(bool prefetch) {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return task_ == Task::kNone; });
    if (!ahead_ && !error_) {  // nothing decoded ahead: now, and wait for it
      want_ = consumed_;
      task_ = Task::kDecode;
      cv_.notify_all();
      cv_.wait(lk, [&] { return task_ == Task::kNone; });
    }
    if (error_) {
      failed_ = error_;
      std::rethrow_exception(failed_);
    }
    std::swap(buf_, next_);
    cur_ = decoded_;  // its data stays where it was: the buffers swapped owners only
    cur_len_ = table_->chunks[consumed_].raw;
    cur_pos_ = lead_;
    lead_ = 0;
    ++consumed_;
    ahead_ = prefetch && consumed_ < table_->chunks.size();
    if (ahead_) {
      want_ = consumed_;
      task_ = Task::kDecode;
      cv_.notify_all();
    }
  }

  // Moves to stream offset `off` (not before the position) without decoding anything:
  // the chunk that holds it is decoded when it is needed, by whichever thread takes
  // it. A decode ahead of another chunk is waited for (and its error thrown).
  void skip_lazily(std::uint64_t off) {
    const auto& chunks = table_->chunks;
    // Stream offset of chunk consumed_ (the next one to take).
    std::uint64_t start = pos_ + (cur_len_ - cur_pos_) - lead_;
    std::size_t k = consumed_;
    while (k < chunks.size() && start + chunks[k].raw <= off) start += chunks[k++].raw;
    if (k != consumed_) {
      if (ahead_) {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return task_ == Task::kNone; });
        if (error_) {
          failed_ = error_;
          std::rethrow_exception(failed_);
        }
      }
      consumed_ = k;
      ahead_ = false;
    }
    cur_ = {};
    cur_len_ = cur_pos_ = 0;
    pos_ = off;
    lead_ = static_cast<std::size_t>(off - start);
  }

  // The whole chunks among the next `left` bytes (the current chunk used up), through
  // a SharedDelivery with the worker if there are at least two. Advances `at` (offset in
  // the delivery) and `left` past them. After a failure the reader is failed.
  void deliver_shared(PageSink& sink, std::uint64_t& at, std::uint64_t& left) {
    const auto& chunks = table_->chunks;
    std::size_t k0 = consumed_, k1 = consumed_;
    // The first chunk from lead_ on (after a skip_to()), the others whole.
    std::uint64_t bytes = 0, skip = lead_;
    while (k1 < chunks.size() && bytes + (chunks[k1].raw - skip) <= left) {
      bytes += chunks[k1++].raw - skip;
      skip = 0;
    }
    if (k1 - k0 < 2) return;

    // Chunk k0, if the worker decoded or is decoding it, is the caller's; the others
    // (all of them if not) go in turn to whichever thread is free.
    const bool held = ahead_;
    if (held) take_chunk(false);
    const std::size_t shared0 = held ? k0 + 1 : k0;
    SharedDelivery job(sink, *table_, shared0, k1, held ? 0 : lead_);
    std::uint64_t end = held ? at + (cur_len_ - cur_pos_) : at;
    job.starts.reserve(k1 - shared0);
    for (std::size_t k = shared0; k < k1; ++k) {
      job.starts.push_back(end);
      end += chunks[k].raw - (k == shared0 ? job.skip : 0);
    }
    lead_ = 0;
    {
      std::lock_guard lk(mu_);
      job_ = &job;
      task_ = Task::kDeliver;
    }
    cv_.notify_all();
    if (held) {
      try {
        sink.put(cur_.data + cur_pos_, cur_len_ - cur_pos_, at);
      } catch (...) {
        job.claims.failed(k0, std::current_exception());
      }
    }
    job.run(*mine_, buf_.get());  // chunk k0 is written: its buffer is free
    {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return task_ == Task::kNone; });
      job_ = nullptr;
    }
    at = end;
    pos_ += bytes;
    left -= bytes;
    consumed_ = k1;
    cur_ = {};
    cur_len_ = cur_pos_ = 0;
    if (std::exception_ptr e = job.claims.error()) {
      failed_ = e;
      std::rethrow_exception(failed_);
    }
    ahead_ = consumed_ < chunks.size();
    if (ahead_) {
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
        bad_image(
            "{}: chunk {} at offset {}: truncated since it was verified: file ends at offset {}",
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
      SharedDelivery* job;
      {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return task_ != Task::kNone || stop_; });
        if (stop_) return;
        task = task_;
        want = want_;
        job = job_;
      }
      std::exception_ptr err;
      if (task == Task::kDeliver) {
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
  const std::shared_ptr<ChunkBufferPool> pool_;                    // of buf_ and next_, or null
  bool share_ = false;  // more than one usable CPU: deliver() uses the worker too

  // Caller side.
  std::optional<ChunkDecoder> mine_;  // for SharedDelivery
  std::unique_ptr<std::byte[]> buf_;  // the current chunk's buffer
  ChunkBytes cur_;                    // the current chunk: in buf_ or in the mapped file
  std::size_t cur_len_ = 0, cur_pos_ = 0;
  std::size_t consumed_ = 0;  // chunks taken from the worker, or passed over
  // The worker was asked to decode chunk consumed_ (and may be done); else nothing is
  // decoded ahead and take_chunk() asks for it.
  bool ahead_ = false;
  std::size_t lead_ = 0;   // bytes of chunk consumed_ skipped (skip_to()) before it was taken
  std::uint64_t pos_ = 0;  // logical stream position
  std::exception_ptr failed_;

  // Shared; guarded by mu_. While task_ is not kNone, next_, decoded_ and theirs_ are
  // the worker's.
  std::thread worker_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::optional<ChunkDecoder> theirs_;
  std::unique_ptr<std::byte[]> next_;
  ChunkBytes decoded_;  // chunk want_, once decoded
  Task task_ = Task::kNone;
  std::size_t want_ = 0;           // the chunk to decode (kDecode)
  SharedDelivery* job_ = nullptr;  // the delivery to join (kDeliver)
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace

std::unique_ptr<PageReader> make_page_reader(
    std::shared_ptr<const ChunkTable> table, fs::path pages_path,
    std::shared_ptr<const PagesFile> file, bool verified,
    std::vector<std::pair<Section, std::uint64_t>> sections, std::uint64_t start,
    std::shared_ptr<ChunkBufferPool> pool) {
  return std::make_unique<PageReaderImpl>(std::move(table), std::move(pages_path), std::move(file),
                                          verified, std::move(sections), start, std::move(pool));
}

}  // namespace fsched::ckpt::image_detail

namespace fsched::ckpt {

std::unique_ptr<std::byte[]> ChunkBufferPool::take(std::size_t bytes) {
  {
    std::lock_guard lk(mu_);
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->first < bytes) continue;
      std::unique_ptr<std::byte[]> b = std::move(it->second);
      free_.erase(it);
      return b;
    }
  }
  return std::make_unique_for_overwrite<std::byte[]>(bytes);
}

void ChunkBufferPool::give(std::unique_ptr<std::byte[]> b, std::size_t bytes) {
  if (!b) return;
  std::lock_guard lk(mu_);
  free_.emplace_back(bytes, std::move(b));
}

}  // namespace fsched::ckpt
