// TCP and UDP sockets of the job (IPv4 and IPv6), FdKind::kInet; one unit, dump and
// restore side by side.
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
// the job is frozen. Established sockets are put in repair mode before anything is
// read (a repaired socket sends nothing); InetRepair takes them out again when the
// dump fails or the job is left running, and leaves them in repair mode when the job
// is killed, so that their close sends no FIN or RST to the peer that the restored
// socket will talk to. Known limit: there is no network lock (CRIU's iptables rules),
// so data a peer OUTSIDE the job sends between the queue read and the kill would be
// acknowledged by the dying socket and lost; InetRepair::check_unchanged() re-reads
// every receive sequence number before the image is committed and fails the dump if
// one moved (what arrives between the commit and the kill is not detected).
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

// The sockets a dump holds in repair mode. Destruction (dump failed) and
// end_repair() (job left running) take them out of repair mode; keep_for_kill()
// leaves them in it for the job's death.
class InetRepair {
 public:
  InetRepair();
  ~InetRepair();
  InetRepair(const InetRepair&) = delete;
  InetRepair& operator=(const InetRepair&) = delete;
  void end_repair();
  // A frozen job's connections can still move data between themselves (a window
  // update sent before the freeze lets a sender inside the job go on over loopback;
  // repair mode stops nothing). Called once the rest of the job is dumped: if any
  // receive sequence number moved, reads the connections into m.inet_sockets again
  // until a reading 10 ms after the last finds nothing moved (at most ~0.5 s), so that
  // check_unchanged() need not abandon the dump. Throws Error naming a socket that
  // cannot be read.
  void settle(Manifest& m);
  // Fails the dump (Error) if a repaired socket received data since it was dumped.
  void check_unchanged() const;
  void keep_for_kill();
  struct Held;

 private:
  std::unique_ptr<Held> held_;
  friend void dump_inet(std::span<DumpProcess>, Manifest&, InetRepair&);
};

// Restore: the connections restore_files() made are left in repair mode until every
// socket of the job exists; finish() (after restore_files of every process) takes them
// out of it, sends what was not sent yet, sets their options and reads everything back.
// Throws Error naming the process and fd. Destruction without finish() (a failed
// restore) drops the restorer's references; the killed job's close sends nothing.
class InetRestore {
 public:
  InetRestore();
  ~InetRestore();
  InetRestore(const InetRestore&) = delete;
  InetRestore& operator=(const InetRestore&) = delete;
  void finish();
};

// Dump: every TCP/UDP socket of the job (the fds of kind kInet) into m.inet_sockets,
// by inode, once each. Throws UnsupportedError naming process, fd and state for what
// cannot be restored exactly.
void dump_inet(std::span<DumpProcess> procs, Manifest& m, InetRepair& repair);

}  // namespace fsched::ckpt
