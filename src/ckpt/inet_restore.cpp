// TCP and UDP sockets, the restore side (inet.h InetRestore; the dump side is inet.cpp).
#include "ckpt/inet.h"

#include <arpa/inet.h>
#include <linux/sockios.h>
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
#include <vector>

#include "ckpt/inet_internal.h"
#include "ckpt/manifest.h"
#include "ckpt/netlock.h"
#include "ckpt/remote.h"
#include "common/error.h"
#include "common/fd.h"

namespace fsched::ckpt {

using namespace inet_detail;

namespace {

// TCP option codes for TCP_REPAIR_OPTIONS (RFC 793, 7323, 2018; linux/tcp.h).
constexpr std::uint32_t kOptMss = 2, kOptWindow = 3, kOptSackPerm = 4, kOptTimestamp = 8;

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

}  // namespace

namespace inet_detail {

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

}  // namespace inet_detail

namespace {

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

}  // namespace fsched::ckpt
