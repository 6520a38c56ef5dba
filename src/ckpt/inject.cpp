#include "ckpt/inject.h"

#include <signal.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <elf.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include <cerrno>

#include "common/error.h"
#include "common/fd.h"

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

// The healing code (see HealCode in inject.h), assembled here and copied into the job's
// vDSO; its data slots follow it and are addressed RIP-relative, so it runs wherever it
// is copied. After the injected syscall it puts back the thread's signal mask
// (rt_sigprocmask), its flags (through a slot 256 bytes below the thread's stack
// pointer, beyond the ABI's 128-byte red zone), every general register, and jumps to
// the instruction the thread was stopped at. Never executed in this program.
asm(".pushsection .text\n"
    ".globl fsched_heal_start\n"
    ".globl fsched_heal_data\n"
    ".globl fsched_heal_end\n"
    "fsched_heal_start:\n"
    "  syscall\n"
    "  mov $14, %eax\n"  // rt_sigprocmask(SIG_SETMASK, &mask, 0, 8)
    "  mov $2, %edi\n"
    "  lea fsched_heal_data+144(%rip), %rsi\n"
    "  xor %edx, %edx\n"
    "  mov $8, %r10d\n"
    "  syscall\n"
    "  mov fsched_heal_data+16(%rip), %rsp\n"
    "  lea -256(%rsp), %rsp\n"
    "  pushq fsched_heal_data+8(%rip)\n"
    "  popfq\n"
    "  mov fsched_heal_data+24(%rip), %rax\n"
    "  mov fsched_heal_data+32(%rip), %rbx\n"
    "  mov fsched_heal_data+40(%rip), %rcx\n"
    "  mov fsched_heal_data+48(%rip), %rdx\n"
    "  mov fsched_heal_data+56(%rip), %rsi\n"
    "  mov fsched_heal_data+64(%rip), %rdi\n"
    "  mov fsched_heal_data+72(%rip), %rbp\n"
    "  mov fsched_heal_data+80(%rip), %r8\n"
    "  mov fsched_heal_data+88(%rip), %r9\n"
    "  mov fsched_heal_data+96(%rip), %r10\n"
    "  mov fsched_heal_data+104(%rip), %r11\n"
    "  mov fsched_heal_data+112(%rip), %r12\n"
    "  mov fsched_heal_data+120(%rip), %r13\n"
    "  mov fsched_heal_data+128(%rip), %r14\n"
    "  mov fsched_heal_data+136(%rip), %r15\n"
    "  mov fsched_heal_data+16(%rip), %rsp\n"
    "  jmp *fsched_heal_data+0(%rip)\n"
    "  .balign 8\n"
    "fsched_heal_data:\n"
    "  .zero 152\n"
    "fsched_heal_end:\n"
    ".popsection\n");
extern "C" const unsigned char fsched_heal_start[], fsched_heal_data[], fsched_heal_end[];

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

// What the healing code reads back, at fsched_heal_data: the offsets above.
struct HealData {
  std::uint64_t rip, rflags, rsp, rax, rbx, rcx, rdx, rsi, rdi, rbp;
  std::uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
  std::uint64_t sigmask;
};
static_assert(sizeof(HealData) == 152);

HealCode install_heal_code(pid_t pid, std::uint64_t vdso_start, std::uint64_t vdso_end) {
  const std::size_t size = static_cast<std::size_t>(fsched_heal_end - fsched_heal_start);
  const std::size_t data_off = static_cast<std::size_t>(fsched_heal_data - fsched_heal_start);
  // The vDSO is an ELF image padded with zeros to whole pages: the code goes into that
  // padding, past the end of the image's section headers, where nothing ever jumps.
  std::vector<unsigned char> vdso(vdso_end - vdso_start);
  UniqueFd mem(::open(fmt::format("/proc/{}/mem", pid).c_str(), O_RDWR | O_CLOEXEC));
  if (!mem) fail_errno("process {}: open /proc/{}/mem", pid, pid);
  if (::pread(mem.get(), vdso.data(), vdso.size(), static_cast<off_t>(vdso_start)) !=
      static_cast<ssize_t>(vdso.size()))
    fail_errno("process {}: reading its vDSO", pid);
  Elf64_Ehdr eh{};
  std::memcpy(&eh, vdso.data(), std::min(sizeof eh, vdso.size()));
  std::uint64_t image_end = eh.e_shoff + std::uint64_t{eh.e_shentsize} * eh.e_shnum;
  std::size_t at = (vdso.size() - size) & ~std::size_t{63};
  if (std::memcmp(vdso.data(), ELFMAG, SELFMAG) != 0 || image_end > at)
    fail_unsupported("process {}: its vDSO has no room for the dump's healing code", pid);
  bool ours = std::memcmp(vdso.data() + at, fsched_heal_start, data_off) == 0;
  for (std::size_t i = at; i < vdso.size() && !ours; ++i)
    if (vdso[i]) fail_unsupported("process {}: the tail of its vDSO is not padding", pid);
  // /proc/PID/mem writes even a read-only mapping, into a private copy of the page for
  // that process (ptrace(2), FOLL_FORCE); the job's vDSO code is untouched.
  if (!ours && ::pwrite(mem.get(), fsched_heal_start, size, static_cast<off_t>(vdso_start + at)) !=
                   static_cast<ssize_t>(size))
    fail_errno("process {}: writing the healing code into its vDSO", pid);
  return HealCode{vdso_start + at, vdso_start + at + data_off};
}

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

Injector::Injector(pid_t tid, const HealCode& heal)
    : tid_(tid), syscall_ip_(heal.entry), heal_data_(heal.data) {
  saved_ = get_regs(tid);
  saved_mask_ = get_sigmask(tid);
  mem_.reset(::open(fmt::format("/proc/{}/mem", tid).c_str(), O_RDWR | O_CLOEXEC));
  if (!mem_) fail_errno("thread {}: open /proc/{}/mem", tid, tid);
  // The thread rests in its own state between calls: nothing is borrowed yet.
  restored_ = true;
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
  if (heal_data_) {
    // The mask first: a thread let go between the two runs the healing code, which
    // sets the same mask again and then the registers.
    set_sigmask(tid_, saved_mask_);
    set_regs(tid_, r);
    return;
  }
  set_regs(tid_, r);
  set_sigmask(tid_, saved_mask_);
}

long Injector::call(long nr, std::uint64_t a1, std::uint64_t a2, std::uint64_t a3, std::uint64_t a4,
                    std::uint64_t a5, std::uint64_t a6) {
  if (heal_data_) {
    // Tell the healing code what to put back should we die before we do: the state
    // restore() would install, and the thread's own mask. Registers first, then the
    // mask: at every instant either the thread is in its own state or it runs the
    // healing code when let go.
    user_regs_struct own = saved_;
    fixup_syscall_restart(own, true);
    HealData d{own.rip, own.eflags, own.rsp, own.rax, own.rbx,    own.rcx, own.rdx,
               own.rsi, own.rdi,    own.rbp, own.r8,  own.r9,     own.r10, own.r11,
               own.r12, own.r13,    own.r14, own.r15, saved_mask_};
    if (::pwrite(mem_.get(), &d, sizeof d, static_cast<off_t>(heal_data_)) != sizeof d)
      fail_errno("thread {}: writing the healing data", tid_);
  }
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
  if (heal_data_) set_sigmask(tid_, ~std::uint64_t{0});

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
  long result = static_cast<long>(get_regs(tid_).rax);
  if (heal_data_) restore();  // mask, then registers: back in its own state at once
  return result;
}

long Injector::call_ok(const std::string& what, long nr, std::uint64_t a1, std::uint64_t a2,
                       std::uint64_t a3, std::uint64_t a4, std::uint64_t a5, std::uint64_t a6) {
  long r = call(nr, a1, a2, a3, a4, a5, a6);
  if (r < 0 && r > -4096)
    throw Error(fmt::format("thread {}: {}", tid_, what), static_cast<int>(-r));
  return r;
}

}  // namespace fsched::ckpt
