// ckpt_threads: a deterministic multi-threaded program for checkpoint/restore tests.
//
//   ckpt_threads [ROUNDS [OUTFILE]] [--exit-code N] [--step-ms MS] [--work N]
//
// Four worker threads take turns (round r belongs to worker r % 4). The worker whose
// turn it is extends a hash chain and a floating-point (AVX when available) state,
// sleeps --step-ms (nanosleep), and sends the round's record through a pipe to a
// reader thread blocked in read(). The reader prints one line per round to stdout and
// appends it to OUTFILE (kept open with O_APPEND), then hands the turn on through a
// mutex + condition variable and every 16 rounds sends SIGUSR1 to the main thread,
// which sits in pthread_join. So at almost any moment one thread is in nanosleep,
// three are in futex waits, one is in read() on a pipe and main is in a futex wait;
// while a worker computes, its vector registers hold live state.
//
// Output depends only on the arguments. Exit status: 0, or --exit-code N.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr int kWorkers = 4;

struct Record {
  std::uint64_t round;
  std::uint64_t chain;
  double fp;
  std::uint64_t worker;
};

struct WorkerResult {
  std::uint64_t rounds = 0;
  std::uint64_t local = 0;
};

volatile sig_atomic_t g_signals = 0;

void on_usr1(int) { g_signals = g_signals + 1; }

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "ckpt_threads: %s: %s\n", what, std::strerror(errno));
  std::exit(99);
}

void write_all(int fd, const void* buf, std::size_t len) {
  const char* p = static_cast<const char*>(buf);
  while (len > 0) {
    ssize_t n = ::write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("write");
    }
    p += n;
    len -= static_cast<std::size_t>(n);
  }
}

bool read_all(int fd, void* buf, std::size_t len) {
  char* p = static_cast<char*>(buf);
  while (len > 0) {
    ssize_t n = ::read(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("read");
    }
    if (n == 0) return false;
    p += n;
    len -= static_cast<std::size_t>(n);
  }
  return true;
}

std::uint64_t splitmix(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

typedef double v4d __attribute__((vector_size(32)));

// The floating-point part of a round: recurrences over 4x4 double lanes, kept in
// vector registers for the whole loop.
// always_inline so that the AVX2 wrapper below compiles the loop with 256-bit registers.
template <int Dummy>
__attribute__((always_inline)) inline double fp_kernel_impl(std::uint64_t seed, int iters) {
  v4d a[4], b[4];
  for (int k = 0; k < 4; ++k) {
    for (int l = 0; l < 4; ++l) {
      std::uint64_t s = splitmix(seed + static_cast<std::uint64_t>(k * 4 + l));
      a[k][l] = 0.05 + 0.9 * (static_cast<double>(s >> 11) * 0x1.0p-53);
      b[k][l] = static_cast<double>(s & 0xffff) * 0x1.0p-16;
    }
  }
  // Logistic maps in the chaotic regime: bounded in (0, 1), and every bit of the
  // result depends on every step, so a register corrupted by a restore shows.
  const v4d r = {3.91, 3.93, 3.95, 3.97};
  const v4d one = {1.0, 1.0, 1.0, 1.0};
  const v4d w = {0.75, 0.75, 0.75, 0.75};
  for (int i = 0; i < iters; ++i) {
    for (int k = 0; k < 4; ++k) {
      a[k] = r * a[k] * (one - a[k]);
      b[k] = w * b[k] + (one - w) * a[(k + 1) & 3];
    }
  }
  double sum = 0;
  for (int k = 0; k < 4; ++k)
    for (int l = 0; l < 4; ++l) sum += a[k][l] * (k + 1) + b[k][l] * (l + 1);
  return sum;
}

__attribute__((target("avx2"))) double fp_kernel_avx2(std::uint64_t seed, int iters) {
  return fp_kernel_impl<1>(seed, iters);
}
double fp_kernel_generic(std::uint64_t seed, int iters) { return fp_kernel_impl<0>(seed, iters); }

double fp_kernel(std::uint64_t seed, int iters) {
  static const bool avx2 = __builtin_cpu_supports("avx2");
  return avx2 ? fp_kernel_avx2(seed, iters) : fp_kernel_generic(seed, iters);
}

struct Shared {
  std::mutex m;
  std::condition_variable cv;
  std::uint64_t rounds = 0;
  std::uint64_t turn = 0;   // next round to compute
  bool busy = false;        // a worker holds the current turn
  std::uint64_t chain = 0;  // hash chain, extended by every round
  int pipe_r = -1, pipe_w = -1;
  int step_ms = 25;
  int work = 2000000;
};

thread_local std::uint64_t tl_local = 0;

void worker(Shared& sh, int w, WorkerResult& res) {
  tl_local = splitmix(static_cast<std::uint64_t>(w) + 1000);
  for (;;) {
    std::uint64_t r, chain;
    {
      std::unique_lock<std::mutex> lk(sh.m);
      sh.cv.wait(lk, [&] {
        return sh.turn >= sh.rounds ||
               (!sh.busy && sh.turn % kWorkers == static_cast<std::uint64_t>(w));
      });
      if (sh.turn >= sh.rounds) break;
      sh.busy = true;
      r = sh.turn;
      chain = sh.chain;
    }
    // Integer part: a hash chain whose length depends on the round.
    std::uint64_t h = chain ^ (r * 0x100000001B3ull);
    const int n = sh.work + static_cast<int>(r % 7) * 1000;
    for (int i = 0; i < n; ++i) h = splitmix(h ^ static_cast<std::uint64_t>(i));
    const double fp = fp_kernel(h, sh.work / 4);
    tl_local = splitmix(tl_local ^ h);
    res.rounds++;
    res.local = tl_local;
    std::this_thread::sleep_for(std::chrono::milliseconds(sh.step_ms));
    Record rec{r, h, fp, static_cast<std::uint64_t>(w)};
    write_all(sh.pipe_w, &rec, sizeof rec);
  }
}

void reader(Shared& sh, int out_fd, pthread_t main_thread, double& fp_total) {
  Record rec;
  while (read_all(sh.pipe_r, &rec, sizeof rec)) {
    if (rec.round == UINT64_MAX) break;
    fp_total += rec.fp;
    char line[160];
    int len = std::snprintf(line, sizeof line, "round %4llu worker %llu chain %016llx fp %.17g\n",
                            static_cast<unsigned long long>(rec.round),
                            static_cast<unsigned long long>(rec.worker),
                            static_cast<unsigned long long>(rec.chain), rec.fp);
    write_all(STDOUT_FILENO, line, static_cast<std::size_t>(len));
    if (out_fd >= 0) write_all(out_fd, line, static_cast<std::size_t>(len));
    {
      std::lock_guard<std::mutex> lk(sh.m);
      sh.chain = rec.chain;
      sh.turn = rec.round + 1;
      sh.busy = false;
    }
    if (rec.round % 16 == 15) pthread_kill(main_thread, SIGUSR1);
    sh.cv.notify_all();
  }
}

[[noreturn]] void usage() {
  std::fprintf(
      stderr, "usage: ckpt_threads [ROUNDS [OUTFILE]] [--exit-code N] [--step-ms MS] [--work N]\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  Shared sh;
  sh.rounds = 200;
  std::string out_path;
  int exit_code = 0;
  std::vector<std::string> pos;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> int {
      if (i + 1 >= argc) usage();
      return std::atoi(argv[++i]);
    };
    if (a == "--exit-code")
      exit_code = next();
    else if (a == "--step-ms")
      sh.step_ms = next();
    else if (a == "--work")
      sh.work = next();
    else if (a.starts_with("--"))
      usage();
    else
      pos.push_back(a);
  }
  if (pos.size() > 2) usage();
  if (!pos.empty()) sh.rounds = std::strtoull(pos[0].c_str(), nullptr, 10);
  if (pos.size() > 1) out_path = pos[1];

  struct sigaction sa {};
  sa.sa_handler = on_usr1;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGUSR1, &sa, nullptr) != 0) die("sigaction");

  int out_fd = -1;
  if (!out_path.empty()) {
    out_fd = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (out_fd < 0) die(out_path.c_str());
  }
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) die("pipe2");
  sh.pipe_r = p[0];
  sh.pipe_w = p[1];

  char head[128];
  int hl = std::snprintf(head, sizeof head, "ckpt_threads rounds %llu workers %d\n",
                         static_cast<unsigned long long>(sh.rounds), kWorkers);
  write_all(STDOUT_FILENO, head, static_cast<std::size_t>(hl));

  double fp_total = 0;
  std::thread rd(reader, std::ref(sh), out_fd, pthread_self(), std::ref(fp_total));
  std::vector<WorkerResult> results(kWorkers);
  std::vector<std::thread> ws;
  for (int w = 0; w < kWorkers; ++w) ws.emplace_back(worker, std::ref(sh), w, std::ref(results[w]));
  for (auto& t : ws) t.join();
  Record end{UINT64_MAX, 0, 0, 0};
  write_all(sh.pipe_w, &end, sizeof end);
  rd.join();

  std::string tail;
  char line[160];
  for (int w = 0; w < kWorkers; ++w) {
    std::snprintf(line, sizeof line, "worker %d rounds %llu local %016llx\n", w,
                  static_cast<unsigned long long>(results[w].rounds),
                  static_cast<unsigned long long>(results[w].local));
    tail += line;
  }
  std::snprintf(
      line, sizeof line, "done rounds %llu chain %016llx signals %d fp_total %a exit %d\n",
      static_cast<unsigned long long>(sh.rounds), static_cast<unsigned long long>(sh.chain),
      static_cast<int>(g_signals), fp_total, exit_code);
  tail += line;
  write_all(STDOUT_FILENO, tail.data(), tail.size());
  if (out_fd >= 0) {
    write_all(out_fd, tail.data(), tail.size());
    ::close(out_fd);
  }
  return exit_code;
}
