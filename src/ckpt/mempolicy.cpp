// NUMA memory policies of threads and mappings (mempolicy.h).
#include "ckpt/mempolicy.h"

#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <sstream>

#include "ckpt/inject.h"
#include "ckpt/proc.h"
#include "ckpt/remote.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {

// Node masks of up to this many nodes (bits); get_mempolicy(2) wants at least the
// kernel's node count.
constexpr std::uint64_t kMaxNode = 1024;
constexpr std::size_t kMaskWords = kMaxNode / 64;
constexpr int kModeFlags =
    (1 << 15) | (1 << 14) | (1 << 13);  // MPOL_F_STATIC/RELATIVE/NUMA_BALANCING
constexpr int kMpolMax = 7;             // MPOL_DEFAULT .. MPOL_WEIGHTED_INTERLEAVE (6) + 1
constexpr unsigned long kMpolFAddr = 1 << 1;

// get_mempolicy(mode, mask, kMaxNode, addr, flags) in the process through `inj`, its
// results read back from `buf` (mode at buf, the mask at buf + 8).
MemPolicy get_policy(Injector& inj, pid_t pid, std::uint64_t buf, std::uint64_t addr,
                     unsigned long flags, const std::string& what) {
  inj.call_ok(what + ": get_mempolicy", SYS_get_mempolicy, buf, buf + 8, kMaxNode, addr, flags);
  int mode = 0;
  std::array<std::uint64_t, kMaskWords> mask{};
  remote_read(pid, buf, &mode, sizeof mode);
  remote_read(pid, buf + 8, mask.data(), sizeof mask);
  MemPolicy p;
  p.mode = mode;
  std::size_t n = mask.size();
  while (n > 0 && mask[n - 1] == 0) --n;
  p.nodes.assign(mask.begin(), mask.begin() + static_cast<std::ptrdiff_t>(n));
  return p;
}

void check_record(const MemPolicy& p, const std::string& what) {
  if ((p.mode & ~kModeFlags) < 0 || (p.mode & ~kModeFlags) >= kMpolMax ||
      p.nodes.size() > kMaskWords)
    fail_image("image: {}: memory policy mode {:#x} with {} mask words", what, p.mode,
               p.nodes.size());
}

// Writes p's mask at `buf` in the process (whole kMaxNode bits, zero-filled).
void put_mask(pid_t pid, std::uint64_t buf, const MemPolicy& p) {
  std::array<std::uint64_t, kMaskWords> mask{};
  std::copy(p.nodes.begin(), p.nodes.end(), mask.begin());
  remote_write(pid, buf, mask.data(), sizeof mask);
}

std::string describe(const MemPolicy& p) {
  std::string s = fmt::format("mode {:#x} nodes", p.mode);
  for (auto w : p.nodes) s += fmt::format(" {:#x}", w);
  return s;
}

// A kernel built without CONFIG_NUMA has neither policies nor numa_maps.
bool numa_kernel() {
  static const bool yes = ::access("/proc/self/numa_maps", F_OK) == 0;
  return yes;
}

}  // namespace

void dump_thread_mempolicy(pid_t pid, pid_t tid, Injector& inj, std::uint64_t scratch, Thread& t) {
  if (!numa_kernel()) return;
  t.mempolicy = get_policy(inj, pid, scratch, 0, 0, fmt::format("thread {}", tid));
}

std::string read_numa_maps(pid_t pid) {
  return numa_kernel() ? read_file(fmt::format("/proc/{}/numa_maps", pid)) : std::string();
}

void dump_vma_mempolicies(DumpProcess& p, const std::string& numa_maps) {
  std::istringstream in(numa_maps);
  for (std::string line; std::getline(in, line);) {
    std::istringstream w(line);
    std::string addr, policy;
    if (!(w >> addr >> policy) || policy == "default") continue;
    std::uint64_t start = std::stoull(addr, nullptr, 16);
    Vma* v = nullptr;
    for (auto& c : p.rec.vmas)
      if (c.start == start) v = &c;
    std::string what =
        fmt::format("process {} (pid {} in the job), mapping {:#x}", p.host_pid, p.rec.pid, start);
    // numa_maps shows the process's policy for a mapping without one of its own, which
    // get_mempolicy(MPOL_F_ADDR) reports as the default.
    MemPolicy own = get_policy(*p.inj, p.host_pid, p.scratch, start, kMpolFAddr, what);
    if (own == MemPolicy{}) continue;
    if (!v)
      fail_unsupported("{}: memory policy {} on a mapping not dumped: not supported", what, policy);
    v->mempolicy = std::move(own);
  }
}

void restore_vma_mempolicy(Injector& inj, pid_t pid, const InjectionArea& area, const Vma& v,
                           const std::string& what) {
  check_record(v.mempolicy, what);
  put_mask(pid, area.data(), v.mempolicy);
  inj.call_ok(what + ": mbind " + describe(v.mempolicy), SYS_mbind, v.start, v.end - v.start,
              static_cast<std::uint64_t>(v.mempolicy.mode), area.data(), kMaxNode, 0);
  MemPolicy now = get_policy(inj, pid, area.data(), v.start, kMpolFAddr, what);
  if (now != v.mempolicy)
    fail("{}: memory policy set to {}, the kernel shows {}", what, describe(v.mempolicy),
         describe(now));
}

void restore_thread_mempolicies(RestoreProcess& p, const InjectionArea& area) {
  for (auto& t : p.threads) {
    const MemPolicy& want = t.rec->mempolicy;
    if (want == MemPolicy{}) continue;
    std::string who = fmt::format("process {} thread {}", p.rec->pid, t.rec->tid);
    check_record(want, who);
    put_mask(p.host_pid, area.data(), want);
    t.inj->call_ok(who + ": set_mempolicy " + describe(want), SYS_set_mempolicy,
                   static_cast<std::uint64_t>(want.mode), area.data(), kMaxNode);
    MemPolicy now = get_policy(*t.inj, p.host_pid, area.data(), 0, 0, who);
    if (now != want)
      fail("{}: memory policy set to {}, the kernel shows {}", who, describe(want), describe(now));
  }
}

}  // namespace fsched::ckpt
