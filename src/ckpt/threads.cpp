// Threads: registers, FPU/SSE/AVX xstate, signal mask, rseq registration, robust
// futex list, clear-child-TID address, sigaltstack and name of every thread, and
// creating the threads of a restored process with their saved TIDs.
// Interfaces: ptrace(2) GETREGS/GETREGSET(NT_X86_XSTATE)/GET_RSEQ_CONFIGURATION,
// get_robust_list(2), prctl(2) PR_GET_TID_ADDRESS, sigaltstack(2), clone3(2).
#include "ckpt/threads.h"

#include <elf.h>
#include <linux/sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstring>

#include "ckpt/confine.h"
#include "ckpt/mempolicy.h"
#include "ckpt/procattr.h"
#include "ckpt/proc.h"
#include "ckpt/remote.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {

constexpr std::size_t kXstateMax = 64 * 1024;

std::vector<std::uint64_t> regs_to_words(const user_regs_struct& r) {
  std::vector<std::uint64_t> w(sizeof r / 8);
  std::memcpy(w.data(), &r, sizeof r);
  return w;
}

user_regs_struct words_to_regs(const std::vector<std::uint64_t>& w) {
  user_regs_struct r{};
  if (w.size() != sizeof r / 8)
    fail_image("image: register set has {} words, expected {}", w.size(), sizeof r / 8);
  std::memcpy(&r, w.data(), sizeof r);
  return r;
}

std::vector<std::string> peek_siginfo(pid_t tid, unsigned flags) {
  std::vector<std::string> out;
  for (std::uint64_t off = 0;;) {
    __ptrace_peeksiginfo_args a{off, flags, 32};
    siginfo_t si[32];
    long n = ::ptrace(static_cast<__ptrace_request>(PTRACE_PEEKSIGINFO), tid, &a, si);
    if (n < 0) fail_errno("ptrace(PEEKSIGINFO) on thread {}", tid);
    for (long i = 0; i < n; ++i) out.push_back(to_hex(&si[i], sizeof(siginfo_t)));
    if (n < 32) break;
    off += static_cast<std::uint64_t>(n);
  }
  return out;
}

// A thread stopped inside an rseq critical section would have been sent to the
// section's abort handler by the kernel on its way back to user space (rseq(2)); the
// image records it as already sent there, since the restored thread starts afresh.
void abort_rseq_critical_section(pid_t pid, const Thread& t, user_regs_struct& regs) {
  if (!t.rseq_len) return;
  std::uint64_t cs_ptr = 0;
  remote_read(pid, t.rseq_addr + 8, &cs_ptr, sizeof cs_ptr);  // struct rseq.rseq_cs
  if (!cs_ptr) return;
  struct {
    std::uint32_t version, flags;
    std::uint64_t start_ip, post_commit_offset, abort_ip;
  } cs{};
  remote_read(pid, cs_ptr, &cs, sizeof cs);
  if (regs.rip >= cs.start_ip && regs.rip < cs.start_ip + cs.post_commit_offset) {
    regs.rip = cs.abort_ip;
    regs.orig_rax = static_cast<unsigned long long>(-1);
  }
}

}  // namespace

std::vector<std::uint8_t> read_xstate(pid_t tid) {
  std::vector<std::uint8_t> buf(kXstateMax);
  iovec iov{buf.data(), buf.size()};
  if (::ptrace(PTRACE_GETREGSET, tid, reinterpret_cast<void*>(NT_X86_XSTATE), &iov) < 0)
    fail_errno("ptrace(GETREGSET, NT_X86_XSTATE) on thread {}", tid);
  buf.resize(iov.iov_len);
  return buf;
}

void dump_threads(DumpProcess& p, std::uint64_t xstate_size) {
  for (std::size_t i = 0; i < p.host_tids.size(); ++i) {
    pid_t tid = p.host_tids[i];
    Thread& t = p.rec.threads.at(i);
    std::unique_ptr<Injector> own;
    Injector* inj = p.inj.get();
    if (i != 0) {
      own = std::make_unique<Injector>(tid, p.heal);
      inj = own.get();
    }
    user_regs_struct regs = inj->saved_regs();
    t.sigmask = inj->saved_sigmask();
    auto xs = read_xstate(tid);
    if (xs.size() != xstate_size)
      fail("thread {}: xstate is {} bytes, expected {}", tid, xs.size(), xstate_size);
    t.xstate_hex = to_hex(xs.data(), xs.size());

    __ptrace_rseq_configuration rc{};
    long n = ::ptrace(static_cast<__ptrace_request>(PTRACE_GET_RSEQ_CONFIGURATION), tid,
                      reinterpret_cast<void*>(sizeof rc), &rc);
    if (n < 0) fail_errno("ptrace(GET_RSEQ_CONFIGURATION) on thread {}", tid);
    t.rseq_addr = rc.rseq_abi_pointer;
    t.rseq_len = rc.rseq_abi_size;
    t.rseq_sig = rc.signature;
    abort_rseq_critical_section(p.host_pid, t, regs);
    t.regs = regs_to_words(regs);

    void* head = nullptr;
    size_t len = 0;
    if (::syscall(SYS_get_robust_list, tid, &head, &len) < 0)
      fail_errno("get_robust_list of thread {}", tid);
    t.robust_list = reinterpret_cast<std::uint64_t>(head);
    t.robust_len = len;

    inj->call_ok("prctl(PR_GET_TID_ADDRESS)", SYS_prctl, PR_GET_TID_ADDRESS, p.scratch);
    remote_read(p.host_pid, p.scratch, &t.clear_tid_addr, sizeof t.clear_tid_addr);

    inj->call_ok("sigaltstack", SYS_sigaltstack, 0, p.scratch);
    stack_t ss{};
    remote_read(p.host_pid, p.scratch, &ss, sizeof ss);
    t.altstack_sp = reinterpret_cast<std::uint64_t>(ss.ss_sp);
    t.altstack_size = ss.ss_size;
    t.altstack_flags = ss.ss_flags & ~SS_ONSTACK;

    t.comm = read_file(fmt::format("/proc/{}/task/{}/comm", p.host_pid, tid));
    if (!t.comm.empty() && t.comm.back() == '\n') t.comm.pop_back();
    t.pending_hex = peek_siginfo(tid, 0);
    dump_confinement(tid, *inj, t);
    dump_thread_attrs(p.host_pid, tid, *inj, p.scratch, t);
    dump_thread_mempolicy(p.host_pid, tid, *inj, p.scratch, t);
  }
  p.rec.shared_pending_hex = peek_siginfo(p.host_pid, PTRACE_PEEKSIGINFO_SHARED);
}

void restore_threads(RestoreProcess& p, const InjectionArea& area) {
  const Process& r = *p.rec;
  pid_t hp = p.host_pid;
  Injector& leader = p.leader();
  for (std::size_t i = 1; i < r.threads.size(); ++i) {
    const Thread& t = r.threads[i];
    pid_t tid_arg = t.tid;
    remote_write(hp, area.data(), &tid_arg, sizeof tid_arg);
    clone_args ca{};
    ca.flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;
    ca.set_tid = area.data();
    ca.set_tid_size = 1;
    remote_write(hp, area.data() + 64, &ca, sizeof ca);
    long res = leader.call(SYS_clone3, area.data() + 64, sizeof ca);
    if (res < 0)
      throw Error(fmt::format("process {}: cannot create thread {}", r.pid, t.tid),
                  static_cast<int>(-res));
    if (res != t.tid) fail("process {}: thread {} created as {}", r.pid, t.tid, res);
    RestoreThread rt;
    rt.rec = &t;
    rt.host_tid = leader.last_child();
    wait_for_stop(rt.host_tid);
    rt.inj = std::make_unique<Injector>(rt.host_tid, area.code());
    p.threads.push_back(std::move(rt));
  }
  for (auto& rt : p.threads) {
    const Thread& t = *rt.rec;
    Injector& inj = *rt.inj;
    std::string who = fmt::format("process {} thread {}", r.pid, t.tid);
    if (t.rseq_len)
      inj.call_ok(who + ": rseq registration", SYS_rseq, t.rseq_addr, t.rseq_len, 0, t.rseq_sig);
    if (t.robust_list)
      inj.call_ok(who + ": set_robust_list", SYS_set_robust_list, t.robust_list, t.robust_len);
    inj.call(SYS_set_tid_address, t.clear_tid_addr);
    if (t.altstack_size || t.altstack_flags) {
      stack_t ss{};
      ss.ss_sp = reinterpret_cast<void*>(t.altstack_sp);
      ss.ss_size = t.altstack_size;
      ss.ss_flags = t.altstack_flags;
      remote_write(hp, area.data(), &ss, sizeof ss);
      inj.call_ok(who + ": sigaltstack", SYS_sigaltstack, area.data(), 0);
    }
    std::uint64_t name = put_string(hp, area, 0, t.comm.substr(0, 15));
    inj.call_ok(who + ": prctl(PR_SET_NAME)", SYS_prctl, PR_SET_NAME, name);
    auto xs = from_hex(t.xstate_hex);
    iovec iov{xs.data(), xs.size()};
    if (::ptrace(PTRACE_SETREGSET, rt.host_tid, reinterpret_cast<void*>(NT_X86_XSTATE), &iov) < 0)
      fail_errno("{}: ptrace(SETREGSET, NT_X86_XSTATE)", who);
    inj.set_final_state(words_to_regs(t.regs), t.sigmask, /*same_task=*/false);
  }
}

void restore_pending_signals(RestoreProcess& p, const InjectionArea& area) {
  const Process& r = *p.rec;
  auto queue = [&](Injector& inj, const std::string& hex, bool shared, int tid) {
    auto si = from_hex(hex);
    if (si.size() != sizeof(siginfo_t)) fail_image("image: bad siginfo of process {}", r.pid);
    siginfo_t info;
    std::memcpy(&info, si.data(), sizeof info);
    remote_write(p.host_pid, area.data(), si.data(), si.size());
    if (shared)
      inj.call_ok(fmt::format("process {}: queue pending signal {}", r.pid, info.si_signo),
                  SYS_rt_sigqueueinfo, static_cast<std::uint64_t>(r.pid),
                  static_cast<std::uint64_t>(info.si_signo), area.data());
    else
      inj.call_ok(fmt::format("thread {}: queue pending signal {}", tid, info.si_signo),
                  SYS_rt_tgsigqueueinfo, static_cast<std::uint64_t>(r.pid),
                  static_cast<std::uint64_t>(tid), static_cast<std::uint64_t>(info.si_signo),
                  area.data());
  };
  for (auto& rt : p.threads)
    for (auto& h : rt.rec->pending_hex) queue(*rt.inj, h, false, rt.rec->tid);
  for (auto& h : r.shared_pending_hex) queue(p.leader(), h, true, r.pid);
}

}  // namespace fsched::ckpt
