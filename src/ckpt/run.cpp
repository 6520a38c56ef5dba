// Launching a job under fsched-init, pid 1 of a new PID namespace (clone3(2) with
// CLONE_NEWPID), so that its PIDs are free again whenever and wherever it is restored,
// of a new IPC namespace (CLONE_NEWIPC), for the same reason with SysV ids, and of a
// new mount namespace with a /proc of its own (namespaces.h).
#include <linux/sched.h>
#include <pwd.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>

#include <cstdio>
#include <cstring>

#include "ckpt/engine.h"
#include "ckpt/namespaces.h"
#include "ckpt/proc.h"
#include "common/error.h"

namespace fsched::ckpt {

static std::string init_binary() {
  auto self = std::filesystem::path(read_link("/proc/self/exe"));
  auto p = self.parent_path() / "fsched-init";
  if (::access(p.c_str(), X_OK) < 0) fail_errno("cannot find the job init {}", p.string());
  return p;
}

pid_t run_job(const RunOptions& opt) {
  if (opt.argv.empty()) fail_usage("no command given");
  std::vector<std::string> args{"fsched-init"};
  auto add = [&](const char* k, const std::string& v) {
    if (!v.empty()) {
      args.push_back(k);
      args.push_back(v);
    }
  };
  if (!opt.user.empty() && !::getpwnam(opt.user.c_str())) fail("no such user: {}", opt.user);
  if (!opt.cwd.empty() && !std::filesystem::is_directory(opt.cwd))
    fail("working directory {} does not exist", opt.cwd);
  add("--stdout", opt.stdout_path);
  add("--stderr", opt.stderr_path);
  add("--cwd", opt.cwd);
  add("--user", opt.user);
  add("--status-file", opt.status_file);
  args.push_back("--");
  for (auto& a : opt.argv) args.push_back(a);
  std::string init = init_binary();
  std::vector<char*> cargv;
  for (auto& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);

  clone_args ca{};
  ca.flags = kJobNamespaces;
  ca.exit_signal = SIGCHLD;
  long pid = ::syscall(SYS_clone3, &ca, sizeof ca);
  if (pid < 0) fail_errno("clone3(CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWNS)");
  if (pid == 0) {
    if (long e = enter_job_mount_namespace(); e < 0) {
      std::fprintf(stderr, "fsched-ckpt run: cannot mount the job's own /proc and /dev/pts: %s\n",
                   std::strerror(static_cast<int>(-e)));
      ::_exit(127);
    }
    ::execv(init.c_str(), cargv.data());
    ::_exit(127);
  }
  return static_cast<pid_t>(pid);
}

int wait_job(pid_t init_pid) {
  int st = 0;
  while (::waitpid(init_pid, &st, 0) < 0) {
    if (errno != EINTR) fail_errno("waitpid on job init {}", init_pid);
  }
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
  return 255;
}

}  // namespace fsched::ckpt
