#include "noded/spawn.h"

#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>

#include "common/error.h"
#include "common/fd.h"

namespace fsched::noded {

int SpawnResult::exit_code() const {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 255;
}

std::string SpawnResult::error_line() const {
  std::string_view s = err;
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.remove_suffix(1);
  auto nl = s.rfind('\n');
  std::string line(nl == std::string_view::npos ? s : s.substr(nl + 1));
  if (line.empty())
    line = timed_out ? "timed out" : "exited with status " + std::to_string(exit_code());
  return line;
}

namespace {

struct Pipe {
  UniqueFd r, w;
  Pipe() {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) < 0) fail_errno("pipe2");
    r = UniqueFd(p[0]);
    w = UniqueFd(p[1]);
  }
};

// The argv and envp arrays of execve(2)/posix_spawn(3), built before any fork (a child
// of a multi-threaded process may only make system calls): the "KEY=VALUE" strings and
// the null-terminated pointer arrays into them and into `argv`, which must outlive this.
struct ExecVectors {
  std::vector<std::string> env_strings;
  std::vector<char*> argv, envp;
  ExecVectors(const std::vector<std::string>& args, const std::map<std::string, std::string>& env) {
    for (auto& [k, v] : env) env_strings.push_back(k + "=" + v);
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    for (auto& e : env_strings) envp.push_back(e.data());
    envp.push_back(nullptr);
  }
  ExecVectors(const ExecVectors&) = delete;  // envp points into env_strings
  ExecVectors& operator=(const ExecVectors&) = delete;
};

// Reads what is there without blocking; returns false at end of file.
bool drain(int fd, std::string& into) {
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      into.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n == 0) return false;
    return errno == EAGAIN || errno == EINTR;
  }
}

}  // namespace

pid_t spawn_clean(const std::vector<std::string>& argv,
                  const std::map<std::string, std::string>& env,
                  const posix_spawn_file_actions_t* fa) {
  posix_spawnattr_t at;
  posix_spawnattr_init(&at);
  sigset_t none, dflt;
  sigemptyset(&none);
  sigemptyset(&dflt);
  for (int s : {SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGCHLD, SIGUSR1, SIGUSR2}) sigaddset(&dflt, s);
  posix_spawnattr_setsigmask(&at, &none);
  posix_spawnattr_setsigdefault(&at, &dflt);
  // A session of its own: signals aimed at fschedd's process group (a terminal, a
  // service manager stopping fschedd) do not reach it.
  posix_spawnattr_setflags(&at,
                           POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSID);
  const ExecVectors ev(argv, env);
  pid_t pid = 0;
  int rc = ::posix_spawn(&pid, argv.at(0).c_str(), fa, &at, ev.argv.data(), ev.envp.data());
  posix_spawnattr_destroy(&at);
  if (rc != 0) throw Error("cannot start " + argv[0], rc);
  return pid;
}

pid_t spawn_in_cgroup(const std::vector<std::string>& argv,
                      const std::map<std::string, std::string>& env, const int (&stdio)[3],
                      int cgroup_fd) {
  // Everything the child touches is built before the clone: it may be the child of a
  // multi-threaded process, where it may only make system calls.
  const ExecVectors ev(argv, env);
  Pipe report;  // the exec's errno, if it fails; closed by a successful exec
  // Above the stdio numbers, so that the dup2s below cannot overwrite them.
  int fds[4] = {-1, -1, -1, -1};
  for (int i = 0; i < 3; ++i) fds[i] = ::fcntl(stdio[i], F_DUPFD_CLOEXEC, 10);
  fds[3] = ::fcntl(report.w.get(), F_DUPFD_CLOEXEC, 10);
  for (int fd : fds)
    if (fd < 0) {
      int e = errno;
      for (int f : fds)
        if (f >= 0) ::close(f);
      throw Error("cannot start " + argv.at(0) + ": dup", e);
    }
  const char* path = argv.at(0).c_str();
  // The child moves itself into the cgroup (cgroup.procs) before it runs anything,
  // rather than being created there with CLONE_INTO_CGROUP: on 6.18 a child cloned into
  // a cgroup whose cgroup.kill count differs from its parent's (fschedd's cgroup was
  // killed once — a node crash — and the run's cgroup is new) is killed at birth.
  clone_args ca{};
  ca.exit_signal = SIGCHLD;
  long pid = ::syscall(SYS_clone3, &ca, sizeof ca);
  if (pid == 0) {
    int procs = ::openat(cgroup_fd, "cgroup.procs", O_WRONLY | O_CLOEXEC);
    if (procs < 0 || ::write(procs, "0", 1) != 1) {
      int e = errno;
      (void)!::write(fds[3], &e, sizeof e);
      ::_exit(127);
    }
    ::close(procs);
    sigset_t none;
    sigemptyset(&none);
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int s : {SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGCHLD, SIGUSR1, SIGUSR2})
      ::sigaction(s, &dfl, nullptr);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::setsid();  // as spawn_clean: out of fschedd's session
    int rc = 0;
    for (int i = 0; i < 3 && rc == 0; ++i)
      if (::dup2(fds[i], i) < 0) rc = errno;
    int rep = ::dup2(fds[3], 3) < 0 ? fds[3] : 3;
    if (rep == 3) ::fcntl(3, F_SETFD, FD_CLOEXEC);
    ::syscall(SYS_close_range, rep == 3 ? 4U : 3U, ~0U, 0U);
    if (rc == 0) {
      ::execve(path, ev.argv.data(), ev.envp.data());
      rc = errno;
    }
    (void)!::write(rep, &rc, sizeof rc);
    ::_exit(127);
  }
  int clone_errno = errno;
  for (int f : fds) ::close(f);
  if (pid < 0) throw Error("cannot start " + argv[0] + " in its cgroup: clone3", clone_errno);
  report.w.reset();
  int child_err = 0;
  ssize_t n;
  while ((n = ::read(report.r.get(), &child_err, sizeof child_err)) < 0 && errno == EINTR) {
  }
  if (n == sizeof child_err) {
    while (::waitpid(static_cast<pid_t>(pid), nullptr, 0) < 0 && errno == EINTR) {
    }
    throw Error("cannot start " + argv[0], child_err);
  }
  return static_cast<pid_t>(pid);
}

SpawnResult spawn_wait(const std::vector<std::string>& argv,
                       const std::map<std::string, std::string>& env, double timeout_s,
                       int cgroup_fd) {
  Pipe out, err;
  pid_t pid = 0;
  if (cgroup_fd >= 0) {
    UniqueFd null(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!null) fail_errno("open /dev/null");
    const int stdio[3] = {null.get(), out.w.get(), err.w.get()};
    pid = spawn_in_cgroup(argv, env, stdio, cgroup_fd);
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out.w.get(), 1);
  posix_spawn_file_actions_adddup2(&fa, err.w.get(), 2);
  // The daemon's sockets and files must not leak into the job that fsched-ckpt
  // starts: the engine would find them in the job at its first checkpoint.
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);
  try {
    if (pid == 0) pid = spawn_clean(argv, env, &fa);
  } catch (...) {
    posix_spawn_file_actions_destroy(&fa);
    throw;
  }
  posix_spawn_file_actions_destroy(&fa);
  out.w.reset();
  err.w.reset();
  ::fcntl(out.r.get(), F_SETFL, O_NONBLOCK);
  ::fcntl(err.r.get(), F_SETFL, O_NONBLOCK);

  SpawnResult res;
  auto start = std::chrono::steady_clock::now();
  bool out_open = true, err_open = true;
  for (;;) {
    // The child may hand a pipe end to a process that outlives it (a detached job
    // init keeps it until it redirects its stdio), so its exit, not EOF, ends this.
    pid_t w = ::waitpid(pid, &res.status, WNOHANG);
    if (w == pid) break;
    double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (timeout_s > 0 && elapsed > timeout_s && !res.timed_out) {
      res.timed_out = true;
      ::kill(pid, SIGKILL);
    }
    pollfd p[2] = {{out_open ? out.r.get() : -1, POLLIN, 0},
                   {err_open ? err.r.get() : -1, POLLIN, 0}};
    ::poll(p, 2, 50);
    if (out_open) out_open = drain(out.r.get(), res.out);
    if (err_open) err_open = drain(err.r.get(), res.err);
  }
  if (out_open) drain(out.r.get(), res.out);
  if (err_open) drain(err.r.get(), res.err);
  return res;
}

}  // namespace fsched::noded
