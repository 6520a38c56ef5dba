// Unix sockets: socket pairs and connected pairs inside the job with the data queued
// in them and their shutdown(2) state, listening and unconnected sockets bound again
// to their path or abstract name (or never bound), and the names of connected
// sockets: a name bound before connect(2), a name got from accept(2) (accepted again
// from the job's listener, or from a temporary one), datagram sockets connected by
// name, one way or both; and the unix fd kind (FdOps).
// Other families, sockets connected outside the job, names relative paths, data
// queued on a socket with no peer or whose datagram peer sends elsewhere, a datagram
// socket connected one way to an unnamed socket, and a stream pair whose two names are
// both shared with other sockets are refused.
// Kernel interfaces: NETLINK_SOCK_DIAG (sock_diag(7), unix_diag), recvmsg(2)
// MSG_PEEK with SO_PEEK_OFF (socket(7)), socketpair(2), bind(2), listen(2),
// connect(2), accept4(2), unshare(2) CLONE_NEWNS with a tmpfs and chroot(2) for a
// temporary listener's path, SO_SNDBUFFORCE.
#pragma once

#include <span>

#include "ckpt/dump_context.h"
#include "ckpt/fd_ops.h"
#include "ckpt/image.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

// Dump: every Unix socket of the job (queued data after the pipes' in the page
// stream).
void dump_sockets(std::span<DumpProcess> procs, Manifest& m, ImageWriter& img);
// Restore: the sockets created in init, connected, bound and refilled.
SocketTable create_sockets(InitStash& stash, const InjectionArea& area, const Manifest& m,
                           PageReader& pages);

// FdKind::kUnix.
extern const FdOps kUnixFdOps;

}  // namespace fsched::ckpt
