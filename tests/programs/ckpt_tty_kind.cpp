// ckpt_tty_kind: a job holding one kind of pseudo-terminal state (issue 13,
// "Terminals"), for checkpoint/restore tests that name the kind that broke. Output
// depends only on the arguments.
//
//   ckpt_tty_kind KIND ROUNDS [TICK_MS]
//
// Each round checks the state the previous round left, sends data both ways through
// the pty (never leaving any queued between rounds), prints one line and sleeps TICK_MS
// (default 50). Every round checks the termios, the window size, ttyname(3) of the
// slave and stat(2) of /dev/pts/N against what the program set up. Restored kinds:
//   pair      master and slave in one process, termios changed (no echo, other VINTR
//             and VERASE, canonical lines), window size 33x111
//   raw       cfmakeraw(3) and VMIN/VTIME, binary bytes both ways
//   packet    packet mode (TIOCPKT) on the master, exclusive mode on the slave
//   ctty      a child that did setsid(2) + TIOCSCTTY on the slave, with a grandchild
//             in a process group of its own that is the terminal's foreground group;
//             the grandchild checks tcgetpgrp(3), tcgetsid(3), its session and that
//             /dev/tty opens every round; the master stays in the parent
// Kinds the dump must refuse (the job runs on unharmed):
//   master_alone  a master whose slave was never opened
//   queued        a line written to the master that the slave has not read
//   dev_tty       /dev/tty held open by a process whose controlling terminal is the pty
//   locked        a pty whose slave is open, locked again (TIOCSPTLCK) afterwards
//   ldisc         a pty whose slave uses line discipline N_NULL (TIOCSETD)
//   slave_alone   a pty slave whose master was closed (hung up: writes fail)
//   ctty_orphan   a child that did setsid(2) + TIOCSCTTY, whose own child made a
//                 grandchild and exited: the grandchild (reparented to the job's init,
//                 not a session leader) has the pty as its controlling terminal and its
//                 new parent has none; both wait for the parent to close a pipe at the end
//
// Exit status 0; 1 with a line "FAIL ..." saying what failed.
#include <fcntl.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "kind_prog.h"

namespace {

using namespace kindprog;

struct Pty {
  int master = -1, slave = -1;
  std::string name;   // /dev/pts/N
  struct stat st {};  // of the slave at set-up
};

Pty open_pty() {
  Pty p;
  p.master = posix_openpt(O_RDWR | O_NOCTTY);
  if (p.master < 0) die("posix_openpt");
  if (grantpt(p.master) < 0 || unlockpt(p.master) < 0) die("grantpt/unlockpt");
  const char* n = ptsname(p.master);
  if (!n) die("ptsname");
  p.name = n;
  p.slave = open(n, O_RDWR | O_NOCTTY);
  if (p.slave < 0) die("open " + p.name);
  if (fstat(p.slave, &p.st) < 0) die("fstat slave");
  return p;
}

void set_winsize(int fd, unsigned short rows, unsigned short cols) {
  winsize ws{rows, cols, 7, 9};
  if (ioctl(fd, TIOCSWINSZ, &ws) < 0) die("TIOCSWINSZ");
}

// What every round checks: the slave's name, owner, mode; termios; window size.
void check_pty(const Pty& p, const termios& want, unsigned short rows, unsigned short cols) {
  char name[64];
  if (ttyname_r(p.slave, name, sizeof name) != 0) die("ttyname_r of the slave");
  if (p.name != name) fail("ttyname " + std::string(name) + " instead of " + p.name);
  int n = -1;
  if (ioctl(p.master, TIOCGPTN, &n) < 0) die("TIOCGPTN");
  if ("/dev/pts/" + std::to_string(n) != p.name) fail("master index " + std::to_string(n));
  struct stat st {};
  if (stat(p.name.c_str(), &st) < 0) die("stat " + p.name);
  if (st.st_uid != p.st.st_uid || st.st_gid != p.st.st_gid || st.st_mode != p.st.st_mode ||
      st.st_rdev != p.st.st_rdev)
    fail("stat of " + p.name + " changed: " + std::to_string(st.st_uid) + ":" +
         std::to_string(st.st_gid) + " mode " + std::to_string(st.st_mode));
  termios t{};
  if (tcgetattr(p.slave, &t) < 0) die("tcgetattr");
  if (t.c_iflag != want.c_iflag || t.c_oflag != want.c_oflag || t.c_cflag != want.c_cflag ||
      t.c_lflag != want.c_lflag || std::memcmp(t.c_cc, want.c_cc, NCCS) != 0 ||
      cfgetospeed(&t) != cfgetospeed(&want))
    fail("termios changed");
  winsize ws{};
  if (ioctl(p.slave, TIOCGWINSZ, &ws) < 0) die("TIOCGWINSZ");
  if (ws.ws_row != rows || ws.ws_col != cols || ws.ws_xpixel != 7 || ws.ws_ypixel != 9)
    fail("window size " + std::to_string(ws.ws_row) + "x" + std::to_string(ws.ws_col));
}

// Reads exactly n bytes.
std::string read_n(int fd, std::size_t n, const char* what) {
  std::string s;
  while (s.size() < n) {
    char buf[256];
    ssize_t r = read(fd, buf, std::min(sizeof buf, n - s.size()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) die(std::string("read ") + what);
    s.append(buf, static_cast<std::size_t>(r));
  }
  return s;
}

void write_all(int fd, const std::string& s, const char* what) {
  if (write(fd, s.data(), s.size()) != static_cast<ssize_t>(s.size()))
    die(std::string("write ") + what);
}

// One line each way; in canonical mode without echo the slave reads the line whole.
void exchange_lines(const Pty& p, int round) {
  std::string down = "down " + std::to_string(round) + "\n";
  write_all(p.master, down, "master");
  std::string got = read_n(p.slave, down.size(), "slave");
  if (got != down) fail("slave read '" + got + "'");
  std::string up = "up " + std::to_string(round) + "\n";
  write_all(p.slave, up, "slave");
  // ONLCR (output \n -> \r\n) is on by default.
  std::string want = "up " + std::to_string(round) + "\r\n";
  got = read_n(p.master, want.size(), "master");
  if (got != want) fail("master read '" + got + "'");
}

void run_pair(int rounds) {
  Pty p = open_pty();
  termios t{};
  if (tcgetattr(p.slave, &t) < 0) die("tcgetattr");
  t.c_lflag &= ~static_cast<tcflag_t>(ECHO | ECHOE | ECHOK | ECHOCTL);
  t.c_cc[VINTR] = 1;
  t.c_cc[VERASE] = 8;
  cfsetspeed(&t, B9600);
  if (tcsetattr(p.slave, TCSANOW, &t) < 0) die("tcsetattr");
  set_winsize(p.master, 33, 111);
  for (int i = 0; i < rounds; ++i) {
    check_pty(p, t, 33, 111);
    exchange_lines(p, i);
    line("pair " + std::to_string(i));
    tick();
  }
}

void run_raw(int rounds) {
  Pty p = open_pty();
  termios t{};
  if (tcgetattr(p.slave, &t) < 0) die("tcgetattr");
  cfmakeraw(&t);
  t.c_cc[VMIN] = 1;
  t.c_cc[VTIME] = 3;
  if (tcsetattr(p.slave, TCSANOW, &t) < 0) die("tcsetattr");
  set_winsize(p.master, 50, 200);
  for (int i = 0; i < rounds; ++i) {
    check_pty(p, t, 50, 200);
    std::string bytes;
    for (int b = 0; b < 16; ++b) bytes.push_back(static_cast<char>((i * 16 + b) & 0xff));
    write_all(p.master, bytes, "master");
    if (read_n(p.slave, bytes.size(), "slave") != bytes) fail("raw bytes down");
    write_all(p.slave, bytes, "slave");
    if (read_n(p.master, bytes.size(), "master") != bytes) fail("raw bytes up");
    line("raw " + std::to_string(i));
    tick();
  }
}

void run_packet(int rounds) {
  Pty p = open_pty();
  termios t{};
  if (tcgetattr(p.slave, &t) < 0) die("tcgetattr");
  cfmakeraw(&t);
  if (tcsetattr(p.slave, TCSANOW, &t) < 0) die("tcsetattr");
  set_winsize(p.master, 24, 80);
  int on = 1;
  if (ioctl(p.master, TIOCPKT, &on) < 0) die("TIOCPKT");
  if (ioctl(p.slave, TIOCEXCL) < 0) die("TIOCEXCL");
  for (int i = 0; i < rounds; ++i) {
    check_pty(p, t, 24, 80);
    int pkt = 0, excl = 0;
    if (ioctl(p.master, TIOCGPKT, &pkt) < 0 || ioctl(p.slave, TIOCGEXCL, &excl) < 0)
      die("TIOCGPKT/TIOCGEXCL");
    if (!pkt || !excl)
      fail("packet mode " + std::to_string(pkt) + " exclusive " + std::to_string(excl));
    std::string msg = "pkt" + std::to_string(i);
    write_all(p.slave, msg, "slave");
    // In packet mode each read starts with a control byte, TIOCPKT_DATA (0) for data.
    std::string got = read_n(p.master, msg.size() + 1, "master");
    if (got[0] != 0 || got.substr(1) != msg) fail("packet read '" + got.substr(1) + "'");
    line("packet " + std::to_string(i));
    tick();
  }
}

// The grandchild of run_ctty: in the foreground group of the child's session.
void ctty_grandchild(const Pty& p, int rounds, pid_t session) {
  // Until the session leader has made this group the foreground one.
  for (int i = 0; i < 1000 && tcgetpgrp(p.slave) != getpgrp(); ++i) usleep(1000);
  for (int i = 0; i < rounds; ++i) {
    if (tcgetpgrp(p.slave) != getpgrp())
      fail("grandchild: tcgetpgrp " + std::to_string(tcgetpgrp(p.slave)));
    if (tcgetsid(p.slave) != session || getsid(0) != session)
      fail("grandchild: session " + std::to_string(getsid(0)));
    int tty = open("/dev/tty", O_RDWR | O_NOCTTY);
    if (tty < 0) die("grandchild: open /dev/tty");
    // /dev/tty is the controlling terminal: its foreground group is this one.
    if (tcgetpgrp(tty) != getpgrp()) fail("grandchild: /dev/tty is another terminal");
    close(tty);
    tick();
  }
  _exit(0);
}

void run_ctty(int rounds) {
  Pty p = open_pty();
  termios t{};
  if (tcgetattr(p.slave, &t) < 0) die("tcgetattr");
  t.c_lflag &= ~static_cast<tcflag_t>(ECHO);
  if (tcsetattr(p.slave, TCSANOW, &t) < 0) die("tcsetattr");
  set_winsize(p.master, 40, 100);
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    close(p.master);
    if (setsid() < 0) die("setsid");
    if (ioctl(p.slave, TIOCSCTTY, 0) < 0) die("TIOCSCTTY");
    pid_t gc = fork();
    if (gc < 0) die("fork");
    if (gc == 0) {
      if (setpgid(0, 0) < 0) die("setpgid");
      ctty_grandchild(p, rounds, getsid(0));
    }
    setpgid(gc, gc);
    if (tcsetpgrp(p.slave, gc) < 0) die("tcsetpgrp");
    int st = 0;
    while (waitpid(gc, &st, 0) < 0 && errno == EINTR) {
    }
    _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 1);
  }
  for (int i = 0; i < rounds; ++i) {
    check_pty(p, t, 40, 100);
    exchange_lines(p, i);
    line("ctty " + std::to_string(i));
    tick();
  }
  int st = 0;
  while (waitpid(child, &st, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail("the session leader child failed");
}

void run_ctty_orphan(int rounds) {
  Pty p = open_pty();
  int done[2], ready[2];
  if (pipe2(done, O_CLOEXEC) < 0 || pipe2(ready, O_CLOEXEC) < 0) die("pipe2");
  pid_t leader = fork();
  if (leader < 0) die("fork");
  if (leader == 0) {
    close(p.master);
    close(done[1]);
    close(ready[0]);
    if (setsid() < 0) die("setsid");
    if (ioctl(p.slave, TIOCSCTTY, 0) < 0) die("TIOCSCTTY");
    // A middle process makes the grandchild and exits: the grandchild, reparented to
    // the job's init, keeps the session and its terminal while its new parent has none.
    pid_t middle = fork();
    if (middle < 0) die("fork");
    if (middle == 0) {
      const pid_t me = getpid();
      pid_t gc = fork();
      if (gc < 0) die("fork");
      if (gc == 0) {
        while (getppid() == me) usleep(1000);
        if (write(ready[1], "r", 1) != 1) _exit(1);
        char c;
        while (read(done[0], &c, 1) < 0 && errno == EINTR) {
        }
        _exit(0);
      }
      _exit(0);
    }
    close(ready[1]);
    while (waitpid(middle, nullptr, 0) < 0 && errno == EINTR) {
    }
    char c;
    while (read(done[0], &c, 1) < 0 && errno == EINTR) {
    }
    _exit(0);
  }
  close(done[0]);
  close(ready[1]);
  char c;
  if (read(ready[0], &c, 1) != 1) fail("ctty_orphan: the grandchild is not ready");
  for (int i = 0; i < rounds; ++i) {
    line("ctty_orphan " + std::to_string(i));
    tick();
  }
  close(done[1]);
  int st = 0;
  while (waitpid(leader, &st, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail("ctty_orphan: the session leader failed");
}

void run_master_alone(int rounds) {
  int m = posix_openpt(O_RDWR | O_NOCTTY);
  if (m < 0 || grantpt(m) < 0 || unlockpt(m) < 0) die("posix_openpt");
  for (int i = 0; i < rounds; ++i) {
    if (!ptsname(m)) die("ptsname");
    line("master_alone " + std::to_string(i));
    tick();
  }
}

void run_queued(int rounds) {
  Pty p = open_pty();
  write_all(p.master, "never read\n", "master");
  // The line reaches the slave's queue through the kernel's flip buffer, a moment later.
  for (int i = 0, n = 0; i < 2000 && (ioctl(p.slave, TIOCINQ, &n) == 0 && n != 11); ++i)
    usleep(1000);
  for (int i = 0; i < rounds; ++i) {
    int n = 0;
    if (ioctl(p.slave, TIOCINQ, &n) < 0) die("TIOCINQ");
    // "never read\n" plus its echo waiting on the master
    if (n != 11) fail("queued " + std::to_string(n));
    line("queued " + std::to_string(i));
    tick();
  }
}

void run_dev_tty(int rounds) {
  Pty p = open_pty();
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    close(p.master);
    if (setsid() < 0 || ioctl(p.slave, TIOCSCTTY, 0) < 0) die("setsid/TIOCSCTTY");
    int tty = open("/dev/tty", O_RDWR | O_NOCTTY);
    if (tty < 0) die("open /dev/tty");
    for (int i = 0; i < rounds; ++i) {
      if (!isatty(tty)) fail("/dev/tty is no terminal");
      tick();
    }
    _exit(0);
  }
  for (int i = 0; i < rounds; ++i) {
    line("dev_tty " + std::to_string(i));
    tick();
  }
  int st = 0;
  while (waitpid(child, &st, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail("the child failed");
}

void run_locked(int rounds) {
  Pty p = open_pty();
  int one = 1;
  if (ioctl(p.master, TIOCSPTLCK, &one) < 0) die("TIOCSPTLCK");
  for (int i = 0; i < rounds; ++i) {
    int locked = 0;
    if (ioctl(p.master, TIOCGPTLCK, &locked) < 0) die("TIOCGPTLCK");
    if (locked != 1) fail("locked: TIOCGPTLCK " + std::to_string(locked));
    line("locked " + std::to_string(i));
    tick();
  }
}

void run_ldisc(int rounds) {
  Pty p = open_pty();
  const int n_null = 27;  // N_NULL (linux/tty.h, Linux 4.13)
  if (ioctl(p.slave, TIOCSETD, &n_null) < 0) die("TIOCSETD N_NULL");
  for (int i = 0; i < rounds; ++i) {
    int ld = -1;
    if (ioctl(p.slave, TIOCGETD, &ld) < 0) die("TIOCGETD");
    if (ld != n_null) fail("ldisc: line discipline " + std::to_string(ld));
    line("ldisc " + std::to_string(i));
    tick();
  }
}

void run_slave_alone(int rounds) {
  Pty p = open_pty();
  close(p.master);
  for (int i = 0; i < rounds; ++i) {
    if (write(p.slave, "x", 1) != -1) fail("slave_alone: a write to a hung-up slave succeeded");
    line("slave_alone " + std::to_string(i));
    tick();
  }
}

constexpr Kind kKinds[] = {
    {"pair", run_pair},
    {"raw", run_raw},
    {"packet", run_packet},
    {"ctty", run_ctty},
    {"master_alone", run_master_alone},
    {"queued", run_queued},
    {"dev_tty", run_dev_tty},
    {"locked", run_locked},
    {"ldisc", run_ldisc},
    {"slave_alone", run_slave_alone},
    {"ctty_orphan", run_ctty_orphan},
};

}  // namespace

int main(int argc, char** argv) { return run_kind(argc, argv, "ckpt_tty_kind", kKinds, 900); }
