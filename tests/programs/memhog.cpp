// memhog: holds a given amount of memory with a known pattern, for checkpoint
// benchmarks and tests.
//
//   memhog MIB random|text [--go-file PATH] [--seconds S] [--step-ms MS]
//
// Allocates MIB MiB of anonymous memory and fills it with a deterministic pattern:
//   random  xorshift64* output (incompressible)
//   text    4 KiB pages of English-like lines, each page numbered (compresses well)
// prints "ready" and then sleeps in steps of --step-ms (default 50) until PATH exists
// (--go-file) or S seconds' worth of steps have passed (--seconds; counted in steps,
// not wall-clock time, so a frozen period does not count). Then it recomputes the
// pattern, compares, and prints "ok <checksum>" (exit 0) or "mismatch at offset N"
// (exit 1). Without --go-file and --seconds it waits forever. Output depends only on
// the arguments.
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

namespace {

constexpr std::size_t kMiB = 1u << 20;

void say(const std::string& s) {
  std::string line = s + "\n";
  const char* p = line.data();
  std::size_t left = line.size();
  while (left > 0) {
    ssize_t n = ::write(STDOUT_FILENO, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      std::exit(98);
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: memhog MIB random|text [--go-file PATH] [--seconds S] [--step-ms MS]\n");
  std::exit(2);
}

// Produces the pattern in order, one block at a time, so that fill and verify share
// the exact same code.
class Pattern {
 public:
  explicit Pattern(bool random) : random_(random) {}

  // Writes the next `len` bytes of the pattern (len is a multiple of 4096).
  void next(unsigned char* out, std::size_t len) {
    if (random_) {
      for (std::size_t i = 0; i < len; i += 8) {
        state_ ^= state_ >> 12;
        state_ ^= state_ << 25;
        state_ ^= state_ >> 27;
        std::uint64_t v = state_ * 0x2545F4914F6CDD1Dull;
        std::memcpy(out + i, &v, 8);
      }
      return;
    }
    // Text: every 4 KiB page is a slice of a 64 KiB block of generated lines, with
    // the page's number stamped at its start, so that no two pages are equal.
    if (text_.empty()) make_text();
    for (std::size_t i = 0; i < len; i += kPage) {
      std::memcpy(out + i, text_.data() + (page_ * kPage) % text_.size(), kPage);
      char stamp[24];
      std::snprintf(stamp, sizeof stamp, "page %016llx", static_cast<unsigned long long>(page_));
      std::memcpy(out + i, stamp, 21);
      ++page_;
    }
  }

 private:
  static constexpr std::size_t kPage = 4096;

  void make_text() {
    static const char* const kWords[] = {"checkpoint", "restore", "memory", "page",   "thread",
                                         "the",        "of",      "and",    "frozen", "image",
                                         "batch",      "job",     "node",   "queue",  "a"};
    std::uint64_t x = 0x9E3779B97F4A7C15ull;
    for (std::uint64_t line = 0; text_.size() < 16 * kPage; ++line) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%06llu:", static_cast<unsigned long long>(line));
      text_ += buf;
      for (int i = 0; i < 10; ++i) {
        x ^= x >> 29;
        x *= 0xBF58476D1CE4E5B9ull;
        text_ += ' ';
        text_ += kWords[(x >> 40) % (sizeof kWords / sizeof kWords[0])];
      }
      text_ += '\n';
    }
    text_.resize(16 * kPage);
  }

  bool random_;
  std::uint64_t state_ = 0x853C49E6748FEA9Bull;
  std::string text_;
  std::uint64_t page_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) usage();
  const long mib = std::atol(argv[1]);
  const std::string mode = argv[2];
  if (mib <= 0 || (mode != "random" && mode != "text")) usage();
  std::string go_file;
  long seconds = -1;
  long step_ms = 50;
  for (int i = 3; i < argc; ++i) {
    std::string a = argv[i];
    if (i + 1 >= argc) usage();
    if (a == "--go-file")
      go_file = argv[++i];
    else if (a == "--seconds")
      seconds = std::atol(argv[++i]);
    else if (a == "--step-ms")
      step_ms = std::atol(argv[++i]);
    else
      usage();
  }
  if (step_ms <= 0) usage();

  const std::size_t bytes = static_cast<std::size_t>(mib) * kMiB;
  void* mem = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) {
    std::fprintf(stderr, "memhog: mmap %zu bytes: %s\n", bytes, std::strerror(errno));
    return 3;
  }
  auto* data = static_cast<unsigned char*>(mem);
  {
    Pattern p(mode == "random");
    p.next(data, bytes);
  }
  say("ready " + std::to_string(mib) + " MiB " + mode);

  long steps = 0;
  for (;;) {
    if (!go_file.empty()) {
      struct stat st;
      if (::stat(go_file.c_str(), &st) == 0) break;
    }
    if (seconds >= 0 && steps * step_ms >= seconds * 1000) break;
    struct timespec ts = {step_ms / 1000, (step_ms % 1000) * 1000000};
    while (::nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    ++steps;
  }

  Pattern p(mode == "random");
  std::vector<unsigned char> block(kMiB);
  std::uint64_t sum = 0xCBF29CE484222325ull;
  for (std::size_t off = 0; off < bytes; off += kMiB) {
    p.next(block.data(), kMiB);
    if (std::memcmp(block.data(), data + off, kMiB) != 0) {
      std::size_t i = 0;
      while (block[i] == data[off + i]) ++i;
      say("mismatch at offset " + std::to_string(off + i));
      return 1;
    }
    for (std::size_t i = 0; i < kMiB; i += 8) {
      std::uint64_t v;
      std::memcpy(&v, data + off + i, 8);
      sum = (sum ^ v) * 0x100000001B3ull;
    }
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, "ok %016llx", static_cast<unsigned long long>(sum));
  say(buf);
  return 0;
}
