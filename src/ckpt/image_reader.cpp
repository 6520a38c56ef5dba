// The image reader (image.h ImageReader): opening an image -- HMAC, checksum, format
// and the manifest's shape -- and verifying pages.img. Chunks are claimed in order by
// kVerifyThreads threads and hashed in place in the mapped file where resident; errors
// are collected by chunk index so that the first bad chunk is reported whatever the
// thread timing. Reading the page stream is page_reader.cpp's.
#include "ckpt/xxh3.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "ckpt/chunk_decode.h"
#include "ckpt/chunk_table.h"
#include "ckpt/image.h"
#include "ckpt/image_files.h"
#include "ckpt/imagekey.h"
#include "ckpt/page_reader.h"
#include "ckpt/pages_file.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {

using namespace image_detail;
using json = nlohmann::json;

// verify_chunks() starts another thread only for this many stored bytes per thread.
constexpr std::uint64_t kVerifyBytesPerThread = 8u << 20;
// verify_chunks() asks the kernel to read the chunk this many chunks ahead of the one
// it starts to hash.
constexpr std::size_t kVerifyPrefetchChunks = 4;

class ImageReaderImpl final : public ImageReader {
 public:
  ImageReaderImpl(fs::path dir, json manifest, std::shared_ptr<const ChunkTable> table,
                  std::vector<std::pair<Section, std::uint64_t>> sections)
      : dir_(std::move(dir)),
        pages_path_(dir_ / kPagesName),
        manifest_(std::move(manifest)),
        table_(std::move(table)),
        sections_(std::move(sections)) {}

  const json& manifest() const override { return manifest_; }
  const fs::path& path() const override { return dir_; }

  void verify_chunks() const override {
    const ImageToVerify one{this, {}};
    verify_images({&one, 1});
  }

  // verify_images()'s three steps for this image. begin_verify opens (and maps)
  // pages.img; the chunks [0, complete) that lie wholly inside it are checked one by
  // one with check_chunk (from any thread); end_verify reports a truncation or trailing
  // bytes, or keeps the file for pages() when all is well.
  struct Verification {
    std::shared_ptr<const PagesFile> file;
    std::size_t complete = 0;  // chunks wholly inside the file
    std::uint64_t bytes = 0;   // stored bytes of those chunks
  };

  Verification begin_verify() const {
    verified_ = false;
    verified_file_.reset();
    Verification v;
    v.file = std::make_shared<const PagesFile>(pages_path_);
    const auto& chunks = table_->chunks;
    // Chunks wholly inside the file are hashed; the first one that is not (if any) is
    // reported as a truncation, but only once all chunks before it are known good.
    const std::uint64_t file_size = v.file->size();
    while (v.complete < chunks.size() &&
           chunks[v.complete].offset + chunks[v.complete].stored <= file_size)
      ++v.complete;
    if (v.complete) v.bytes = chunks[v.complete - 1].offset + chunks[v.complete - 1].stored;
    return v;
  }

  void check_chunk(const Verification& v, std::size_t i, XXH3_state_t* state,
                   std::byte* scratch) const {
    const auto& chunks = table_->chunks;
    const ChunkInfo& c = chunks[i];
    // The threads' interleaved chunks defeat the kernel's sequential readahead on a
    // file not in the page cache (an image written with O_DIRECT): ask for the chunks
    // kVerifyPrefetchChunks ahead explicitly (from the disk at ~1 GB/s instead of ~0.5).
    if (std::size_t a = i + kVerifyPrefetchChunks; a < v.complete)
      v.file->prefetch(chunks[a].offset, chunks[a].stored);
    XXH3_64bits_reset(state);
    std::size_t got = v.file->hash(c.offset, c.stored, state, scratch);
    if (got < c.stored) fail_truncated(i, c.offset + got);  // shrunk meanwhile
    std::uint64_t h = XXH3_64bits_digest(state);
    if (h != c.xxh3) fail_checksum(pages_path_, i, c, h);
  }

  void end_verify(Verification&& v) const {
    if (v.complete < table_->chunks.size()) fail_truncated(v.complete, v.file->size());
    if (v.file->size() > table_->file_bytes)
      bad_image(
          "{}: trailing bytes after the last chunk: chunk table ends at offset {} but the "
          "file is {} bytes",
          pages_path_.native(), table_->file_bytes, v.file->size());
    verified_ = true;
    verified_file_ = std::move(v.file);
  }

  std::unique_ptr<PageReader> pages() const override { return pages_at(0, nullptr); }

  std::unique_ptr<PageReader> pages_at(std::uint64_t off,
                                       std::shared_ptr<ChunkBufferPool> pool) const override {
    return make_page_reader(table_, pages_path_, verified_ ? verified_file_ : nullptr, verified_,
                            sections_, off, std::move(pool));
  }

 private:
  // Chunk `index` is incomplete because pages.img ends at offset `end`.
  [[noreturn]] void fail_truncated(std::size_t index, std::uint64_t end) const {
    const auto& chunks = table_->chunks;
    const ChunkInfo& c = chunks[index];
    bad_image(
        "{}: truncated: chunk {} at offset {} needs {} stored bytes but the file ends at "
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

}  // namespace

// One pool of up to kVerifyThreads threads hashing the chunks of the images added so
// far, in the order added; the caller's thread joins it in finish(). Failures are kept
// by global chunk index (image after image), so that the first in that order wins
// whatever the threads' timing.
struct ImageVerifier::Impl {
  struct Item {
    const ImageReaderImpl* impl = nullptr;
    std::string context;
    ImageReaderImpl::Verification plan;
    std::exception_ptr begin_error;  // begin_verify() failed: nothing of it is hashed
    std::size_t first = 0;           // global index of its chunk 0
  };

  std::mutex mu;
  std::condition_variable cv;
  std::deque<Item> items;  // a deque: references stay valid while images are added
  std::size_t total = 0;   // chunks added
  std::size_t next = 0;    // the next chunk to claim
  std::uint64_t bytes = 0;
  bool closed = false;  // finish(): no more images
  bool stop = false;    // abandoned, or a thread could not allocate its state
  std::size_t bad = SIZE_MAX;
  std::exception_ptr chunk_error;    // of chunk `bad`, the lowest that failed
  std::exception_ptr outside_error;  // a thread's allocation
  std::vector<std::thread> helpers;
  bool helpers_started = false;

  // The next chunk to hash: its image and index in it; nothing once closed and done,
  // after a failure of an earlier chunk, or when stopped.
  std::optional<std::pair<const Item*, std::size_t>> claim(std::size_t& k) {
    std::unique_lock lk(mu);
    cv.wait(lk, [&] { return stop || closed || (next < total && next < bad); });
    if (stop || next >= total || next >= bad) return std::nullopt;
    const std::size_t g = next++;
    while (g >= items[k].first + items[k].plan.complete) ++k;  // claims rise
    return std::pair{&items[k], g - items[k].first};
  }

  void work() {
    try {
      std::unique_ptr<XXH3_state_t, XXH3StateFree> state(XXH3_createState());
      if (!state) throw std::bad_alloc();
      auto scratch = std::make_unique_for_overwrite<std::byte[]>(kIoBlockBytes);  // for pread
      std::size_t k = 0;
      while (auto c = claim(k)) {
        try {
          c->first->impl->check_chunk(c->first->plan, c->second, state.get(), scratch.get());
        } catch (...) {
          std::lock_guard lk(mu);
          const std::size_t g = c->first->first + c->second;
          if (g < bad) {
            bad = g;
            chunk_error = std::current_exception();
          }
        }
      }
    } catch (...) {  // allocation failure: reported unless a chunk error comes first
      {
        std::lock_guard lk(mu);
        if (!outside_error) outside_error = std::current_exception();
        stop = true;
      }
      cv.notify_all();
    }
  }

  void stop_helpers() {
    {
      std::lock_guard lk(mu);
      stop = true;
    }
    cv.notify_all();
    for (auto& t : helpers) t.join();
    helpers.clear();
  }
};

ImageVerifier::ImageVerifier() : impl_(std::make_unique<Impl>()) {}

ImageVerifier::~ImageVerifier() {
  if (impl_) impl_->stop_helpers();
}

void ImageVerifier::add(const ImageReader& reader, std::string context) {
  Impl& v = *impl_;
  Impl::Item it;
  it.impl = &dynamic_cast<const ImageReaderImpl&>(reader);
  it.context = std::move(context);
  try {
    it.plan = it.impl->begin_verify();
  } catch (...) {
    it.begin_error = std::current_exception();
    it.plan = {};
  }
  bool start = false;
  {
    std::lock_guard lk(v.mu);
    it.first = v.total;
    v.total += it.plan.complete;
    v.bytes += it.plan.bytes;
    v.items.push_back(std::move(it));
    // Threads only for enough stored bytes (starting one costs more than hashing a few
    // MiB): the first helper as soon as there is kVerifyBytesPerThread to hash, so that
    // it hashes while the caller opens the next image.
    start = !v.helpers_started && v.bytes >= kVerifyBytesPerThread;
    if (start) v.helpers_started = true;
  }
  v.cv.notify_all();
  if (!start) return;
  const std::size_t n = std::min<std::size_t>(kVerifyThreads, usable_cpus());
  for (std::size_t t = 1; t < n; ++t) {
    try {
      v.helpers.emplace_back([&v] { v.work(); });
    } catch (const std::system_error&) {
      break;  // cannot start a thread: finish()'s caller does its share
    }
  }
}

void ImageVerifier::finish() {
  Impl& v = *impl_;
  {
    std::lock_guard lk(v.mu);
    v.closed = true;
  }
  v.cv.notify_all();
  v.work();
  for (auto& t : v.helpers) t.join();
  v.helpers.clear();

  // An error of image k, prefixed with its context.
  auto rethrow = [&](const Impl::Item& item, std::exception_ptr e) {
    if (item.context.empty()) std::rethrow_exception(e);
    try {
      std::rethrow_exception(e);
    } catch (const Error& err) {
      throw ImageError(fmt::format("{}: {}", item.context, err.what()));
    }
  };
  if (v.outside_error && !v.chunk_error) std::rethrow_exception(v.outside_error);
  // In the order added: a bad chunk of image k (the lowest failing index is kept, so
  // it is the first in the stream of the first image that has one), else its pages.img
  // unreadable, truncated or with trailing bytes.
  for (Impl::Item& item : v.items) {
    if (v.chunk_error && v.bad < item.first + item.plan.complete) rethrow(item, v.chunk_error);
    if (item.begin_error) rethrow(item, item.begin_error);
    try {
      item.impl->end_verify(std::move(item.plan));
    } catch (...) {
      rethrow(item, std::current_exception());
    }
  }
}

void verify_images(std::span<const ImageToVerify> images) {
  ImageVerifier v;
  for (const ImageToVerify& i : images) v.add(*i.reader, i.context);
  v.finish();
}

namespace {

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
    if (!fs::is_directory(st))
      bad_image("{} is not a checkpoint image (not a directory)", dir.native());
    bad_image("{} is not a checkpoint image (no manifest.json)", dir.native());
  }
  if (!key.empty()) {
    // First of all: nothing of a manifest is believed before its HMAC is.
    fs::path hpath = dir / kManifestHmacName;
    std::optional<std::string> mac = read_small_file(hpath, 1024);
    if (!mac)
      bad_image("{}: missing: the image is not signed with the cluster's image key",
                hpath.native());
    std::string_view mv = *mac;
    if (!mv.empty() && mv.back() == '\n') mv.remove_suffix(1);
    std::vector<std::byte> k(key.begin(), key.end());
    if (!hmac_equal(mv, image_hmac(k, *text)))
      bad_image(
          "{}: HMAC mismatch: the manifest or its chunk table was changed after the dump, or the "
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
  if (fv->get<std::int64_t>() < kOldestImageFormat || fv->get<std::int64_t>() > kImageFormatVersion)
    bad_image("{}: image format {} (written by engine {}), this engine reads formats {} to {}",
              dir.native(), fv->get<std::int64_t>(), engine_of(m), kOldestImageFormat,
              kImageFormatVersion);
  auto table = parse_chunk_table(m, mpath);
  auto sections = parse_sections(m, mpath);
  return std::make_unique<ImageReaderImpl>(dir, std::move(m), std::move(table),
                                           std::move(sections));
}

}  // namespace fsched::ckpt
