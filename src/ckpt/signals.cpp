// Signals: the disposition of every signal (rt_sigaction(2), read and set from
// inside the process by injection). Per-thread masks and pending signals are saved
// with the threads (threads.cpp).
#include "ckpt/signals.h"

#include <signal.h>
#include <sys/syscall.h>

#include <charconv>

#include "ckpt/proc.h"
#include "ckpt/remote.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {

// The kernel's struct sigaction on x86_64 (not glibc's).
struct KernelSigaction {
  std::uint64_t handler, flags, restorer, mask;
};
constexpr int kMaxSig = 64;

// A signal mask of /proc/PID/status ("SigCgt", "SigIgn": 16 hex digits, bit sig-1).
std::uint64_t status_mask(const std::map<std::string, std::string>& st, const char* key,
                          pid_t pid) {
  auto it = st.find(key);
  std::uint64_t v = 0;
  if (it == st.end() ||
      std::from_chars(it->second.data(), it->second.data() + it->second.size(), v, 16).ec !=
          std::errc())
    fail("no valid {} in /proc/{}/status", key, pid);
  return v;
}

// Bit sig-1 set for each signal that process pid catches or ignores (SigCgt, SigIgn),
// and for SIGCHLD (see dump_signals()); never SIGKILL or SIGSTOP.
std::uint64_t non_default_signals(pid_t pid) {
  auto st = read_status(pid);
  std::uint64_t set = status_mask(st, "SigCgt", pid) | status_mask(st, "SigIgn", pid) |
                      std::uint64_t{1} << (SIGCHLD - 1);
  return set & ~(std::uint64_t{1} << (SIGKILL - 1) | std::uint64_t{1} << (SIGSTOP - 1));
}

}  // namespace

void dump_signals(DumpProcess& p) {
  p.rec.sigactions.clear();
  // Only signals caught or ignored (proc(5) SigCgt, SigIgn) are asked about: an
  // injected syscall costs ~0.1 ms of freeze here, and most of the 62 are at SIG_DFL,
  // where flags and mask have no effect -- except SIGCHLD's SA_NOCLDSTOP and
  // SA_NOCLDWAIT, so SIGCHLD is always asked about.
  const std::uint64_t set = non_default_signals(p.host_pid);
  for (int sig = 1; sig <= kMaxSig; ++sig) {
    if (!(set >> (sig - 1) & 1)) continue;
    p.inj->call_ok(fmt::format("rt_sigaction({})", sig), SYS_rt_sigaction,
                   static_cast<std::uint64_t>(sig), 0, p.scratch, 8);
    KernelSigaction ks{};
    remote_read(p.host_pid, p.scratch, &ks, sizeof ks);
    if (ks.handler == 0 && ks.flags == 0 && ks.mask == 0) continue;  // SIG_DFL
    p.rec.sigactions.push_back({sig, ks.handler, ks.flags, ks.restorer, ks.mask});
  }
}

void restore_signals(RestoreProcess& p, const InjectionArea& area) {
  // The image's dispositions, and SIG_DFL for the signals the helper process caught or
  // ignored (SigCgt, SigIgn: inherited from the restore's init), and SIGCHLD (see
  // dump_signals()); no call for the others, already at SIG_DFL. Injected syscalls
  // into a process that just got gigabytes of memory took up to 1 ms each here.
  std::vector<KernelSigaction> all(kMaxSig + 1, KernelSigaction{0, 0, 0, 0});
  std::uint64_t set = non_default_signals(p.host_pid);
  for (auto& a : p.rec->sigactions) {
    if (a.sig < 1 || a.sig > kMaxSig) fail_image("image: bad signal number {}", a.sig);
    all[static_cast<std::size_t>(a.sig)] = {a.handler, a.flags, a.restorer, a.mask};
    set |= std::uint64_t{1} << (a.sig - 1);
  }
  static_assert((kMaxSig + 1) * sizeof(KernelSigaction) <= kInjectionAreaBytes - 4096);  // data()
  remote_write(p.host_pid, area.data(), all.data(), all.size() * sizeof(KernelSigaction));
  for (int sig = 1; sig <= kMaxSig; ++sig) {
    // SIGKILL and SIGSTOP: a (tampered) image may name them; they cannot be set.
    if (sig == SIGKILL || sig == SIGSTOP || !(set >> (sig - 1) & 1)) continue;
    p.leader().call_ok(fmt::format("process {}: rt_sigaction({})", p.rec->pid, sig),
                       SYS_rt_sigaction, static_cast<std::uint64_t>(sig),
                       area.data() + static_cast<std::uint64_t>(sig) * sizeof(KernelSigaction), 0,
                       8);
  }
}

}  // namespace fsched::ckpt
