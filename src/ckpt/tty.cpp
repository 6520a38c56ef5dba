// Pseudo-terminals of a job: see tty.h.
#include "ckpt/tty.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>
#include <sstream>

#include "ckpt/fsaccess.h"
#include "ckpt/inject.h"
#include "ckpt/proc.h"
#include "ckpt/remote.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {

// struct termios2 of the kernel (asm-generic/termbits.h, NCCS 19 on x86-64): glibc's
// struct termios differs, and <asm/termbits.h> clashes with <sys/ioctl.h>.
struct KTermios2 {
  std::uint32_t c_iflag, c_oflag, c_cflag, c_lflag;
  std::uint8_t c_line;
  std::uint8_t c_cc[19];
  std::uint32_t c_ispeed, c_ospeed;
};
static_assert(sizeof(KTermios2) == 44, "struct termios2 of x86-64");
constexpr unsigned long kTcgets2 = _IOR('T', 0x2A, KTermios2);
constexpr unsigned long kTcsets2 = _IOW('T', 0x2B, KTermios2);

constexpr unsigned kTtyAuxMajor = 5;  // 5:0 /dev/tty, 5:1 /dev/console, 5:2 /dev/ptmx
constexpr unsigned kPtsMajorFirst = 136, kPtsMajorLast = 143;  // UNIX98_PTY_SLAVE_MAJOR
constexpr unsigned kTtyMajor = 4;                              // virtual consoles, serial

bool is_pts(unsigned maj) { return maj >= kPtsMajorFirst && maj <= kPtsMajorLast; }
int pts_index(unsigned maj, unsigned min) {
  return static_cast<int>((maj - kPtsMajorFirst) * 256 + min);
}

std::string pts_path(int index) { return fmt::format("/dev/pts/{}", index); }

// "tty-index:" of a pty master's fdinfo (drivers/tty/pty.c pty_show_fdinfo); -1 if absent.
int fdinfo_tty_index(const std::string& fdinfo) {
  std::istringstream in(fdinfo);
  std::string key;
  while (in >> key) {
    if (key == "tty-index:") {
      int i = -1;
      in >> i;
      return i;
    }
    in.ignore(1 << 20, '\n');
  }
  return -1;
}

int int_ioctl(int fd, unsigned long req, const std::string& where, const char* what) {
  int v = 0;
  if (::ioctl(fd, req, &v) < 0) fail_errno("{}: ioctl {}", where, what);
  return v;
}

void dump_pty(const FdDumpCtx& c, Fd& f) {
  const unsigned maj = major(c.st.st_rdev), min = minor(c.st.st_rdev);
  if (maj == kTtyAuxMajor && min == 0)
    fail_unsupported(
        "{}: /dev/tty (the controlling terminal by its alias) is not supported; open /dev/pts/N",
        c.where);
  f.pty_master = maj == kTtyAuxMajor && min == 2;
  if (!f.pty_master && !is_pts(maj))
    fail_unsupported(
        "{}: this terminal (device {}:{}, a console, virtual or serial terminal) is not "
        "supported: only pseudo-terminals of the job",
        c.where, maj, min);
  // The job's own devpts instance (namespaces.h), as its processes see /dev/pts.
  const pid_t hp = c.proc.host_pid;
  struct stat pts {};
  const std::string job_pts = fmt::format("/proc/{}/root/dev/pts", hp);
  if (::stat(job_pts.c_str(), &pts) < 0) fail_errno("{}: cannot stat {}", c.where, job_pts);
  if (c.st.st_dev != pts.st_dev)
    fail_unsupported(
        "{}: a terminal outside the job (not of the job's own /dev/pts; an interactive "
        "terminal is not the job's) is not supported",
        c.where);

  UniqueFd dup = grab_fd(hp, f.fd, c.where);
  const int fd = dup.get();
  if (f.pty_master) {
    f.pty_index = fdinfo_tty_index(c.fdinfo);
    if (f.pty_index < 0) f.pty_index = int_ioctl(fd, TIOCGPTN, c.where, "TIOCGPTN");
  } else {
    f.pty_index = pts_index(maj, min);
  }
  if (int ld = int_ioctl(fd, TIOCGETD, c.where, "TIOCGETD"); ld != 0 /* N_TTY */)
    fail_unsupported("{}: the terminal's line discipline is {}, not N_TTY: not supported", c.where,
                     ld);
  // Bytes in flight: there is no MSG_PEEK for a tty, and draining them would change
  // what the job reads if the dump then failed; refused instead. (TIOCINQ shows whole
  // lines only in canonical mode: docs/state-kinds.md.)
  const int inq = int_ioctl(fd, TIOCINQ, c.where, "TIOCINQ");
  const int outq = int_ioctl(fd, TIOCOUTQ, c.where, "TIOCOUTQ");
  if (inq || outq)
    fail_unsupported(
        "{}: {} byte(s) waiting to be read and {} to be sent on this pseudo-terminal end: "
        "data queued in a terminal is not supported (dump again once it is read)",
        c.where, inq, outq);
  KTermios2 t{};
  if (::ioctl(fd, kTcgets2, &t) < 0) fail_errno("{}: ioctl TCGETS2", c.where);
  f.termios_hex = to_hex(&t, sizeof t);
  struct winsize ws {};
  if (::ioctl(fd, TIOCGWINSZ, &ws) < 0) fail_errno("{}: ioctl TIOCGWINSZ", c.where);
  f.winsize = {ws.ws_row, ws.ws_col, ws.ws_xpixel, ws.ws_ypixel};
  f.tty_exclusive = int_ioctl(fd, TIOCGEXCL, c.where, "TIOCGEXCL") != 0;
  if (f.pty_master) {
    if (int_ioctl(fd, TIOCGPTLCK, c.where, "TIOCGPTLCK"))
      fail_unsupported(
          "{}: the pseudo-terminal /dev/pts/{} is locked (TIOCSPTLCK; unlockpt(3) not called): "
          "not supported",
          c.where, f.pty_index);
    f.pty_packet = int_ioctl(fd, TIOCGPKT, c.where, "TIOCGPKT") != 0;
    // The slave's owner and mode, from the job's /dev/pts.
    struct stat slave {};
    const std::string sp = fmt::format("{}/{}", job_pts, f.pty_index);
    if (::stat(sp.c_str(), &slave) < 0) fail_errno("{}: cannot stat {}", c.where, sp);
    f.file = file_id_of(slave);
  } else {
    f.file = file_id_of(c.st);
  }
}

// The fd at which init holds the master of pty `index` while the job is restored:
// above every fd number of the image (restore_files dup3(2)s fds to their numbers;
// InitStash parks above them too, at the lowest free numbers), one per pty by index.
int pty_fd_in_init(const Manifest& m, int index) {
  int base = 3;
  std::set<int> indexes;
  for (const Process& p : m.processes)
    for (const Fd& f : p.fds) {
      base = std::max(base, f.fd + 1);
      if (f.kind == FdKind::kPty && f.pty_master) indexes.insert(f.pty_index);
    }
  auto it = indexes.find(index);
  if (it == indexes.end()) fail_image("image: no pty master with index {}", index);
  return base + static_cast<int>(std::distance(indexes.begin(), it));
}

long open_pty(const FdRestoreCtx& c, const Fd& f, const std::string& who) {
  Injector& inj = c.inj();
  if (f.pty_master)
    return take_from_init(inj, pty_fd_in_init(*c.proc.image, f.pty_index), who + ": the master");
  // The slave, as the job (act_as), never becoming a controlling terminal by the open
  // (take_controlling_tty has done that where it was one).
  long fd = open_no_symlinks(inj, c.host_pid(), c.area, pts_path(f.pty_index),
                             reopen_flags(f) | O_NOCTTY, 0, who);
  struct stat st = stat_of_fd(c.host_pid(), fd, who);
  if (!S_ISCHR(st.st_mode) || !is_pts(major(st.st_rdev)) ||
      pts_index(major(st.st_rdev), minor(st.st_rdev)) != f.pty_index)
    fail("restore refused: {}: {} is not the slave of pty {}", who, pts_path(f.pty_index),
         f.pty_index);
  if ((f.file.mode && st.st_mode != f.file.mode) || st.st_uid != f.file.uid ||
      st.st_gid != f.file.gid)
    fail("{}: {} has mode {:o} owner {}:{}, at dump {:o} {}:{}", who, pts_path(f.pty_index),
         st.st_mode, st.st_uid, st.st_gid, f.file.mode, f.file.uid, f.file.gid);
  return fd;
}

// A slave's exclusive mode, once every fd of the process exists (it refuses further
// opens of the slave by anyone but root).
void finish_pty(const FdRestoreCtx& c, const Fd& f, const std::string& who) {
  if (!f.pty_master && f.tty_exclusive)
    c.inj().call_ok(who + ": ioctl TIOCEXCL", SYS_ioctl, static_cast<std::uint64_t>(f.fd),
                    TIOCEXCL);
}

// Opens /dev/pts/N in the process behind `inj` (root, in create_tree), for ioctls on it.
long open_slave_in(Injector& inj, pid_t hp, const InjectionArea& area, int index, int flags,
                   const std::string& who) {
  std::uint64_t path = put_string(hp, area, 0, pts_path(index));
  return inj.call_ok(fmt::format("{}: open {}", who, pts_path(index)), SYS_openat,
                     static_cast<std::uint64_t>(AT_FDCWD), path,
                     static_cast<std::uint64_t>(O_RDWR | O_CLOEXEC | flags), 0);
}

const RestoreProcess* find_proc(const std::vector<RestoreProcess>& procs, int pid) {
  for (auto& p : procs)
    if (p.rec->pid == pid) return &p;
  return nullptr;
}

}  // namespace

const FdOps kPtyFdOps{.kind = FdKind::kPty,
                      .anon_link = nullptr,
                      .dump = dump_pty,
                      .open = open_pty,
                      .finish = finish_pty,
                      .shareable = true,
                      .seekable = false};

bool is_tty_device(const struct stat& st) {
  if (!S_ISCHR(st.st_mode)) return false;
  const unsigned maj = major(st.st_rdev), min = minor(st.st_rdev);
  return is_pts(maj) || maj == kTtyMajor || (maj == kTtyAuxMajor && min <= 2);
}

void dump_ttys(std::span<DumpProcess> all) {
  // Both ends of every pty in the job: a master alone (its slave never opened, or
  // closed: reads then fail with EIO) or a slave alone cannot be made the same again.
  struct Ends {
    std::string master, slave;  // where one of each end is, "" if none
  };
  std::map<int, Ends> ptys;
  for (auto& p : all) {
    if (p.zombie) continue;
    for (const Fd& f : p.rec.fds) {
      if (f.kind != FdKind::kPty) continue;
      auto& e = ptys[f.pty_index];
      (f.pty_master ? e.master : e.slave) = fmt::format(
          "process {} (pid {} in the job), fd {} -> {}", p.host_pid, p.rec.pid, f.fd, f.path);
    }
  }
  for (auto& [index, e] : ptys) {
    if (e.master.empty())
      fail_unsupported(
          "{}: the master of this pseudo-terminal is not open in the job (a slave alone, or a "
          "terminal outside the job): not supported",
          e.slave);
    if (e.slave.empty())
      fail_unsupported(
          "{}: no process of the job has the slave /dev/pts/{} open (a master alone): not "
          "supported",
          e.master, index);
  }
  // Controlling terminals (proc(5) /proc/PID/stat: 7 tty_nr, 8 tpgid, 5 pgrp).
  std::map<pid_t, int> ns_pgrp;  // host pgrp -> the job's
  for (auto& p : all)
    if (!p.zombie) ns_pgrp[std::stoi(read_stat(p.host_pid).at(5))] = p.rec.pgid;
  for (auto& p : all) {
    p.rec.ctty = -1;
    p.rec.ctty_pgrp = 0;
    if (p.zombie) continue;
    const auto st = read_stat(p.host_pid);
    const auto nr = static_cast<unsigned>(std::stoul(st.at(7)));
    const std::string who = fmt::format("process {} (pid {} in the job)", p.host_pid, p.rec.pid);
    if (nr) {
      const unsigned maj = (nr >> 8) & 0xfff, min = (nr & 0xff) | ((nr >> 12) & 0xfff00);
      if (!is_pts(maj) || !ptys.count(pts_index(maj, min)))
        fail_unsupported(
            "{}: its controlling terminal (device {}:{}) is not a pseudo-terminal of the job (a "
            "terminal outside the job): not supported",
            who, maj, min);
      p.rec.ctty = pts_index(maj, min);
    }
    if (p.rec.sid == p.rec.pid) {
      if (p.rec.ctty < 0) continue;
      if (p.rec.pid == 1)
        fail_unsupported("{}: the job's init has a controlling terminal: not supported", who);
      const pid_t tpgid = std::stoi(st.at(8));
      auto g = ns_pgrp.find(tpgid);
      if (g == ns_pgrp.end())
        fail_unsupported(
            "{}: the foreground process group {} of its terminal /dev/pts/{} is not in the job",
            who, tpgid, p.rec.ctty);
      p.rec.ctty_pgrp = g->second;
      continue;
    }
    // Not a session leader: the restore's clone(2) gives it its parent's terminal.
    int parent_ctty = -1;
    for (auto& q : all)
      if (q.rec.pid == p.rec.ppid) parent_ctty = q.rec.ctty;
    if (parent_ctty != p.rec.ctty)
      fail_unsupported(
          "{}: its controlling terminal ({}) differs from its parent's ({}), which a restore "
          "cannot give back: not supported",
          who, p.rec.ctty < 0 ? "none" : pts_path(p.rec.ctty),
          parent_ctty < 0 ? "none" : pts_path(parent_ctty));
  }
}

void create_ptys(RestoreProcess& init, const InjectionArea& area) {
  const Manifest& m = *init.image;
  std::map<int, const Fd*> masters;
  for (const Process& p : m.processes)
    for (const Fd& f : p.fds)
      if (f.kind == FdKind::kPty && f.pty_master && f.shared_fd < 0) masters[f.pty_index] = &f;
  Injector& inj = init.leader();
  const pid_t hp = init.host_pid;
  const std::uint64_t arg = area.data() + 512;  // ioctl arguments
  // In ascending order, in the job's fresh devpts: each open of ptmx takes the lowest
  // free index, so the ones below a wanted index are opened and closed again.
  for (auto& [index, f] : masters) {
    const std::string who = fmt::format("pty {} (/dev/pts/{})", index, index);
    const int at = pty_fd_in_init(m, index);
    std::vector<long> below;
    for (;;) {
      std::uint64_t path = put_string(hp, area, 0, "/dev/ptmx");
      long fd =
          inj.call_ok(who + ": open /dev/ptmx", SYS_openat, static_cast<std::uint64_t>(AT_FDCWD),
                      path, O_RDWR | O_NOCTTY | O_CLOEXEC, 0);
      inj.call_ok(who + ": ioctl TIOCGPTN", SYS_ioctl, static_cast<std::uint64_t>(fd), TIOCGPTN,
                  arg);
      int got = -1;
      remote_read(hp, arg, &got, sizeof got);
      if (got == index) {
        inj.call_ok(who + ": dup3", SYS_dup3, static_cast<std::uint64_t>(fd),
                    static_cast<std::uint64_t>(at), O_CLOEXEC);
        inj.call(SYS_close, static_cast<std::uint64_t>(fd));
        break;
      }
      below.push_back(fd);
      if (got > index) {
        for (long b : below) inj.call(SYS_close, static_cast<std::uint64_t>(b));
        fail("{}: the job's /dev/pts gave index {}: the index is taken", who, got);
      }
    }
    for (long b : below) inj.call(SYS_close, static_cast<std::uint64_t>(b));
    const auto at_fd = static_cast<std::uint64_t>(at);
    const int unlock = 0;
    remote_write(hp, arg, &unlock, sizeof unlock);
    inj.call_ok(who + ": ioctl TIOCSPTLCK", SYS_ioctl, at_fd, TIOCSPTLCK, arg);
    // The pair's settings, through the master (the ioctls act on the slave's side).
    auto raw = from_hex(f->termios_hex);
    if (raw.size() != sizeof(KTermios2)) fail_image("image: {}: bad termios", who);
    remote_write(hp, arg, raw.data(), raw.size());
    inj.call_ok(who + ": ioctl TCSETS2", SYS_ioctl, at_fd, kTcsets2, arg);
    if (f->winsize.size() != 4) fail_image("image: {}: bad window size", who);
    struct winsize ws {
      static_cast<unsigned short>(f->winsize[0]), static_cast<unsigned short>(f->winsize[1]),
          static_cast<unsigned short>(f->winsize[2]), static_cast<unsigned short>(f->winsize[3])
    };
    remote_write(hp, arg, &ws, sizeof ws);
    inj.call_ok(who + ": ioctl TIOCSWINSZ", SYS_ioctl, at_fd, TIOCSWINSZ, arg);
    const int packet = f->pty_packet ? 1 : 0;
    remote_write(hp, arg, &packet, sizeof packet);
    inj.call_ok(who + ": ioctl TIOCPKT", SYS_ioctl, at_fd, TIOCPKT, arg);
    if (f->tty_exclusive) inj.call_ok(who + ": ioctl TIOCEXCL", SYS_ioctl, at_fd, TIOCEXCL);
    // The slave as it was: devpts gives it init's uid (root) and group tty.
    std::uint64_t path = put_string(hp, area, 0, pts_path(index));
    inj.call_ok(who + ": chown of the slave", SYS_fchownat, static_cast<std::uint64_t>(AT_FDCWD),
                path, f->file.uid, f->file.gid, 0);
    inj.call_ok(who + ": chmod of the slave", SYS_fchmodat, static_cast<std::uint64_t>(AT_FDCWD),
                path, f->file.mode & 07777);
  }
}

void drop_inherited_ptys(RestoreProcess& child) {
  const Manifest& m = *child.image;
  for (const Process& p : m.processes)
    for (const Fd& f : p.fds)
      if (f.kind == FdKind::kPty && f.pty_master && f.shared_fd < 0)
        child.leader().call(SYS_close, static_cast<std::uint64_t>(pty_fd_in_init(m, f.pty_index)));
}

void take_controlling_tty(RestoreProcess& leader, const InjectionArea& area) {
  const Process& r = *leader.rec;
  if (r.ctty < 0) return;
  const std::string who = fmt::format("process {}: controlling terminal", r.pid);
  Injector& inj = leader.leader();
  long fd = open_slave_in(inj, leader.host_pid, area, r.ctty, O_NOCTTY, who);
  long e = inj.call(SYS_ioctl, static_cast<std::uint64_t>(fd), TIOCSCTTY, 0);
  inj.call(SYS_close, static_cast<std::uint64_t>(fd));
  if (e < 0) throw Error(who + ": ioctl TIOCSCTTY " + pts_path(r.ctty), static_cast<int>(-e));
}

void set_foreground_groups(std::vector<RestoreProcess>& procs, const InjectionArea& area) {
  for (auto& p : procs) {
    const Process& r = *p.rec;
    if (r.zombie || r.ctty < 0 || r.sid != r.pid || r.ctty_pgrp <= 0) continue;
    const std::string who = fmt::format("process {}: foreground process group", r.pid);
    if (!find_proc(procs, r.ctty_pgrp) &&
        std::none_of(procs.begin(), procs.end(),
                     [&](const RestoreProcess& q) { return q.rec->pgid == r.ctty_pgrp; }))
      fail_image("image: {}: group {} has no process", who, r.ctty_pgrp);
    Injector& inj = p.leader();
    long fd = open_slave_in(inj, p.host_pid, area, r.ctty, O_NOCTTY, who);
    const int pgrp = r.ctty_pgrp;
    remote_write(p.host_pid, area.data() + 512, &pgrp, sizeof pgrp);
    long e = inj.call(SYS_ioctl, static_cast<std::uint64_t>(fd), TIOCSPGRP, area.data() + 512);
    inj.call(SYS_close, static_cast<std::uint64_t>(fd));
    if (e < 0)
      throw Error(fmt::format("{}: ioctl TIOCSPGRP {} on {}", who, pgrp, pts_path(r.ctty)),
                  static_cast<int>(-e));
  }
}

void close_ptys_in_init(RestoreProcess& init) { drop_inherited_ptys(init); }

}  // namespace fsched::ckpt
