// Unit tests of the checkpoint image format (src/ckpt/image.h), on real files in a
// temporary directory under /tmp.
#include "ckpt/image.h"
#include "ckpt/page_restore.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/error.h"

namespace fsched::ckpt {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr std::size_t kChunk = kChunkRawBytes;
constexpr std::size_t kAll = std::numeric_limits<std::size_t>::max();

// A fresh directory under /tmp, removed with its contents at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = "/tmp/fsched_image_test.XXXXXX";
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::vector<std::byte> random_bytes(std::size_t n, std::uint64_t seed) {
  std::vector<std::byte> v(n);
  std::mt19937_64 rng(seed);
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t x = rng();
    std::memcpy(v.data() + i, &x, 8);
  }
  for (; i < n; ++i) v[i] = static_cast<std::byte>(rng());
  return v;
}

// Highly compressible: a short text repeated, with a counter every 4 KiB "page".
std::vector<std::byte> repetitive_bytes(std::size_t n) {
  static const std::string pattern = "fsched checkpoint page data 0123456789 ";
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>(pattern[i % pattern.size()]);
  for (std::size_t i = 0; i + 8 <= n; i += 4096) {
    std::uint64_t page = i / 4096;
    std::memcpy(v.data() + i, &page, 8);
  }
  return v;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + p.string());
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << s;
  if (!out) throw std::runtime_error("cannot write " + p.string());
}

std::string xxh3_hex(const std::string& s) {
  return fmt::format("{:016x}", XXH3_64bits(s.data(), s.size()));
}

// Rewrites manifest.json with `m` and a matching manifest.xxh3, as a tamperer would.
void rewrite_manifest(const fs::path& dir, const json& m) {
  std::string text = m.dump(1);
  write_text(dir / "manifest.json", text);
  write_text(dir / "manifest.xxh3", xxh3_hex(text) + "\n");
}

json read_manifest(const fs::path& dir) { return json::parse(read_text(dir / "manifest.json")); }

// Writes `data` as an image at `dir`, appending in pieces of `piece` bytes.
void write_image(const fs::path& dir, const std::vector<std::byte>& data, int level = 1,
                 std::size_t piece = 1u << 20, json manifest = json::object()) {
  auto w = ImageWriter::create(dir, level);
  std::span<const std::byte> rest(data);
  while (!rest.empty()) {
    std::size_t n = std::min(piece, rest.size());
    w->append_pages(rest.first(n));
    rest = rest.subspan(n);
  }
  EXPECT_EQ(w->logical_bytes(), data.size());
  w->commit(std::move(manifest));
  EXPECT_EQ(w->path(), dir);
}

// Reads the whole stream with reads of rotating odd sizes.
std::vector<std::byte> read_all(const ImageReader& r, std::size_t n,
                                std::vector<std::size_t> sizes = {1, 7, 4093, (1u << 20) + 3,
                                                                  kChunk - 5, 3 * kChunk + 1}) {
  std::vector<std::byte> out(n);
  auto pr = r.pages();
  std::size_t pos = 0, k = 0;
  while (pos < n) {
    std::size_t len = std::min(sizes[k++ % sizes.size()], n - pos);
    pr->read(std::span(out).subspan(pos, len));
    pos += len;
  }
  return out;
}

// Reads the whole stream with next(max) views.
std::vector<std::byte> read_all_next(const ImageReader& r, std::size_t max) {
  std::vector<std::byte> out;
  auto pr = r.pages();
  const std::uint64_t n = r.manifest()["pages_logical_bytes"].get<std::uint64_t>();
  while (out.size() < n) {
    std::span<const std::byte> v = pr->next(max);
    if (v.empty()) throw std::runtime_error("next() returned an empty view");
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no fsched::Error thrown)";
}

// Opens the image at dir, verifies it and reads its whole page stream back: it must
// be `data`.
void expect_reads_back(const fs::path& dir, const std::vector<std::byte>& data) {
  auto r = ImageReader::open(dir);
  r->verify_chunks();
  EXPECT_TRUE(read_all(*r, data.size()) == data) << dir;
}

mode_t mode_of(const fs::path& p) {
  struct stat st;
  if (::stat(p.c_str(), &st) != 0) throw std::runtime_error("stat failed: " + p.string());
  return st.st_mode & 07777;
}

std::uint64_t size_of(const fs::path& p) { return fs::file_size(p); }
// The first multiple of kChunkAlignBytes at or after n: where the chunk after one
// ending at n starts.
std::uint64_t aligned(std::uint64_t n) {
  return (n + kChunkAlignBytes - 1) / kChunkAlignBytes * kChunkAlignBytes;
}

// Flips one bit of the file at `offset`.
void flip_bit(const fs::path& p, std::uint64_t offset) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c;
  f.get(c);
  c ^= 0x10;
  f.seekp(static_cast<std::streamoff>(offset));
  f.put(c);
  ASSERT_TRUE(f.good());
}

// Drops [off, off+len) of the file (len 0: to its end) from the page cache.
void evict(const fs::path& p, off_t off = 0, off_t len = 0) {
  int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << p;
  EXPECT_EQ(::fdatasync(fd), 0);  // only clean pages can be dropped
  EXPECT_EQ(::posix_fadvise(fd, off, len, POSIX_FADV_DONTNEED), 0);
  ::close(fd);
}

// Bytes of the file in the page cache (by mincore(2) on a mapping of it).
std::uint64_t cached_bytes(const fs::path& p) {
  std::uint64_t size = fs::file_size(p);
  if (size == 0) return 0;
  int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot open " + p.string());
  void* m = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) throw std::runtime_error("cannot map " + p.string());
  const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((size + page - 1) / page);
  int rc = ::mincore(m, size, vec.data());
  ::munmap(m, size);
  if (rc != 0) throw std::runtime_error("mincore failed");
  return std::count_if(vec.begin(), vec.end(), [](unsigned char c) { return c & 1; }) * page;
}

bool same(std::span<const std::byte> a, std::span<const std::byte> b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

// ---------------------------------------------------------------------------
// Round trips

struct RoundTripCase {
  std::size_t size;
  bool random;
};

class RoundTrip : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(RoundTrip, WriteReadVerify) {
  const auto [size, random] = GetParam();
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto data = random ? random_bytes(size, size + 1) : repetitive_bytes(size);
  write_image(dir, data, 1, 1000003, json{{"job", "test"}, {"pid", 42}});

  EXPECT_FALSE(fs::exists(tmp.path() / "img.tmp"));
  auto r = ImageReader::open(dir);
  EXPECT_EQ(r->path(), dir);
  const json& m = r->manifest();
  EXPECT_EQ(m["job"], "test");
  EXPECT_EQ(m["pid"], 42);
  EXPECT_EQ(m["format_version"], kImageFormatVersion);
  EXPECT_EQ(m["engine_version"], FSCHED_TEST_ENGINE_VERSION);
  EXPECT_EQ(m["pages_logical_bytes"], size);
  const std::size_t nchunks = (size + kChunk - 1) / kChunk;
  ASSERT_EQ(m["chunks"].size(), nchunks);
  std::uint64_t off = 0, stored = 0;
  for (std::size_t i = 0; i < nchunks; ++i) {
    const json& c = m["chunks"][i];
    off = aligned(off);  // chunks start at multiples of kChunkAlignBytes
    EXPECT_EQ(c["offset"], off) << i;
    EXPECT_EQ(c["raw"], i + 1 < nchunks ? kChunk : size - i * kChunk) << i;
    EXPECT_EQ(c["xxh3"].get<std::string>().size(), 16u);
    if (random) {  // incompressible: stored raw
      EXPECT_EQ(c["zstd"], false) << i;
      EXPECT_EQ(c["stored"], c["raw"]) << i;
    } else if (c["raw"] >= 4096) {  // a few bytes would not compress either
      EXPECT_FALSE(c.contains("zstd")) << i;
    }
    off += c["stored"].get<std::uint64_t>();
    stored += c["stored"].get<std::uint64_t>();
  }
  EXPECT_EQ(off, size_of(dir / "pages.img"));  // no padding after the last chunk
  EXPECT_EQ(m["pages_stored_bytes"], stored);

  r->verify_chunks();
  EXPECT_EQ(read_all(*r, size), data);
  // Reads in one go too.
  EXPECT_EQ(read_all(*r, size, {size + 1}), data);
  EXPECT_TRUE(read_all_next(*r, kAll) == data);
  EXPECT_TRUE(read_all_next(*r, 1000003) == data);
}

INSTANTIATE_TEST_SUITE_P(
    Sizes, RoundTrip,
    ::testing::Values(RoundTripCase{0, true}, RoundTripCase{1, true}, RoundTripCase{4095, false},
                      RoundTripCase{kChunk - 1, true}, RoundTripCase{kChunk, true},
                      RoundTripCase{kChunk, false}, RoundTripCase{kChunk + 1, true},
                      RoundTripCase{kChunk + 1, false}, RoundTripCase{7 * kChunk + 12345, true},
                      RoundTripCase{9 * kChunk + 3, false}),
    [](const auto& p) {
      return fmt::format("{}_{}", p.param.size, p.param.random ? "random" : "repetitive");
    });

TEST(ImageTest, ManyTinyAppendsAndLargeAppends) {
  TempDir tmp;
  auto data = random_bytes(3 * kChunk + 777, 5);
  fs::path dir = tmp.path() / "img";
  {
    auto w = ImageWriter::create(dir, 3);
    std::size_t pos = 0;
    // Tiny appends up to the middle of chunk 0, one large append crossing three chunk
    // boundaries, then 5000 single bytes.
    for (; pos < 10000; pos += 7) w->append_pages(std::span(data).subspan(pos, 7));
    const std::size_t large = data.size() - pos - 5000;
    w->append_pages(std::span(data).subspan(pos, large));
    pos += large;
    for (; pos < data.size(); ++pos) w->append_pages(std::span(data).subspan(pos, 1));
    EXPECT_EQ(pos, data.size());
    w->append_pages({});  // empty append is a no-op
    EXPECT_EQ(w->logical_bytes(), data.size());
    w->commit(json::object());
    EXPECT_EQ(w->stored_bytes(), size_of(dir / "pages.img"));
  }
  auto r = ImageReader::open(dir);
  r->verify_chunks();
  EXPECT_EQ(read_all(*r, data.size(), {4096, 4096 * 3 + 1, 5}), data);
}

TEST(ImageTest, ZeroByteImage) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  write_image(dir, {});
  EXPECT_EQ(size_of(dir / "pages.img"), 0u);
  auto r = ImageReader::open(dir);
  EXPECT_TRUE(r->manifest()["chunks"].empty());
  r->verify_chunks();
  auto pr = r->pages();
  pr->read({});  // reading nothing at the end is fine
  std::byte b;
  EXPECT_THAT(error_of([&] { pr->read(std::span(&b, 1)); }), HasSubstr("past the end"));
}

TEST(ImageTest, NegativeAndHighLevelsRoundTrip) {
  for (int level : {-5, 9}) {
    TempDir tmp;
    auto data = repetitive_bytes(kChunk + 100);
    write_image(tmp.path() / "img", data, level);
    auto r = ImageReader::open(tmp.path() / "img");
    r->verify_chunks();
    EXPECT_EQ(read_all(*r, data.size()), data) << level;
  }
}

TEST(ImageTest, InvalidLevelRefused) {
  TempDir tmp;
  EXPECT_THAT(error_of([&] { ImageWriter::create(tmp.path() / "img", 1000); }),
              HasSubstr("invalid zstd level 1000"));
  EXPECT_FALSE(fs::exists(tmp.path() / "img.tmp"));
}

TEST(ImageTest, CompressibleDataStoredMuchSmaller) {
  TempDir tmp;
  auto data = repetitive_bytes(4 * kChunk);
  fs::path dir = tmp.path() / "img";
  auto w = ImageWriter::create(dir, 1);
  w->append_pages(data);
  w->commit(json::object());
  EXPECT_LT(w->stored_bytes() * 20, data.size());
  // Chunks are aligned: the file holds the stored bytes and less than a block of zeros
  // between every two chunks.
  EXPECT_GE(size_of(dir / "pages.img"), w->stored_bytes());
  EXPECT_LT(size_of(dir / "pages.img"), w->stored_bytes() + 3 * kChunkAlignBytes);
  EXPECT_EQ(ImageReader::open(dir)->manifest()["pages_stored_bytes"], w->stored_bytes());
}

TEST(ImageTest, RandomDataStoredWithSmallOverhead) {
  TempDir tmp;
  auto data = random_bytes(2 * kChunk, 9);
  fs::path dir = tmp.path() / "img";
  write_image(dir, data);
  std::uint64_t stored = size_of(dir / "pages.img");
  EXPECT_LE(stored, data.size() + data.size() / 1000);
  EXPECT_GE(stored, data.size());
}

TEST(ImageTest, ReadBeyondEndThrows) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto data = random_bytes(kChunk + 10, 3);
  write_image(dir, data);
  auto r = ImageReader::open(dir);
  auto pr = r->pages();
  std::vector<std::byte> out(kChunk + 5);
  pr->read(out);
  std::vector<std::byte> rest(6);
  EXPECT_THAT(error_of([&] { pr->read(rest); }),
              AllOf(HasSubstr("pages.img"), HasSubstr("past the end")));
  // The failed read consumed nothing: the last 5 bytes are still there.
  rest.resize(5);
  pr->read(rest);
  EXPECT_TRUE(std::equal(rest.begin(), rest.end(), data.end() - 5));
  EXPECT_THROW(pr->read(std::span(rest).first(1)), Error);
}

TEST(ImageTest, PageReaderOutlivesImageReader) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto data = random_bytes(2 * kChunk + 1, 4);
  write_image(dir, data);
  std::unique_ptr<PageReader> pr = ImageReader::open(dir)->pages();
  std::vector<std::byte> out(data.size());
  pr->read(out);
  EXPECT_EQ(out, data);
}

TEST(ImageTest, AbandonedPageReaderJoinsCleanly) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  write_image(dir, random_bytes(3 * kChunk, 4));
  auto r = ImageReader::open(dir);
  for (int i = 0; i < 3; ++i) {
    auto pr = r->pages();
    std::vector<std::byte> out(static_cast<std::size_t>(i) * kChunk / 2 + 1);
    pr->read(out);
  }  // destroyed while its worker may be decompressing ahead
}

// ---------------------------------------------------------------------------
// Zero-copy reads: PageReader::next()

// Parameter: random data (chunks stored raw) or repetitive data (zstd chunks).
class NextTest : public ::testing::TestWithParam<bool> {
 protected:
  std::vector<std::byte> make(std::size_t n) {
    return GetParam() ? random_bytes(n, n + 7) : repetitive_bytes(n);
  }
  void check_storage(const fs::path& dir) {
    const json m = read_manifest(dir);
    for (const json& c : m["chunks"]) {
      if (GetParam())
        EXPECT_EQ(c["zstd"], false);
      else
        EXPECT_FALSE(c.contains("zstd"));
    }
  }
};

TEST_P(NextTest, ViewsFollowChunksForAnyMax) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  const std::size_t size = 2 * kChunk + 12345;
  auto data = make(size);
  write_image(dir, data);
  check_storage(dir);
  auto r = ImageReader::open(dir);
  for (std::size_t max :
       {std::size_t{1}, std::size_t{4093}, kChunk - 1, kChunk, kChunk + 1, 10 * kChunk, kAll}) {
    SCOPED_TRACE(max);
    auto pr = r->pages();
    std::vector<std::byte> out;
    out.reserve(size);
    std::size_t pos = 0;
    while (pos < size) {
      // As much as max allows of the rest of the current chunk, never more.
      const std::size_t want = std::min({max, kChunk - pos % kChunk, size - pos});
      std::span<const std::byte> v = pr->next(max);
      ASSERT_EQ(v.size(), want) << "at stream offset " << pos;
      out.insert(out.end(), v.begin(), v.end());
      pos += v.size();
    }
    EXPECT_TRUE(out == data);
    // End of stream: next(>0) throws and consumes nothing, next(0) is an empty view.
    EXPECT_THAT(error_of([&] { pr->next(1); }),
                AllOf(HasSubstr("pages.img"), HasSubstr("past the end"),
                      HasSubstr(fmt::format("stream offset {}", size))));
    EXPECT_THAT(error_of([&] { pr->next(kAll); }), HasSubstr("past the end"));
    EXPECT_TRUE(pr->next(0).empty());
    pr->read({});
    std::byte b;
    EXPECT_THAT(error_of([&] { pr->read(std::span(&b, 1)); }), HasSubstr("past the end"));
  }
}

// skip_to() passes over whole chunks unread; what follows is the stream's bytes, from a
// verified image (page cache) or not, and an offset behind or past the end is refused.
TEST_P(NextTest, SkipToLandsOnTheRightBytes) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  const std::size_t size = 4 * kChunk + 999;
  auto data = make(size);
  write_image(dir, data);
  for (bool verified : {false, true}) {
    SCOPED_TRACE(verified);
    auto r = ImageReader::open(dir);
    if (verified) r->verify_chunks();
    auto pr = r->pages();
    std::byte b[16];
    for (std::size_t off : {std::size_t{0}, std::size_t{20}, kChunk - 3, kChunk + 100,
                            3 * kChunk + 17, 3 * kChunk + 4000, 4 * kChunk, size - 16}) {
      SCOPED_TRACE(off);
      pr->skip_to(off);
      ASSERT_EQ(pr->position(), off);
      pr->read(std::span(b));
      EXPECT_TRUE(std::equal(b, b + 16, data.begin() + static_cast<std::ptrdiff_t>(off)));
    }
    EXPECT_THAT(error_of([&] { pr->skip_to(5); }), HasSubstr("skip to stream offset 5"));
    EXPECT_THAT(error_of([&] { pr->skip_to(size + 1); }), HasSubstr("skip to stream offset"));
    pr->skip_to(size);
    EXPECT_EQ(pr->position(), size);
  }
}

TEST_P(NextTest, InterleavedWithRead) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  const std::size_t size = 3 * kChunk + 777;
  auto data = make(size);
  write_image(dir, data);
  auto pr = ImageReader::open(dir)->pages();
  auto expect_view = [&](std::span<const std::byte> v, std::size_t at, std::size_t len) {
    ASSERT_EQ(v.size(), len) << "at " << at;
    EXPECT_TRUE(same(v, std::span(data).subspan(at, len))) << "at " << at;
  };
  std::vector<std::byte> buf(kChunk + 5);
  EXPECT_TRUE(pr->next(0).empty());
  pr->read(std::span(buf).first(100));
  EXPECT_TRUE(same(std::span(buf).first(100), std::span(data).first(100)));
  expect_view(pr->next(kAll), 100, kChunk - 100);  // the rest of chunk 0
  pr->read(buf);                                   // all of chunk 1 and 5 bytes of chunk 2
  EXPECT_TRUE(same(buf, std::span(data).subspan(kChunk, kChunk + 5)));
  expect_view(pr->next(10), 2 * kChunk + 5, 10);
  expect_view(pr->next(kAll), 2 * kChunk + 15, kChunk - 15);
  pr->read({});
  expect_view(pr->next(1), 3 * kChunk, 1);
  pr->read(std::span(buf).first(700));
  EXPECT_TRUE(same(std::span(buf).first(700), std::span(data).subspan(3 * kChunk + 1, 700)));
  // 76 bytes left: a read of more throws and consumes nothing.
  EXPECT_THAT(error_of([&] { pr->read(std::span(buf).first(77)); }), HasSubstr("76 left"));
  expect_view(pr->next(kAll), 3 * kChunk + 701, 76);
  EXPECT_THAT(error_of([&] { pr->next(1); }), HasSubstr("past the end"));
}

TEST_P(NextTest, ViewStaysValidWhileWorkerDecodesAhead) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto data = make(4 * kChunk);
  write_image(dir, data);
  auto pr = ImageReader::open(dir)->pages();
  for (std::size_t k = 0; k < 4; ++k) {
    std::span<const std::byte> v = pr->next(kAll);
    ASSERT_EQ(v.size(), kChunk);
    // Give the worker time to decode chunk k+1 (into its other buffer) and wait.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_TRUE(same(v, std::span(data).subspan(k * kChunk, kChunk))) << "chunk " << k;
  }
}

TEST_P(NextTest, ReaderDestroyedWhileViewsAreOut) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto data = make(3 * kChunk);
  write_image(dir, data);
  auto r = ImageReader::open(dir);
  for (std::size_t n : {std::size_t{1}, kChunk, kChunk + 1}) {
    auto pr = r->pages();
    for (std::size_t got = 0; got < n;) got += pr->next(n - got).size();
  }  // the worker is decoding ahead or waiting
}

INSTANTIATE_TEST_SUITE_P(Data, NextTest, ::testing::Values(true, false),
                         [](const auto& p) { return p.param ? "random" : "repetitive"; });

TEST(ImageTest, NextOnEmptyStream) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  write_image(dir, {});
  auto pr = ImageReader::open(dir)->pages();
  EXPECT_TRUE(pr->next(0).empty());
  EXPECT_THAT(error_of([&] { pr->next(1); }), HasSubstr("past the end"));
  EXPECT_TRUE(pr->next(0).empty());
}

// ---------------------------------------------------------------------------
// Raw ("zstd": false) chunks

TEST(ImageTest, IncompressibleChunksStoredRaw) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  // A random chunk, a compressible one, then a random partial chunk.
  auto data = random_bytes(kChunk, 1);
  auto text = repetitive_bytes(kChunk);
  auto tail = random_bytes(kChunk / 3 + 1, 2);
  data.insert(data.end(), text.begin(), text.end());
  data.insert(data.end(), tail.begin(), tail.end());
  write_image(dir, data);
  json m = read_manifest(dir);
  ASSERT_EQ(m["chunks"].size(), 3u);
  EXPECT_EQ(m["chunks"][0]["zstd"], false);
  EXPECT_EQ(m["chunks"][0]["stored"], kChunk);
  EXPECT_FALSE(m["chunks"][1].contains("zstd"));
  EXPECT_LT(m["chunks"][1]["stored"].get<std::uint64_t>() * 10, kChunk);
  EXPECT_EQ(m["chunks"][2]["zstd"], false);
  EXPECT_EQ(m["chunks"][2]["stored"], tail.size());
  // The raw chunk is the data itself.
  std::string pages = read_text(dir / "pages.img");
  EXPECT_EQ(std::memcmp(pages.data(), data.data(), kChunk), 0);
  expect_reads_back(dir, data);
}

// The writer probes a few slices of each chunk before compressing it: a chunk whose
// first half is random but whose second half compresses well must still be
// compressed, and one random except for a compressible middle too.
TEST(ImageTest, ChunkCompressibleOnlyInPartsIsCompressed) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto data = random_bytes(kChunk / 2, 3);
  auto text = repetitive_bytes(kChunk / 2);
  data.insert(data.end(), text.begin(), text.end());
  auto middle = random_bytes(kChunk, 4);
  auto patch = repetitive_bytes(kChunk / 4);
  std::copy(patch.begin(), patch.end(), middle.begin() + kChunk / 3);
  data.insert(data.end(), middle.begin(), middle.end());
  write_image(dir, data);
  json m = read_manifest(dir);
  ASSERT_EQ(m["chunks"].size(), 2u);
  for (const json& c : m["chunks"]) {
    EXPECT_FALSE(c.contains("zstd")) << c;
    EXPECT_LT(c["stored"].get<std::uint64_t>(), kChunk * 85 / 100) << c;
  }
  expect_reads_back(dir, data);
}

// append_space()/append_done(): the caller writes into the chunk buffer itself, in
// pieces that do not line up with chunks, mixed with append_pages().
TEST(ImageTest, ZeroCopyAppendsMixWithCopies) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto data = random_bytes(3 * kChunk + 12345, 6);
  auto w = ImageWriter::create(dir, 1);
  std::size_t pos = 0, k = 0;
  const std::size_t pieces[] = {4096, 100000, kChunk, 1, 3 * 4096 + 5};
  while (pos < data.size()) {
    std::size_t want = std::min(pieces[k++ % std::size(pieces)], data.size() - pos);
    if (k % 3 == 0) {
      w->append_pages(std::span(data).subspan(pos, want));
      pos += want;
      continue;
    }
    auto space = w->append_space();
    ASSERT_GE(space.size(), 1u);
    ASSERT_LE(space.size(), kChunk);
    std::size_t n = std::min(want, space.size());
    std::memcpy(space.data(), data.data() + pos, n);
    w->append_done(n);
    pos += n;
  }
  // An append_done() beyond the space handed out is refused.
  auto space = w->append_space();
  EXPECT_THAT(error_of([&] { w->append_done(space.size() + 1); }), HasSubstr("beyond"));
  w->append_done(0);
  EXPECT_EQ(w->logical_bytes(), data.size());
  w->commit(json::object());
  expect_reads_back(dir, data);
}

// hold(): chunks kept in memory, unwritten, then compressed and written in stream order.
TEST(ImageTest, HeldChunksAreWrittenInStreamOrderAfterRelease) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  // Compressible and random chunks alternate, so that the two workers' chunks differ
  // in cost and a misordered write would show.
  auto rnd = random_bytes(8 * kChunk, 7);
  std::vector<std::byte> data;
  for (std::size_t i = 0; i < 8; ++i) {
    if (i % 2)
      data.insert(data.end(), rnd.begin() + i * kChunk, rnd.begin() + (i + 1) * kChunk);
    else
      data.resize(data.size() + kChunk, std::byte(i));
  }
  auto w = ImageWriter::create(dir, 3);
  w->hold(6 * kChunk);
  std::size_t pos = 0;
  while (pos < 5 * kChunk + 4096) {  // zero-copy, as the dump reads the job's memory
    auto space = w->append_space();
    std::size_t n = std::min(space.size(), 5 * kChunk + 4096 - pos);
    std::memcpy(space.data(), data.data() + pos, n);
    w->append_done(n);
    pos += n;
  }
  EXPECT_EQ(w->held_bytes(), 5 * kChunk + 4096);
  EXPECT_EQ(w->stored_bytes(), 0u);  // nothing compressed nor written yet
  w->release_held();
  EXPECT_EQ(w->held_bytes(), 0u);
  w->append_pages(std::span(data).subspan(pos));  // after the release: as without hold
  w->commit(json::object());
  expect_reads_back(dir, data);
}

TEST(ImageTest, HoldBudgetUsedUpReleasesTheHeldChunksFirst) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto data = random_bytes(10 * kChunk + 777, 8);
  auto w = ImageWriter::create(dir, 1);
  w->hold(3 * kChunk + 100);  // three chunks' buffers: two held, one being filled
  w->append_pages(std::span(data).subspan(0, kChunk + 5));
  EXPECT_EQ(w->held_bytes(), kChunk + 5);
  w->append_pages(std::span(data).subspan(kChunk + 5, kChunk));
  EXPECT_EQ(w->held_bytes(), 2 * kChunk + 5);
  w->append_pages(std::span(data).subspan(2 * kChunk + 5));  // does not fit: all go on
  EXPECT_EQ(w->held_bytes(), 0u);
  w->commit(json::object());  // no release_held(): commit() releases
  expect_reads_back(dir, data);
}

TEST(ImageTest, HoldKeepsNothingBelowTwoChunksAndCommitReleases) {
  TempDir tmp;
  auto data = random_bytes(3 * kChunk, 9);
  {
    auto w = ImageWriter::create(tmp.path() / "small", 1);
    w->hold(2 * kChunk - 1);
    w->append_pages(data);
    EXPECT_EQ(w->held_bytes(), 0u);
    w->commit(json::object());
    expect_reads_back(tmp.path() / "small", data);
  }
  auto w = ImageWriter::create(tmp.path() / "held", 1);
  w->hold(8 * kChunk);
  w->append_pages(data);
  EXPECT_EQ(w->held_bytes(), 3 * kChunk);
  w->commit(json::object());
  expect_reads_back(tmp.path() / "held", data);
}

// append_deferred(): the bytes' place in the stream is taken at once, their contents
// given later by the fill, piece by piece (a piece ends where a chunk does).
struct DeferredSource {
  std::span<const std::byte> src;                            // what the fill copies from
  std::vector<std::pair<std::uint64_t, std::size_t>> calls;  // (offset, size) per call
  ImageWriter::DeferredFill fill() {
    return [this](std::uint64_t off, std::span<std::byte> dst) {
      calls.emplace_back(off, dst.size());
      std::memcpy(dst.data(), src.data() + off, dst.size());
    };
  }
};

TEST(ImageTest, DeferredAppendWhileHoldingIsFilledAtRelease) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto data = random_bytes(4 * kChunk, 11);
  auto w = ImageWriter::create(dir, 1);
  w->hold(6 * kChunk);
  // 5 bytes first, so that the deferred part straddles two chunk boundaries unaligned.
  w->append_pages(std::span(data).subspan(0, 5));
  DeferredSource d{std::span(data).subspan(5, 2 * kChunk + 100), {}};
  w->append_deferred(d.src.size(), d.fill());
  EXPECT_TRUE(d.calls.empty());  // not yet: the chunks are held
  w->append_pages(std::span(data).subspan(5 + d.src.size()));
  EXPECT_EQ(w->held_bytes(), data.size());
  w->release_held();
  ASSERT_EQ(d.calls.size(), 3u);  // the rest of chunk 0, all of chunk 1, the start of 2
  EXPECT_EQ(d.calls[0], (std::pair<std::uint64_t, std::size_t>{0, kChunk - 5}));
  EXPECT_EQ(d.calls[1], (std::pair<std::uint64_t, std::size_t>{kChunk - 5, kChunk}));
  EXPECT_EQ(d.calls[2], (std::pair<std::uint64_t, std::size_t>{2 * kChunk - 5, 105}));
  w->commit(json::object());
  expect_reads_back(dir, data);
}

TEST(ImageTest, DeferredAppendIsFilledWhenTheHoldRunsOutOrAtOnceWithoutHold) {
  TempDir tmp;
  auto data = random_bytes(6 * kChunk + 300, 12);
  {
    // Held until the budget runs out midway through the deferred bytes: what was
    // reserved is filled before its chunks go to compression, the rest at once.
    auto w = ImageWriter::create(tmp.path() / "outgrown", 1);
    w->hold(3 * kChunk);
    DeferredSource d{std::span(data).subspan(0, 5 * kChunk), {}};
    w->append_deferred(d.src.size(), d.fill());
    EXPECT_EQ(w->held_bytes(), 0u);
    std::uint64_t covered = 0;
    for (auto [off, n] : d.calls) {
      EXPECT_EQ(off, covered);
      covered += n;
    }
    EXPECT_EQ(covered, d.src.size());
    w->append_pages(std::span(data).subspan(d.src.size()));
    w->commit(json::object());  // commit fills nothing twice
    EXPECT_EQ(d.calls.size(), 5u);
    expect_reads_back(tmp.path() / "outgrown", data);
  }
  {
    auto w = ImageWriter::create(tmp.path() / "unheld", 1);
    DeferredSource d{std::span(data).subspan(0, kChunk + 1), {}};
    w->append_deferred(d.src.size(), d.fill());
    EXPECT_EQ(d.calls.size(), 2u);  // at once, chunk by chunk
    w->append_pages(std::span(data).subspan(d.src.size()));
    w->commit(json::object());
    expect_reads_back(tmp.path() / "unheld", data);
  }
  {
    // Held to the end: commit() fills them.
    auto w = ImageWriter::create(tmp.path() / "committed", 1);
    w->hold(10 * kChunk);
    w->append_pages(std::span(data).subspan(0, 7));
    DeferredSource d{std::span(data).subspan(7), {}};
    w->append_deferred(d.src.size(), d.fill());
    EXPECT_TRUE(d.calls.empty());
    w->commit(json::object());
    EXPECT_FALSE(d.calls.empty());
    expect_reads_back(tmp.path() / "committed", data);
  }
}

TEST(ImageTest, ExplicitZstdTrueAccepted) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto data = repetitive_bytes(2 * kChunk + 4000);
  write_image(dir, data);
  json m = read_manifest(dir);
  for (json& c : m["chunks"]) {
    ASSERT_FALSE(c.contains("zstd"));
    c["zstd"] = true;
  }
  rewrite_manifest(dir, m);
  expect_reads_back(dir, data);
}

// An image written before raw chunks existed: incompressible data in zstd frames and
// no "zstd" keys. It must still read.
TEST(ImageTest, ZstdFramesOfIncompressibleDataStillRead) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto data = random_bytes(2 * kChunk + 99, 3);
  write_image(dir, data);
  json m = read_manifest(dir);
  std::string pages;
  std::size_t stored = 0;
  for (std::size_t i = 0; i < m["chunks"].size(); ++i) {
    json& c = m["chunks"][i];
    std::size_t raw = c["raw"].get<std::size_t>();
    std::string frame(ZSTD_compressBound(raw), '\0');
    std::size_t n = ZSTD_compress(frame.data(), frame.size(), data.data() + i * kChunk, raw, 1);
    ASSERT_FALSE(ZSTD_isError(n));
    frame.resize(n);
    EXPECT_GT(n, raw);  // zstd could not shrink it
    pages.resize(aligned(pages.size()));
    c = json{{"offset", pages.size()}, {"stored", n}, {"raw", raw}, {"xxh3", xxh3_hex(frame)}};
    pages += frame;
    stored += n;
  }
  m["pages_stored_bytes"] = stored;
  write_text(dir / "pages.img", pages);
  rewrite_manifest(dir, m);
  expect_reads_back(dir, data);
}

TEST(ImageTest, RawChunkWithoutZstdKeyIsTakenForAFrame) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  write_image(dir, random_bytes(kChunk, 4));
  json m = read_manifest(dir);
  m["chunks"][0].erase("zstd");
  rewrite_manifest(dir, m);
  auto r = ImageReader::open(dir);
  r->verify_chunks();  // the stored bytes are intact
  EXPECT_THAT(error_of([&] { r->pages()->next(1); }),
              AllOf(HasSubstr("chunk 0 at offset 0"), HasSubstr("not a zstd frame")));
}

// ---------------------------------------------------------------------------
// Corruption of pages.img

class CorruptPages : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tmp_.path() / "img";
    data_ = random_bytes(4 * kChunk + 100, 11);
    write_image(dir_, data_);
    chunks_ = read_manifest(dir_)["chunks"];
    ASSERT_EQ(chunks_.size(), 5u);
  }
  std::uint64_t offset(std::size_t i) const { return chunks_[i]["offset"].get<std::uint64_t>(); }
  std::uint64_t stored(std::size_t i) const { return chunks_[i]["stored"].get<std::uint64_t>(); }
  fs::path pages() const { return dir_ / "pages.img"; }

  TempDir tmp_;
  fs::path dir_;
  std::vector<std::byte> data_;
  json chunks_;
};

TEST_F(CorruptPages, BitFlipDetectedByVerifyAndRead) {
  flip_bit(pages(), offset(2) + 12345);
  auto r = ImageReader::open(dir_);  // the manifest is intact
  EXPECT_THAT(
      error_of([&] { r->verify_chunks(); }),
      AllOf(HasSubstr("pages.img"), HasSubstr("chunk 2 "),
            HasSubstr(fmt::format("offset {}", offset(2))), HasSubstr("checksum mismatch")));

  auto pr = r->pages();
  std::vector<std::byte> out(2 * kChunk);
  pr->read(out);  // chunks 0 and 1 are fine
  EXPECT_TRUE(std::equal(out.begin(), out.end(), data_.begin()));
  std::byte b;
  std::string e = error_of([&] { pr->read(std::span(&b, 1)); });
  EXPECT_THAT(
      e, AllOf(HasSubstr("pages.img"), HasSubstr("chunk 2 "),
               HasSubstr(fmt::format("offset {}", offset(2))), HasSubstr("checksum mismatch")));
  // The reader stays failed.
  EXPECT_EQ(error_of([&] { pr->read(std::span(&b, 1)); }), e);
}

TEST_F(CorruptPages, BitFlipInFirstByteOfLastChunk) {
  flip_bit(pages(), offset(4));
  auto r = ImageReader::open(dir_);
  EXPECT_THAT(error_of([&] { r->verify_chunks(); }), HasSubstr("chunk 4 "));
  std::vector<std::byte> out(data_.size());
  EXPECT_THAT(error_of([&] { r->pages()->read(out); }), HasSubstr("chunk 4 "));
}

TEST_F(CorruptPages, TruncationDetected) {
  fs::resize_file(pages(), size_of(pages()) - 10);
  auto r = ImageReader::open(dir_);
  EXPECT_THAT(error_of([&] { r->verify_chunks(); }),
              AllOf(HasSubstr("pages.img"), HasSubstr("truncated"), HasSubstr("chunk 4 "),
                    HasSubstr(fmt::format("offset {}", offset(4))), HasSubstr("10 bytes missing")));
  std::vector<std::byte> out(data_.size());
  EXPECT_THAT(error_of([&] { r->pages()->read(out); }),
              AllOf(HasSubstr("chunk 4 "), HasSubstr("truncated")));
}

TEST_F(CorruptPages, MissingChunksDetected) {
  fs::resize_file(pages(), offset(2));  // chunks 2..4 gone entirely
  auto r = ImageReader::open(dir_);
  EXPECT_THAT(error_of([&] { r->verify_chunks(); }),
              AllOf(HasSubstr("truncated"), HasSubstr("chunk 2 "),
                    HasSubstr(fmt::format("offset {}", offset(2))), HasSubstr("3 of 5 chunks")));
}

TEST_F(CorruptPages, EmptyPagesFileDetected) {
  fs::resize_file(pages(), 0);
  EXPECT_THAT(error_of([&] { ImageReader::open(dir_)->verify_chunks(); }),
              AllOf(HasSubstr("truncated"), HasSubstr("chunk 0 ")));
}

TEST_F(CorruptPages, MissingPagesFileDetected) {
  fs::remove(pages());
  auto r = ImageReader::open(dir_);
  EXPECT_THAT(error_of([&] { r->verify_chunks(); }),
              AllOf(HasSubstr("pages.img"), HasSubstr("No such file")));
  EXPECT_THAT(error_of([&] { r->pages(); }), HasSubstr("pages.img"));
}

TEST_F(CorruptPages, TrailingGarbageDetected) {
  {
    std::ofstream out(pages(), std::ios::binary | std::ios::app);
    out << "garbage";
  }
  auto r = ImageReader::open(dir_);
  std::uint64_t end = offset(4) + stored(4);
  EXPECT_THAT(
      error_of([&] { r->verify_chunks(); }),
      AllOf(HasSubstr("pages.img"), HasSubstr("trailing"), HasSubstr(fmt::format("offset {}", end)),
            HasSubstr(fmt::format("file is {} bytes", end + 7))));
  // The page stream itself is intact.
  EXPECT_EQ(read_all(*r, data_.size()), data_);
}

TEST_F(CorruptPages, BadChunkReportedByNext) {
  flip_bit(pages(), offset(2) + 777);
  auto pr = ImageReader::open(dir_)->pages();
  for (std::size_t k = 0; k < 2; ++k) {  // chunks 0 and 1 are fine
    std::span<const std::byte> v = pr->next(kAll);
    ASSERT_EQ(v.size(), kChunk);
    EXPECT_TRUE(same(v, std::span(data_).subspan(k * kChunk, kChunk)));
  }
  std::string e = error_of([&] { pr->next(1); });
  EXPECT_THAT(
      e, AllOf(HasSubstr("pages.img"), HasSubstr("chunk 2 "),
               HasSubstr(fmt::format("offset {}", offset(2))), HasSubstr("checksum mismatch")));
  // The reader stays failed, for next() of any size and for read().
  EXPECT_EQ(error_of([&] { pr->next(kAll); }), e);
  EXPECT_EQ(error_of([&] { pr->next(0); }), e);
  std::byte b;
  EXPECT_EQ(error_of([&] { pr->read(std::span(&b, 1)); }), e);
}

TEST_F(CorruptPages, TruncationReportedByNext) {
  fs::resize_file(pages(), offset(3) + 10);
  auto pr = ImageReader::open(dir_)->pages();
  for (std::size_t k = 0; k < 3; ++k) ASSERT_EQ(pr->next(kAll).size(), kChunk);
  EXPECT_THAT(error_of([&] { pr->next(kAll); }),
              AllOf(HasSubstr("chunk 3 "), HasSubstr(fmt::format("offset {}", offset(3))),
                    HasSubstr("truncated")));
}

// The fixture's ~17 MiB are verified by two threads (kVerifyThreads, 8 MiB each) on a
// machine with two CPUs or more.
TEST_F(CorruptPages, VerifyReportsFirstOfSeveralBadChunks) {
  flip_bit(pages(), offset(4) + 1);
  flip_bit(pages(), offset(3) + 100);
  flip_bit(pages(), offset(1) + stored(1) - 1);
  auto r = ImageReader::open(dir_);
  for (int i = 0; i < 10; ++i)  // whatever the timing of the verifier's threads
    EXPECT_THAT(error_of([&] { r->verify_chunks(); }),
                AllOf(HasSubstr(fmt::format("chunk 1 at offset {}", offset(1))),
                      HasSubstr("checksum mismatch")));
}

TEST_F(CorruptPages, VerifyReportsBadChunkBeforeTruncation) {
  flip_bit(pages(), offset(1) + 5);
  fs::resize_file(pages(), offset(3) + 10);
  EXPECT_THAT(error_of([&] { ImageReader::open(dir_)->verify_chunks(); }),
              AllOf(HasSubstr("chunk 1 "), HasSubstr("checksum mismatch")));
}

// verify_images: several images' chunks in one pool, the first failing image (in the
// given order) reported with its context, whatever the threads' timing.
class VerifyImages : public CorruptPages {
 protected:
  void SetUp() override {
    CorruptPages::SetUp();
    for (int i = 0; i < 3; ++i) {
      dirs_.push_back(tmp_.path() / fmt::format("link{}", i));
      write_image(dirs_.back(), random_bytes(2 * kChunk + 4096 * i, 20 + i));
    }
  }
  // verify_images over dir_ (no context) then the three links ("link I").
  std::string verify_all() {
    std::vector<std::unique_ptr<ImageReader>> readers;
    std::vector<ImageToVerify> all;
    readers.push_back(ImageReader::open(dir_));
    for (auto& d : dirs_) readers.push_back(ImageReader::open(d));
    for (std::size_t i = 0; i < readers.size(); ++i)
      all.push_back({readers[i].get(), i ? fmt::format("link {}", i - 1) : std::string()});
    return error_of([&] { verify_images(all); });
  }
  fs::path link_pages(std::size_t i) const { return dirs_[i] / "pages.img"; }
  std::uint64_t link_offset(std::size_t i, std::size_t chunk) const {
    return read_manifest(dirs_[i])["chunks"][chunk]["offset"].get<std::uint64_t>();
  }
  std::vector<fs::path> dirs_;
};

TEST_F(VerifyImages, AllGoodThenReadableWithoutAnotherCheck) {
  std::vector<std::unique_ptr<ImageReader>> readers;
  std::vector<ImageToVerify> all;
  for (auto& d : dirs_) readers.push_back(ImageReader::open(d));
  for (auto& r : readers) all.push_back({r.get(), "x"});
  verify_images(all);
  // pages() hands out raw chunks of a verified image from the verified mapping.
  std::vector<std::byte> out(2 * kChunk);
  readers[0]->pages()->read(out);
  EXPECT_TRUE(same(out, random_bytes(2 * kChunk, 20)));
}

TEST_F(VerifyImages, BadChunkOfALinkNamesTheLinkAndTheChunk) {
  flip_bit(link_pages(1), link_offset(1, 1) + 77);
  for (int i = 0; i < 10; ++i)  // whatever the timing of the verifier's threads
    EXPECT_THAT(verify_all(), AllOf(StartsWith("link 1: "), HasSubstr("chunk 1 "),
                                    HasSubstr("checksum mismatch")));
}

TEST_F(VerifyImages, FirstImageInOrderWinsOverAnEarlierChunkIndex) {
  flip_bit(link_pages(2), link_offset(2, 0) + 1);  // chunk 0 of the last link
  flip_bit(link_pages(0), link_offset(0, 1) + 1);  // chunk 1 of the first link
  for (int i = 0; i < 10; ++i)
    EXPECT_THAT(verify_all(), AllOf(StartsWith("link 0: "), HasSubstr("chunk 1 ")));
}

TEST_F(VerifyImages, TruncatedHeadBeforeABadLink) {
  fs::resize_file(pages(), size_of(pages()) - 10);
  flip_bit(link_pages(0), link_offset(0, 0) + 1);
  std::string e = verify_all();
  EXPECT_THAT(e, AllOf(HasSubstr("truncated"), HasSubstr("chunk 4 ")));
  EXPECT_THAT(e, Not(HasSubstr("link 0")));
}

TEST_F(VerifyImages, MissingPagesOfALink) {
  fs::remove(link_pages(2));
  EXPECT_THAT(verify_all(), AllOf(StartsWith("link 2: "), HasSubstr("No such file")));
}

// ImageVerifier: images added one at a time, hashed meanwhile (a chain's links as they
// are opened); the order added decides which error is reported, not the timing.
TEST_F(VerifyImages, AddedOneByOneAnEarlierBadChunkWinsOverALaterMissingFile) {
  flip_bit(link_pages(0), link_offset(0, 1) + 5);
  fs::remove(link_pages(2));
  for (int i = 0; i < 5; ++i) {
    std::vector<std::unique_ptr<ImageReader>> readers;
    for (auto& d : dirs_) readers.push_back(ImageReader::open(d));
    ImageVerifier v;
    for (std::size_t k = 0; k < readers.size(); ++k) {
      v.add(*readers[k], fmt::format("link {}", k));  // the missing file: kept, not thrown
      std::this_thread::sleep_for(std::chrono::milliseconds(5 * i));
    }
    EXPECT_THAT(error_of([&] { v.finish(); }),
                AllOf(StartsWith("link 0: "), HasSubstr("chunk 1 ")));
  }
}

TEST_F(VerifyImages, AddedOneByOneAllGoodAndAbandonedVerifierJoins) {
  std::vector<std::unique_ptr<ImageReader>> readers;
  for (auto& d : dirs_) readers.push_back(ImageReader::open(d));
  {
    ImageVerifier abandoned;  // destroyed while its pool may still hash
    for (auto& r : readers) abandoned.add(*r, "x");
  }
  ImageVerifier v;
  for (auto& r : readers) v.add(*r, "x");
  v.finish();
  std::vector<std::byte> out(2 * kChunk + 4096 * 2);
  readers[2]->pages()->read(out);
  EXPECT_TRUE(same(out, random_bytes(2 * kChunk + 4096 * 2, 22)));
  fs::remove(link_pages(1));
  ImageVerifier w;
  for (auto& r : readers) w.add(*r, fmt::format("again {}", &r - readers.data()));
  EXPECT_THAT(error_of([&] { w.finish(); }),
              AllOf(StartsWith("again 1: "), HasSubstr("No such file")));
}

// Pages not in the page cache are read with pread(2), cached ones from a mapping; the
// results must not differ.
TEST_F(CorruptPages, UncachedAndPartlyCachedPages) {
  auto r = ImageReader::open(dir_);
  evict(pages());
  if (cached_bytes(pages()) > size_of(pages()) / 2)
    GTEST_SKIP() << "cannot drop pages.img from the page cache here";
  r->verify_chunks();
  evict(pages());
  EXPECT_TRUE(read_all(*r, data_.size()) == data_);
  // Partly cached: chunk 1 from half-way through chunk 0 to a quarter into chunk 2,
  // and a few odd pages.
  evict(pages());
  {
    auto pr = r->pages();
    std::vector<std::byte> out(kChunk / 2);
    pr->read(out);
  }
  {
    std::vector<std::byte> out(offset(2) + kChunk / 4);
    r->pages()->read(out);
  }
  evict(pages(), offset(1) + 4096 * 3, 4096);
  evict(pages(), offset(1) + 4096 * 17, 4096 * 5);
  r->verify_chunks();
  evict(pages(), 4096 * 9, 4096 * 200);
  evict(pages(), offset(1) + 4096 * 3, 4096);
  EXPECT_TRUE(read_all(*r, data_.size()) == data_);
  // A bad chunk is reported the same way from uncached pages.
  flip_bit(pages(), offset(3) + 12345);
  evict(pages());
  EXPECT_THAT(error_of([&] { r->verify_chunks(); }),
              AllOf(HasSubstr("chunk 3 "), HasSubstr("checksum mismatch")));
  evict(pages());
  auto pr = r->pages();
  for (std::size_t k = 0; k < 3; ++k) {
    std::span<const std::byte> v = pr->next(kAll);
    ASSERT_EQ(v.size(), kChunk);
    EXPECT_TRUE(same(v, std::span(data_).subspan(k * kChunk, kChunk)));
  }
  EXPECT_THAT(error_of([&] { pr->next(1); }),
              AllOf(HasSubstr("chunk 3 "), HasSubstr("checksum mismatch")));
}

TEST_F(CorruptPages, SwappedChunksDetected) {
  // Swap the chunk table entries' checksums: each chunk is intact but mismatches.
  json m = read_manifest(dir_);
  std::swap(m["chunks"][0]["xxh3"], m["chunks"][1]["xxh3"]);
  rewrite_manifest(dir_, m);
  auto r = ImageReader::open(dir_);
  EXPECT_THAT(error_of([&] { r->verify_chunks(); }), HasSubstr("chunk 0 at offset 0"));
}

TEST(ImageTest, WrongRawSizeOfZstdChunkDetectedOnRead) {
  // Claim the last (zstd) chunk holds 1 byte less (the totals are kept consistent).
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto data = repetitive_bytes(4 * kChunk + 100);
  write_image(dir, data);
  json m = read_manifest(dir);
  ASSERT_EQ(m["chunks"].size(), 5u);
  ASSERT_FALSE(m["chunks"][4].contains("zstd"));
  m["chunks"][4]["raw"] = 99;
  m["pages_logical_bytes"] = data.size() - 1;
  rewrite_manifest(dir, m);
  auto r = ImageReader::open(dir);
  r->verify_chunks();  // stored bytes are fine
  std::vector<std::byte> out(data.size() - 1);
  EXPECT_THAT(error_of([&] { r->pages()->read(out); }),
              AllOf(HasSubstr("chunk 4 "), HasSubstr("holds 100 bytes, manifest says 99")));
  auto pr = r->pages();
  for (std::size_t k = 0; k < 4; ++k) ASSERT_EQ(pr->next(kAll).size(), kChunk);
  EXPECT_THAT(error_of([&] { pr->next(kAll); }),
              AllOf(HasSubstr("chunk 4 "), HasSubstr("holds 100 bytes, manifest says 99")));
}

TEST_F(CorruptPages, WrongRawSizeOfRawChunkRefusedOnOpen) {
  // A raw chunk's raw size must be its stored size: the chunk table is refused.
  json m = read_manifest(dir_);
  ASSERT_EQ(m["chunks"][4]["zstd"], false);
  m["chunks"][4]["raw"] = 99;
  m["pages_logical_bytes"] = data_.size() - 1;
  rewrite_manifest(dir_, m);
  EXPECT_THAT(error_of([&] { ImageReader::open(dir_); }),
              AllOf(HasSubstr("manifest.json"), HasSubstr("chunk 4: "),
                    HasSubstr("stored size 100 is not raw size 99")));
}

// ---------------------------------------------------------------------------
// Manifest problems

class BadManifest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = tmp_.path() / "img";
    write_image(dir_, random_bytes(kChunk + 1, 1));
  }
  TempDir tmp_;
  fs::path dir_;
};

TEST_F(BadManifest, EditedManifestFailsChecksum) {
  std::string text = read_text(dir_ / "manifest.json");
  auto pos = text.find("\"format_version\"");
  ASSERT_NE(pos, std::string::npos);
  text.insert(pos, "\"edited\": true, ");
  write_text(dir_ / "manifest.json", text);
  EXPECT_THAT(error_of([&] { ImageReader::open(dir_); }),
              AllOf(HasSubstr((dir_ / "manifest.json").string()), HasSubstr("checksum mismatch")));
}

TEST_F(BadManifest, MissingChecksumFile) {
  fs::remove(dir_ / "manifest.xxh3");
  EXPECT_THAT(error_of([&] { ImageReader::open(dir_); }),
              AllOf(HasSubstr((dir_ / "manifest.xxh3").string()), HasSubstr("missing")));
}

TEST_F(BadManifest, MalformedChecksumFile) {
  write_text(dir_ / "manifest.xxh3", "not-hex\n");
  EXPECT_THAT(error_of([&] { ImageReader::open(dir_); }),
              AllOf(HasSubstr("manifest.xxh3"), HasSubstr("16 hex digits")));
}

TEST_F(BadManifest, ChecksumFileFormat) {
  std::string sum = read_text(dir_ / "manifest.xxh3");
  ASSERT_EQ(sum.size(), 17u);
  EXPECT_EQ(sum.back(), '\n');
  EXPECT_EQ(sum.substr(0, 16), xxh3_hex(read_text(dir_ / "manifest.json")));
  EXPECT_EQ(sum.find_first_not_of("0123456789abcdef"), 16u);
}

TEST_F(BadManifest, MissingManifest) {
  fs::remove(dir_ / "manifest.json");
  EXPECT_EQ(error_of([&] { ImageReader::open(dir_); }),
            fmt::format("{} is not a checkpoint image (no manifest.json)", dir_.string()));
}

TEST_F(BadManifest, NoSuchDirectory) {
  EXPECT_THAT(
      error_of([&] { ImageReader::open(tmp_.path() / "nope"); }),
      AllOf(HasSubstr((tmp_.path() / "nope").string()), HasSubstr("not a checkpoint image")));
}

TEST_F(BadManifest, FileInsteadOfDirectory) {
  write_text(tmp_.path() / "file", "x");
  EXPECT_EQ(error_of([&] { ImageReader::open(tmp_.path() / "file"); }),
            fmt::format("{} is not a checkpoint image (not a directory)",
                        (tmp_.path() / "file").string()));
}

TEST_F(BadManifest, WrongFormatVersionRefused) {
  json m = read_manifest(dir_);
  m["format_version"] = kImageFormatVersion + 1;
  rewrite_manifest(dir_, m);
  EXPECT_THAT(error_of([&] { ImageReader::open(dir_); }),
              AllOf(HasSubstr(dir_.string()),
                    HasSubstr(fmt::format("image format {} (written by engine {}), this engine "
                                          "reads formats {} to {}",
                                          kImageFormatVersion + 1, FSCHED_TEST_ENGINE_VERSION,
                                          kOldestImageFormat, kImageFormatVersion))));
}

// Format 2 predates page-stream sections (and signed manifests): refused, naming both.
TEST_F(BadManifest, FormatTwoRefusedAsImageError) {
  ASSERT_EQ(kOldestImageFormat, 3);
  json m = read_manifest(dir_);
  m["format_version"] = 2;
  m["engine_version"] = "0.9.0";
  rewrite_manifest(dir_, m);
  try {
    ImageReader::open(dir_);
    FAIL() << "format 2 accepted";
  } catch (const ImageError& e) {
    EXPECT_THAT(e.what(), HasSubstr(fmt::format("image format 2 (written by engine 0.9.0), this "
                                                "engine reads formats 3 to {}",
                                                kImageFormatVersion)));
    EXPECT_EQ(e.failure_class(), FailureClass::kImage);
  }
}

// Which engine wrote an image does not matter, only its format.
TEST_F(BadManifest, OtherEngineVersionAccepted) {
  json m = read_manifest(dir_);
  m["engine_version"] = "0.0.1-some-other-build";
  rewrite_manifest(dir_, m);
  auto r = ImageReader::open(dir_);
  r->verify_chunks();
  EXPECT_EQ(r->manifest()["engine_version"], "0.0.1-some-other-build");
}

TEST_F(BadManifest, MissingFormatVersionRefused) {
  json m = read_manifest(dir_);
  m.erase("format_version");
  rewrite_manifest(dir_, m);
  EXPECT_THAT(error_of([&] { ImageReader::open(dir_); }), HasSubstr("format_version"));
}

TEST_F(BadManifest, InvalidJsonRefused) {
  std::string text = "{\"format_version\": 1,";
  write_text(dir_ / "manifest.json", text);
  write_text(dir_ / "manifest.xxh3", xxh3_hex(text) + "\n");
  std::string e = error_of([&] { ImageReader::open(dir_); });
  EXPECT_THAT(e, AllOf(HasSubstr("manifest.json"), HasSubstr("invalid JSON")));
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
}

TEST_F(BadManifest, ChunkTableGapRefused) {
  json m = read_manifest(dir_);
  m["chunks"][1]["offset"] = m["chunks"][1]["offset"].get<std::uint64_t>() + 1;
  rewrite_manifest(dir_, m);
  EXPECT_THAT(error_of([&] { ImageReader::open(dir_); }),
              AllOf(HasSubstr("chunk 1"), HasSubstr("offset")));
}

TEST_F(BadManifest, ChunkTableBadTypesRefused) {
  const json good = read_manifest(dir_);
  json m = good;
  m["chunks"][0]["stored"] = -1;
  rewrite_manifest(dir_, m);
  EXPECT_THAT(error_of([&] { ImageReader::open(dir_); }),
              AllOf(HasSubstr("chunk 0"), HasSubstr("\"stored\"")));
  m = good;
  m["chunks"][1]["xxh3"] = "xyz";
  rewrite_manifest(dir_, m);
  EXPECT_THAT(error_of([&] { ImageReader::open(dir_); }),
              AllOf(HasSubstr("chunk 1"), HasSubstr("xxh3")));
}

TEST_F(BadManifest, HugeRawSizeRefused) {
  json m = read_manifest(dir_);
  m["chunks"][1]["raw"] = std::uint64_t{1} << 40;
  rewrite_manifest(dir_, m);
  EXPECT_THAT(error_of([&] { ImageReader::open(dir_); }),
              AllOf(HasSubstr("chunk 1"), HasSubstr("out of range")));
}

TEST_F(BadManifest, WrongTotalsRefused) {
  json m = read_manifest(dir_);
  m["pages_logical_bytes"] = 5;
  rewrite_manifest(dir_, m);
  EXPECT_THAT(error_of([&] { ImageReader::open(dir_); }), HasSubstr("pages_logical_bytes"));
}

TEST_F(BadManifest, StoredSizeMismatchDetectedByVerify) {
  // Take one byte off chunk 0 in the table: chunk 1 still starts at the next aligned
  // offset and the totals match, but chunk 0's checksum no longer does. (Zstd chunks:
  // for raw ones the table itself is refused, see RawChunkStoredSizeMismatchRefused.)
  fs::path dir = tmp_.path() / "zimg";
  write_image(dir, repetitive_bytes(2 * kChunk));
  json m = read_manifest(dir);
  ASSERT_FALSE(m["chunks"][0].contains("zstd"));
  std::uint64_t end0 = m["chunks"][0]["stored"].get<std::uint64_t>();
  ASSERT_NE(end0 % kChunkAlignBytes, 1u);  // else chunk 1 would move to an earlier block
  m["chunks"][0]["stored"] = end0 - 1;
  m["pages_stored_bytes"] = m["pages_stored_bytes"].get<std::uint64_t>() - 1;
  rewrite_manifest(dir, m);
  auto r = ImageReader::open(dir);
  EXPECT_THAT(error_of([&] { r->verify_chunks(); }), HasSubstr("chunk 0 at offset 0"));
  std::byte b;
  EXPECT_THAT(error_of([&] { r->pages()->read(std::span(&b, 1)); }), HasSubstr("chunk 0 "));
}

TEST_F(BadManifest, RawChunkStoredSizeMismatchRefused) {
  json m = read_manifest(dir_);
  ASSERT_EQ(m["chunks"][0]["zstd"], false);
  m["chunks"][0]["stored"] = m["chunks"][0]["stored"].get<std::uint64_t>() - 1;
  m["chunks"][1]["offset"] = m["chunks"][1]["offset"].get<std::uint64_t>() - 1;
  m["chunks"][1]["stored"] = m["chunks"][1]["stored"].get<std::uint64_t>() + 1;
  rewrite_manifest(dir_, m);
  EXPECT_THAT(
      error_of([&] { ImageReader::open(dir_); }),
      AllOf(HasSubstr("chunk 0: "), HasSubstr("\"zstd\": false"),
            HasSubstr(fmt::format("stored size {} is not raw size {}", kChunk - 1, kChunk))));
}

// O_DIRECT writes (or the buffered fallback where the file system refuses them): raw
// and zstd chunks of odd sizes, from append_pages() and zero-copy appends, read back
// intact from an image laid out like a buffered one.
TEST(ImageTest, DirectIoWritesTheSameImage) {
  TempDir tmp;
  auto data = random_bytes(kChunk + 4097, 21);
  for (auto part :
       {repetitive_bytes(kChunk + 3), random_bytes(2 * kChunk - 5, 22), repetitive_bytes(777)})
    data.insert(data.end(), part.begin(), part.end());
  for (bool direct : {true, false}) {
    fs::path dir = tmp.path() / (direct ? "direct" : "buffered");
    auto w = ImageWriter::create(dir, 1, direct);
    std::span<const std::byte> rest(data);
    for (bool zero_copy = false; !rest.empty(); zero_copy = !zero_copy) {
      std::size_t n = std::min<std::size_t>(rest.size(), 1000003);
      if (zero_copy) {
        auto space = w->append_space();
        n = std::min(n, space.size());
        std::memcpy(space.data(), rest.data(), n);
        w->append_done(n);
      } else {
        w->append_pages(rest.first(n));
      }
      rest = rest.subspan(n);
    }
    w->commit(json::object());
    expect_reads_back(dir, data);
  }
  // Same chunk table, same file size.
  json a = read_manifest(tmp.path() / "direct"), b = read_manifest(tmp.path() / "buffered");
  EXPECT_EQ(a["chunks"], b["chunks"]);
  EXPECT_EQ(size_of(tmp.path() / "direct" / "pages.img"),
            size_of(tmp.path() / "buffered" / "pages.img"));
}

TEST_F(BadManifest, ChunkOffsetsMustBeAligned) {
  // Chunk 1 one block later than the first aligned offset after chunk 0, then one byte
  // earlier: both refused, naming the offsets.
  for (std::int64_t shift : {std::int64_t{kChunkAlignBytes}, std::int64_t{-1}}) {
    json m = read_manifest(dir_);
    m["chunks"][1]["offset"] = m["chunks"][1]["offset"].get<std::int64_t>() + shift;
    rewrite_manifest(dir_, m);
    EXPECT_THAT(error_of([&] { ImageReader::open(dir_); }),
                AllOf(HasSubstr("chunk 1: offset "),
                      HasSubstr(fmt::format("is not the first multiple of {} after the end of "
                                            "the previous chunks ({})",
                                            kChunkAlignBytes, kChunk))));
  }
}

TEST_F(BadManifest, ZstdKeyMustBeBoolean) {
  json m = read_manifest(dir_);
  m["chunks"][1]["zstd"] = "no";
  rewrite_manifest(dir_, m);
  EXPECT_THAT(error_of([&] { ImageReader::open(dir_); }),
              AllOf(HasSubstr("chunk 1: "), HasSubstr("\"zstd\" must be true or false")));
}

// ---------------------------------------------------------------------------
// Writer: directories, modes, failure cleanup

TEST(ImageWriterTest, ExistingDirRefused) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  fs::create_directory(dir);
  write_text(dir / "keep", "x");
  EXPECT_THAT(error_of([&] { ImageWriter::create(dir, 1); }),
              AllOf(HasSubstr(dir.string()), HasSubstr("already exists")));
  EXPECT_EQ(read_text(dir / "keep"), "x");
  EXPECT_FALSE(fs::exists(tmp.path() / "img.tmp"));
  // Also with a trailing slash and for an existing image.
  EXPECT_THAT(error_of([&] { ImageWriter::create(dir.string() + "/", 1); }),
              HasSubstr("already exists"));
}

TEST(ImageWriterTest, DirCreatedWhileWritingNotReplaced) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto w = ImageWriter::create(dir, 1);
  w->append_pages(random_bytes(100, 1));
  fs::create_directory(dir);  // someone else won the race (an empty dir)
  EXPECT_THAT(error_of([&] { w->commit(json::object()); }), HasSubstr(dir.string()));
  EXPECT_TRUE(fs::is_empty(dir));
  w.reset();
  EXPECT_FALSE(fs::exists(tmp.path() / "img.tmp"));
}

TEST(ImageWriterTest, StaleTmpRemoved) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  fs::create_directories(tmp.path() / "img.tmp" / "sub");
  write_text(tmp.path() / "img.tmp" / "pages.img", "stale");
  write_text(tmp.path() / "img.tmp" / "sub" / "x", "stale");
  auto data = random_bytes(1000, 2);
  write_image(dir, data);
  EXPECT_FALSE(fs::exists(tmp.path() / "img.tmp"));
  EXPECT_FALSE(fs::exists(dir / "sub"));
  auto r = ImageReader::open(dir);
  r->verify_chunks();
  EXPECT_EQ(read_all(*r, data.size()), data);
}

TEST(ImageWriterTest, DestroyedWithoutCommitLeavesNothing) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  {
    auto w = ImageWriter::create(dir, 3);
    EXPECT_TRUE(fs::is_directory(tmp.path() / "img.tmp"));
    EXPECT_FALSE(fs::exists(dir));
    // Several full chunks so that the worker is likely busy when the writer dies.
    w->append_pages(random_bytes(3 * kChunk + 5, 3));
  }
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_FALSE(fs::exists(tmp.path() / "img.tmp"));
  EXPECT_TRUE(fs::is_empty(tmp.path()));
}

TEST(ImageWriterTest, DestroyedRightAfterCreateLeavesNothing) {
  TempDir tmp;
  ImageWriter::create(tmp.path() / "img", 1).reset();
  EXPECT_TRUE(fs::is_empty(tmp.path()));
}

TEST(ImageWriterTest, MissingParentGivesErrorNamingPath) {
  TempDir tmp;
  fs::path dir = tmp.path() / "no" / "such" / "img";
  EXPECT_THAT(error_of([&] { ImageWriter::create(dir, 1); }),
              AllOf(HasSubstr(dir.string()), HasSubstr("No such file or directory")));
  EXPECT_TRUE(fs::is_empty(tmp.path()));
}

TEST(ImageWriterTest, FileAsParentGivesErrorNamingPath) {
  TempDir tmp;
  write_text(tmp.path() / "file", "x");
  fs::path dir = tmp.path() / "file" / "img";
  Error err("none");
  try {
    ImageWriter::create(dir, 1);
    FAIL() << "no error";
  } catch (const Error& e) {
    err = e;
  }
  EXPECT_THAT(err.what(), AllOf(HasSubstr(dir.string()), HasSubstr("Not a directory")));
  EXPECT_EQ(err.err(), ENOTDIR);
}

TEST(ImageWriterTest, ModesAreExact) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  mode_t old = ::umask(0);  // modes must not depend on a permissive umask
  std::unique_ptr<ImageWriter> w;
  try {
    w = ImageWriter::create(dir, 1);
  } catch (...) {
    ::umask(old);
    throw;
  }
  ::umask(old);
  EXPECT_EQ(mode_of(tmp.path() / "img.tmp"), 0700u);
  EXPECT_EQ(mode_of(tmp.path() / "img.tmp" / "pages.img"), 0600u);
  w->append_pages(random_bytes(kChunk + 3, 1));
  old = ::umask(0);
  w->commit(json::object());
  ::umask(old);
  EXPECT_EQ(mode_of(dir), 0700u);
  for (const char* f : {"pages.img", "manifest.json", "manifest.xxh3"})
    EXPECT_EQ(mode_of(dir / f), 0600u) << f;
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"manifest.json", "manifest.xxh3", "pages.img"}));
}

TEST(ImageWriterTest, UseAfterCommitRefused) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto w = ImageWriter::create(dir, 1);
  w->append_pages(random_bytes(10, 1));
  w->commit(json::object());
  EXPECT_THAT(error_of([&] { w->append_pages(random_bytes(10, 1)); }),
              HasSubstr("already committed"));
  EXPECT_THAT(error_of([&] { w->commit(json::object()); }), HasSubstr("already committed"));
  w.reset();  // the destructor of a committed writer must not remove the image
  EXPECT_NO_THROW(ImageReader::open(dir)->verify_chunks());
}

TEST(ImageWriterTest, NonObjectManifestRefused) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto w = ImageWriter::create(dir, 1);
  EXPECT_THAT(error_of([&] { w->commit(json::array()); }), HasSubstr("JSON object"));
  EXPECT_FALSE(fs::exists(dir));
  w->commit(json::object());  // the writer is still usable
  EXPECT_TRUE(fs::exists(dir / "manifest.json"));
}

TEST(ImageWriterTest, ReservedKeysOverwritten) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  write_image(dir, random_bytes(10, 1), 1, 10,
              json{{"format_version", 99}, {"chunks", "bogus"}, {"pages_logical_bytes", 1}});
  auto r = ImageReader::open(dir);
  EXPECT_EQ(r->manifest()["format_version"], kImageFormatVersion);
  EXPECT_EQ(r->manifest()["pages_logical_bytes"], 10);
}

// A write failure in the worker (here EFBIG from RLIMIT_FSIZE, which behaves like
// ENOSPC for the writer) reaches the caller, and nothing is left behind.
TEST(ImageWriterTest, WriteFailurePropagated) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto w = ImageWriter::create(dir, 1);
  auto data = random_bytes(kChunk, 8);

  struct rlimit old_lim;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_lim), 0);
  auto old_sig = ::signal(SIGXFSZ, SIG_IGN);
  struct rlimit lim = old_lim;
  lim.rlim_cur = kChunk + kChunk / 2;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &lim), 0);

  std::string e;
  try {
    for (int i = 0; i < 4; ++i) w->append_pages(data);
    w->commit(json::object());
  } catch (const Error& ex) {
    e = ex.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &old_lim);
  ::signal(SIGXFSZ, old_sig);

  EXPECT_THAT(
      e,
      AllOf(HasSubstr((tmp.path() / "img.tmp" / "pages.img").string()), HasSubstr("chunk 1 "),
            HasSubstr(fmt::format("offset {}", w->stored_bytes())), HasSubstr("File too large")));
  // The writer stays failed.
  EXPECT_THAT(error_of([&] { w->commit(json::object()); }), HasSubstr("File too large"));
  EXPECT_FALSE(fs::exists(dir));
  w.reset();
  EXPECT_TRUE(fs::is_empty(tmp.path()));
}

// ---------------------------------------------------------------------------
// copy_to_process(): the stream written into a process's memory (here our own, which
// process_vm_writev(2) accepts), through the verified direct path and the checked one.

namespace copy_to_process_test {

// Random, text and random chunks, then a partial text chunk: raw and zstd chunks mixed.
std::vector<std::byte> mixed_stream() {
  auto data = random_bytes(kChunk, 11);
  for (auto part :
       {repetitive_bytes(kChunk), random_bytes(kChunk, 12), repetitive_bytes(kChunk / 3)})
    data.insert(data.end(), part.begin(), part.end());
  return data;
}

// Remote ranges of odd sizes with gaps between them, covering `total` bytes of `dst`.
std::vector<iovec> scattered(std::vector<std::byte>& dst, std::size_t total) {
  std::vector<iovec> out;
  std::size_t at = 0, used = 0, k = 0;
  const std::size_t sizes[] = {4096, 3 * 4096, kChunk + 4096, 1, 999983, 2 * kChunk};
  while (used < total) {
    std::size_t n = std::min(sizes[k++ % std::size(sizes)], total - used);
    out.push_back({dst.data() + at, n});
    used += n;
    at += n + 4096;  // a gap that must stay untouched
  }
  return out;
}

// Writes `data` as an image at dir, opens and verifies it.
std::unique_ptr<ImageReader> verified_image(const fs::path& dir,
                                            const std::vector<std::byte>& data) {
  write_image(dir, data);
  auto r = ImageReader::open(dir);
  r->verify_chunks();
  return r;
}

void check_copy(const ImageReader& r, const std::vector<std::byte>& data) {
  std::vector<std::byte> dst(data.size() + 64 * 4096, std::byte{0x5a});
  auto ranges = scattered(dst, data.size());
  copy_to_process(*r.pages(), ::getpid(), ranges);
  std::size_t pos = 0;
  for (const iovec& io : ranges) {
    ASSERT_EQ(std::memcmp(io.iov_base, data.data() + pos, io.iov_len), 0)
        << "at stream offset " << pos;
    pos += io.iov_len;
    auto* gap = static_cast<std::byte*>(io.iov_base) + io.iov_len;
    if (gap < dst.data() + dst.size()) {
      ASSERT_EQ(*gap, std::byte{0x5a});
    }
  }
}

TEST(ImageCopyToProcess, VerifiedAndUnverifiedImagesCopyTheSameBytes) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto data = mixed_stream();
  write_image(dir, data);
  auto r = ImageReader::open(dir);
  check_copy(*r, data);  // checked path: every chunk hashed on the way
  r->verify_chunks();
  check_copy(*r, data);  // direct path for the raw chunks
}

TEST(ImageCopyToProcess, MixesWithNextAndRead) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto data = mixed_stream();
  auto r = verified_image(dir, data);
  auto pr = r->pages();
  std::vector<std::byte> got(data.size());
  // Part of raw chunk 0 to the process, its rest through next() (copied out of the
  // mapped file), then chunks 1 and 2 and part of 3 to the process, the rest by read().
  iovec a{got.data(), 5000};
  copy_to_process(*pr, ::getpid(), std::span(&a, 1));
  auto v = pr->next(kAll);
  ASSERT_EQ(v.size(), kChunk - 5000);
  std::memcpy(got.data() + 5000, v.data(), v.size());
  iovec b{got.data() + kChunk, 2 * kChunk + 77};
  copy_to_process(*pr, ::getpid(), std::span(&b, 1));
  pr->read(std::span(got).subspan(3 * kChunk + 77));
  EXPECT_TRUE(got == data);
  EXPECT_THAT(error_of([&] {
                iovec c{got.data(), 1};
                copy_to_process(*pr, ::getpid(), std::span(&c, 1));
              }),
              HasSubstr("past the end"));
}

// 12 chunks, shared between the caller's thread and the reader's worker. Raw and zstd
// chunks alternate, so the two threads' writes interleave.
std::vector<std::byte> large_stream() {
  std::vector<std::byte> data;
  for (int i = 0; i < 12; ++i) {
    auto part = i % 4 == 3 ? repetitive_bytes(kChunk - 4096 * i) : random_bytes(kChunk, 30 + i);
    data.insert(data.end(), part.begin(), part.end());
  }
  return data;
}

TEST(ImageCopyToProcess, LargeCopySharedWithTheWorker) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto data = large_stream();
  ASSERT_GT(data.size(), 32u << 20);
  auto r = verified_image(dir, data);
  check_copy(*r, data);
}

// A delivery from the middle of the stream -- a reader made there (pages_at) or moved
// there (skip_to), nothing decoded yet, the first chunk entered part-way and shared
// with the worker like the others -- lands the stream's bytes from that offset, then
// the reader goes on from where the delivery ended; from a verified image and not.
TEST(ImageCopyToProcess, DeliveryFromTheMiddleOfTheStream) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto data = large_stream();
  write_image(dir, data);
  auto r = ImageReader::open(dir);
  // In raw chunk 0, on a chunk boundary, in zstd chunk 3, on its last byte.
  const std::size_t starts[] = {4096, 2 * kChunk, 3 * kChunk + 12345, 4 * kChunk - 4096 * 3 - 1};
  auto pool = std::make_shared<ChunkBufferPool>();
  for (bool verified : {false, true}) {
    if (verified) r->verify_chunks();
    for (bool at : {true, false}) {
      for (std::size_t off : starts) {
        SCOPED_TRACE(fmt::format("verified {} pages_at {} offset {}", verified, at, off));
        // Made one after another, the readers pass their buffers on through the pool.
        std::unique_ptr<PageReader> pr = at ? r->pages_at(off, pool) : r->pages();
        if (!at) {
          std::byte b[7];
          pr->read(std::span(b));  // chunk 0 decoded, then passed over (or not)
          pr->skip_to(off);
        }
        ASSERT_EQ(pr->position(), off);
        const std::size_t len = 5 * kChunk + 777;
        std::vector<std::byte> got(len, std::byte{0x5a});
        iovec io{got.data(), len};
        copy_to_process(*pr, ::getpid(), std::span(&io, 1));
        ASSERT_TRUE(
            std::equal(got.begin(), got.end(), data.begin() + static_cast<std::ptrdiff_t>(off)));
        std::byte next[100];
        pr->read(std::span(next));
        EXPECT_TRUE(
            std::equal(next, next + 100, data.begin() + static_cast<std::ptrdiff_t>(off + len)));
        const std::size_t later = std::min(off + len + 100 + 2 * kChunk, data.size() - 50);
        pr->skip_to(later);
        auto v = pr->next(50);
        ASSERT_EQ(v.size(), 50u);
        EXPECT_TRUE(
            std::equal(v.begin(), v.end(), data.begin() + static_cast<std::ptrdiff_t>(later)));
      }
    }
  }
  EXPECT_THAT(error_of([&] { r->pages_at(data.size() + 1, pool); }), HasSubstr("stream offset"));
  EXPECT_EQ(r->pages_at(data.size(), pool)->position(), data.size());
}

TEST(ImageCopyToProcess, VerifiedImageOutOfThePageCache) {
  // zstd chunks of a verified image are decompressed in place only where resident;
  // the others are read (and checked) again.
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto data = large_stream();
  auto r = verified_image(dir, data);
  evict(dir / "pages.img");
  check_copy(*r, data);
}

TEST(ImageCopyToProcess, OneCpuCopiesTheSameBytes) {
  // With one usable CPU every chunk is written from the caller's thread.
  cpu_set_t old;
  ASSERT_EQ(::sched_getaffinity(0, sizeof old, &old), 0);
  int cpu = 0;
  while (!CPU_ISSET(cpu, &old)) ++cpu;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  ASSERT_EQ(::sched_setaffinity(0, sizeof one, &one), 0);
  struct RestoreAffinity {  // also when an assertion below ends the test early
    const cpu_set_t& set;
    ~RestoreAffinity() { EXPECT_EQ(::sched_setaffinity(0, sizeof set, &set), 0); }
  } restore_affinity{old};
  TempDir tmp;
  auto data = large_stream();
  check_copy(*verified_image(tmp.path() / "img", data), data);
}

TEST(ImageCopyToProcess, FirstBadChunkIsReportedWhenShared) {
  // Two bad chunks, a zstd one before a raw one, in an image that was not verified:
  // whichever thread meets which, the first is reported, every chunk before it is in
  // the process, and the reader stays failed.
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto data = large_stream();
  write_image(dir, data);
  json chunks = read_manifest(dir)["chunks"];
  ASSERT_TRUE(chunks[3].value("zstd", true));
  ASSERT_FALSE(chunks[8].value("zstd", true));
  auto offset = [&](int i) { return chunks[i]["offset"].get<std::uint64_t>(); };
  flip_bit(dir / "pages.img", offset(8) + 100);
  flip_bit(dir / "pages.img", offset(3) + 100);
  auto r = ImageReader::open(dir);
  auto pr = r->pages();
  std::vector<std::byte> dst(data.size());
  iovec io{dst.data(), dst.size()};
  std::string e = error_of([&] { copy_to_process(*pr, ::getpid(), std::span(&io, 1)); });
  EXPECT_THAT(
      e, AllOf(HasSubstr("pages.img: chunk 3 "), HasSubstr(fmt::format("offset {}", offset(3))),
               HasSubstr("checksum mismatch")));
  EXPECT_TRUE(same(std::span(dst).first(3 * kChunk), std::span(data).first(3 * kChunk)));
  iovec one{dst.data(), 1};
  EXPECT_EQ(error_of([&] { copy_to_process(*pr, ::getpid(), std::span(&one, 1)); }), e);
}

TEST(ImageCopyToProcess, FirstUnwritableChunkIsReportedWhenShared) {
  // An unwritable page in the middle of every chunk-sized stretch of the target:
  // whichever thread fails first, the copy reports the first stretch.
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto data = large_stream();
  auto r = verified_image(dir, data);
  std::size_t len = data.size() + kChunk;
  void* m = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(m, MAP_FAILED);
  auto* base = static_cast<std::byte*>(m);
  for (std::size_t o = kChunk / 2; o < len; o += kChunk)
    ASSERT_EQ(::mprotect(base + o, 4096, PROT_NONE), 0);
  iovec io{base, data.size()};
  EXPECT_THAT(
      error_of([&] { copy_to_process(*r->pages(), ::getpid(), std::span(&io, 1)); }),
      AllOf(HasSubstr("pages.img: only 2097152 of 4194304 bytes of the page stream at offset 0 "),
            HasSubstr(fmt::format("reached process {} at {:#x}", ::getpid(),
                                  reinterpret_cast<std::uint64_t>(base)))));
  ::munmap(m, len);
}

TEST(ImageCopyToProcess, UnwritableTargetNamesAddressAndErrno) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto data = mixed_stream();
  auto r = verified_image(dir, data);
  // A PROT_NONE page stays reserved while the copy runs. An address we unmapped could
  // be mapped again by another thread (the reader's worker, ASan's allocator) before the
  // copy, which would then write the image over that thread's memory.
  void* hole = ::mmap(nullptr, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(hole, MAP_FAILED);
  iovec io{hole, 4096};
  EXPECT_THAT(error_of([&] { copy_to_process(*r->pages(), ::getpid(), std::span(&io, 1)); }),
              AllOf(HasSubstr("pages.img"),
                    HasSubstr(fmt::format("{:#x}", reinterpret_cast<std::uint64_t>(hole))),
                    HasSubstr("Bad address")));
  ::munmap(hole, 4096);
}

TEST(ImageCopyToProcess, FileTruncatedAfterVerifyIsAnErrorNotACrash) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  auto data = mixed_stream();
  auto r = verified_image(dir, data);
  auto pr = r->pages();
  // Chunk 0 is raw: cut pages.img in its middle after the reader mapped it.
  ASSERT_EQ(::truncate((dir / "pages.img").c_str(), kChunk / 2), 0);
  std::vector<std::byte> dst(kChunk);
  iovec io{dst.data(), kChunk};
  EXPECT_THAT(error_of([&] { copy_to_process(*pr, ::getpid(), std::span(&io, 1)); }),
              AllOf(HasSubstr("pages.img: only 2097152 of 4194304 bytes"),
                    HasSubstr("shortened since it was verified")));
}

}  // namespace copy_to_process_test

// ---- the manifest HMAC and what a reader accepts as an image file ---------------------

std::vector<std::byte> key_of(char c) { return std::vector<std::byte>(32, std::byte(c)); }

void write_signed(const fs::path& dir, const std::vector<std::byte>& key) {
  auto w = ImageWriter::create(dir, 1);
  std::vector<std::byte> data(3 * 4096, std::byte{7});
  w->append_pages(data);
  w->sign_with(key);
  w->commit(json{{"note", "signed"}});
}

TEST(ImageHmac, SignedImageOpensWithItsKeyOnly) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  write_signed(dir, key_of('a'));
  EXPECT_EQ(read_text(dir / "manifest.hmac").size(), 65u);
  EXPECT_EQ(ImageReader::open(dir, key_of('a'))->manifest()["note"], "signed");
  EXPECT_THAT(error_of([&] { ImageReader::open(dir, key_of('b')); }),
              AllOf(HasSubstr("manifest.json"), HasSubstr("HMAC mismatch")));
}

TEST(ImageHmac, ManifestEditedWithMatchingChecksumIsRefused) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  write_signed(dir, key_of('a'));
  json m = read_manifest(dir);
  m["chunks"][0]["xxh3"] = "0000000000000000";
  rewrite_manifest(dir, m);  // a consistent manifest.xxh3, as a tamperer would write
  EXPECT_THAT(error_of([&] { ImageReader::open(dir, key_of('a')); }), HasSubstr("HMAC mismatch"));
}

TEST(ImageHmac, UnsignedImageIsRefusedWhenAKeyIsGiven) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  write_image(dir, std::vector<std::byte>(4096, std::byte{1}));
  EXPECT_THAT(error_of([&] { ImageReader::open(dir, key_of('a')); }),
              AllOf(HasSubstr("manifest.hmac"), HasSubstr("not signed")));
}

TEST(ImageFiles, ManifestThatIsALinkOrAFifoIsRefused) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  write_signed(dir, key_of('a'));
  fs::path mp = dir / "manifest.json";
  fs::remove(mp);
  fs::create_symlink("/dev/zero", mp);
  EXPECT_THAT(error_of([&] { ImageReader::open(dir); }), HasSubstr("symbolic link"));
  fs::remove(mp);
  ASSERT_EQ(::mkfifo(mp.c_str(), 0600), 0);
  // Would block forever in open(2) or read(2) without O_NONBLOCK and the type check.
  EXPECT_THAT(error_of([&] { ImageReader::open(dir); }), HasSubstr("not a regular file"));
}

TEST(ImageFiles, PagesThatAreALinkAreRefused) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  write_signed(dir, key_of('a'));
  fs::path pages = dir / "pages.img";
  fs::rename(pages, tmp.path() / "elsewhere.img");
  fs::create_symlink(tmp.path() / "elsewhere.img", pages);
  auto r = ImageReader::open(dir, key_of('a'));
  EXPECT_THAT(error_of([&] { r->verify_chunks(); }), HasSubstr("symbolic link"));
}

}  // namespace
}  // namespace fsched::ckpt
