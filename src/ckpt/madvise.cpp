// Per-mapping madvise/mlock/mseal flags (madvise.h). The VmFlags mnemonics are those of
// fs/proc/task_mmu.c show_smap_vma_flags() (kernel 6.18); every mnemonic is in exactly
// one of the tables below, and one that is in none (a newer kernel's) makes the dump
// refuse: a flag nobody looked at is the silent loss issue 13 is about.
#include "ckpt/madvise.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <string_view>

#include <fmt/ranges.h>

#include "ckpt/inject.h"
#include "common/error.h"
#include "common/fd.h"

namespace fsched::ckpt {

namespace {

// Restored by madvise(2) with this advice.
constexpr std::pair<std::string_view, int> kAdvised[] = {
    {"dc", MADV_DONTFORK},   {"wf", MADV_WIPEONFORK}, {"hg", MADV_HUGEPAGE},
    {"nh", MADV_NOHUGEPAGE}, {"dd", MADV_DONTDUMP},   {"mg", MADV_MERGEABLE},
    {"sr", MADV_SEQUENTIAL}, {"rr", MADV_RANDOM},
};
// Restored another way: gd and nr by mmap(2) flags (memory.cpp), lo and lf by mlock2(2),
// sl by mseal(2), mw (shared file mappings only) by opening the file for writing
// (memory.cpp).
constexpr std::string_view kOtherRestored[] = {"gd", "nr", "lo", "lf", "sl", "mw"};

// Ignored, because the restore gives them back by mapping the same thing:
//   rd wr ex  the protection (Vma::prot);
//   sh ms     MAP_SHARED (Vma::shared);
//   mr me     may-read / may-exec: follow from the file's open mode and its mount;
//   mw        on private mappings always set (on shared file mappings: restored above);
//   ac        commit accounting of private writable memory: only changes what
//             vm.overcommit_memory counts, not what the job sees;
//   sd        soft-dirty: a change-tracking bit for checkpointers, not the job's;
//   gu        "maybe has guard regions": the guard pages themselves are what matters;
//             they are looked for in pagemap, recorded (Vma::guards) and installed
//             again (and the flag with them).
constexpr std::string_view kDerived[] = {"rd", "wr", "ex", "sh", "ms", "mr",
                                         "me", "mw", "ac", "sd", "gu"};

// Refused, with why: the restore cannot make such a mapping again.
constexpr std::pair<std::string_view, std::string_view> kRefused[] = {
    {"pf", "a PFN (device) mapping"},
    {"io", "a device I/O mapping"},
    {"mm", "a mixed (device) mapping"},
    {"ar", "a mapping with page attributes (device)"},
    {"sf", "a MAP_SYNC (DAX) mapping"},
    {"de", "a special mapping that may not be expanded"},
    {"ht", "a hugetlb mapping"},
    {"um", "a userfaultfd-registered mapping"},
    {"uw", "a userfaultfd write-protect-registered mapping"},
    {"ui", "a userfaultfd minor-fault-registered mapping"},
    {"ss", "a shadow stack"},
    {"dp", "a MAP_DROPPABLE mapping"},
    {"bt", "a branch-target mapping"},
    {"mt", "a memory-tagged mapping"},
};

template <typename Table, typename Key>
bool in(const Table& t, const Key& k) {
  return std::any_of(std::begin(t), std::end(t), [&](const auto& e) {
    if constexpr (std::is_same_v<std::decay_t<decltype(e)>, std::string_view>)
      return e == k;
    else
      return e.first == k;
  });
}

bool has(const std::vector<std::string>& flags, std::string_view f) {
  return std::find(flags.begin(), flags.end(), f) != flags.end();
}

// The flags of `all` that a restore sets (and reads back) for mapping v.
std::vector<std::string> restorable(const std::vector<std::string>& all, const Vma& v) {
  std::vector<std::string> out;
  for (auto& f : all) {
    if (f == "mw" && !(v.shared && v.kind == VmaKind::kFile)) continue;
    if (in(kAdvised, f) || in(kOtherRestored, f)) out.push_back(f);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string where_in(int pid, const Vma& v) {
  return fmt::format("process {}: mapping {:#x}-{:#x} {}", pid, v.start, v.end,
                     v.path.empty() ? std::string(to_string(v.kind)) : v.path);
}

constexpr int kMadvGuardInstall = 102;  // madvise(2), kernel 6.13; not in glibc 2.36

// The guard-region pages of v in host process `pid`, as {first page, count} runs
// (pagemap bit 58, PM_GUARD_REGION, kernel 6.15; pagemap.rst). Read only for mappings
// flagged "gu", the only ones that can have any.
std::vector<std::pair<std::uint64_t, std::uint64_t>> guard_runs(pid_t pid, const Vma& v) {
  UniqueFd pm(::open(fmt::format("/proc/{}/pagemap", pid).c_str(), O_RDONLY | O_CLOEXEC));
  if (!pm) fail_errno("cannot open /proc/{}/pagemap", pid);
  std::vector<std::pair<std::uint64_t, std::uint64_t>> runs;
  std::vector<std::uint64_t> e(512);
  for (std::uint64_t a = v.start; a < v.end;) {
    std::size_t n = std::min<std::uint64_t>(e.size(), (v.end - a) / 4096);
    ssize_t got = ::pread(pm.get(), e.data(), n * 8, static_cast<off_t>(a / 4096 * 8));
    if (got != static_cast<ssize_t>(n * 8)) fail_errno("cannot read /proc/{}/pagemap", pid);
    for (std::size_t i = 0; i < n; ++i) {
      if (!(e[i] & kPmGuardRegion)) continue;
      std::uint64_t at = (a - v.start) / 4096 + i;
      if (!runs.empty() && runs.back().first + runs.back().second == at)
        ++runs.back().second;
      else
        runs.emplace_back(at, 1);
    }
    a += n * 4096;
  }
  return runs;
}

constexpr long kPrGetMemoryMerge = 68;  // prctl(2), kernel 6.4; not in glibc 2.36
constexpr long kSysMseal = 462;         // mseal(2), kernel 6.10; not in glibc 2.36

}  // namespace

void dump_vma_flags(pid_t pid, const MapsEntry& m, Vma& v, const std::string& where,
                    bool uffd_wp_ours) {
  v.vmflags.clear();
  if (is_kernel_mapping(v.kind)) return;  // the kernel maps them, flags and all
  v.guards.clear();
  if (has(m.vmflags, "gu")) v.guards = guard_runs(pid, v);
  if (m.pkey != 0)
    fail_unsupported("{}: memory protection key {} (pkey_mprotect) is not supported", where,
                     m.pkey);
  for (auto& f : m.vmflags) {
    if (in(kDerived, f) || in(kAdvised, f) || in(kOtherRestored, f)) continue;
    if (f == "uw" && uffd_wp_ours) continue;  // the engine's tracking, not the job's
    for (auto& [name, what] : kRefused)
      if (f == name) fail_unsupported("{}: {} (VmFlags {}) is not supported", where, what, f);
    fail_unsupported("{}: VmFlags \"{}\" is unknown to this engine: not supported", where, f);
  }
  if (has(m.vmflags, "lf") && !has(m.vmflags, "lo"))
    fail_unsupported("{}: VmFlags lf without lo: not supported", where);
  v.vmflags = restorable(m.vmflags, v);
}

void dump_mm_locks(DumpProcess& p) {
  Process& r = p.rec;
  std::string who = fmt::format("process {} (pid {} in the job)", p.host_pid, r.pid);
  // mlockall(MCL_FUTURE) lives in mm->def_flags, which no /proc file shows; but every
  // mapping made since carries it, the dumper's scratch mapping too. A locked mapping
  // counts in mm->locked_vm (mmap_region), so with VmLck at 0 the scratch is not
  // locked, and smaps, which walks every page table (~8 ms a GiB, frozen), is not read.
  r.mlockall = 0;
  const auto status = read_status(p.host_pid);
  const auto vmlck = status.find("VmLck");
  if (vmlck == status.end() || std::stoull(vmlck->second) != 0) {
    for (auto& e : read_smaps(p.host_pid))
      if (e.start <= p.scratch && p.scratch < e.end) {
        if (has(e.vmflags, "lo")) r.mlockall |= MCL_FUTURE;
        if (has(e.vmflags, "lf")) r.mlockall |= MCL_ONFAULT;
      }
  }
  long merge = p.inj->call(SYS_prctl, kPrGetMemoryMerge);
  if (merge > 0)
    fail_unsupported("{}: KSM merging of all its memory (PR_SET_MEMORY_MERGE) is not supported",
                     who);
  // The kernel checks the limit at each mlock; the restore locks what the job had, as
  // the job. CAP_IPC_LOCK (of the locking thread, the leader here and at restore)
  // lifts the limit.
  std::uint64_t locked = 0;
  for (auto& v : r.vmas)
    if (has(v.vmflags, "lo")) locked += v.end - v.start;
  if (locked == 0 || r.threads.empty()) return;
  if (r.threads[0].confinement.cap_eff & (1ULL << CAP_IPC_LOCK)) return;
  for (auto& rl : r.rlimits)
    if (rl.resource == RLIMIT_MEMLOCK && rl.cur != RLIM_INFINITY && locked > rl.cur)
      fail_unsupported(
          "{}: {} bytes of locked memory (mlock) exceed its RLIMIT_MEMLOCK of {} bytes (lowered "
          "after locking): a restore could not lock them again: not supported",
          who, locked, rl.cur);
}

void restore_vma_advice(Injector& inj, int pid, const Vma& v) {
  for (auto [first, count] : v.guards) {
    if (first >= (v.end - v.start) / 4096 || count > (v.end - v.start) / 4096 - first)
      fail_image("image: {}: guard region beyond the mapping", where_in(pid, v));
    inj.call_ok(fmt::format("{}: madvise MADV_GUARD_INSTALL of {} pages at page {}",
                            where_in(pid, v), count, first),
                SYS_madvise, v.start + first * 4096, count * 4096,
                static_cast<std::uint64_t>(kMadvGuardInstall));
  }
  for (auto [flag, adv] : kAdvised)
    if (has(v.vmflags, flag))
      inj.call_ok(fmt::format("{}: madvise {}", where_in(pid, v), flag), SYS_madvise, v.start,
                  v.end - v.start, static_cast<std::uint64_t>(adv));
}

void restore_vma_locks(RestoreProcess& p) {
  const Process& r = *p.rec;
  Injector& inj = p.leader();
  for (const Vma& v : r.vmas) {
    if (!has(v.vmflags, "lo")) continue;
    // Refused here only if the job's limit was lowered after it locked (the dump
    // refuses that): an error naming the mapping, never an unlocked mapping.
    inj.call_ok(fmt::format("{}: mlock2 (RLIMIT_MEMLOCK of the job)", where_in(r.pid, v)),
                SYS_mlock2, v.start, v.end - v.start,
                has(v.vmflags, "lf") ? std::uint64_t{MLOCK_ONFAULT} : 0);
  }
  if (r.mlockall & MCL_FUTURE)
    inj.call_ok(fmt::format("process {}: mlockall({:#x})", r.pid, r.mlockall), SYS_mlockall,
                static_cast<std::uint64_t>(r.mlockall));
  // Sealing forbids changing the mapping afterwards: last.
  for (const Vma& v : r.vmas)
    if (has(v.vmflags, "sl"))
      inj.call_ok(fmt::format("{}: mseal", where_in(r.pid, v)), kSysMseal, v.start, v.end - v.start,
                  0);

  // Read back: every restored flag as the image has it. Neighbouring mappings the
  // kernel merged are looked at piece by piece.
  auto now = read_smaps(p.host_pid);
  for (const Vma& v : r.vmas) {
    if (is_kernel_mapping(v.kind)) continue;
    auto want = v.vmflags;
    std::sort(want.begin(), want.end());
    for (auto& e : now) {
      if (e.end <= v.start || e.start >= v.end) continue;
      auto got = restorable(e.vmflags, v);
      // An older engine's image recorded only these; the rest it did not look at.
      if (!r.vmflags_all)
        std::erase_if(got, [](const std::string& f) {
          return f != "gd" && f != "dc" && f != "hg" && f != "nh" && f != "dd";
        });
      if (got != want)
        fail("{}: VmFlags [{}] after restore, the image has [{}]", where_in(r.pid, v),
             fmt::join(got, " "), fmt::join(want, " "));
    }
    if (!v.guards.empty() && guard_runs(p.host_pid, v) != v.guards)
      fail("{}: its guard regions differ from the image's after restore", where_in(r.pid, v));
  }
}

}  // namespace fsched::ckpt
