// gendata: writes deterministic, semi-compressible input data for the end-to-end tests.
//
//   gendata BYTES SEED OUTFILE
//
// Output: exactly BYTES bytes of text lines, each "<word> <word> ... <number>\n" with
// words drawn from a vocabulary of 4096 pseudo-words. Line order is random, so the file
// is good input for sort; xz compresses it to roughly a third. Same arguments, same bytes.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

struct Rng {
  std::uint64_t s;
  std::uint64_t next() {
    s += 0x9E3779B97F4A7C15ull;
    std::uint64_t z = s;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: gendata BYTES SEED OUTFILE\n");
    return 2;
  }
  const std::uint64_t total = std::strtoull(argv[1], nullptr, 10);
  Rng rng{std::strtoull(argv[2], nullptr, 10)};
  std::FILE* f = std::fopen(argv[3], "wb");
  if (!f) {
    std::perror(argv[3]);
    return 1;
  }
  static const char kLetters[] = "etaoinshrdlucmfwypvbgkjqxz";
  std::vector<std::string> vocab(4096);
  for (auto& w : vocab) {
    int len = 2 + static_cast<int>(rng.next() % 9);
    for (int i = 0; i < len; ++i) {
      // Skewed towards frequent letters, like natural text.
      std::uint64_t r = rng.next();
      w += kLetters[(r % 26) * ((r >> 8) % 26) / 26];
    }
  }
  std::string buf;
  std::uint64_t written = 0;
  while (written < total) {
    buf.clear();
    while (buf.size() < (1u << 20)) {
      std::uint64_t r = rng.next();
      int words = 3 + static_cast<int>(r % 10);
      for (int i = 0; i < words; ++i) {
        // Zipf-like: small indices much more likely.
        std::uint64_t x = rng.next();
        std::size_t idx = static_cast<std::size_t>((x & 0xfff) * ((x >> 12) & 0xfff) >> 12);
        buf += vocab[idx];
        buf += ' ';
      }
      buf += std::to_string(rng.next() % 1000000);
      buf += '\n';
    }
    std::size_t n = buf.size();
    if (written + n > total) n = static_cast<std::size_t>(total - written);
    if (n > 0 && total - written - n == 0 && buf[n - 1] != '\n') buf[n - 1] = '\n';
    if (std::fwrite(buf.data(), 1, n, f) != n) {
      std::perror(argv[3]);
      return 1;
    }
    written += n;
  }
  if (std::fclose(f) != 0) {
    std::perror(argv[3]);
    return 1;
  }
  return 0;
}
