#include "ckpt/inject.h"

#include <signal.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <cerrno>

#include "common/error.h"

// A `syscall; int3` gadget in our own text: helper processes forked from the
// restorer share it at the same address, so the first injected mmap needs no code
// written into them.
asm(".pushsection .text\n"
    ".globl fsched_syscall_gadget\n"
    ".type fsched_syscall_gadget, @function\n"
    "fsched_syscall_gadget:\n"
    "  syscall\n"
    "  int3\n"
    ".popsection\n");
extern "C" void fsched_syscall_gadget();

namespace fsched::ckpt {
namespace {

// Kernel-internal restart codes (include/linux/errno.h), never seen by user space
// except in the registers of a thread stopped inside a syscall.
constexpr long kERESTARTSYS = 512;
constexpr long kERESTARTNOINTR = 513;
constexpr long kERESTARTNOHAND = 514;
constexpr long kERESTART_RESTARTBLOCK = 516;

long ptrace_req(int req, pid_t tid, void* addr, void* data, const char* what) {
  long r = ::ptrace(static_cast<__ptrace_request>(req), tid, addr, data);
  if (r < 0) fail_errno("ptrace({}) on thread {}", what, tid);
  return r;
}

}  // namespace

std::uint64_t local_syscall_gadget() {
  return reinterpret_cast<std::uint64_t>(&fsched_syscall_gadget);
}

void seize_and_interrupt(pid_t tid, unsigned options) {
  if (::ptrace(PTRACE_SEIZE, tid, nullptr, reinterpret_cast<void*>(uintptr_t{options})) < 0) {
    if (errno == EPERM)
      fail_errno("cannot attach to thread {} (is it already traced by a debugger?)", tid);
    fail_errno("cannot attach to thread {}", tid);
  }
  ptrace_req(PTRACE_INTERRUPT, tid, nullptr, nullptr, "INTERRUPT");
}

int wait_for_stop(pid_t tid) {
  int status = 0;
  for (;;) {
    pid_t r = ::waitpid(tid, &status, __WALL);
    if (r < 0) {
      if (errno == EINTR) continue;
      fail_errno("waitpid on thread {}", tid);
    }
    break;
  }
  if (WIFEXITED(status) || WIFSIGNALED(status))
    fail("thread {} exited while being checkpointed (status {:#x})", tid, status);
  return status;
}

void seize_and_stop(pid_t tid, unsigned options) {
  seize_and_interrupt(tid, options);
  wait_for_stop(tid);
}

user_regs_struct get_regs(pid_t tid) {
  user_regs_struct r{};
  ptrace_req(PTRACE_GETREGS, tid, nullptr, &r, "GETREGS");
  return r;
}

void set_regs(pid_t tid, const user_regs_struct& regs) {
  ptrace_req(PTRACE_SETREGS, tid, nullptr, const_cast<user_regs_struct*>(&regs), "SETREGS");
}

std::uint64_t get_sigmask(pid_t tid) {
  std::uint64_t m = 0;
  ptrace_req(PTRACE_GETSIGMASK, tid, reinterpret_cast<void*>(sizeof m), &m, "GETSIGMASK");
  return m;
}

void set_sigmask(pid_t tid, std::uint64_t mask) {
  ptrace_req(PTRACE_SETSIGMASK, tid, reinterpret_cast<void*>(sizeof mask), &mask, "SETSIGMASK");
}

void fixup_syscall_restart(user_regs_struct& regs, bool same_task) {
  if (static_cast<long>(regs.orig_rax) < 0) return;
  long ret = static_cast<long>(regs.rax);
  switch (-ret) {
    case kERESTARTSYS:
    case kERESTARTNOINTR:
    case kERESTARTNOHAND:
      regs.rax = regs.orig_rax;
      regs.rip -= 2;
      break;
    case kERESTART_RESTARTBLOCK:
      regs.rax = same_task ? SYS_restart_syscall : regs.orig_rax;
      regs.rip -= 2;
      break;
    default:
      break;
  }
  regs.orig_rax = static_cast<unsigned long long>(-1);
}

Injector::Injector(pid_t tid, std::uint64_t syscall_ip) : tid_(tid), syscall_ip_(syscall_ip) {
  saved_ = get_regs(tid);
  saved_mask_ = get_sigmask(tid);
  set_sigmask(tid, ~std::uint64_t{0});
}

Injector::~Injector() {
  try {
    restore();
  } catch (...) {
    // The thread is gone or the tracer lost it; nothing left to put back.
  }
}

void Injector::set_final_state(const user_regs_struct& regs, std::uint64_t mask, bool same_task) {
  saved_ = regs;
  saved_mask_ = mask;
  same_task_ = same_task;
  restored_ = false;
}

void Injector::restore() {
  if (restored_) return;
  restored_ = true;
  user_regs_struct r = saved_;
  // After an injected syscall the thread sits in a syscall-exit stop, outside the
  // kernel's signal path that would otherwise turn -ERESTART* into a re-run.
  if (injected_ || !same_task_) fixup_syscall_restart(r, same_task_);
  set_regs(tid_, r);
  set_sigmask(tid_, saved_mask_);
}

long Injector::call(long nr, std::uint64_t a1, std::uint64_t a2, std::uint64_t a3,
                    std::uint64_t a4, std::uint64_t a5, std::uint64_t a6) {
  user_regs_struct r = saved_;
  r.rip = syscall_ip_;
  r.rax = static_cast<unsigned long long>(nr);
  r.orig_rax = static_cast<unsigned long long>(-1);
  r.rdi = a1;
  r.rsi = a2;
  r.rdx = a3;
  r.r10 = a4;
  r.r8 = a5;
  r.r9 = a6;
  set_regs(tid_, r);
  injected_ = true;
  restored_ = false;

  bool entered = false;
  for (;;) {
    ptrace_req(PTRACE_SYSCALL, tid_, nullptr, nullptr, "SYSCALL");
    int status = wait_for_stop(tid_);
    if (!WIFSTOPPED(status)) fail("thread {}: unexpected wait status {:#x}", tid_, status);
    int sig = WSTOPSIG(status);
    int event = status >> 16;
    if (sig == (SIGTRAP | 0x80)) {
      if (!entered) {
        entered = true;
        continue;
      }
      break;  // syscall-exit stop
    }
    if (sig == SIGTRAP && (event == PTRACE_EVENT_FORK || event == PTRACE_EVENT_CLONE ||
                           event == PTRACE_EVENT_VFORK)) {
      unsigned long msg = 0;
      ptrace_req(PTRACE_GETEVENTMSG, tid_, nullptr, &msg, "GETEVENTMSG");
      last_child_ = static_cast<pid_t>(msg);
      continue;
    }
    if (event == PTRACE_EVENT_STOP) continue;  // a group-stop or late interrupt: go on
    fail("thread {}: unexpected stop (signal {}, event {}) while running syscall {}", tid_, sig,
         event, nr);
  }
  return static_cast<long>(get_regs(tid_).rax);
}

long Injector::call_ok(const std::string& what, long nr, std::uint64_t a1, std::uint64_t a2,
                       std::uint64_t a3, std::uint64_t a4, std::uint64_t a5, std::uint64_t a6) {
  long r = call(nr, a1, a2, a3, a4, a5, a6);
  if (r < 0 && r > -4096) throw Error(fmt::format("thread {}: {}", tid_, what), static_cast<int>(-r));
  return r;
}

}  // namespace fsched::ckpt
