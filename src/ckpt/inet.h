// TCP and UDP sockets of the job (IPv4 and IPv6), FdKind::kInet; one unit, its dump side
// in inet.cpp, its restore side in inet_restore.cpp.
//
// Restored:
//  - TCP listening sockets: bound address and port, backlog, options. One with
//    connections waiting in its accept queue is refused (they are half-made
//    connections of other programs, which cannot be handed back).
//  - TCP established connections, between processes of the job or to a peer outside
//    it, with TCP_REPAIR (tcp(7)): sequence numbers, both queues (the send queue with
//    its not-yet-sent part, the receive queue), windows (TCP_REPAIR_WINDOW), the
//    options negotiated at connect (mss, window scale, SACK, timestamps:
//    TCP_REPAIR_OPTIONS) and the timestamp clock (TCP_TIMESTAMP). A peer outside the
//    job that still holds its end sees the connection go on; one that has closed it
//    answers with a reset, and the program gets ECONNRESET, an ordinary network
//    error (as with CRIU).
//  - UDP sockets: bound and connected addresses, options. Datagrams waiting in the
//    receive queue are refused (their senders' addresses could not be given back).
//  - Socket options (kOptions in inet.cpp): set where a fresh socket differs and read
//    back; an option the unit cannot restore (SO_BINDTODEVICE, IP_FREEBIND,
//    IP_TRANSPARENT, a socket filter, IP_OPTIONS) makes the dump fail.
// Refused with the process, fd and state named: every other TCP state (SYN_SENT,
// FIN_WAIT*, CLOSE_WAIT, LAST_ACK, CLOSING, TIME_WAIT), a shut-down TCP or UDP
// socket, raw, SCTP, MPTCP, ICMP and packet sockets, IPv6 link-local addresses, TCP
// urgent data not yet read, or read out of band with its place or mark still in the
// receive queue, and a pending socket error or error queue (POLLERR; found without
// clearing it, which SO_ERROR would). Not detected: an urgent pointer in the send
// queue.
//
// Dump: the dumper works on its own reference to each socket (pidfd_getfd(2)) while
// the job is frozen. Before anything is read, every TCP socket of the job is locked
// against incoming packets (netlock.h): what a peer sends during the dump is not
// acknowledged and comes again to the thawed or restored socket, and a guardian
// process gives the sockets back if the dumper dies. A connection is in repair mode
// (TCP_REPAIR) only while its sequence numbers, window and send queue are read, and
// again from just before a kill, so that its close sends no FIN or RST to the peer the
// restored socket will talk to; repair mode's hold on SO_REUSEADDR is undone each time.
// Once the job is killed the guardian holds its sockets for a restore on this host,
// which takes the dumped sockets over as they are (InetRestore). InetRepair::
// check_unchanged() re-reads every receive sequence number before the image is
// committed and fails the dump if one moved.
//
// Restore, why it is safe: each socket is made by an injected socket(2) in the job's
// own process, which at that point has the job's file-system uid (act_as), so the
// socket belongs to the job's user (SO_PEERCRED, /proc/net/tcp's uid; checked). The
// restorer, root with CAP_NET_ADMIN (needed by TCP_REPAIR), then works on its own
// reference: binding is done by root, so it binds only the address and port the
// manifest says the job held, refuses a port below net.ipv4.ip_unprivileged_port_start
// unless the job's process had CAP_NET_BIND_SERVICE, never sets IP_FREEBIND or
// IP_TRANSPARENT (the kernel refuses an address not local to this host), and reads
// the bound address back. Images are authenticated (imagekey.h); these checks hold
// even for a crafted one.
// Kernel interfaces: tcp(7) TCP_REPAIR, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ,
// TCP_REPAIR_OPTIONS, TCP_REPAIR_WINDOW, TCP_TIMESTAMP, TCP_INFO; ioctl SIOCINQ,
// SIOCOUTQ, SIOCOUTQNSD; sock_diag(7) inet_diag (state, queues, shutdown);
// socket(7), ip(7), ipv6(7), udp(7) options; pidfd_getfd(2).
#pragma once

#include <sys/types.h>

#include <memory>
#include <span>
#include <string>

#include "ckpt/dump_context.h"
#include "ckpt/fd_ops.h"
#include "ckpt/manifest.h"

namespace fsched::ckpt {

// FdKind::kInet.
extern const FdOps kInetFdOps;

// Dump, classification: the FdOps for socket fd `fd` of host process `host_pid`:
// kInetFdOps for a TCP or UDP socket, kUnixFdOps for any other family (sockets.cpp
// refuses those that are not Unix sockets). Throws UnsupportedError naming `where`
// for an INET socket of another protocol (raw, SCTP, MPTCP, ICMP).
const FdOps& socket_fd_ops(pid_t host_pid, int fd, const std::string& where);

// The TCP sockets of a dump: locked against incoming packets (netlock.h) from before
// they are read, and in repair mode only while each is read and, for a job to be
// killed, from just before the kill. Destruction (dump failed) and end_repair() (job
// left running) unlock them (and take them out of repair mode after keep_for_kill).
class InetRepair {
 public:
  // hold_s: how long the sockets of a killed job are held for a restore (netlock.h).
  explicit InetRepair(unsigned hold_s);
  ~InetRepair();
  InetRepair(const InetRepair&) = delete;
  InetRepair& operator=(const InetRepair&) = delete;
  void end_repair();
  // Fails the dump (Error) if a connection received data since it was dumped (the
  // lock makes that impossible; this is the last word before the image is committed).
  void check_unchanged() const;
  // The job is about to be killed: its connections go into repair mode (locked still),
  // so that their close sends nothing to the peers the restored job will talk to.
  // Last, the network lock's guardian is told (NetLock::killing): from then on the
  // job dies and its sockets are held even if the dumper dies before its own kill.
  // Throws Error naming a socket that cannot go into repair mode.
  void keep_for_kill();
  // The job is dead: the network lock's guardian holds its sockets for a restore.
  void job_killed();
  // How many TCP sockets the network lock holds.
  std::size_t locked() const;
  // What kept the job from running while a connection was in repair mode, for
  // DumpStats::tcp_freeze: "cgroup PATH" (cgroup_freeze.h), "none: WHY", or "" when
  // no connection was dumped.
  std::string freeze_note() const;
  struct Held;

 private:
  std::unique_ptr<Held> held_;
  unsigned hold_s_;
  friend void dump_inet(std::span<DumpProcess>, Manifest&, InetRepair&);
};

// Restore: the connections restore_files() made are left in repair mode until every
// socket of the job exists; finish() (after restore_files of every process) takes them
// out of it, sends what was not sent yet, sets their options and reads everything back.
// Throws Error naming the process and fd. Destruction without finish() (a failed
// restore) drops the restorer's references; the killed job's close sends nothing.
class InetRestore {
 public:
  // Takes over the sockets the dump's network lock still holds on this host, if any
  // (netlock.h): open_inet_fd gives each matching one to its process as it is.
  explicit InetRestore(const Manifest& m);
  ~InetRestore();
  InetRestore(const InetRestore&) = delete;
  InetRestore& operator=(const InetRestore&) = delete;
  // What became of the TCP connections.
  struct Counts {
    int taken_over = 0;  // the dumped sockets themselves, held by the network lock
    int reset = 0;       // reset by their peers before they were restored
  };
  Counts finish();
};

// Dump: every TCP/UDP socket of the job (the fds of kind kInet) into m.inet_sockets,
// by inode, once each. Throws UnsupportedError naming process, fd and state for what
// cannot be restored exactly.
void dump_inet(std::span<DumpProcess> procs, Manifest& m, InetRepair& repair);

}  // namespace fsched::ckpt
