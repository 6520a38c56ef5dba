// Pseudo-terminals (pty(7)) of a job, as `script`, `expect` or Python's pty module
// make them: master (/dev/ptmx) and slave (/dev/pts/N) ends, both inside the job, and
// the controlling terminal of the job's sessions.
//
// The job has a devpts instance of its own (namespaces.h), at run and at restore, so
// pty indexes are the job's: the restore makes every pty again with its saved index
// (ttyname(3) gives the same name), its termios, window size, packet mode, exclusive
// mode and the slave's owner, group and mode. The masters are made by init while the
// tree is created, before any session leader needs its terminal: a leader takes its
// controlling terminal (TIOCSCTTY) right after setsid(2), before its children exist,
// so that they inherit it as they did; the foreground process group is set once every
// group exists.
//
// Refused at dump (UnsupportedError naming process, fd and path): a terminal that is
// not a pty of the job's own devpts (a terminal outside the job, serial or virtual
// consoles), /dev/tty, a slave whose master is not open in the job (one whose master
// was closed has lost its /dev/pts/N name and is refused by files.cpp, as a hung-up
// slave), a master whose slave is not open in the job, a locked pty, a line discipline
// other than N_TTY, data queued in either direction, a controlling terminal the
// restore cannot give back.
//
// Kernel interfaces: ioctl_tty(2) (TCGETS2, TIOCGWINSZ, TIOCGPKT, TIOCGEXCL, TIOCINQ,
// TIOCOUTQ, TIOCGETD, TIOCSCTTY, TIOCSPGRP), pty(7) TIOCGPTN/TIOCSPTLCK, proc(5)
// /proc/PID/stat tty_nr and tpgid, /proc/PID/fdinfo "tty-index", devpts(5).
#pragma once

#include <sys/stat.h>

#include <span>
#include <vector>

#include "ckpt/dump_context.h"
#include "ckpt/fd_ops.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

// FdKind::kPty.
extern const FdOps kPtyFdOps;

// Whether a character device is a terminal this unit handles or refuses with a clear
// message: pty masters and slaves, /dev/tty, /dev/console and the other tty majors.
bool is_tty_device(const struct stat& st);

// Dump, after dump_files() of every process: checks that every pty has both ends open
// in the job, and records each process's controlling terminal (Process::ctty,
// ctty_pgrp). Throws UnsupportedError naming the process (and fd) otherwise.
void dump_ttys(std::span<DumpProcess> all);

// Restore, in init (pid 1 of the new namespace, still root) before any other process
// exists: makes every pty of the image with its saved index, settings and slave owner,
// holding each master at fd pty_fd_in_init(). Throws Error naming the pty.
void create_ptys(RestoreProcess& init, const InjectionArea& area);

// Restore, in a process just cloned by init (not sharing init's fd table): closes the
// masters it inherited from init.
void drop_inherited_ptys(RestoreProcess& child);

// Restore, in a session leader right after its setsid(2): takes its saved controlling
// terminal (nothing if it had none).
void take_controlling_tty(RestoreProcess& leader, const InjectionArea& area);

// Restore, once every process group exists: each session leader with a controlling
// terminal sets the terminal's saved foreground process group.
void set_foreground_groups(std::vector<RestoreProcess>& procs, const InjectionArea& area);

// Restore, at the end: init closes the masters it held (the job's fds hold them now).
void close_ptys_in_init(RestoreProcess& init);

}  // namespace fsched::ckpt
