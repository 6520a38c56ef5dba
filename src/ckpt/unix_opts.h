// Socket options of Unix sockets (socket(7), unix(7)): saved at dump through the
// dumper's own reference to the socket and set again at restore where a fresh socket
// differs, then read back. Refused at dump: a socket filter (SO_ATTACH_FILTER /
// SO_ATTACH_BPF), and credentials passing (SO_PASSCRED, SO_PASSSEC, SO_PASSPIDFD) on
// either end of a queue that holds messages, since the restore sends them again as
// another process and the receiver would read other credentials.
// Kernel interfaces: getsockopt(2)/setsockopt(2) SOL_SOCKET, SO_GET_FILTER.
#pragma once

#include <string>
#include <vector>

#include "ckpt/manifest.h"

namespace fsched::ckpt {

// Dump: the options of Unix socket `fd` of type `type` that differ from a fresh
// socket's. Throws UnsupportedError naming `who` for a socket filter.
std::vector<InetSockOpt> dump_unix_opts(int fd, int type, const std::string& who);

// Whether `opts` pass credentials to the receiver (SO_PASSCRED, SO_PASSSEC,
// SO_PASSPIDFD).
bool passes_credentials(const std::vector<InetSockOpt>& opts);

// Restore: sets `opts` on Unix socket `fd` and reads each back. Throws ImageError for
// an option this engine does not know, Error naming `who` when one does not take.
void restore_unix_opts(int fd, const std::vector<InetSockOpt>& opts, const std::string& who);

}  // namespace fsched::ckpt
