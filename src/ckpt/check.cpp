// `fsched-ckpt check`: probes, on this kernel, each interface the engine relies on.
#include <fcntl.h>
#include <linux/kcmp.h>
#include <linux/prctl.h>
#include <linux/sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <functional>

#include "ckpt/engine.h"
#include "ckpt/proc.h"
#include "common/error.h"
#include "common/fd.h"

namespace fsched::ckpt {
namespace {

Feature probe(const std::string& name, const std::function<std::string()>& f) {
  Feature r{name, false, ""};
  try {
    r.detail = f();
    r.ok = true;
  } catch (const std::exception& e) {
    r.detail = e.what();
  }
  return r;
}

// A child that sleeps until killed.
struct Sleeper {
  pid_t pid = -1;
  Sleeper() {
    pid = ::fork();
    if (pid == 0) {
      for (;;) ::pause();
    }
    if (pid < 0) fail_errno("fork");
  }
  ~Sleeper() {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, __WALL);
  }
};

}  // namespace

std::vector<Feature> check_kernel() {
  std::vector<Feature> out;
  out.push_back(probe("ptrace seize/interrupt + rseq configuration", [] {
    Sleeper s;
    if (::ptrace(PTRACE_SEIZE, s.pid, nullptr, nullptr) < 0) fail_errno("PTRACE_SEIZE");
    if (::ptrace(PTRACE_INTERRUPT, s.pid, nullptr, nullptr) < 0) fail_errno("PTRACE_INTERRUPT");
    int st;
    ::waitpid(s.pid, &st, __WALL);
    __ptrace_rseq_configuration rc{};
    if (::ptrace(static_cast<__ptrace_request>(PTRACE_GET_RSEQ_CONFIGURATION), s.pid,
                 reinterpret_cast<void*>(sizeof rc), &rc) < 0)
      fail_errno("PTRACE_GET_RSEQ_CONFIGURATION");
    return fmt::format("rseq size {}", rc.rseq_abi_size);
  }));
  out.push_back(probe("clone3 with set_tid in a new PID namespace", [] {
    clone_args ca{};
    ca.flags = CLONE_NEWPID;
    ca.exit_signal = SIGCHLD;
    long pid = ::syscall(SYS_clone3, &ca, sizeof ca);
    if (pid < 0) fail_errno("clone3(CLONE_NEWPID)");
    if (pid == 0) {
      pid_t want = 42;
      clone_args c2{};
      c2.exit_signal = SIGCHLD;
      c2.set_tid = reinterpret_cast<std::uint64_t>(&want);
      c2.set_tid_size = 1;
      long r = ::syscall(SYS_clone3, &c2, sizeof c2);
      if (r == 0) ::_exit(0);
      ::_exit(r == 42 ? 0 : 1);
    }
    int st = 0;
    ::waitpid(static_cast<pid_t>(pid), &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail("set_tid was not honoured");
    return std::string("ok");
  }));
  out.push_back(probe("prctl(PR_SET_MM_MAP)", [] {
    unsigned size = 0;
    if (::prctl(PR_SET_MM, PR_SET_MM_MAP_SIZE, &size, 0, 0) < 0) fail_errno("PR_SET_MM_MAP_SIZE");
    if (size != sizeof(prctl_mm_map)) fail("struct size {} != {}", size, sizeof(prctl_mm_map));
    return fmt::format("struct prctl_mm_map {} bytes", size);
  }));
  out.push_back(probe("prctl(PR_GET_TID_ADDRESS)", [] {
    unsigned long a = 0;
    if (::prctl(PR_GET_TID_ADDRESS, &a, 0, 0, 0) < 0) fail_errno("PR_GET_TID_ADDRESS");
    return std::string("ok");
  }));
  out.push_back(probe("pidfd_open + pidfd_getfd", [] {
    UniqueFd pfd(static_cast<int>(::syscall(SYS_pidfd_open, ::getpid(), 0)));
    if (!pfd) fail_errno("pidfd_open");
    UniqueFd fd(static_cast<int>(::syscall(SYS_pidfd_getfd, pfd.get(), 0, 0)));
    if (!fd) fail_errno("pidfd_getfd");
    return std::string("ok");
  }));
  out.push_back(probe("kcmp(KCMP_FILE)", [] {
    if (::syscall(SYS_kcmp, ::getpid(), ::getpid(), KCMP_FILE, 0, 0) != 0) fail_errno("kcmp");
    return std::string("ok");
  }));
  out.push_back(probe("/proc/PID/task/TID/children", [] {
    read_file(fmt::format("/proc/self/task/{}/children", ::getpid()));
    return std::string("ok");
  }));
  out.push_back(probe("/proc/PID/pagemap + process_vm_readv", [] {
    UniqueFd pm(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
    if (!pm) fail_errno("open pagemap");
    static char probe_page[4096] = {1};
    std::uint64_t e = 0;
    if (::pread(pm.get(), &e, 8,
                static_cast<off_t>(reinterpret_cast<std::uint64_t>(probe_page) / 4096 * 8)) != 8)
      fail_errno("read pagemap");
    if (!(e >> 63)) fail("present bit not reported");
    char dst[16];
    iovec l{dst, sizeof dst}, r{probe_page, sizeof dst};
    if (::process_vm_readv(::getpid(), &l, 1, &r, 1, 0) != sizeof dst)
      fail_errno("process_vm_readv");
    return std::string("ok");
  }));
  out.push_back(probe("vDSO layout", [] {
    std::string names;
    for (auto& m : read_maps(::getpid()))
      if (m.path == "[vdso]" || m.path == "[vvar]" || m.path == "[vvar_vclock]")
        names += (names.empty() ? "" : " ") + m.path;
    if (names.find("[vdso]") == std::string::npos) fail("no [vdso]");
    return names;
  }));
  out.push_back(probe("userfaultfd (for incremental dumps)", [] {
    UniqueFd fd(
        static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | 1 /*UFFD_USER_MODE_ONLY*/)));
    if (!fd) fail_errno("userfaultfd");
    return std::string("ok");
  }));
  out.push_back(
      probe("CPU xstate features", [] { return fmt::format("XCR0 {:#x}", cpu_xfeatures()); }));
  return out;
}

}  // namespace fsched::ckpt
