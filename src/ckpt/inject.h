// Ptrace attachment and syscall injection ("compel" in CRIU's terms): running one
// system call inside a stopped thread of the job, from outside, without leaving
// code behind. See ptrace(2), PTRACE_SYSCALL and PTRACE_SETREGS.
#pragma once

#include <sys/types.h>
#include <sys/user.h>

#include <cstdint>
#include <string>

#include "common/fd.h"

namespace fsched::ckpt {

// PTRACE_O_TRACESYSGOOD | PTRACE_O_SUSPEND_SECCOMP: the job's own seccomp filters must
// not see (and kill the job for) the syscalls the dump injects.
inline constexpr unsigned kSeizeOptions = 0x1 | (1u << 21);

// Attaches to thread `tid` with PTRACE_SEIZE and stops it with PTRACE_INTERRUPT,
// waiting for the stop. Throws Error naming tid on failure (ESRCH, EPERM when
// another tracer is attached).
void seize_and_stop(pid_t tid, unsigned options);

// PTRACE_SEIZE + PTRACE_INTERRUPT without waiting; wait_for_stop() completes it.
void seize_and_interrupt(pid_t tid, unsigned options);
// Waits for a ptrace stop of `tid` (waitpid __WALL). Returns the wait status.
// Throws Error if the thread exited instead.
int wait_for_stop(pid_t tid);

user_regs_struct get_regs(pid_t tid);
void set_regs(pid_t tid, const user_regs_struct& regs);
std::uint64_t get_sigmask(pid_t tid);
void set_sigmask(pid_t tid, std::uint64_t mask);

// Undoes the kernel's "interrupted system call" encoding in saved registers so that
// the thread re-executes the syscall when resumed outside the kernel's signal path:
// -ERESTARTSYS/-ERESTARTNOINTR/-ERESTARTNOHAND re-run the syscall;
// -ERESTART_RESTARTBLOCK runs restart_syscall(2) when `same_task` (the kernel still
// holds the restart state), otherwise re-runs the original syscall (a restored
// nanosleep sleeps its full interval again rather than failing with EINTR).
// orig_rax is set to -1 so the kernel does not apply the fixup a second time.
void fixup_syscall_restart(user_regs_struct& regs, bool same_task);

// Healing code in a job's process: an injected syscall's `syscall` instruction followed
// by code that puts back the thread's signal mask and registers and resumes it where it
// was stopped. A dump injects through it, so that a dumper killed at any instant
// (SIGKILL, OOM) leaves no thread of the job with borrowed registers or mask: a thread
// let go mid-call finishes the call and heals itself; one let go between calls is
// already in its own state.
struct HealCode {
  std::uint64_t entry = 0;  // address of the `syscall` the injected calls run
  std::uint64_t data = 0;   // address of the saved state the code reads (152 bytes)
};
// Writes the healing code into the zero padding at the end of process `pid`'s vDSO
// [vdso_start, vdso_end) through /proc/PID/mem (a private copy of that page). Idempotent.
// Throws Error naming the process when the vDSO has no such padding.
HealCode install_heal_code(pid_t pid, std::uint64_t vdso_start, std::uint64_t vdso_end);

// Runs system calls inside one stopped, seized thread. The thread's registers and
// signal mask are saved on construction (all signals are blocked while injecting, so
// no handler runs) and put back by restore() or the destructor.
class Injector {
 public:
  // syscall_ip: address of a `syscall` instruction mapped executable in the thread's
  // address space.
  Injector(pid_t tid, std::uint64_t syscall_ip);
  // A healing injector (HealCode): the thread keeps its own registers and mask between
  // calls, and each call borrows them only while it runs.
  Injector(pid_t tid, const HealCode& heal);
  ~Injector();
  Injector(const Injector&) = delete;
  Injector& operator=(const Injector&) = delete;

  // Runs syscall `nr` with up to six arguments; returns the raw kernel result
  // (negative errno on failure). Fork/clone events during the call are recorded:
  // last_child() is the host PID/TID of the new task. Throws Error on a ptrace
  // failure or if the thread dies.
  long call(long nr, std::uint64_t a1 = 0, std::uint64_t a2 = 0, std::uint64_t a3 = 0,
            std::uint64_t a4 = 0, std::uint64_t a5 = 0, std::uint64_t a6 = 0);
  // Like call() but throws Error("<what>: <errno text>") when the result is negative.
  long call_ok(const std::string& what, long nr, std::uint64_t a1 = 0, std::uint64_t a2 = 0,
               std::uint64_t a3 = 0, std::uint64_t a4 = 0, std::uint64_t a5 = 0,
               std::uint64_t a6 = 0);

  void set_syscall_ip(std::uint64_t ip) { syscall_ip_ = ip; }
  pid_t tid() const { return tid_; }
  pid_t last_child() const { return last_child_; }
  const user_regs_struct& saved_regs() const { return saved_; }
  std::uint64_t saved_sigmask() const { return saved_mask_; }

  // Puts back the saved registers (with fixup_syscall_restart(same_task=true) when a
  // syscall was injected) and signal mask. Idempotent.
  void restore();
  // The thread has exited: restore() and the destructor leave it alone.
  void abandon() { restored_ = true; }
  // Replaces what restore() puts back: used by the restorer to install the job's
  // registers and mask in a new thread.
  void set_final_state(const user_regs_struct& regs, std::uint64_t mask, bool same_task);

 private:
  pid_t tid_;
  std::uint64_t syscall_ip_;
  user_regs_struct saved_{};
  std::uint64_t saved_mask_ = 0;
  bool injected_ = false;
  bool restored_ = false;
  bool same_task_ = true;
  pid_t last_child_ = 0;
  std::uint64_t heal_data_ = 0;  // HealCode::data; 0 for a plain injector
  UniqueFd mem_;                 // /proc/TID/mem, to write the healing data
};

// Address of a `syscall; int3` sequence inside this program's own text. A process
// forked from this program has it at the same address.
std::uint64_t local_syscall_gadget();

}  // namespace fsched::ckpt
