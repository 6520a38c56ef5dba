// TCP and UDP sockets: the dump side, and what the restore side (inet_restore.cpp) shares
// (inet.h says what is restored, what is refused and why the restore gives the job no more
// privilege than it had).
// The order of the TCP_REPAIR operations follows CRIU's soccr: at dump, repair mode
// first, then the queues and sequence numbers; at restore, repair mode, sequence
// numbers, bind, connect (which in repair mode sends nothing and makes the socket
// established), negotiated options and timestamps, the queues, the window, repair off,
// and the part of the send queue that was not sent yet is sent normally.
#include "ckpt/inet.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <set>

#include "ckpt/manifest.h"
#include "ckpt/cgroup_freeze.h"
#include "ckpt/inet_internal.h"
#include "ckpt/netlock.h"
#include "ckpt/remote.h"
#include "ckpt/sockets.h"
#include "common/error.h"
#include "common/fd.h"

namespace fsched::ckpt {
namespace {

struct Opt {
  int level, name;
  int family;  // 0: any; AF_INET / AF_INET6: only sockets of that family
  int type;    // 0: any; SOCK_STREAM (TCP) / SOCK_DGRAM (UDP)
  const char* text;
};

// The options saved and restored (set where a fresh socket differs, then read back),
// in the order they are set: IP_TOS and IPV6_TCLASS first, as they change the
// priority too (ip(7)). IP_TOS and IP_TTL are kept for IPv6 sockets too, which use
// them for IPv4-mapped traffic.
const Opt kOptions[] = {
    {IPPROTO_IP, IP_TOS, 0, 0, "IP_TOS"},
    {IPPROTO_IPV6, IPV6_TCLASS, AF_INET6, 0, "IPV6_TCLASS"},
    {SOL_SOCKET, SO_REUSEADDR, 0, 0, "SO_REUSEADDR"},
    {SOL_SOCKET, SO_REUSEPORT, 0, 0, "SO_REUSEPORT"},
    {SOL_SOCKET, SO_KEEPALIVE, 0, 0, "SO_KEEPALIVE"},
    {SOL_SOCKET, SO_LINGER, 0, 0, "SO_LINGER"},
    {SOL_SOCKET, SO_PRIORITY, 0, 0, "SO_PRIORITY"},
    {SOL_SOCKET, SO_RCVLOWAT, 0, 0, "SO_RCVLOWAT"},
    {SOL_SOCKET, SO_RCVTIMEO_OLD, 0, 0, "SO_RCVTIMEO"},
    {SOL_SOCKET, SO_SNDTIMEO_OLD, 0, 0, "SO_SNDTIMEO"},
    {SOL_SOCKET, SO_BROADCAST, 0, 0, "SO_BROADCAST"},
    {SOL_SOCKET, SO_OOBINLINE, 0, 0, "SO_OOBINLINE"},
    {SOL_SOCKET, SO_DONTROUTE, 0, 0, "SO_DONTROUTE"},
    {SOL_SOCKET, SO_MARK, 0, 0, "SO_MARK"},
    {SOL_SOCKET, SO_TIMESTAMP_OLD, 0, 0, "SO_TIMESTAMP"},
    {SOL_SOCKET, SO_TIMESTAMPNS_OLD, 0, 0, "SO_TIMESTAMPNS"},
    {SOL_SOCKET, SO_PASSCRED, 0, 0, "SO_PASSCRED"},
    {SOL_SOCKET, SO_RCVBUF, 0, 0, "SO_RCVBUF"},
    {SOL_SOCKET, SO_SNDBUF, 0, 0, "SO_SNDBUF"},
    {IPPROTO_TCP, TCP_NODELAY, 0, SOCK_STREAM, "TCP_NODELAY"},
    {IPPROTO_TCP, TCP_CORK, 0, SOCK_STREAM, "TCP_CORK"},
    {IPPROTO_TCP, TCP_KEEPIDLE, 0, SOCK_STREAM, "TCP_KEEPIDLE"},
    {IPPROTO_TCP, TCP_KEEPINTVL, 0, SOCK_STREAM, "TCP_KEEPINTVL"},
    {IPPROTO_TCP, TCP_KEEPCNT, 0, SOCK_STREAM, "TCP_KEEPCNT"},
    {IPPROTO_TCP, TCP_USER_TIMEOUT, 0, SOCK_STREAM, "TCP_USER_TIMEOUT"},
    {IPPROTO_TCP, TCP_NOTSENT_LOWAT, 0, SOCK_STREAM, "TCP_NOTSENT_LOWAT"},
    {IPPROTO_TCP, TCP_DEFER_ACCEPT, 0, SOCK_STREAM, "TCP_DEFER_ACCEPT"},
    {IPPROTO_TCP, TCP_CONGESTION, 0, SOCK_STREAM, "TCP_CONGESTION"},
    {IPPROTO_TCP, TCP_MAXSEG, 0, SOCK_STREAM, "TCP_MAXSEG"},  // listening sockets only
    {IPPROTO_IP, IP_TTL, 0, 0, "IP_TTL"},
    {IPPROTO_IP, IP_RECVERR, AF_INET, 0, "IP_RECVERR"},
    {IPPROTO_IP, IP_PKTINFO, AF_INET, 0, "IP_PKTINFO"},
    {IPPROTO_IPV6, IPV6_V6ONLY, AF_INET6, 0, "IPV6_V6ONLY"},
    {IPPROTO_IPV6, IPV6_UNICAST_HOPS, AF_INET6, 0, "IPV6_UNICAST_HOPS"},
    {IPPROTO_IPV6, IPV6_RECVERR, AF_INET6, 0, "IPV6_RECVERR"},
    {IPPROTO_IPV6, IPV6_RECVPKTINFO, AF_INET6, 0, "IPV6_RECVPKTINFO"},
};

// The default TCP_MAXSEG of a socket that never had one set (TCP_MSS_DEFAULT).
constexpr int kDefaultMss = 536;

bool applies(const Opt& o, int family, int type, int state) {
  if (o.family && o.family != family) return false;
  if (o.type && o.type != type) return false;
  // The mss of a connection is restored by TCP_REPAIR_OPTIONS; only a listener's
  // user-set TCP_MAXSEG is an option of its own.
  if (o.level == IPPROTO_TCP && o.name == TCP_MAXSEG && state != TCP_LISTEN) return false;
  return true;
}

}  // namespace

namespace inet_detail {

// netinet/tcp.h's names of TCP states, for messages.
const char* tcp_state_name(int s) {
  static const char* const names[] = {"?",          "ESTABLISHED", "SYN_SENT",  "SYN_RECV",
                                      "FIN_WAIT1",  "FIN_WAIT2",   "TIME_WAIT", "CLOSE",
                                      "CLOSE_WAIT", "LAST_ACK",    "LISTEN",    "CLOSING"};
  return s >= 0 && s < 12 ? names[s] : "?";
}

const char* opt_text(int level, int name) {
  for (const Opt& o : kOptions)
    if (o.level == level && o.name == name) return o.text;
  return "?";
}

std::string get_opt(int fd, int level, int name) {
  char buf[64]{};
  socklen_t len = sizeof buf;
  if (::getsockopt(fd, level, name, buf, &len) < 0) return "";
  return to_hex(buf, len);
}

int int_opt(int fd, int level, int name) {
  int v = 0;
  socklen_t len = sizeof v;
  if (::getsockopt(fd, level, name, &v, &len) < 0) return -1;
  return v;
}

// Address of a sockaddr as text and port; {"", 0} for an unspecified one.
std::pair<std::string, int> addr_text(const sockaddr_storage& ss, const std::string& who) {
  char buf[INET6_ADDRSTRLEN]{};
  if (ss.ss_family == AF_INET) {
    auto& a = reinterpret_cast<const sockaddr_in&>(ss);
    ::inet_ntop(AF_INET, &a.sin_addr, buf, sizeof buf);
    return {buf, ntohs(a.sin_port)};
  }
  if (ss.ss_family == AF_INET6) {
    auto& a = reinterpret_cast<const sockaddr_in6&>(ss);
    if (a.sin6_scope_id)
      fail_unsupported("{}: an IPv6 address with a scope (link-local) is not supported", who);
    ::inet_ntop(AF_INET6, &a.sin6_addr, buf, sizeof buf);
    return {buf, ntohs(a.sin6_port)};
  }
  return {"", 0};
}

void set_repair(int fd, int on, const std::string& who) {
  if (::setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, &on, sizeof on) < 0)
    fail_errno("{}: TCP_REPAIR {}", who, on == TCP_REPAIR_ON ? "on" : "off");
}

// The receive sequence number (rcv_nxt) of a socket in repair mode.
std::uint32_t queue_seq(int fd, int queue, const std::string& who) {
  if (::setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &queue, sizeof queue) < 0)
    fail_errno("{}: TCP_REPAIR_QUEUE", who);
  std::uint32_t seq = 0;
  socklen_t len = sizeof seq;
  if (::getsockopt(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, &seq, &len) < 0)
    fail_errno("{}: TCP_QUEUE_SEQ", who);
  return seq;
}

}  // namespace inet_detail

using namespace inet_detail;

namespace {

// What inet_diag tells of one socket.
struct Diag {
  int state = 0;
  std::uint32_t rqueue = 0, wqueue = 0;
  unsigned uid = 0;
  int shutdown = 0;
};

// Every TCP and UDP socket of the host network namespace (the job's), by inode.
std::map<std::uint64_t, Diag> inet_sockets_diag() {
  std::map<std::uint64_t, Diag> out;
  for (int family : {AF_INET, AF_INET6}) {
    for (int proto : {IPPROTO_TCP, IPPROTO_UDP}) {
      UniqueFd nl(::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
      if (!nl) fail_errno("socket(NETLINK_SOCK_DIAG)");
      struct {
        nlmsghdr nlh;
        inet_diag_req_v2 req;
      } msg{};
      msg.nlh.nlmsg_len = sizeof msg;
      msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
      msg.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
      msg.req.sdiag_family = static_cast<std::uint8_t>(family);
      msg.req.sdiag_protocol = static_cast<std::uint8_t>(proto);
      msg.req.idiag_states = ~0U;
      if (::send(nl.get(), &msg, sizeof msg, 0) != sizeof msg) fail_errno("inet_diag request");
      std::vector<char> buf(1 << 16);
      for (bool done = false; !done;) {
        ssize_t n = ::recv(nl.get(), buf.data(), buf.size(), 0);
        if (n < 0) fail_errno("inet_diag reply");
        for (auto* h = reinterpret_cast<nlmsghdr*>(buf.data());
             NLMSG_OK(h, static_cast<unsigned>(n)); h = NLMSG_NEXT(h, n)) {
          if (h->nlmsg_type == NLMSG_DONE) {
            done = true;
            break;
          }
          if (h->nlmsg_type == NLMSG_ERROR) fail("inet_diag: error reply");
          auto* d = static_cast<inet_diag_msg*>(NLMSG_DATA(h));
          Diag info;
          info.state = d->idiag_state;
          info.rqueue = d->idiag_rqueue;
          info.wqueue = d->idiag_wqueue;
          info.uid = d->idiag_uid;
          int len = static_cast<int>(h->nlmsg_len - NLMSG_LENGTH(sizeof *d));
          for (auto* a = reinterpret_cast<rtattr*>(d + 1); RTA_OK(a, len); a = RTA_NEXT(a, len))
            if (a->rta_type == INET_DIAG_SHUTDOWN)
              info.shutdown = *static_cast<std::uint8_t*>(RTA_DATA(a));
          out[d->idiag_inode] = info;
        }
      }
    }
  }
  return out;
}

// The `len` bytes of a socket's queue, not consumed: its send queue (TCP_SEND_QUEUE,
// in repair mode) or its receive queue (any other `queue`, outside repair mode: a
// locked socket's receive queue stays as it is).
std::string peek_queue(int fd, int queue, int len, const std::string& who) {
  if (queue == TCP_SEND_QUEUE &&
      ::setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &queue, sizeof queue) < 0)
    fail_errno("{}: TCP_REPAIR_QUEUE", who);
  if (len <= 0) return "";
  std::string data(static_cast<std::size_t>(len), '\0');
  ssize_t r = ::recv(fd, data.data(), data.size(), MSG_PEEK | MSG_DONTWAIT);
  // A read of a receive queue stops at an urgent mark (tcp_recvmsg), which is where the
  // queue holds an urgent byte already read out of band and skipped when reading gets
  // there: the restored queue would give it back as data.
  if (queue != TCP_SEND_QUEUE && r >= 0 && r < len)
    fail_unsupported(
        "{}: TCP urgent (out-of-band) data: a mark inside its receive queue (the queue reads "
        "{} of {} bytes up to it) is not supported",
        who, r, len);
  if (r != len)
    fail_errno("{}: reading its {} queue ({} of {} bytes)", who,
               queue == TCP_SEND_QUEUE ? "send" : "receive", r, len);
  return data;
}

// Repair mode for as long as it lives. A dump holds it only while it reads: a dumper
// killed meanwhile lets the job's threads go (ptrace), and a thread that met its
// socket in repair mode before the guardian took it out would fail (recv EPERM), or
// what it sends would be queued without being transmitted. So the job's cgroup, when
// it has one of its own, is frozen for the window (cgroup_freeze.h): a thread let go
// stays frozen until the guardian has taken the socket out of repair mode. Out of it,
// the locked socket (netlock.h) still changes nothing the image holds: nothing comes
// in, and what a timer sends of the unsent part is sent again, the same bytes at the
// same sequence numbers, by the restore.
// Repair mode takes the socket's SO_REUSEADDR (sk_reuse: forced on, then off when
// repair ends), which is put back.
class RepairWindow {
 public:
  RepairWindow(int fd, const std::string& who, JobFreezer& freezer)
      : fd_(fd), reuse_(int_opt(fd, SOL_SOCKET, SO_REUSEADDR)), freezer_(freezer) {
    freezer_.freeze();
    try {
      set_repair(fd, TCP_REPAIR_ON, who);
    } catch (...) {
      freezer_.thaw();
      throw;
    }
  }
  ~RepairWindow() {
    int off = TCP_REPAIR_OFF_NO_WP;  // no window probe: the peer hears nothing
    ::setsockopt(fd_, IPPROTO_TCP, TCP_REPAIR, &off, sizeof off);
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &reuse_, sizeof reuse_);
    freezer_.thaw();
  }
  RepairWindow(const RepairWindow&) = delete;
  RepairWindow& operator=(const RepairWindow&) = delete;

 private:
  int fd_;
  int reuse_;
  JobFreezer& freezer_;
};

void dump_established(int fd, InetSocket& s, const std::string& who, JobFreezer& freezer) {
  int outq = 0, unsent = 0, inq = 0;
  if (::ioctl(fd, SIOCOUTQ, &outq) < 0 || ::ioctl(fd, SIOCOUTQNSD, &unsent) < 0 ||
      ::ioctl(fd, SIOCINQ, &inq) < 0)
    fail_errno("{}: queue lengths", who);
  s.unsent = static_cast<std::uint32_t>(unsent);
  tcp_info ti{};
  socklen_t tl = sizeof ti;
  if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) < 0) fail_errno("{}: TCP_INFO", who);
  s.tcpi_options = ti.tcpi_options;
  s.snd_wscale = ti.tcpi_snd_wscale;
  s.rcv_wscale = ti.tcpi_rcv_wscale;
  if (s.tcpi_options & TCPI_OPT_TIMESTAMPS) {
    socklen_t l = sizeof s.timestamp;
    if (::getsockopt(fd, IPPROTO_TCP, TCP_TIMESTAMP, &s.timestamp, &l) < 0)
      fail_errno("{}: TCP_TIMESTAMP", who);
  }
  const std::string recvq = peek_queue(fd, TCP_RECV_QUEUE, inq, who);
  std::string sendq;
  {
    // Only what needs repair mode, kept short (RepairWindow).
    RepairWindow repair(fd, who, freezer);
    s.snd_seq = queue_seq(fd, TCP_SEND_QUEUE, who);
    sendq = peek_queue(fd, TCP_SEND_QUEUE, outq, who);
    s.rcv_seq = queue_seq(fd, TCP_RECV_QUEUE, who);
    int mss = int_opt(fd, IPPROTO_TCP, TCP_MAXSEG);  // in repair mode: mss_clamp
    if (mss < 0) fail_errno("{}: TCP_MAXSEG", who);
    s.mss = static_cast<std::uint32_t>(mss);
    tcp_repair_window w{};
    socklen_t wl = sizeof w;
    if (::getsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &w, &wl) < 0)
      fail_errno("{}: TCP_REPAIR_WINDOW", who);
    s.snd_wl1 = w.snd_wl1;
    s.snd_wnd = w.snd_wnd;
    s.max_window = w.max_window;
    s.rcv_wnd = w.rcv_wnd;
    s.rcv_wup = w.rcv_wup;
  }
  s.sendq_hex = to_hex(sendq.data(), sendq.size());
  s.recvq_hex = to_hex(recvq.data(), recvq.size());
}

// A socket filter of the job's: refused (and checked before the network lock puts its
// own on the socket).
void refuse_socket_filter(int fd, const std::string& who) {
  socklen_t fl = 0;
  if (::getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, nullptr, &fl) == 0 && fl > 0)
    fail_unsupported("{}: a socket filter (SO_ATTACH_FILTER / BPF) is not supported", who);
}

// Options the unit cannot restore: refused when set.
void refuse_unrestorable_options(int fd, int family, const std::string& who) {
  char dev[IFNAMSIZ + 1]{};
  socklen_t dl = sizeof dev;
  if (::getsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, dev, &dl) == 0 && dl > 0 && dev[0])
    fail_unsupported("{}: bound to device {} (SO_BINDTODEVICE) is not supported", who, dev);
  if (family == AF_INET) {
    if (int_opt(fd, IPPROTO_IP, IP_FREEBIND) > 0 || int_opt(fd, IPPROTO_IP, IP_TRANSPARENT) > 0)
      fail_unsupported("{}: IP_FREEBIND or IP_TRANSPARENT is not supported", who);
    char ipopt[40];
    socklen_t il = sizeof ipopt;
    if (::getsockopt(fd, IPPROTO_IP, IP_OPTIONS, ipopt, &il) == 0 && il > 0)
      fail_unsupported("{}: IP options (IP_OPTIONS) are not supported", who);
  } else {
    if (int_opt(fd, IPPROTO_IPV6, IPV6_FREEBIND) > 0 ||
        int_opt(fd, IPPROTO_IPV6, IPV6_TRANSPARENT) > 0)
      fail_unsupported("{}: IPV6_FREEBIND or IPV6_TRANSPARENT is not supported", who);
  }
}

// State the kernel keeps beside the queues that a restored socket would not have: a
// pending error (sk_err, the next call's or SO_ERROR's answer, e.g. ECONNREFUSED from
// an ICMP error on a connected UDP socket, ECONNRESET on a reset connection) or an
// error queue (IP_RECVERR, timestamps, zerocopy completions), and TCP urgent data
// (send(MSG_OOB)). Both are read without changing them: poll(2) reports POLLERR for
// either error without clearing sk_err (getsockopt SO_ERROR would clear it, so it is
// not used); recv(MSG_OOB | MSG_PEEK) returns the urgent byte without reading it, and
// EAGAIN when the urgent pointer has arrived before its byte. Must run before repair
// mode (a socket in repair mode answers MSG_OOB the same, but nothing else here needs
// it).
// `diag_rqueue`: inet_diag's count of the receive queue (rcv_nxt - copied_seq), read
// before.
void refuse_error_and_urgent(int fd, int type, int state, std::uint32_t diag_rqueue,
                             const std::string& who) {
  pollfd pfd{fd, 0, 0};
  if (::poll(&pfd, 1, 0) < 0) fail_errno("{}: poll", who);
  if (pfd.revents & POLLERR)
    fail_unsupported(
        "{}: a pending socket error or a non-empty error queue (POLLERR; SO_ERROR, "
        "IP_RECVERR) is not supported",
        who);
  if (type != SOCK_STREAM || state != TCP_ESTABLISHED) return;
  char c = 0;
  ssize_t r = ::recv(fd, &c, 1, MSG_OOB | MSG_PEEK | MSG_DONTWAIT);
  if (r == 1 || (r < 0 && errno == EAGAIN))
    fail_unsupported("{}: TCP urgent (out-of-band) data not yet read (MSG_OOB) is not supported",
                     who);
  // The urgent mark where reading is: its byte, already read out of band, is skipped by
  // the next read (or, with SO_OOBINLINE, is read there); the restored queue would have
  // neither the mark nor the skip.
  // An urgent byte already read out of band but still ahead in the queue: SIOCINQ
  // leaves it out (reading will skip it), inet_diag counts it; the restored queue would
  // hold the data without the byte's place or its mark. (SIOCINQ, read second, can only
  // have grown if a peer outside the job sent more meanwhile.)
  int inq = 0;
  if (::ioctl(fd, SIOCINQ, &inq) < 0) fail_errno("{}: SIOCINQ", who);
  if (diag_rqueue > static_cast<std::uint32_t>(inq))
    fail_unsupported(
        "{}: TCP urgent (out-of-band) data: a byte read out of band still inside its receive "
        "queue ({} bytes queued, {} readable) is not supported",
        who, diag_rqueue, inq);
  int at_mark = 0;
  if (::ioctl(fd, SIOCATMARK, &at_mark) == 0 && at_mark)
    fail_unsupported(
        "{}: TCP urgent (out-of-band) data: its mark at the read position (SIOCATMARK) is not "
        "supported",
        who);
}

void dump_inet_fd(const FdDumpCtx& c, Fd& f) {
  f.file.ino = std::stoull(c.link.substr(8));
  f.path.clear();
}

}  // namespace

const FdOps kInetFdOps{.kind = FdKind::kInet,
                       .anon_link = nullptr,
                       .dump = dump_inet_fd,
                       .open = open_inet_fd,
                       .finish = nullptr,
                       .shareable = true,
                       .seekable = false};

const FdOps& socket_fd_ops(pid_t host_pid, int fd, const std::string& where) {
  UniqueFd mine = grab_fd(host_pid, fd, where);
  const int family = int_opt(mine.get(), SOL_SOCKET, SO_DOMAIN);
  if (family != AF_INET && family != AF_INET6) return kUnixFdOps;
  const int type = int_opt(mine.get(), SOL_SOCKET, SO_TYPE);
  const int proto = int_opt(mine.get(), SOL_SOCKET, SO_PROTOCOL);
  if ((type == SOCK_STREAM && proto == IPPROTO_TCP) || (type == SOCK_DGRAM && proto == IPPROTO_UDP))
    return kInetFdOps;
  fail_unsupported(
      "{}: an {} socket of type {} and protocol {} (raw, SCTP, MPTCP, ICMP...) is not supported",
      where, family == AF_INET ? "IPv4" : "IPv6", type, proto);
}

// ---- InetRepair ---------------------------------------------------------------------

struct InetRepair::Held {
  struct One {
    UniqueFd fd;
    std::uint32_t rcv_seq = 0;
    std::string who;
    std::uint64_t ino = 0;
    int reuse = 0;  // SO_REUSEADDR, which repair mode takes
  };
  std::vector<One> sockets;
  std::unique_ptr<NetLock> lock;  // every TCP socket of the job, from before it is read
  // The job's cgroup, frozen while a socket is in repair mode (cgroup_freeze.h).
  JobFreezer freezer;
  bool has_connections = false;  // a connection was dumped (in repair mode a moment)
  bool for_kill = false;         // in repair mode again, for the kill (keep_for_kill)
  bool done = false;
};

InetRepair::InetRepair(unsigned hold_s) : held_(std::make_unique<Held>()), hold_s_(hold_s) {}

InetRepair::~InetRepair() {
  try {
    end_repair();
  } catch (...) {
  }
}

void InetRepair::end_repair() {
  if (held_->done) return;
  held_->done = true;
  if (held_->for_kill)
    for (auto& h : held_->sockets) {
      int off = TCP_REPAIR_OFF;
      ::setsockopt(h.fd.get(), IPPROTO_TCP, TCP_REPAIR, &off, sizeof off);
      ::setsockopt(h.fd.get(), SOL_SOCKET, SO_REUSEADDR, &h.reuse, sizeof h.reuse);
    }
  held_->freezer.thaw();
  held_->sockets.clear();
  if (held_->lock) held_->lock->release();
}

void InetRepair::check_unchanged() const {
  for (auto& h : held_->sockets) {
    std::uint32_t now = 0;
    {
      RepairWindow repair(h.fd.get(), h.who, held_->freezer);
      now = queue_seq(h.fd.get(), TCP_RECV_QUEUE, h.who);
    }
    if (now != h.rcv_seq)
      fail("{}: {} bytes arrived from its peer during the dump: dump abandoned", h.who,
           now - h.rcv_seq);
  }
}

void InetRepair::keep_for_kill() {
  held_->for_kill = true;
  // Frozen until the kill (job_killed), or until end_repair() if the dump fails first.
  if (!held_->sockets.empty()) held_->freezer.freeze();
  for (auto& h : held_->sockets) set_repair(h.fd.get(), TCP_REPAIR_ON, h.who);
  // The last step before the kill: from here a dumper that dies still kills the job.
  if (held_->lock) held_->lock->killing();
}

void InetRepair::job_killed() {
  held_->done = true;
  held_->sockets.clear();
  if (held_->lock) held_->lock->hold(hold_s_);
  held_->freezer.thaw();  // SIGKILL went through the freeze; the launcher may be in it
}

std::string InetRepair::freeze_note() const {
  if (!held_->has_connections) return {};
  if (held_->freezer.usable()) return "cgroup " + held_->freezer.path();
  return "none: " + held_->freezer.reason();
}

std::size_t InetRepair::locked() const { return held_->lock ? held_->lock->size() : 0; }

void dump_inet(std::span<DumpProcess> procs, Manifest& m, InetRepair& repair) {
  auto who_of = [](const DumpProcess& p, const Fd& f) {
    return fmt::format("process {} (pid {} in the job), fd {} -> socket:[{}]", p.host_pid,
                       p.rec.pid, f.fd, f.file.ino);
  };
  // The lock first (netlock.h): from here on no packet reaches a TCP socket of the job,
  // so what is read below (accept queues, sequence numbers, queues) stays true until
  // the job is killed or thawed.
  std::map<std::uint64_t, UniqueFd> grabbed;
  for (auto& p : procs) {
    for (auto& f : p.rec.fds) {
      if (f.kind != FdKind::kInet || grabbed.contains(f.file.ino)) continue;
      UniqueFd mine = grab_fd(p.host_pid, f.fd, who_of(p, f));
      refuse_socket_filter(mine.get(), who_of(p, f));
      if (int_opt(mine.get(), SOL_SOCKET, SO_TYPE) == SOCK_STREAM) {
        const bool first = !repair.held_->lock;
        if (first)
          repair.held_->lock = std::make_unique<NetLock>(procs[0].host_pid, repair.hold_s_);
        repair.held_->lock->add(mine.get(), who_of(p, f));
        m.netlock = repair.held_->lock->name();
        // The freezer's file goes to the guardian the first add() started.
        if (first) {
          repair.held_->freezer = JobFreezer::for_job(procs);
          if (repair.held_->freezer.usable())
            repair.held_->lock->set_thaw(repair.held_->freezer.file(), who_of(p, f));
        }
      }
      grabbed.emplace(f.file.ino, std::move(mine));
    }
  }
  std::map<std::uint64_t, Diag> diag;
  bool have_diag = false;
  std::set<std::uint64_t> done;
  for (auto& p : procs) {
    for (auto& f : p.rec.fds) {
      if (f.kind != FdKind::kInet || !done.insert(f.file.ino).second) continue;
      if (!have_diag) {
        diag = inet_sockets_diag();
        have_diag = true;
      }
      const std::string who = who_of(p, f);
      UniqueFd mine = std::move(grabbed.at(f.file.ino));
      const int fd = mine.get();
      InetSocket s;
      s.ino = f.file.ino;
      s.family = int_opt(fd, SOL_SOCKET, SO_DOMAIN);
      s.type = int_opt(fd, SOL_SOCKET, SO_TYPE);
      const char* proto = s.type == SOCK_STREAM ? "TCP" : "UDP";
      auto it = diag.find(s.ino);
      Diag fresh;
      if (it == diag.end()) {
        // inet_diag lists only sockets with a port: one never bound nor connected is
        // fresh (TCP_CLOSE, empty queues), or the dump cannot know what it is.
        struct stat st {};
        sockaddr_storage ls{};
        socklen_t ll = sizeof ls;
        if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ls), &ll) < 0 ||
            addr_text(ls, who).second != 0 || ::fstat(fd, &st) < 0)
          fail("{}: not in the kernel's table of {} sockets", who, proto);
        fresh.state = TCP_CLOSE;
        fresh.uid = st.st_uid;
      }
      const Diag& d = it == diag.end() ? fresh : it->second;
      s.uid = d.uid;
      // TCP: the state first (a connection half closed is in FIN_WAIT*, CLOSE_WAIT...).
      if (s.type == SOCK_STREAM && d.state != TCP_LISTEN && d.state != TCP_CLOSE &&
          d.state != TCP_ESTABLISHED)
        fail_unsupported("{}: a TCP socket in state {} is not supported", who,
                         tcp_state_name(d.state));
      if (d.shutdown)
        fail_unsupported("{}: a {} socket shut down (shutdown(2), {}) is not supported", who, proto,
                         d.shutdown == 1   ? "SHUT_RD"
                         : d.shutdown == 2 ? "SHUT_WR"
                                           : "SHUT_RDWR");
      sockaddr_storage ss{};
      socklen_t len = sizeof ss;
      if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0)
        fail_errno("{}: getsockname", who);
      std::tie(s.local_addr, s.local_port) = addr_text(ss, who);
      if (s.local_port == 0) s.local_addr.clear();
      len = sizeof ss;
      ss = {};
      if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0)
        std::tie(s.peer_addr, s.peer_port) = addr_text(ss, who);
      if (s.type == SOCK_STREAM) {
        s.state = d.state;
        if (s.state == TCP_LISTEN) {
          if (d.rqueue)
            fail_unsupported(
                "{}: a listening TCP socket with {} connection(s) waiting to be accepted is not "
                "supported",
                who, d.rqueue);
          tcp_info ti{};
          socklen_t tl = sizeof ti;
          if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) < 0)
            fail_errno("{}: TCP_INFO", who);
          s.backlog = static_cast<int>(ti.tcpi_sacked);  // sk_max_ack_backlog for a listener
        } else if (s.state == TCP_CLOSE) {
          // Never connected: a bound or fresh socket.
          s.peer_addr.clear();
        } else if (s.state != TCP_ESTABLISHED) {
          fail_unsupported("{}: a TCP socket in state {} is not supported", who,
                           tcp_state_name(s.state));
        }
      } else {
        s.state = s.peer_addr.empty() ? TCP_CLOSE : TCP_ESTABLISHED;
        if (d.rqueue)
          fail_unsupported(
              "{}: datagrams waiting in a UDP socket's receive queue ({} bytes) are not "
              "supported",
              who, d.rqueue);
      }
      refuse_unrestorable_options(fd, s.family, who);
      refuse_error_and_urgent(fd, s.type, s.state, d.rqueue, who);
      for (const Opt& o : kOptions) {
        if (!applies(o, s.family, s.type, s.state)) continue;
        std::string v = get_opt(fd, o.level, o.name);
        if (v.empty()) continue;
        if (o.level == IPPROTO_TCP && o.name == TCP_MAXSEG) {
          int mss = int_opt(fd, o.level, o.name);
          if (mss == kDefaultMss) continue;
        }
        s.opts.push_back({o.level, o.name, v});
      }
      if (s.type == SOCK_STREAM && s.state == TCP_ESTABLISHED) {
        const int reuse = int_opt(mine.get(), SOL_SOCKET, SO_REUSEADDR);
        repair.held_->sockets.push_back({std::move(mine), 0, who, s.ino, reuse});
        repair.held_->has_connections = true;
        dump_established(repair.held_->sockets.back().fd.get(), s, who, repair.held_->freezer);
        repair.held_->sockets.back().rcv_seq = s.rcv_seq;
      }
      m.inet_sockets.push_back(std::move(s));
    }
  }
}

}  // namespace fsched::ckpt
