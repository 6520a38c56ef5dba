// Signals: the disposition of every signal (rt_sigaction(2), read and set from
// inside the process by injection). Per-thread masks and pending signals are saved
// with the threads (threads.cpp).
#include <signal.h>
#include <sys/syscall.h>

#include "ckpt/parts.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {

// The kernel's struct sigaction on x86_64 (not glibc's).
struct KernelSigaction {
  std::uint64_t handler, flags, restorer, mask;
};
constexpr int kMaxSig = 64;

}  // namespace

void dump_signals(DumpProcess& p) {
  p.rec.sigactions.clear();
  for (int sig = 1; sig <= kMaxSig; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    p.inj->call_ok(fmt::format("rt_sigaction({})", sig), SYS_rt_sigaction,
                   static_cast<std::uint64_t>(sig), 0, p.scratch, 8);
    KernelSigaction ks{};
    remote_read(p.host_pid, p.scratch, &ks, sizeof ks);
    if (ks.handler == 0 && ks.flags == 0 && ks.mask == 0) continue;  // SIG_DFL
    p.rec.sigactions.push_back({sig, ks.handler, ks.flags, ks.restorer, ks.mask});
  }
}

void restore_signals(RestoreProcess& p, const InjectionArea& area) {
  std::vector<KernelSigaction> all(kMaxSig + 1, KernelSigaction{0, 0, 0, 0});
  for (auto& a : p.rec->sigactions) {
    if (a.sig < 1 || a.sig > kMaxSig) fail("image: bad signal number {}", a.sig);
    all[static_cast<std::size_t>(a.sig)] = {a.handler, a.flags, a.restorer, a.mask};
  }
  for (int sig = 1; sig <= kMaxSig; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    remote_write(p.host_pid, area.data(), &all[static_cast<std::size_t>(sig)],
                 sizeof(KernelSigaction));
    p.leader().call_ok(fmt::format("process {}: rt_sigaction({})", p.rec->pid, sig),
                       SYS_rt_sigaction, static_cast<std::uint64_t>(sig), area.data(), 0, 8);
  }
}

}  // namespace fsched::ckpt
