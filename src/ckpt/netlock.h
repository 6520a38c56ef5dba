// The network lock of a dump: while a job's TCP sockets are being dumped, no packet
// reaches them, and a dumper that dies meanwhile leaves them as they were.
//
// Why: a frozen job's sockets still receive. Data a peer sends after the dump read a
// connection's receive queue would be acknowledged by the kernel and then lost with
// the killed job; a connection arriving at a listener after the dump looked would sit
// in its accept queue and die with it. CRIU locks with iptables/nftables rules per
// connection; this lock is per socket and needs no firewall: a classic socket filter
// that drops every packet (SO_ATTACH_FILTER, socket(7)), run by the kernel before TCP
// sees the packet, so nothing is acknowledged and the peer retransmits later, to the
// job left running or to the restored socket. The dump refuses sockets that already
// have a filter (inet.h), so there is none to give back.
//
// The guardian: a child process of the dumper that holds a reference to every locked
// socket (SCM_RIGHTS over a SOCK_SEQPACKET pair, sent before the socket is locked or
// put in repair mode). If the dumper dies (SIGKILL by CheckpointTimeout, OOM) while
// the job lives, the guardian sees its end of the pair close and takes every socket
// out of repair mode (TCP_REPAIR off, tcp(7)) and out of the lock (SO_DETACH_FILTER):
// the job goes on unharmed. When the job has a cgroup of its own, the dump freezes it
// around each repair window (cgroup_freeze.h) and the guardian thaws it only after
// that, so no thread of the job runs while one of its sockets is in repair mode. It runs only
// async-signal-safe system calls after fork(2), in memory allocated before it.
//
// Between the kill and the restore: once the job is killed, the guardian keeps its
// sockets alive, still locked and in repair mode, for `hold` seconds: a peer's
// retransmissions meanwhile find a socket that drops them, not a closed port that
// answers with a reset. A restore of the image on this host takes them over
// (take_held_sockets: the guardian hands them to a root client of its abstract socket,
// whose name the manifest records) and gives each to the restored process as it is,
// queues and sequence numbers intact, when it matches the image (inet_restore.cpp); so the
// connection never has a moment without its socket. After `hold` seconds the guardian
// closes them (silently: repair mode) and a peer's next segment is answered with a
// reset, which a restored program sees as ECONNRESET.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/fd.h"

namespace fsched::ckpt {

class NetLock {
 public:
  // job_init: the host pid of the job's init, whose exit tells the guardian the job is
  // dead. hold_s: how long a guardian whose dumper died holds a dead job's sockets.
  // No process is started until the first add().
  NetLock(pid_t job_init, unsigned hold_s) : job_init_(job_init), hold_s_(hold_s) {}
  // A NetLock neither released nor abandoned releases (the dump failed).
  ~NetLock();
  NetLock(const NetLock&) = delete;
  NetLock& operator=(const NetLock&) = delete;

  // Hands socket `fd` (a reference to a socket of the job; the lock keeps its own) to
  // the guardian, then locks it. Call before putting it in repair mode. Throws Error (errno, `who`)
  // if the guardian cannot be started or reached, the filter cannot be attached, or
  // more than kMaxSockets sockets are locked.
  void add(int fd, const std::string& who);
  // Hands the guardian `freeze_file` (cgroup.freeze of the job's cgroup, open for
  // writing: cgroup_freeze.h), to which it writes 0 when the dumper dies, after every
  // socket is out of repair mode; and before holding the sockets of a dead job. Call
  // after the first add() and before the first freeze. Throws Error (errno, `who`).
  void set_thaw(int freeze_file, const std::string& who);
  // The job goes on: every socket is unlocked (packets dropped meanwhile come again,
  // retransmitted by their senders) and the guardian ends without touching them.
  // Errors are ignored: each socket is tried.
  void release() noexcept;
  // The job is about to be killed, its sockets in repair mode (for a silent close):
  // the guardian sends its init SIGKILL too (pidfd_send_signal(2)), and from then on a
  // dumper that dies leaves the sockets held for a restore, as hold() would, instead
  // of giving them back to a job that is dying. Call right before the dumper's own
  // kill. A guardian that cannot be told is gone already: nothing is reported.
  void killing() noexcept;
  // The job was killed: the guardian keeps the sockets, locked and in repair mode,
  // until a restore takes them or `hold_s` seconds pass (0: closes them now).
  void hold(unsigned hold_s) noexcept;
  // The abstract socket name (without the leading NUL) at which the guardian hands
  // held sockets over; "" before the first add().
  const std::string& name() const { return name_; }
  // How many sockets are locked.
  std::size_t size() const { return fds_.size(); }

  static constexpr std::size_t kMaxSockets = 65536;

 private:
  void start_guardian();
  void end(char tag, unsigned hold_s) noexcept;

  pid_t job_init_;
  unsigned hold_s_;
  std::string name_;
  pid_t guardian_ = -1;
  UniqueFd chan_;              // the dumper's end of the pair to the guardian
  std::vector<UniqueFd> fds_;  // the dumper's references to the locked sockets
  bool done_ = false;
};

// Restore: the sockets the guardian at abstract name `name` holds, by socket inode,
// each a reference of the caller (SOCK_CLOEXEC). Empty when no such guardian is
// listening (gone after its hold time, on another host) or when whoever listens there
// is not root (SO_PEERCRED: anyone may bind an abstract name). Throws Error on a
// guardian that stops answering (5 s) or sends something else.
std::map<std::uint64_t, UniqueFd> take_held_sockets(const std::string& name);

}  // namespace fsched::ckpt
