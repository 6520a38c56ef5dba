// fsched-init: pid 1 of a job's PID namespace. Starts the job in its own process
// group, forwards termination and user signals to it, reaps orphans, and exits with
// the job's status (exit code, or 128 + signal) once the job's main process ends,
// killing whatever the job left behind, as a batch system ends a job step.
// It is checkpointed and restored with the job, so it keeps no state but its memory.
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace {

volatile sig_atomic_t g_job_pgid = 0;

void forward(int sig) {
  if (g_job_pgid > 0) ::kill(-g_job_pgid, sig);
}

[[noreturn]] void die(const char* what, const std::string& arg) {
  std::fprintf(stderr, "fsched-init: %s %s: %s\n", what, arg.c_str(), std::strerror(errno));
  std::fflush(stderr);
  ::_exit(127);
}

void redirect(int fd, const std::string& path, int flags) {
  int f = ::open(path.c_str(), flags | O_CLOEXEC, 0644);
  if (f < 0) die("cannot open", path);
  if (::dup2(f, fd) < 0) die("dup2", path);
  ::close(f);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"fsched job init (internal)"};
  app.set_version_flag("--version", "fsched-init (fsched) " FSCHED_VERSION);
  std::string out, err, cwd, user, status_file;
  std::vector<std::string> cmd;
  app.add_option("--stdout", out);
  app.add_option("--stderr", err);
  app.add_option("--cwd", cwd);
  app.add_option("--user", user);
  app.add_option("--status-file", status_file);
  app.add_option("command", cmd)->required();
  CLI11_PARSE(app, argc, argv);

  ::close_range(3, ~0U, 0);
  ::setsid();

  // Handlers are installed before the fork so no forwarded signal is missed; the
  // child resets them.
  struct sigaction sa {};
  sa.sa_handler = forward;
  sa.sa_flags = SA_RESTART;
  for (int s : {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCONT, SIGTSTP, SIGALRM})
    ::sigaction(s, &sa, nullptr);

  pid_t job = ::fork();
  if (job < 0) die("fork", cmd[0]);
  if (job == 0) {
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; ++s) ::sigaction(s, &dfl, nullptr);
    ::setpgid(0, 0);
    if (!user.empty()) {
      passwd* pw = ::getpwnam(user.c_str());
      if (!pw) die("no such user", user);
      if (::initgroups(pw->pw_name, pw->pw_gid) < 0) die("initgroups", user);
      if (::setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) < 0) die("setresgid", user);
      if (::setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid) < 0) die("setresuid", user);
    }
    if (!cwd.empty() && ::chdir(cwd.c_str()) < 0) die("cannot chdir to", cwd);
    redirect(0, "/dev/null", O_RDONLY);
    if (!out.empty()) redirect(1, out, O_WRONLY | O_CREAT | O_APPEND);
    if (!err.empty()) redirect(2, err, O_WRONLY | O_CREAT | O_APPEND);
    std::vector<char*> av;
    for (auto& a : cmd) av.push_back(a.data());
    av.push_back(nullptr);
    ::execvp(av[0], av.data());
    die("cannot execute", cmd[0]);
  }
  g_job_pgid = job;
  // The init itself holds nothing of the caller's: no pipe or terminal to checkpoint.
  int null = ::open("/dev/null", O_RDWR);
  for (int fd = 0; fd < 3; ++fd) ::dup2(null, fd);
  if (null > 2) ::close(null);

  int code = 255;
  for (;;) {
    int st = 0;
    pid_t r = ::wait4(-1, &st, 0, nullptr);
    if (r < 0) {
      if (errno == EINTR) continue;
      break;  // ECHILD
    }
    if (r == job) {
      code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      g_job_pgid = 0;
      ::kill(-1, SIGKILL);  // what the job left behind in its namespace
    }
  }
  if (!status_file.empty()) {
    if (FILE* f = std::fopen(status_file.c_str(), "w")) {
      std::fprintf(f, "%d\n", code);
      std::fclose(f);
    }
  }
  return code;
}
