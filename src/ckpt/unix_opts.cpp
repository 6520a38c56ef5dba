// Socket options of Unix sockets: see unix_opts.h.
#include "ckpt/unix_opts.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "common/fd.h"

namespace fsched::ckpt {
namespace {

constexpr int kSoPassPidfd = 76;  // SO_PASSPIDFD (Linux 6.5), not in older headers

struct Opt {
  int name;  // at level SOL_SOCKET
  const char* text;
};

// The options a Unix socket keeps that a program may set, in the order they are set.
const Opt kOptions[] = {
    {SO_PASSCRED, "SO_PASSCRED"},
    {SO_PASSSEC, "SO_PASSSEC"},
    {kSoPassPidfd, "SO_PASSPIDFD"},
    {SO_SNDBUF, "SO_SNDBUF"},
    {SO_RCVBUF, "SO_RCVBUF"},
    {SO_RCVTIMEO_OLD, "SO_RCVTIMEO"},
    {SO_SNDTIMEO_OLD, "SO_SNDTIMEO"},
    {SO_PRIORITY, "SO_PRIORITY"},
    {SO_MARK, "SO_MARK"},
    {SO_RCVLOWAT, "SO_RCVLOWAT"},
    {SO_TIMESTAMP_OLD, "SO_TIMESTAMP"},
    {SO_TIMESTAMPNS_OLD, "SO_TIMESTAMPNS"},
    {SO_PEEK_OFF, "SO_PEEK_OFF"},
    {SO_OOBINLINE, "SO_OOBINLINE"},
};

const Opt* find(int level, int name) {
  if (level != SOL_SOCKET) return nullptr;
  for (const Opt& o : kOptions)
    if (o.name == name) return &o;
  return nullptr;
}

// The option's value as hex; "" if the kernel does not have it.
std::string get(int fd, int name) {
  char buf[64]{};
  socklen_t len = sizeof buf;
  if (::getsockopt(fd, SOL_SOCKET, name, buf, &len) < 0) return "";
  return to_hex(buf, len);
}

}  // namespace

std::vector<InetSockOpt> dump_unix_opts(int fd, int type, const std::string& who) {
  // A classic filter shows its length; an eBPF one cannot be read back (EACCES).
  socklen_t flen = 0;
  if (::getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, nullptr, &flen) < 0 || flen != 0)
    fail_unsupported("{}: a socket filter (SO_ATTACH_FILTER, SO_ATTACH_BPF) is not supported", who);
  UniqueFd fresh(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (!fresh) fail_errno("{}: a fresh socket to compare options with", who);
  std::vector<InetSockOpt> out;
  for (const Opt& o : kOptions) {
    std::string v = get(fd, o.name);
    if (!v.empty() && v != get(fresh.get(), o.name))
      out.push_back(InetSockOpt{.level = SOL_SOCKET, .name = o.name, .hex = v});
  }
  return out;
}

bool passes_credentials(const std::vector<InetSockOpt>& opts) {
  for (const InetSockOpt& o : opts)
    if (o.level == SOL_SOCKET &&
        (o.name == SO_PASSCRED || o.name == SO_PASSSEC || o.name == kSoPassPidfd)) {
      // Saved only when it differs from a fresh socket's (off): on.
      return true;
    }
  return false;
}

void restore_unix_opts(int fd, const std::vector<InetSockOpt>& opts, const std::string& who) {
  for (const InetSockOpt& o : opts) {
    const Opt* known = find(o.level, o.name);
    if (!known) fail_image("image: {}: unknown socket option {}/{}", who, o.level, o.name);
    if (get(fd, o.name) == o.hex) continue;
    std::vector<std::uint8_t> v = from_hex(o.hex);
    if (o.name == SO_SNDBUF || o.name == SO_RCVBUF) {
      // getsockopt reports twice what setsockopt asked for (socket(7)).
      int want = 0;
      std::memcpy(&want, v.data(), std::min(v.size(), sizeof want));
      want /= 2;
      if (::setsockopt(fd, SOL_SOCKET, o.name, &want, sizeof want) < 0)
        fail_errno("{}: setsockopt {}", who, known->text);
    } else if (::setsockopt(fd, SOL_SOCKET, o.name, v.data(), static_cast<socklen_t>(v.size())) <
               0) {
      fail_errno("{}: setsockopt {}", who, known->text);
    }
    std::string now = get(fd, o.name);
    if (now != o.hex)
      fail("{}: {} restored as {} instead of {} (a lower net.core limit here?)", who, known->text,
           now, o.hex);
  }
}

}  // namespace fsched::ckpt
