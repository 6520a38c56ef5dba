// ckpt_mem_kind: one process that holds one kind of memory-mapping state, for
// checkpoint/restore tests that name the kind that broke (issue 13; ckpt_kind.cpp is
// the same for other kinds). Output depends only on the arguments.
//
//   ckpt_mem_kind KIND ROUNDS [TICK_MS]
//
// Each round checks the state set up at the start, prints one line and sleeps TICK_MS
// (default 50), so that a dump finds the state in use:
//   advice       anonymous areas with madvise(2) DONTFORK, WIPEONFORK, HUGEPAGE,
//                NOHUGEPAGE, DONTDUMP, MERGEABLE, SEQUENTIAL, RANDOM, one mlock(2)ed,
//                one mlock2(2) MLOCK_ONFAULT, one MAP_NORESERVE and one mseal(2)ed: each
//                round compares every area's /proc/self/smaps VmFlags with the start's
//                and its contents; every 10th round a child checks that the WIPEONFORK
//                area reads as zeros and the DONTFORK one is absent
//   mlockall     mlockall(MCL_CURRENT | MCL_FUTURE): each round maps a new area, which
//                must come locked
//   memfd_seals  a memfd mapped MAP_SHARED sealed against growing and shrinking, and
//                one held as an fd only, sealed against writing and sealing; each round
//                checks both seal sets (F_GET_SEALS), the names and the contents
//   memfd_exec   the program itself copied into a memfd, sealed against writes; each
//                round checks seals and contents; at the end it fexecve(3)s the memfd,
//                whose run prints the last line
//   memfd_exec_ro  the same, but the writable memfd fd is closed after a read-only
//                open of /proc/self/fd/N, which is what gets executed
//   shared_mprotect  a file (kind.map, in the current directory) mapped MAP_SHARED read
//                and write, its first half mprotect(2)ed read-only: each round writes a
//                page of the second half and checks the file; at the end the first half
//                is made writable again and written (which needs the mapping's
//                may-write permission to survive)
//   guard        an anonymous mapping with MADV_GUARD_INSTALL guard pages: each round
//                checks which pages are guards (pagemap) and the others' contents;
//                every 10th round a child touches a guard page, which must fault
//   numa         NUMA memory policies (node 0, which every machine has): the main thread
//                MPOL_PREFERRED, a second thread MPOL_BIND with MPOL_F_STATIC_NODES
//                (checking its own every 10 ms), the middle 8 of 16 anonymous pages
//                MPOL_INTERLEAVE (mbind(2)); each round checks them (get_mempolicy(2))
//                and the pages' contents
//   cow_zero     MAP_PRIVATE mappings of a file (kind.cow) and of a memfd full of 'A',
//                one page of each written with zeros, one with a byte: each round checks
//                every byte
//   sysfs_map    a mapping of /sys/kernel/btf/vmlinux (a dump must refuse it)
//   ksm_merge_any  prctl(PR_SET_MEMORY_MERGE): KSM may merge all its anonymous memory
//                (a dump must refuse it); each round checks PR_GET_MEMORY_MERGE
//   memlock_lowered  16 pages mlock(2)ed without CAP_IPC_LOCK (dropped from the
//                effective set), then RLIMIT_MEMLOCK lowered to one page: a restore could
//                not lock them again (a dump must refuse it); each round checks VmLck
//   exec_done    (internal) what memfd_exec runs: prints "done memfd_exec N"
//
// Exit status 0; 1 with a line "FAIL ..." saying what failed.
#include <fcntl.h>
#include <linux/capability.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

extern char** environ;

#include "kind_prog.h"

namespace {

using namespace kindprog;

constexpr std::size_t kPage = 4096;

// The VmFlags of the mapping that contains `addr`, as one string; "" if none does.
std::string vmflags_at(const void* addr) {
  auto a = reinterpret_cast<std::uintptr_t>(addr);
  std::ifstream in("/proc/self/smaps");
  std::string l;
  bool inside = false;
  while (std::getline(in, l)) {
    unsigned long s = 0, e = 0;
    if (std::sscanf(l.c_str(), "%lx-%lx ", &s, &e) == 2 && l.find(':') > l.find(' ')) {
      inside = s <= a && a < e;
      continue;
    }
    if (inside && l.rfind("VmFlags:", 0) == 0) return l.substr(8);
  }
  return "";
}

bool has_flag(const std::string& flags, const char* f) {
  std::istringstream in(flags);
  std::string w;
  while (in >> w)
    if (w == f) return true;
  return false;
}

unsigned char fill(int r) { return static_cast<unsigned char>(r * 37 + 11); }

void* map_anon(std::size_t len, int extra = 0) {
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | extra, -1, 0);
  if (p == MAP_FAILED) die("mmap");
  return p;
}

void run_advice(int rounds) {
  struct Area {
    const char* name;
    int advice;  // -1: none (mlock, mseal or mmap flag)
    const char* flag;
    unsigned char* mem = nullptr;
    std::string want;
  };
  std::vector<Area> areas = {
      {"dontfork", MADV_DONTFORK, "dc"},
      {"wipeonfork", MADV_WIPEONFORK, "wf"},
      {"hugepage", MADV_HUGEPAGE, "hg"},
      {"nohugepage", MADV_NOHUGEPAGE, "nh"},
      {"dontdump", MADV_DONTDUMP, "dd"},
      {"mergeable", MADV_MERGEABLE, "mg"},
      {"sequential", MADV_SEQUENTIAL, "sr"},
      {"random", MADV_RANDOM, "rr"},
      {"mlock", -1, "lo"},
      {"mlock_onfault", -1, "lf"},
      {"noreserve", -1, "nr"},
      {"mseal", -1, "sl"},
  };
  constexpr std::size_t kLen = 4 * kPage;
  for (auto& a : areas) {
    // An unmapped page on each side, so that no two areas merge into one mapping.
    auto* base = static_cast<unsigned char*>(
        mmap(nullptr, kLen + 2 * kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (base == MAP_FAILED) die("mmap");
    a.mem = base + kPage;
    int extra = std::string(a.name) == "noreserve" ? MAP_NORESERVE : 0;
    if (mmap(a.mem, kLen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | extra,
             -1, 0) == MAP_FAILED)
      die("mmap fixed");
    munmap(base, kPage);
    munmap(a.mem + kLen, kPage);
    std::memset(a.mem, fill(0), kPage);  // one present page at the start
    std::string n = a.name;
    if (a.advice >= 0 && madvise(a.mem, kLen, a.advice) < 0) die(std::string("madvise ") + n);
    if (n == "mlock" && mlock(a.mem, kLen) < 0) die("mlock");
    if (n == "mlock_onfault" && syscall(SYS_mlock2, a.mem, kLen, MLOCK_ONFAULT) < 0) die("mlock2");
    if (n == "mseal" && syscall(462, a.mem, kLen, 0) < 0) die("mseal");
    a.want = vmflags_at(a.mem);
    if (!has_flag(a.want, a.flag)) fail(n + ": VmFlags" + a.want + " lack " + a.flag);
  }
  for (int i = 1; i <= rounds; ++i) {
    for (auto& a : areas) {
      std::string now = vmflags_at(a.mem);
      if (now != a.want) fail(std::string(a.name) + ": VmFlags" + now + ", expected" + a.want);
      for (std::size_t k = 0; k < kPage; ++k)
        if (a.mem[k] != fill(i - 1)) fail(std::string(a.name) + ": contents changed");
      std::memset(a.mem, fill(i), kPage);
    }
    if (i % 10 == 0) {
      pid_t c = fork();
      if (c < 0) die("fork");
      if (c == 0) {
        for (auto& a : areas) {
          std::string n = a.name;
          if (n == "wipeonfork")
            for (std::size_t k = 0; k < kLen; ++k)
              if (a.mem[k] != 0) _exit(3);
          if (n == "dontfork" && !vmflags_at(a.mem).empty()) _exit(4);
        }
        _exit(0);
      }
      int st = 0;
      if (waitpid(c, &st, 0) != c) die("waitpid");
      if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail("advice: child saw WIPEONFORK/DONTFORK wrong, status " + std::to_string(st));
    }
    line("advice " + std::to_string(i));
    tick();
  }
}

void run_mlockall(int rounds) {
  if (mlockall(MCL_CURRENT | MCL_FUTURE) < 0) die("mlockall");
  for (int i = 1; i <= rounds; ++i) {
    void* p = map_anon(kPage);
    std::string f = vmflags_at(p);
    if (!has_flag(f, "lo")) fail("mlockall: a new mapping is not locked:" + f);
    munmap(p, kPage);
    line("mlockall " + std::to_string(i));
    tick();
  }
}

std::string fd_link(int fd) {
  char buf[256] = {};
  std::string p = "/proc/self/fd/" + std::to_string(fd);
  if (readlink(p.c_str(), buf, sizeof buf - 1) < 0) die("readlink");
  return buf;
}

void run_memfd_seals(int rounds) {
  constexpr std::size_t kLen = 8 * kPage;
  int mapped = memfd_create("kind_mapped", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  int held = memfd_create("kind_held", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (mapped < 0 || held < 0) die("memfd_create");
  if (ftruncate(mapped, kLen) < 0) die("ftruncate");
  auto* mem = static_cast<unsigned char*>(
      mmap(nullptr, kLen, PROT_READ | PROT_WRITE, MAP_SHARED, mapped, 0));
  if (mem == MAP_FAILED) die("mmap");
  const int want_mapped = F_SEAL_SHRINK | F_SEAL_GROW;
  if (fcntl(mapped, F_ADD_SEALS, want_mapped) < 0) die("F_ADD_SEALS mapped");
  const std::string text = "sealed contents of kind_held\n";
  if (write(held, text.data(), text.size()) != static_cast<ssize_t>(text.size())) die("write");
  const int want_held = F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
  if (fcntl(held, F_ADD_SEALS, want_held) < 0) die("F_ADD_SEALS held");
  const std::string link_mapped = fd_link(mapped), link_held = fd_link(held);
  for (int i = 1; i <= rounds; ++i) {
    int sm = fcntl(mapped, F_GET_SEALS), sh = fcntl(held, F_GET_SEALS);
    if (sm != want_mapped || sh != want_held)
      fail("memfd_seals: seals " + std::to_string(sm) + " and " + std::to_string(sh) +
           ", expected " + std::to_string(want_mapped) + " and " + std::to_string(want_held));
    if (fd_link(mapped) != link_mapped || fd_link(held) != link_held)
      fail("memfd_seals: names now " + fd_link(mapped) + " and " + fd_link(held));
    // The seals still act: the held one refuses a write, the mapped one growing.
    if (pwrite(held, "x", 1, 0) != -1 || errno != EPERM)
      fail("memfd_seals: a write passed F_SEAL_WRITE");
    if (ftruncate(mapped, kLen + kPage) != -1 || errno != EPERM)
      fail("memfd_seals: growing passed F_SEAL_GROW");
    char buf[64] = {};
    if (pread(held, buf, text.size(), 0) != static_cast<ssize_t>(text.size()) || buf != text)
      fail("memfd_seals: contents of kind_held changed");
    std::memset(mem + (i % 8) * kPage, fill(i), kPage);
    if (i > 1) {
      unsigned char b[kPage];
      if (pread(mapped, b, kPage, static_cast<off_t>(((i - 1) % 8) * kPage)) != kPage) die("pread");
      for (unsigned char c : b)
        if (c != fill(i - 1)) fail("memfd_seals: page of round " + std::to_string(i - 1));
    }
    line("memfd_seals " + std::to_string(i));
    tick();
  }
}

std::string read_all(int fd) {
  std::string s;
  char buf[65536];
  off_t off = 0;
  for (;;) {
    ssize_t n = pread(fd, buf, sizeof buf, off);
    if (n < 0) die("pread");
    if (n == 0) return s;
    s.append(buf, static_cast<std::size_t>(n));
    off += n;
  }
}

void run_memfd_exec(int rounds, bool read_only) {
  int self = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
  if (self < 0) die("open /proc/self/exe");
  const std::string image = read_all(self);
  close(self);
  int fd = memfd_create("kind_exe", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) die("memfd_create");
  for (std::size_t off = 0; off < image.size();) {
    ssize_t n = write(fd, image.data() + off, image.size() - off);
    if (n <= 0) die("write");
    off += static_cast<std::size_t>(n);
  }
  const int want = F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW;
  if (fcntl(fd, F_ADD_SEALS, want) < 0) die("F_ADD_SEALS");
  if (read_only) {
    int ro = open(("/proc/self/fd/" + std::to_string(fd)).c_str(), O_RDONLY | O_CLOEXEC);
    if (ro < 0) die("open read-only");
    close(fd);
    fd = ro;
  }
  const char* kind = read_only ? "memfd_exec_ro" : "memfd_exec";
  for (int i = 1; i <= rounds; ++i) {
    int s = fcntl(fd, F_GET_SEALS);
    if (s != want) fail(std::string(kind) + ": seals " + std::to_string(s));
    if (read_all(fd) != image) fail(std::string(kind) + ": contents changed");
    line(std::string(kind) + " " + std::to_string(i));
    tick();
  }
  std::string n = std::to_string(rounds);
  const char* argv[] = {"ckpt_mem_kind", "exec_done", n.c_str(), kind, nullptr};
  fexecve(fd, const_cast<char* const*>(argv), environ);
  die(std::string(kind) + ": fexecve");
}

void run_shared_mprotect(int rounds) {
  constexpr std::size_t kPages = 8, kLen = kPages * kPage, kHalf = kLen / 2;
  const char* path = "kind.map";
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) die("open kind.map");
  if (ftruncate(fd, kLen) < 0) die("ftruncate");
  auto* mem =
      static_cast<unsigned char*>(mmap(nullptr, kLen, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  if (mem == MAP_FAILED) die("mmap");
  close(fd);
  std::memset(mem, 'A', kHalf);
  if (mprotect(mem, kHalf, PROT_READ) < 0) die("mprotect");
  for (int i = 1; i <= rounds; ++i) {
    std::memset(mem + kHalf + (i % 4) * kPage, fill(i), kPage);
    int rfd = open(path, O_RDONLY | O_CLOEXEC);
    if (rfd < 0) die("open for reading");
    unsigned char b[kPage];
    if (pread(rfd, b, kPage, static_cast<off_t>(kHalf + (i % 4) * kPage)) != kPage) die("pread");
    close(rfd);
    for (unsigned char c : b)
      if (c != fill(i)) fail("shared_mprotect: the file does not show round " + std::to_string(i));
    for (std::size_t k = 0; k < kHalf; ++k)
      if (mem[k] != 'A') fail("shared_mprotect: the read-only half changed");
    line("shared_mprotect " + std::to_string(i));
    tick();
  }
  if (mprotect(mem, kHalf, PROT_READ | PROT_WRITE) < 0) die("shared_mprotect: mprotect back");
  std::memset(mem, 'B', kHalf);
  if (msync(mem, kLen, MS_SYNC) < 0) die("msync");
  unlink(path);
}

// The guard-region pages among the kPages at mem (pagemap bit 58), as a string of
// 'g' and '.'.
std::string guard_pages(const unsigned char* mem, std::size_t pages) {
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("open pagemap");
  std::vector<std::uint64_t> e(pages);
  off_t off = static_cast<off_t>(reinterpret_cast<std::uintptr_t>(mem) / kPage * 8);
  if (pread(fd, e.data(), pages * 8, off) != static_cast<ssize_t>(pages * 8)) die("pread pagemap");
  close(fd);
  std::string s;
  for (auto x : e) s += (x >> 58) & 1 ? 'g' : '.';
  return s;
}

void run_guard(int rounds) {
  constexpr std::size_t kPages = 8;
  auto* mem = static_cast<unsigned char*>(map_anon(kPages * kPage));
  const std::string want = "..g..gg.";
  for (std::size_t i = 0; i < kPages; ++i)
    if (want[i] == 'g' && madvise(mem + i * kPage, kPage, 102 /* MADV_GUARD_INSTALL */) < 0)
      die("madvise MADV_GUARD_INSTALL");
  for (int r = 1; r <= rounds; ++r) {
    std::string now = guard_pages(mem, kPages);
    if (now != want) fail("guard: guard pages " + now + ", expected " + want);
    for (std::size_t i = 0; i < kPages; ++i) {
      if (want[i] == 'g') continue;
      if (r > 1 && mem[i * kPage + 100] != fill(r - 1)) fail("guard: contents changed");
      mem[i * kPage + 100] = fill(r);
    }
    if (r % 10 == 0) {
      // A guard page faults (SIGSEGV) when touched.
      pid_t c = fork();
      if (c < 0) die("fork");
      if (c == 0) {
        volatile unsigned char x = mem[2 * kPage];
        (void)x;
        _exit(0);
      }
      int st = 0;
      if (waitpid(c, &st, 0) != c) die("waitpid");
      if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGSEGV)
        fail("guard: touching a guard page did not fault, status " + std::to_string(st));
    }
    line("guard " + std::to_string(r));
    tick();
  }
}

// Private mappings of a file and of a memfd, both full of 'A', whose pages the program
// wrote (copied on write): one page all zeros, one with a few bytes. A restore that
// left out the zero page would show the file's 'A's there again.
void run_cow_zero(int rounds) {
  constexpr std::size_t kPages = 4;
  std::string data(kPages * kPage, 'A');
  int file = open("kind.cow", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int mfd = memfd_create("kind_cow", MFD_CLOEXEC);
  if (file < 0 || mfd < 0) die("open kind.cow / memfd_create");
  for (int fd : {file, mfd})
    if (write(fd, data.data(), data.size()) != static_cast<ssize_t>(data.size())) die("write");
  std::vector<unsigned char*> maps;
  for (int fd : {file, mfd}) {
    void* m = mmap(nullptr, data.size(), PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) die("mmap MAP_PRIVATE");
    maps.push_back(static_cast<unsigned char*>(m));
  }
  close(file);
  for (unsigned char* m : maps) {
    std::memset(m + kPage, 0, kPage);  // copied, all zeros
    m[2 * kPage + 7] = 'b';            // copied, mostly 'A'
  }
  for (int r = 1; r <= rounds; ++r) {
    for (unsigned char* m : maps)
      for (std::size_t i = 0; i < kPages * kPage; ++i) {
        const unsigned char want = i / kPage == 1 ? 0 : i == 2 * kPage + 7 ? 'b' : 'A';
        if (m[i] != want)
          fail("cow_zero: byte " + std::to_string(i) + " of a private mapping is " +
               std::to_string(m[i]) + ", not " + std::to_string(want));
      }
    line("cow_zero " + std::to_string(r));
    tick();
  }
}

void run_sysfs_map(int rounds) {
  int fd = open("/sys/kernel/btf/vmlinux", O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("open /sys/kernel/btf/vmlinux");
  auto* mem = static_cast<unsigned char*>(mmap(nullptr, kPage, PROT_READ, MAP_PRIVATE, fd, 0));
  if (mem == MAP_FAILED) die("mmap /sys/kernel/btf/vmlinux");
  close(fd);
  const unsigned char first = mem[0];
  for (int i = 1; i <= rounds; ++i) {
    if (mem[0] != first) fail("sysfs_map: contents changed");
    line("sysfs_map " + std::to_string(i));
    tick();
  }
}

constexpr int kPrSetMemoryMerge = 67, kPrGetMemoryMerge = 68;  // linux/prctl.h, 6.4

void run_ksm_merge_any(int rounds) {
  if (prctl(kPrSetMemoryMerge, 1, 0, 0, 0) < 0) die("PR_SET_MEMORY_MERGE");
  for (int i = 1; i <= rounds; ++i) {
    if (prctl(kPrGetMemoryMerge, 0, 0, 0, 0) != 1) fail("ksm_merge_any: merge-any is off");
    line("ksm_merge_any " + std::to_string(i));
    tick();
  }
}

// VmLck of /proc/self/status, in kB.
long vm_locked_kb() {
  std::ifstream in("/proc/self/status");
  std::string l;
  while (std::getline(in, l))
    if (l.rfind("VmLck:", 0) == 0) return std::atol(l.c_str() + 6);
  fail("no VmLck in /proc/self/status");
}

void run_memlock_lowered(int rounds) {
  // Without CAP_IPC_LOCK, RLIMIT_MEMLOCK applies (a root job has it: drop it).
  __user_cap_header_struct h{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct d[2]{};
  if (syscall(SYS_capget, &h, d) < 0) die("capget");
  d[CAP_IPC_LOCK / 32].effective &= ~(1U << (CAP_IPC_LOCK % 32));
  if (syscall(SYS_capset, &h, d) < 0) die("capset");
  const std::size_t len = 16 * kPage;
  void* mem = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) die("mmap");
  if (mlock(mem, len) < 0) die("mlock");
  rlimit rl{kPage, kPage};
  if (setrlimit(RLIMIT_MEMLOCK, &rl) < 0) die("setrlimit RLIMIT_MEMLOCK");
  const long want = static_cast<long>(len / 1024);
  for (int i = 1; i <= rounds; ++i) {
    if (vm_locked_kb() != want) fail("memlock_lowered: VmLck " + std::to_string(vm_locked_kb()));
    line("memlock_lowered " + std::to_string(i));
    tick();
  }
}

}  // namespace

// get_mempolicy(2) of the calling thread (addr 0) or of the mapping at addr.
std::pair<int, unsigned long> policy_of(void* addr) {
  int mode = -1;
  unsigned long mask[16] = {};
  if (syscall(SYS_get_mempolicy, &mode, mask, 1024, addr, addr ? 2 /* MPOL_F_ADDR */ : 0) < 0)
    die("get_mempolicy");
  return {mode, mask[0]};
}

std::string policy_text(std::pair<int, unsigned long> p) {
  return "mode " + std::to_string(p.first) + " mask " + std::to_string(p.second);
}

volatile int g_numa_bad = 0;
volatile int g_numa_stop = 0;

void* numa_thread(void*) {
  unsigned long node0 = 1;
  if (syscall(SYS_set_mempolicy, 2 /* MPOL_BIND */ | (1 << 15) /* MPOL_F_STATIC_NODES */, &node0,
              64) < 0)
    die("set_mempolicy(MPOL_BIND | MPOL_F_STATIC_NODES)");
  while (!g_numa_stop) {
    if (policy_of(nullptr) != std::pair<int, unsigned long>{2 | (1 << 15), 1}) g_numa_bad = 1;
    usleep(10000);
  }
  return nullptr;
}

void run_numa(int rounds) {
  unsigned long node0 = 1;
  if (syscall(SYS_set_mempolicy, 1 /* MPOL_PREFERRED */, &node0, 64) < 0)
    die("set_mempolicy(MPOL_PREFERRED)");
  const long pg = sysconf(_SC_PAGESIZE);
  auto* area = static_cast<char*>(
      mmap(nullptr, 16 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (area == MAP_FAILED) die("mmap");
  if (syscall(SYS_mbind, area + 4 * pg, 8 * pg, 3 /* MPOL_INTERLEAVE */, &node0, 64, 0) < 0)
    die("mbind(MPOL_INTERLEAVE)");
  for (int i = 0; i < 16; ++i) std::memset(area + i * pg, 'a' + i, static_cast<std::size_t>(pg));
  pthread_t t;
  if (pthread_create(&t, nullptr, numa_thread, nullptr) != 0) die("pthread_create");
  for (int r = 1; r <= rounds; ++r) {
    auto mine = policy_of(nullptr), mid = policy_of(area + 5 * pg), edge = policy_of(area);
    if (mine != std::pair<int, unsigned long>{1, 1})
      fail("round " + std::to_string(r) + ": main thread " + policy_text(mine));
    if (mid != std::pair<int, unsigned long>{3, 1})
      fail("round " + std::to_string(r) + ": interleaved pages " + policy_text(mid));
    if (edge != std::pair<int, unsigned long>{0, 0})
      fail("round " + std::to_string(r) + ": first page " + policy_text(edge));
    if (g_numa_bad) fail("round " + std::to_string(r) + ": the second thread's policy changed");
    for (int i = 0; i < 16; ++i)
      if (area[i * pg] != 'a' + i || area[(i + 1) * pg - 1] != 'a' + i)
        fail("round " + std::to_string(r) + ": page " + std::to_string(i));
    line("numa " + std::to_string(r));
    tick();
  }
  g_numa_stop = 1;
  pthread_join(t, nullptr);
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: ckpt_mem_kind KIND ROUNDS [TICK_MS]\n");
    return 2;
  }
  const std::string kind = argv[1];
  const int rounds = std::atoi(argv[2]);
  if (kind == "exec_done") {
    line(std::string("done ") + (argc > 3 ? argv[3] : "?") + " " + std::to_string(rounds));
    return 0;
  }
  if (argc > 3) g_tick_ms = std::atoi(argv[3]);
  if (rounds < 1 || g_tick_ms < 1) {
    std::fprintf(stderr, "ckpt_mem_kind: ROUNDS and TICK_MS must be positive\n");
    return 2;
  }
  if (kind == "advice")
    run_advice(rounds);
  else if (kind == "mlockall")
    run_mlockall(rounds);
  else if (kind == "memfd_seals")
    run_memfd_seals(rounds);
  else if (kind == "memfd_exec")
    run_memfd_exec(rounds, false);
  else if (kind == "memfd_exec_ro")
    run_memfd_exec(rounds, true);
  else if (kind == "shared_mprotect")
    run_shared_mprotect(rounds);
  else if (kind == "guard")
    run_guard(rounds);
  else if (kind == "cow_zero")
    run_cow_zero(rounds);
  else if (kind == "numa")
    run_numa(rounds);
  else if (kind == "sysfs_map")
    run_sysfs_map(rounds);
  else if (kind == "ksm_merge_any")
    run_ksm_merge_any(rounds);
  else if (kind == "memlock_lowered")
    run_memlock_lowered(rounds);
  else {
    std::fprintf(stderr, "ckpt_mem_kind: unknown kind %s\n", kind.c_str());
    return 2;
  }
  line("done " + kind + " " + std::to_string(rounds));
  return 0;
}
