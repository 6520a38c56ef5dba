// dirty_job: a job that holds memory and rewrites a share of it in rounds, for the
// incremental-checkpoint benchmark (bench/incremental_bench.py).
//
//   dirty_job MIB PERCENT ROUNDS GO_FILE [MIB_PER_S]
//
// Fills MIB MiB of anonymous memory with incompressible bytes, prints "ready", then
// waits for GO_FILE to exist before each round ("round N" printed after it; the driver
// removes and recreates the file to step it). A round rewrites PERCENT % of the pages
// (chosen by a generator seeded with the round, whole pages, each with bytes derived
// from the page and the round), at MIB_PER_S (0 or absent: as fast as it can), and
// prints "round N ms T" with its duration. After ROUNDS rounds it checks every page
// against the last round that wrote it and prints "ok" or "mismatch at page P".
// Output other than the durations depends only on the arguments.
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr std::size_t kPage = 4096;

std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  return x ^ (x >> 33);
}

void fill(unsigned char* page, std::uint64_t index, std::uint32_t round) {
  auto* w = reinterpret_cast<std::uint64_t*>(page);
  std::uint64_t s = mix(index * 1000003 + round);
  for (std::size_t i = 0; i < kPage / 8; ++i) w[i] = s = mix(s + i);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: dirty_job MIB PERCENT ROUNDS GO_FILE [MIB_PER_S]\n");
    return 2;
  }
  const std::size_t mib = std::strtoull(argv[1], nullptr, 10);
  const double percent = std::atof(argv[2]);
  const int rounds = std::atoi(argv[3]);
  const char* go = argv[4];
  const double rate = argc > 5 ? std::atof(argv[5]) : 0;
  const std::size_t pages = mib * 1024 * 1024 / kPage;
  auto* mem = static_cast<unsigned char*>(
      mmap(nullptr, pages * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (mem == MAP_FAILED) return 1;
  std::vector<std::uint32_t> version(pages, 0);
  for (std::size_t p = 0; p < pages; ++p) fill(mem + p * kPage, p, 0);
  std::printf("ready\n");
  std::fflush(stdout);
  const auto per_round = static_cast<std::size_t>(pages * percent / 100);
  for (int r = 1; r <= rounds; ++r) {
    while (access(go, F_OK) != 0) usleep(2000);
    unlink(go);
    const auto t0 = std::chrono::steady_clock::now();
    std::uint64_t s = mix(static_cast<std::uint64_t>(r));
    for (std::size_t i = 0; i < per_round; ++i) {
      s = mix(s + i);
      const std::size_t p = s % pages;
      fill(mem + p * kPage, p, static_cast<std::uint32_t>(r));
      version[p] = static_cast<std::uint32_t>(r);
      if (rate > 0 && i % 256 == 255) {
        const double want_s = (i + 1) * kPage / (rate * 1048576.0);
        std::this_thread::sleep_until(t0 + std::chrono::duration<double>(want_s));
      }
    }
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::printf("round %d ms %.3f\n", r, ms);
    std::fflush(stdout);
  }
  std::vector<unsigned char> want(kPage);
  for (std::size_t p = 0; p < pages; ++p) {
    fill(want.data(), p, version[p]);
    if (std::memcmp(want.data(), mem + p * kPage, kPage) != 0) {
      std::printf("mismatch at page %zu\n", p);
      return 1;
    }
  }
  std::printf("ok\n");
  return 0;
}
