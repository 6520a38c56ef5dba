// Confinement of each thread: capabilities, securebits, no_new_privs, seccomp filters;
// see confine.h.
#include "ckpt/confine.h"

#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>

#include <cerrno>
#include <cstring>

#include "ckpt/proc.h"
#include "ckpt/remote.h"
#include "ckpt/restore_context.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {

std::uint64_t hex_field(std::map<std::string, std::string>& st, const char* key, pid_t tid) {
  auto it = st.find(key);
  if (it == st.end()) fail("/proc/{}/status has no {} line", tid, key);
  return std::stoull(it->second, nullptr, 16);
}

int last_cap() {
  static const int last = std::stoi(read_file("/proc/sys/kernel/cap_last_cap"));
  return last;
}

// capset(2) of the calling thread, with the 64-bit sets split as version 3 wants them.
void set_caps(Injector& inj, pid_t host_tid, const InjectionArea& area, std::uint64_t eff,
              std::uint64_t prm, std::uint64_t inh, const std::string& who) {
  struct {
    __user_cap_header_struct head;
    __user_cap_data_struct data[2];
  } c{};
  c.head.version = _LINUX_CAPABILITY_VERSION_3;
  c.head.pid = 0;
  for (int i = 0; i < 2; ++i) {
    c.data[i].effective = static_cast<__u32>(eff >> (32 * i));
    c.data[i].permitted = static_cast<__u32>(prm >> (32 * i));
    c.data[i].inheritable = static_cast<__u32>(inh >> (32 * i));
  }
  remote_write(host_tid, area.data(), &c, sizeof c);
  inj.call_ok(fmt::format("{}: capset(effective {:#x}, permitted {:#x}, inheritable {:#x})", who,
                          eff, prm, inh),
              SYS_capset, area.data(), area.data() + sizeof c.head);
}

}  // namespace

void dump_confinement(pid_t tid, Injector& inj, Thread& t) {
  Confinement& c = t.confinement;
  auto st = read_status(tid);
  c.cap_inh = hex_field(st, "CapInh", tid);
  c.cap_prm = hex_field(st, "CapPrm", tid);
  c.cap_eff = hex_field(st, "CapEff", tid);
  c.cap_bnd = hex_field(st, "CapBnd", tid);
  c.cap_amb = hex_field(st, "CapAmb", tid);
  c.no_new_privs = std::stoi(st["NoNewPrivs"]) != 0;
  c.seccomp_mode = std::stoi(st["Seccomp"]);
  c.securebits = static_cast<unsigned>(inj.call_ok(
      fmt::format("thread {}: prctl(PR_GET_SECUREBITS)", tid), SYS_prctl, PR_GET_SECUREBITS));
  c.filters.clear();
  // Strict mode has nothing more to read: only read, write, _exit and sigreturn.
  if (c.seccomp_mode == SECCOMP_MODE_DISABLED || c.seccomp_mode == SECCOMP_MODE_STRICT) return;
  if (c.seccomp_mode != SECCOMP_MODE_FILTER)
    fail_unsupported("thread {}: seccomp mode {} is not supported", tid, c.seccomp_mode);
  // Index 0 is the newest filter; the image keeps them oldest first, in install order.
  for (unsigned long i = 0;; ++i) {
    long n = ::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, reinterpret_cast<void*>(i), nullptr);
    if (n < 0 && errno == ENOENT) break;
    if (n <= 0 || n > BPF_MAXINSNS)
      fail_errno("thread {}: ptrace(PTRACE_SECCOMP_GET_FILTER) of filter {}", tid, i);
    std::vector<sock_filter> prog(static_cast<std::size_t>(n));
    if (::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, reinterpret_cast<void*>(i), prog.data()) != n)
      fail_errno("thread {}: reading seccomp filter {}", tid, i);
    __ptrace_seccomp_metadata md{};
    md.filter_off = i;
    if (::ptrace(PTRACE_SECCOMP_GET_METADATA, tid, reinterpret_cast<void*>(sizeof md), &md) < 0)
      fail_errno("thread {}: ptrace(PTRACE_SECCOMP_GET_METADATA) of filter {}", tid, i);
    SeccompFilter f;
    f.flags = md.flags;
    f.prog_hex = to_hex(prog.data(), prog.size() * sizeof(sock_filter));
    c.filters.insert(c.filters.begin(), std::move(f));
  }
  if (c.filters.empty()) fail("thread {}: in seccomp filter mode but no filter could be read", tid);
}

void confine_before_ids(Injector& inj, pid_t host_tid, const InjectionArea& area,
                        const Confinement& c, const std::string& who) {
  if (c.no_new_privs)
    inj.call_ok(who + ": prctl(PR_SET_NO_NEW_PRIVS)", SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
  if (c.seccomp_mode == SECCOMP_MODE_FILTER) {
    for (std::size_t i = 0; i < c.filters.size(); ++i) {
      auto prog = from_hex(c.filters[i].prog_hex);
      if (prog.empty() || prog.size() % sizeof(sock_filter) ||
          prog.size() / sizeof(sock_filter) > BPF_MAXINSNS)
        fail_image("image: {}: seccomp filter {} is malformed", who, i);
      constexpr std::size_t kProgOff = 64;
      if (kProgOff + prog.size() > area.data_size())
        fail_image("image: {}: seccomp filter {} too large", who, i);
      remote_write(host_tid, area.data() + kProgOff, prog.data(), prog.size());
      sock_fprog fp{};
      fp.len = static_cast<unsigned short>(prog.size() / sizeof(sock_filter));
      fp.filter = reinterpret_cast<sock_filter*>(area.data() + kProgOff);
      remote_write(host_tid, area.data(), &fp, sizeof fp);
      // Only the flags that describe the filter; TSYNC and the listener are install-time
      // actions, and the kernel reports neither.
      std::uint64_t flags =
          c.filters[i].flags & (SECCOMP_FILTER_FLAG_LOG | SECCOMP_FILTER_FLAG_SPEC_ALLOW);
      inj.call_ok(fmt::format("{}: seccomp(SECCOMP_SET_MODE_FILTER) of filter {}", who, i),
                  SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, area.data());
    }
  } else if (c.seccomp_mode == SECCOMP_MODE_STRICT) {
    // The restorer's own injected syscalls still pass: the tasks are traced with
    // PTRACE_O_SUSPEND_SECCOMP, which suspends strict mode as it does filters.
    inj.call_ok(who + ": seccomp(SECCOMP_SET_MODE_STRICT)", SYS_seccomp, SECCOMP_SET_MODE_STRICT, 0,
                0);
  } else if (c.seccomp_mode != SECCOMP_MODE_DISABLED) {
    fail_image("image: {}: seccomp mode {} is not supported", who, c.seccomp_mode);
  }
  for (int cap = 0; cap <= last_cap(); ++cap)
    if (!(c.cap_bnd >> cap & 1))
      inj.call_ok(fmt::format("{}: prctl(PR_CAPBSET_DROP, {})", who, cap), SYS_prctl,
                  PR_CAPBSET_DROP, static_cast<std::uint64_t>(cap));
  // The permitted set survives setresuid(2) to the job's ids only with KEEP_CAPS
  // (capabilities(7)); the job's own securebits come after.
  inj.call_ok(who + ": prctl(PR_SET_SECUREBITS, SECBIT_KEEP_CAPS)", SYS_prctl, PR_SET_SECUREBITS,
              1u << 4 /* SECBIT_KEEP_CAPS */);
}

void confine_after_ids(Injector& inj, pid_t host_tid, const InjectionArea& area,
                       const Confinement& c, const std::string& who) {
  // Everything the helper kept, effective again, so the job's own securebits can be
  // set and ambient capabilities raised; then cut down to exactly the job's sets.
  auto st = read_status(host_tid);
  std::uint64_t kept = hex_field(st, "CapPrm", host_tid);
  if ((c.cap_prm | c.cap_inh) & ~kept)
    fail("restore refused: {}: the job had capabilities {:#x} that the restorer lacks", who,
         (c.cap_prm | c.cap_inh) & ~kept);
  set_caps(inj, host_tid, area, kept, kept, c.cap_inh, who);
  for (int cap = 0; cap <= last_cap(); ++cap)
    if (c.cap_amb >> cap & 1)
      inj.call_ok(fmt::format("{}: prctl(PR_CAP_AMBIENT_RAISE, {})", who, cap), SYS_prctl,
                  PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, static_cast<std::uint64_t>(cap), 0, 0);
  inj.call_ok(fmt::format("{}: prctl(PR_SET_SECUREBITS, {:#x})", who, c.securebits), SYS_prctl,
              PR_SET_SECUREBITS, c.securebits);
  set_caps(inj, host_tid, area, c.cap_eff, c.cap_prm, c.cap_inh, who);
}

}  // namespace fsched::ckpt
