// Netlink sockets: dump through our own reference to the socket (pidfd_getfd(2)), so a
// job that keeps running loses nothing; restore by injected socket(2), bind(2),
// setsockopt(2) and connect(2) in the process.
#include "ckpt/netlink.h"

#include <linux/netlink.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#include <array>
#include <cerrno>

#include "ckpt/remote.h"
#include "common/error.h"

namespace fsched::ckpt {

namespace {

// SOL_NETLINK options that are on/off flags of the socket, restored as they were.
constexpr std::array<int, 7> kNetlinkOptions{
    NETLINK_PKTINFO, NETLINK_BROADCAST_ERROR, NETLINK_NO_ENOBUFS,     NETLINK_LISTEN_ALL_NSID,
    NETLINK_CAP_ACK, NETLINK_EXT_ACK,         NETLINK_GET_STRICT_CHK,
};

int int_opt(int s, int level, int opt, const std::string& who) {
  int v = 0;
  socklen_t len = sizeof v;
  if (::getsockopt(s, level, opt, &v, &len) < 0)
    fail_errno("{}: getsockopt({}, {})", who, level, opt);
  return v;
}

}  // namespace

bool dump_netlink(const DumpProcess& p, Fd& f, const std::string& who) {
  UniqueFd s = grab_fd(p.host_pid, f.fd, who);
  if (int_opt(s.get(), SOL_SOCKET, SO_DOMAIN, who) != AF_NETLINK) return false;
  f.nl_protocol = int_opt(s.get(), SOL_SOCKET, SO_PROTOCOL, who);
  f.nl_type = int_opt(s.get(), SOL_SOCKET, SO_TYPE, who);
  if (f.nl_type != SOCK_RAW && f.nl_type != SOCK_DGRAM)
    fail_unsupported("{}: netlink socket of type {} not supported", who, f.nl_type);
  sockaddr_nl a{};
  socklen_t len = sizeof a;
  if (::getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len) < 0)
    fail_errno("{}: getsockname", who);
  f.nl_portid = a.nl_pid;  // 0: never bound (bound by the kernel at its first send)
  a = {};
  len = sizeof a;
  if (::getpeername(s.get(), reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    f.nl_dst_portid = a.nl_pid;
    f.nl_dst_group = a.nl_groups;
  }
  // Every group, also those above 32 that nl_groups cannot show.
  std::vector<std::uint32_t> groups(64);
  len = static_cast<socklen_t>(groups.size() * sizeof(std::uint32_t));
  if (::getsockopt(s.get(), SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, groups.data(), &len) < 0)
    fail_errno("{}: getsockopt(NETLINK_LIST_MEMBERSHIPS)", who);
  if (len > groups.size() * sizeof(std::uint32_t))
    fail_unsupported("{}: netlink socket in more than {} groups: not supported", who,
                     groups.size() * 32);
  groups.resize(len / sizeof(std::uint32_t));
  while (!groups.empty() && groups.back() == 0) groups.pop_back();
  f.nl_groups = groups;
  f.nl_options.clear();
  for (int opt : kNetlinkOptions)
    if (int_opt(s.get(), SOL_NETLINK, opt, who)) f.nl_options.push_back(opt);
  // Anything queued (a netlink dump in progress always has its next part queued).
  char byte;
  if (::recv(s.get(), &byte, 1, MSG_PEEK | MSG_DONTWAIT) >= 0)
    fail_unsupported(
        "{}: netlink socket with messages queued (answers or notifications not yet read): not "
        "supported",
        who);
  if (errno != EAGAIN && errno != EWOULDBLOCK) fail_errno("{}: recv(MSG_PEEK)", who);
  f.kind = FdKind::kNetlink;
  return true;
}

namespace {

// Sockets are all dumped as Unix sockets first (their /proc link does not tell the
// family); dump_sockets hands the netlink ones to dump_netlink.
void dump_netlink_fd(const FdDumpCtx& c, Fd&) {
  fail("internal: {}: a netlink socket is dumped by dump_sockets", c.where);
}

long open_netlink(const FdRestoreCtx& c, const Fd& f, const std::string& who) {
  Injector& inj = c.inj();
  const pid_t pid = c.host_pid();
  const long s = inj.call_ok(who + ": socket(AF_NETLINK)", SYS_socket, AF_NETLINK,
                             static_cast<std::uint64_t>(f.nl_type | SOCK_CLOEXEC),
                             static_cast<std::uint64_t>(f.nl_protocol));
  const std::uint64_t addr = c.area.data();
  const auto fd = static_cast<std::uint64_t>(s);
  sockaddr_nl a{};
  a.nl_family = AF_NETLINK;
  if (f.nl_portid || !f.nl_groups.empty()) {
    a.nl_pid = f.nl_portid;
    a.nl_groups = f.nl_groups.empty() ? 0 : f.nl_groups[0];
    remote_write(pid, addr, &a, sizeof a);
    long r = inj.call(SYS_bind, fd, addr, sizeof a);
    if (r == -EADDRINUSE)
      throw Error(fmt::format("{}: netlink port id {} (protocol {}) is held by another socket of "
                              "the network namespace now",
                              who, f.nl_portid, f.nl_protocol),
                  EADDRINUSE);
    if (r < 0)
      throw Error(fmt::format("{}: bind netlink port id {}", who, f.nl_portid),
                  static_cast<int>(-r));
  }
  for (std::size_t w = 1; w < f.nl_groups.size(); ++w)
    for (unsigned b = 0; b < 32; ++b) {
      if (!(f.nl_groups[w] >> b & 1)) continue;
      const unsigned group = static_cast<unsigned>(w) * 32 + b + 1;
      remote_write(pid, addr, &group, sizeof group);
      inj.call_ok(fmt::format("{}: NETLINK_ADD_MEMBERSHIP {}", who, group), SYS_setsockopt, fd,
                  SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, addr, sizeof group);
    }
  const int one = 1;
  remote_write(pid, addr, &one, sizeof one);
  for (int opt : f.nl_options)
    inj.call_ok(fmt::format("{}: setsockopt(SOL_NETLINK, {})", who, opt), SYS_setsockopt, fd,
                SOL_NETLINK, static_cast<std::uint64_t>(opt), addr, sizeof one);
  if (f.nl_dst_portid || f.nl_dst_group) {
    a = {};
    a.nl_family = AF_NETLINK;
    a.nl_pid = f.nl_dst_portid;
    a.nl_groups = f.nl_dst_group;
    remote_write(pid, addr, &a, sizeof a);
    inj.call_ok(who + ": connect", SYS_connect, fd, addr, sizeof a);
  }
  return s;
}

}  // namespace

const FdOps kNetlinkFdOps{.kind = FdKind::kNetlink,
                          .anon_link = nullptr,
                          .dump = dump_netlink_fd,
                          .open = open_netlink,
                          .finish = nullptr,
                          .shareable = true,
                          .seekable = false};

}  // namespace fsched::ckpt
