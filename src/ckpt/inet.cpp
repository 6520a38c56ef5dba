// TCP and UDP sockets: dump and restore side by side (inet.h says what is restored,
// what is refused and why the restore gives the job no more privilege than it had).
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
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <map>
#include <set>

#include "ckpt/manifest.h"
#include "ckpt/cgroup_freeze.h"
#include "ckpt/netlock.h"
#include "ckpt/remote.h"
#include "ckpt/sockets.h"
#include "common/error.h"
#include "common/fd.h"

// linux/tcp.h's values, which glibc's netinet/tcp.h may lack.
#ifndef TCP_REPAIR_ON
#define TCP_REPAIR_ON 1
#define TCP_REPAIR_OFF 0
#endif
#ifndef TCP_REPAIR_OFF_NO_WP
#define TCP_REPAIR_OFF_NO_WP -1
#endif

namespace fsched::ckpt {
namespace {

// netinet/tcp.h's names of TCP states, for messages.
const char* tcp_state_name(int s) {
  static const char* const names[] = {"?",          "ESTABLISHED", "SYN_SENT",  "SYN_RECV",
                                      "FIN_WAIT1",  "FIN_WAIT2",   "TIME_WAIT", "CLOSE",
                                      "CLOSE_WAIT", "LAST_ACK",    "LISTEN",    "CLOSING"};
  return s >= 0 && s < 12 ? names[s] : "?";
}

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

// TCP option codes for TCP_REPAIR_OPTIONS (RFC 793, 7323, 2018; linux/tcp.h).
constexpr std::uint32_t kOptMss = 2, kOptWindow = 3, kOptSackPerm = 4, kOptTimestamp = 8;

// The default TCP_MAXSEG of a socket that never had one set (TCP_MSS_DEFAULT).
constexpr int kDefaultMss = 536;

const char* opt_text(int level, int name) {
  for (const Opt& o : kOptions)
    if (o.level == level && o.name == name) return o.text;
  return "?";
}

bool applies(const Opt& o, int family, int type, int state) {
  if (o.family && o.family != family) return false;
  if (o.type && o.type != type) return false;
  // The mss of a connection is restored by TCP_REPAIR_OPTIONS; only a listener's
  // user-set TCP_MAXSEG is an option of its own.
  if (o.level == IPPROTO_TCP && o.name == TCP_MAXSEG && state != TCP_LISTEN) return false;
  return true;
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

// The sockaddr of family `family` for addr:port.
std::pair<sockaddr_storage, socklen_t> make_addr(int family, const std::string& addr, int port,
                                                 const std::string& who) {
  sockaddr_storage ss{};
  if (family == AF_INET) {
    auto& a = reinterpret_cast<sockaddr_in&>(ss);
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    if (::inet_pton(AF_INET, addr.c_str(), &a.sin_addr) != 1)
      fail_image("image: {}: bad IPv4 address {}", who, addr);
    return {ss, sizeof(sockaddr_in)};
  }
  auto& a = reinterpret_cast<sockaddr_in6&>(ss);
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(static_cast<std::uint16_t>(port));
  if (::inet_pton(AF_INET6, addr.c_str(), &a.sin6_addr) != 1)
    fail_image("image: {}: bad IPv6 address {}", who, addr);
  return {ss, sizeof(sockaddr_in6)};
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

// ---- restore --------------------------------------------------------------------

int sysctl_int(const char* path, int dflt) {
  std::ifstream in(path);
  int v = dflt;
  in >> v;
  return in ? v : dflt;
}

const InetSocket& socket_of(const Manifest& m, std::uint64_t ino, const std::string& who) {
  for (auto& s : m.inet_sockets)
    if (s.ino == ino) return s;
  fail_image("image: {}: socket {} is not in the image", who, ino);
}

// The options of s that a fresh socket does not have already, set and read back.
// `only_v6only`: just IPV6_V6ONLY (before bind, the only time it can be set).
void restore_options(int fd, const InetSocket& s, bool only_v6only, const std::string& who) {
  for (const InetSockOpt& o : s.opts) {
    const bool v6only = o.level == IPPROTO_IPV6 && o.name == IPV6_V6ONLY;
    if (v6only != only_v6only) continue;
    const std::string name = opt_text(o.level, o.name);
    if (name == "?") fail_image("image: {}: unknown socket option {}/{}", who, o.level, o.name);
    if (get_opt(fd, o.level, o.name) == o.hex) continue;
    std::vector<std::uint8_t> v = from_hex(o.hex);
    const bool buf = o.level == SOL_SOCKET && (o.name == SO_RCVBUF || o.name == SO_SNDBUF);
    if (buf) {
      // getsockopt reports twice what setsockopt asked for (socket(7)). A TCP buffer
      // larger than an unprivileged setsockopt could ask for, or of an odd size (which
      // no setsockopt gives), was grown by the kernel's autotuning, which the restored
      // socket does again.
      int want = 0;
      std::memcpy(&want, v.data(), std::min(v.size(), sizeof want));
      const int limit = sysctl_int(
          o.name == SO_RCVBUF ? "/proc/sys/net/core/rmem_max" : "/proc/sys/net/core/wmem_max",
          212992);
      if (s.type == SOCK_STREAM && (want / 2 > limit || want % 2 != 0)) continue;
      want /= 2;
      if (::setsockopt(fd, o.level, o.name, &want, sizeof want) < 0)
        fail_errno("{}: setsockopt {}", who, name);
    } else if (::setsockopt(fd, o.level, o.name, v.data(), static_cast<socklen_t>(v.size())) < 0) {
      fail_errno("{}: setsockopt {}", who, name);
    }
    std::string now = get_opt(fd, o.level, o.name);
    if (now != o.hex) fail("{}: {} restored as {} instead of {}", who, name, now, o.hex);
  }
}

// Every option of s read back once all are set (one option can change another).
void verify_options(int fd, const InetSocket& s, const std::string& who) {
  for (const InetSockOpt& o : s.opts) {
    if (o.level == SOL_SOCKET && (o.name == SO_RCVBUF || o.name == SO_SNDBUF) &&
        s.type == SOCK_STREAM)
      continue;  // possibly left to autotuning (restore_options)
    std::string now = get_opt(fd, o.level, o.name);
    // bind(2) to a specific IPv6 address sets IPV6_V6ONLY (ipv6(7)); a connection that
    // got its address from connect(2) without it was bound so by the restore. The
    // option means nothing to a socket bound to one address.
    if (o.level == IPPROTO_IPV6 && o.name == IPV6_V6ONLY && s.family == AF_INET6 &&
        !s.local_addr.empty() && s.local_addr != "::" && s.local_addr.rfind("::ffff:", 0) != 0)
      continue;
    if (now != o.hex)
      fail("{}: {} restored as {} instead of {}", who, opt_text(o.level, o.name), now, o.hex);
  }
}

void bind_checked(int fd, const InetSocket& s, const Process& owner, const std::string& who) {
  // Root binds for the job: only what the job could bind itself.
  const int unpriv = sysctl_int("/proc/sys/net/ipv4/ip_unprivileged_port_start", 1024);
  const bool can_bind_low = !owner.threads.empty() && (owner.threads[0].confinement.cap_eff >> 10 &
                                                       1);  // CAP_NET_BIND_SERVICE
  if (s.local_port > 0 && s.local_port < unpriv && !can_bind_low)
    fail("restore refused: {}: port {} is privileged and process {} had no CAP_NET_BIND_SERVICE",
         who, s.local_port, owner.pid);
  auto [sa, len] = make_addr(
      s.family, s.local_addr.empty() ? (s.family == AF_INET ? "0.0.0.0" : "::") : s.local_addr,
      s.local_port, who);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), len) < 0)
    fail_errno("{}: bind {} port {}", who, s.local_addr, s.local_port);
}

// Reads back what the socket is: addresses, owner, TCP state.
void check_restored(int fd, const InetSocket& s, const std::string& who) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0)
    fail_errno("{}: getsockname", who);
  auto [la, lp] = addr_text(ss, who);
  if (lp != s.local_port || (la != s.local_addr && !(s.local_addr.empty())))
    fail("{}: bound to {} port {} instead of {} port {}", who, la, lp, s.local_addr, s.local_port);
  if (!s.peer_addr.empty()) {
    len = sizeof ss;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0)
      fail_errno("{}: getpeername", who);
    auto [pa, pp] = addr_text(ss, who);
    if (pa != s.peer_addr || pp != s.peer_port)
      fail("{}: connected to {} port {} instead of {} port {}", who, pa, pp, s.peer_addr,
           s.peer_port);
  }
  struct stat st {};
  if (::fstat(fd, &st) < 0) fail_errno("{}: fstat", who);
  if (st.st_uid != s.uid) fail("{}: owned by uid {} instead of {}", who, st.st_uid, s.uid);
  if (s.type == SOCK_STREAM) {
    tcp_info ti{};
    socklen_t tl = sizeof ti;
    if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) < 0) fail_errno("{}: TCP_INFO", who);
    if (ti.tcpi_state != s.state)
      fail("{}: restored in state {} instead of {}", who, tcp_state_name(ti.tcpi_state),
           tcp_state_name(s.state));
  }
}

void send_all(int fd, const std::vector<std::uint8_t>& data, const std::string& who,
              const char* what) {
  std::size_t sent = 0;
  int waits = 0;
  while (sent < data.size()) {
    ssize_t r = ::send(fd, data.data() + sent, data.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (r < 0 && errno == EAGAIN && waits++ < 50) {
      // A full send buffer (the unsent part, out of repair mode) drains as the peer's
      // kernel acknowledges: wait a little, bounded, rather than fail at once.
      pollfd pfd{fd, POLLOUT, 0};
      ::poll(&pfd, 1, 100);
      continue;
    }
    if (r <= 0) fail_errno("{}: refilling its {} ({} of {} bytes)", who, what, sent, data.size());
    sent += static_cast<std::size_t>(r);
  }
}

void restore_established(int fd, const InetSocket& s, const Process& owner,
                         const std::string& who) {
  set_repair(fd, TCP_REPAIR_ON, who);
  const std::vector<std::uint8_t> sendq = from_hex(s.sendq_hex), recvq = from_hex(s.recvq_hex);
  if (s.unsent > sendq.size()) fail_image("image: {}: more unsent bytes than queued", who);
  // Sequence numbers of the queues' starts: the refill below moves them to the dumped
  // ones.
  auto set_seq = [&](int queue, std::uint32_t seq) {
    if (::setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &queue, sizeof queue) < 0 ||
        ::setsockopt(fd, IPPROTO_TCP, TCP_QUEUE_SEQ, &seq, sizeof seq) < 0)
      fail_errno("{}: TCP_QUEUE_SEQ", who);
  };
  set_seq(TCP_SEND_QUEUE, s.snd_seq - static_cast<std::uint32_t>(sendq.size()));
  set_seq(TCP_RECV_QUEUE, s.rcv_seq - static_cast<std::uint32_t>(recvq.size()));
  bind_checked(fd, s, owner, who);
  auto [pa, plen] = make_addr(s.family, s.peer_addr, s.peer_port, who);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&pa), plen) < 0)
    fail_errno("{}: connect (repair) to {} port {}", who, s.peer_addr, s.peer_port);
  std::vector<tcp_repair_opt> opts;
  opts.push_back({kOptMss, s.mss});
  if (s.tcpi_options & TCPI_OPT_WSCALE)
    opts.push_back({kOptWindow, s.snd_wscale | (s.rcv_wscale << 16)});
  if (s.tcpi_options & TCPI_OPT_SACK) opts.push_back({kOptSackPerm, 0});
  if (s.tcpi_options & TCPI_OPT_TIMESTAMPS) opts.push_back({kOptTimestamp, 0});
  if (::setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_OPTIONS, opts.data(),
                   static_cast<socklen_t>(opts.size() * sizeof opts[0])) < 0)
    fail_errno("{}: TCP_REPAIR_OPTIONS", who);
  if ((s.tcpi_options & TCPI_OPT_TIMESTAMPS) &&
      ::setsockopt(fd, IPPROTO_TCP, TCP_TIMESTAMP, &s.timestamp, sizeof s.timestamp) < 0)
    fail_errno("{}: TCP_TIMESTAMP", who);
  // The queues: what was sent (and may be unacknowledged) goes into the send queue as
  // sent; what was received and not read into the receive queue.
  int q = TCP_SEND_QUEUE;
  if (::setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &q, sizeof q) < 0)
    fail_errno("{}: TCP_REPAIR_QUEUE", who);
  const std::size_t sent_part = sendq.size() - s.unsent;
  send_all(fd, {sendq.begin(), sendq.begin() + static_cast<std::ptrdiff_t>(sent_part)}, who,
           "send queue");
  q = TCP_RECV_QUEUE;
  if (::setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_QUEUE, &q, sizeof q) < 0)
    fail_errno("{}: TCP_REPAIR_QUEUE", who);
  send_all(fd, recvq, who, "receive queue");
  // The window once the receive queue is back: the kernel checks it against rcv_nxt.
  tcp_repair_window w{s.snd_wl1, s.snd_wnd, s.max_window, s.rcv_wnd, s.rcv_wup};
  if (::setsockopt(fd, IPPROTO_TCP, TCP_REPAIR_WINDOW, &w, sizeof w) < 0)
    fail_errno("{}: TCP_REPAIR_WINDOW", who);
  // Left in repair mode until every socket of the job exists (finish_inet_restore): out
  // of it, the socket probes its peer's window at once, and a peer in the job not made
  // yet would be a listener or nothing, which answers with a reset.
}

// Restored connections waiting for finish_inet_restore (the restorer's references).
struct Pending {
  UniqueFd fd;
  const InetSocket* s;
  std::string who;
  bool held = false;  // the dumped socket itself, taken over from the guardian
};
std::vector<Pending> g_pending;
// The sockets the network lock's guardian held since the dump (netlock.h), by inode,
// until each is given to its process or closed; and the listeners given, to unlock.
std::map<std::uint64_t, UniqueFd> g_held;
std::vector<UniqueFd> g_held_listeners;
InetRestore::Counts g_counts;

// Whether the held socket `fd` is exactly what the image says s was: same addresses,
// owner and state; a connection still in repair mode with the same sequence numbers
// and queue lengths (locked since its queues were read, nothing came or went); a
// listener with nothing in its accept queue.
bool held_matches(int fd, const InetSocket& s) {
  struct stat st {};
  tcp_info ti{};
  socklen_t tl = sizeof ti;
  if (::fstat(fd, &st) < 0 || st.st_uid != s.uid ||
      ::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &tl) < 0 || ti.tcpi_state != s.state)
    return false;
  try {
    check_restored(fd, s, "held socket");
  } catch (const Error&) {
    return false;
  }
  if (s.state == TCP_LISTEN) return ti.tcpi_unacked == 0;  // sk_ack_backlog
  if (s.state != TCP_ESTABLISHED) return false;
  int outq = 0, inq = 0;
  try {
    if (queue_seq(fd, TCP_SEND_QUEUE, "") != s.snd_seq ||
        queue_seq(fd, TCP_RECV_QUEUE, "") != s.rcv_seq)
      return false;
  } catch (const Error&) {
    return false;  // not in repair mode
  }
  return ::ioctl(fd, SIOCOUTQ, &outq) == 0 && ::ioctl(fd, SIOCINQ, &inq) == 0 &&
         static_cast<std::size_t>(outq) * 2 == s.sendq_hex.size() &&
         static_cast<std::size_t>(inq) * 2 == s.recvq_hex.size();
}

long open_inet_fd(const FdRestoreCtx& c, const Fd& f, const std::string& who) {
  const InetSocket& s = socket_of(*c.proc.image, f.file.ino, who);
  if (s.family != AF_INET && s.family != AF_INET6) fail_image("image: {}: bad family", who);
  if (s.type != SOCK_STREAM && s.type != SOCK_DGRAM) fail_image("image: {}: bad type", who);
  if (auto h = g_held.find(s.ino); h != g_held.end()) {
    UniqueFd held = std::move(h->second);
    g_held.erase(h);
    if (held_matches(held.get(), s)) {
      long there = give_fd(c.inj(), c.host_pid(), c.area, held.get(), who + " (held)");
      if (s.state == TCP_ESTABLISHED)
        g_pending.push_back({std::move(held), &s, who, true});
      else
        g_held_listeners.push_back(std::move(held));
      return there;
    }
    // Closed here, silently (repair mode), which frees its address for the new one.
  }
  // Made by the job's process, with its file-system uid (act_as): the socket is the
  // job user's.
  long tmp = c.inj().call_ok(who + ": socket", SYS_socket, static_cast<std::uint64_t>(s.family),
                             static_cast<std::uint64_t>(s.type | SOCK_CLOEXEC), 0);
  UniqueFd mine = grab_fd(c.host_pid(), static_cast<int>(tmp), who);
  const int fd = mine.get();
  const Process& owner = *c.proc.rec;
  restore_options(fd, s, true, who);
  if (s.type == SOCK_STREAM && s.state == TCP_ESTABLISHED) {
    restore_established(fd, s, owner, who);
    g_pending.push_back({std::move(mine), &s, who});
    return tmp;
  }
  restore_options(fd, s, false, who);
  if (s.type == SOCK_STREAM && s.state == TCP_LISTEN) {
    // Connections of this port restored before it are in repair mode, which lets them
    // share it (SK_FORCE_REUSE); the listener must say SO_REUSEADDR to bind and listen
    // beside them, and gets its own setting back after.
    const int one = 1, reuse = int_opt(fd, SOL_SOCKET, SO_REUSEADDR);
    if (::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
      fail_errno("{}: SO_REUSEADDR", who);
    bind_checked(fd, s, owner, who);
    if (::listen(fd, s.backlog) < 0) fail_errno("{}: listen", who);
    if (::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &reuse, sizeof reuse) < 0)
      fail_errno("{}: SO_REUSEADDR", who);
  } else {
    if (s.local_port) bind_checked(fd, s, owner, who);
    if (s.type == SOCK_DGRAM && !s.peer_addr.empty()) {
      auto [pa, plen] = make_addr(s.family, s.peer_addr, s.peer_port, who);
      if (::connect(fd, reinterpret_cast<sockaddr*>(&pa), plen) < 0)
        fail_errno("{}: connect to {} port {}", who, s.peer_addr, s.peer_port);
    }
  }
  verify_options(fd, s, who);
  check_restored(fd, s, who);
  return tmp;
}

// Out of repair mode once all exist, then what was not sent yet, options, read-back.
void finish_pending() {
  for (Pending& p : g_pending) set_repair(p.fd.get(), TCP_REPAIR_OFF, p.who);
  const int zero = 0;
  for (UniqueFd& l : g_held_listeners)
    ::setsockopt(l.get(), SOL_SOCKET, SO_DETACH_FILTER, &zero, sizeof zero);
  g_held_listeners.clear();
  for (Pending& p : g_pending) {
    // A peer that reset the connection meanwhile (its retransmission met no socket
    // between the kill and this restore: no guardian held it) closed it: the program
    // learns it from its next call (ECONNRESET), as after any network failure. Nothing
    // is sent then, which would take that error from it.
    tcp_info ti{};
    socklen_t tl = sizeof ti;
    if (::getsockopt(p.fd.get(), IPPROTO_TCP, TCP_INFO, &ti, &tl) == 0 &&
        ti.tcpi_state == TCP_CLOSE) {
      ++g_counts.reset;
      continue;
    }
    if (p.held) {
      ++g_counts.taken_over;
      // Its queues and options are the dumped socket's own; it was only locked, and
      // repair mode took its SO_REUSEADDR.
      if (::setsockopt(p.fd.get(), SOL_SOCKET, SO_DETACH_FILTER, &zero, sizeof zero) < 0)
        fail_errno("{}: unlocking it (SO_DETACH_FILTER)", p.who);
      restore_options(p.fd.get(), *p.s, false, p.who);
      verify_options(p.fd.get(), *p.s, p.who);
      check_restored(p.fd.get(), *p.s, p.who);
      continue;
    }
    const std::vector<std::uint8_t> sendq = from_hex(p.s->sendq_hex);
    // The part not sent yet is sent as the program would have.
    try {
      send_all(p.fd.get(), {sendq.end() - static_cast<std::ptrdiff_t>(p.s->unsent), sendq.end()},
               p.who, "unsent data");
    } catch (const Error& e) {
      if (e.err() != ECONNRESET && e.err() != EPIPE) throw;
      ++g_counts.reset;  // reset at this very moment: as above, but the error is taken
      continue;
    }
    restore_options(p.fd.get(), *p.s, false, p.who);
    verify_options(p.fd.get(), *p.s, p.who);
    check_restored(p.fd.get(), *p.s, p.who);
  }
  g_pending.clear();
}

}  // namespace

const FdOps kInetFdOps{.kind = FdKind::kInet,
                       .anon_link = nullptr,
                       .dump = dump_inet_fd,
                       .open = open_inet_fd,
                       .finish = nullptr,
                       .shareable = true,
                       .seekable = false};

InetRestore::InetRestore(const Manifest& m) {
  g_pending.clear();
  g_counts = {};
  g_held.clear();
  g_held_listeners.clear();
  for (const InetSocket& s : m.inet_sockets)
    if (s.type == SOCK_STREAM && (s.state == TCP_ESTABLISHED || s.state == TCP_LISTEN)) {
      g_held = take_held_sockets(m.netlock);
      break;
    }
}
// Connections not finished (a failed restore): their processes are killed with them in
// repair mode, which sends nothing to their peers; held sockets not given close so.
InetRestore::~InetRestore() {
  g_pending.clear();
  g_held.clear();
  g_held_listeners.clear();
}
InetRestore::Counts InetRestore::finish() {
  finish_pending();
  return g_counts;
}

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
