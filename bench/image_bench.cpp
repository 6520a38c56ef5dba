// Throughput of the checkpoint image format (src/ckpt/image.h) with Google Benchmark.
//
// For 256 MiB (FSCHED_IMAGE_BENCH_MIB to change) of random (incompressible) and of
// text (compressible, like tests/programs/memhog's "text" pages) data:
//   Write           ImageWriter: append in 4 MiB pieces + commit (fsyncs included)
//   Verify          ImageReader::verify_chunks() (page cache warm)
//   ReadCopy        PageReader::read() into a 4 MiB buffer
//   ReadNext        PageReader::next() views, not copied
//   RestoreToProcess  what restore does with the page stream: verify_chunks(), then
//                   next() views written with process_vm_writev(2) into a fresh
//                   mapping of a child process (its page faults included)
// bytes_per_second is logical (uncompressed) bytes. Images live in a directory
// /tmp/fsched_image_bench.XXXXXX removed at exit. The machine should be otherwise
// idle; report medians:
//   image_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "ckpt/image.h"

namespace {

namespace fs = std::filesystem;
using fsched::ckpt::ImageReader;
using fsched::ckpt::ImageWriter;
using fsched::ckpt::PageReader;

constexpr std::size_t kPiece = 4u << 20;  // append/read size, as the dumper and restorer use
constexpr std::size_t kPage = 4096;

std::size_t image_bytes() {
  static const std::size_t n = [] {
    const char* e = std::getenv("FSCHED_IMAGE_BENCH_MIB");
    long mib = e ? std::atol(e) : 256;
    return static_cast<std::size_t>(std::max(1L, mib)) << 20;
  }();
  return n;
}

enum Kind : int { kRandom = 0, kText = 1 };
const char* kind_name(int kind) { return kind == kRandom ? "random" : "text"; }

// Random: xorshift64* words. Text: 4 KiB pages cut from a 64 KiB block of English-like
// lines, each stamped with its page number (as memhog's "text" mode).
std::vector<std::byte> make_data(int kind, std::size_t n) {
  std::vector<std::byte> v(n);
  if (kind == kRandom) {
    std::uint64_t s = 0x853C49E6748FEA9Bull;
    for (std::size_t i = 0; i + 8 <= n; i += 8) {
      s ^= s >> 12;
      s ^= s << 25;
      s ^= s >> 27;
      std::uint64_t x = s * 0x2545F4914F6CDD1Dull;
      std::memcpy(v.data() + i, &x, 8);
    }
    return v;
  }
  static const char* const kWords[] = {"checkpoint", "restore", "memory", "page",   "thread",
                                       "the",        "of",      "and",    "frozen", "image",
                                       "batch",      "job",     "node",   "queue",  "a"};
  std::string text;
  std::uint64_t x = 0x9E3779B97F4A7C15ull;
  for (std::uint64_t line = 0; text.size() < 16 * kPage; ++line) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%06llu:", static_cast<unsigned long long>(line));
    text += buf;
    for (int i = 0; i < 10; ++i) {
      x ^= x >> 29;
      x *= 0xBF58476D1CE4E5B9ull;
      text += ' ';
      text += kWords[(x >> 40) % (sizeof kWords / sizeof kWords[0])];
    }
    text += '\n';
  }
  for (std::size_t i = 0, page = 0; i < n; i += kPage, ++page) {
    std::size_t len = std::min(kPage, n - i);
    std::memcpy(v.data() + i, text.data() + (page * kPage) % (16 * kPage), len);
    char stamp[24];
    std::snprintf(stamp, sizeof stamp, "page %016llx", static_cast<unsigned long long>(page));
    std::memcpy(v.data() + i, stamp, std::min<std::size_t>(21, len));
  }
  return v;
}

const fs::path& base_dir() {
  static const fs::path dir = [] {
    std::string tmpl = "/tmp/fsched_image_bench.XXXXXX";
    if (!::mkdtemp(tmpl.data())) {
      std::perror("mkdtemp");
      std::exit(1);
    }
    return fs::path(tmpl);
  }();
  return dir;
}

const std::vector<std::byte>& data_of(int kind) {
  static std::map<int, std::vector<std::byte>> cache;
  auto it = cache.find(kind);
  if (it == cache.end()) it = cache.emplace(kind, make_data(kind, image_bytes())).first;
  return it->second;
}

void write_image(const fs::path& dir, const std::vector<std::byte>& data) {
  auto w = ImageWriter::create(dir, 1);
  for (std::size_t off = 0; off < data.size(); off += kPiece)
    w->append_pages(std::span(data).subspan(off, std::min(kPiece, data.size() - off)));
  w->commit(nlohmann::json::object());
}

// The image of `kind` shared by the read benchmarks, written on first use.
const fs::path& image_of(int kind) {
  static std::map<int, fs::path> cache;
  auto it = cache.find(kind);
  if (it == cache.end()) {
    fs::path dir = base_dir() / (std::string("img-") + kind_name(kind));
    write_image(dir, data_of(kind));
    it = cache.emplace(kind, dir).first;
  }
  return it->second;
}

void set_counters(benchmark::State& state, int kind, const fs::path& img) {
  state.SetLabel(kind_name(kind));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * image_bytes()));
  state.counters["stored_pct"] =
      100.0 * static_cast<double>(fs::file_size(img / "pages.img")) / image_bytes();
}

void BM_Write(benchmark::State& state) {
  const int kind = static_cast<int>(state.range(0));
  const auto& data = data_of(kind);
  const fs::path dir = base_dir() / "write";
  fs::remove_all(dir);
  for (auto _ : state) {
    state.PauseTiming();
    fs::remove_all(dir);
    state.ResumeTiming();
    write_image(dir, data);
  }
  set_counters(state, kind, dir);
  fs::remove_all(dir);
}

void BM_Verify(benchmark::State& state) {
  const int kind = static_cast<int>(state.range(0));
  const fs::path& img = image_of(kind);
  auto r = ImageReader::open(img);
  for (auto _ : state) r->verify_chunks();
  set_counters(state, kind, img);
}

void BM_ReadCopy(benchmark::State& state) {
  const int kind = static_cast<int>(state.range(0));
  const fs::path& img = image_of(kind);
  auto r = ImageReader::open(img);
  std::vector<std::byte> buf(kPiece);
  for (auto _ : state) {
    auto pr = r->pages();
    for (std::size_t off = 0; off < image_bytes(); off += kPiece) {
      std::size_t n = std::min(kPiece, image_bytes() - off);
      pr->read(std::span(buf).first(n));
      benchmark::DoNotOptimize(buf.data());
      benchmark::ClobberMemory();
    }
  }
  set_counters(state, kind, img);
}

void BM_ReadNext(benchmark::State& state) {
  const int kind = static_cast<int>(state.range(0));
  const fs::path& img = image_of(kind);
  auto r = ImageReader::open(img);
  for (auto _ : state) {
    auto pr = r->pages();
    for (std::size_t off = 0; off < image_bytes();) {
      std::span<const std::byte> v = pr->next(std::numeric_limits<std::size_t>::max());
      benchmark::DoNotOptimize(v.data());
      off += v.size();
    }
  }
  set_counters(state, kind, img);
}

// A child process with an untouched anonymous mapping of image_bytes() at `addr`,
// killed on destruction.
class Target {
 public:
  Target() {
    addr_ = ::mmap(nullptr, image_bytes(), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (addr_ == MAP_FAILED) throw std::runtime_error("mmap failed");
    pid_ = ::fork();
    if (pid_ == 0) {
      for (;;) ::pause();
    }
    ::munmap(addr_, image_bytes());  // the child keeps its (copy of the) mapping
    if (pid_ < 0) throw std::runtime_error("fork failed");
  }
  ~Target() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  pid_t pid() const { return pid_; }
  char* addr() const { return static_cast<char*>(addr_); }

 private:
  void* addr_ = nullptr;
  pid_t pid_ = -1;
};

void BM_RestoreToProcess(benchmark::State& state) {
  const int kind = static_cast<int>(state.range(0));
  const fs::path& img = image_of(kind);
  auto r = ImageReader::open(img);
  for (auto _ : state) {
    state.PauseTiming();
    auto target = std::make_unique<Target>();
    state.ResumeTiming();
    r->verify_chunks();
    auto pr = r->pages();
    for (std::size_t off = 0; off < image_bytes();) {
      std::span<const std::byte> v = pr->next(std::numeric_limits<std::size_t>::max());
      iovec local{const_cast<std::byte*>(v.data()), v.size()};
      iovec remote{target->addr() + off, v.size()};
      if (::process_vm_writev(target->pid(), &local, 1, &remote, 1, 0) !=
          static_cast<ssize_t>(v.size())) {
        state.SkipWithError("process_vm_writev failed");
        break;
      }
      off += v.size();
    }
    state.PauseTiming();
    target.reset();
    state.ResumeTiming();
  }
  set_counters(state, kind, img);
}

#define IMAGE_BENCH(fn)                                                          \
  BENCHMARK(fn)->ArgName("data")->Arg(kRandom)->Arg(kText)->UseRealTime()->Unit( \
      benchmark::kMillisecond)

IMAGE_BENCH(BM_Write);
IMAGE_BENCH(BM_Verify);
IMAGE_BENCH(BM_ReadCopy);
IMAGE_BENCH(BM_ReadNext);
IMAGE_BENCH(BM_RestoreToProcess);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  int rc = 0;
  try {
    benchmark::RunSpecifiedBenchmarks();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "image_bench: %s\n", e.what());
    rc = 1;
  }
  benchmark::Shutdown();
  std::error_code ec;
  fs::remove_all(base_dir(), ec);
  return rc;
}
