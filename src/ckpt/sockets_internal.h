// Internal to the Unix socket unit (sockets.h): what sockets.cpp and sockets_restore.cpp share.
#pragma once

#include <cstdint>
#include <map>
#include <string>

namespace fsched::ckpt::sockets_detail {

struct DiagInfo {
  int type = 0, state = 0;
  std::uint64_t peer = 0;
  bool has_peer = false;  // UNIX_DIAG_PEER present: a peer, maybe a closed one (inode 0)
  std::string name;
  std::uint32_t rqueue = 0;
  int shutdown = 0;  // sk_shutdown: RCV_SHUTDOWN 1, SEND_SHUTDOWN 2
};

// Every AF_UNIX socket of this network namespace, by inode; or only socket `only`
// (an exact request: one reply, or an error if there is no such socket).
std::map<std::uint64_t, DiagInfo> unix_sockets(std::uint64_t only = 0);

}  // namespace fsched::ckpt::sockets_detail
