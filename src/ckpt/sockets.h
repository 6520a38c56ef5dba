// Unix sockets: socket pairs and connected pairs inside the job with the data queued
// in them (and the files in flight there, scm_rights.h) and their shutdown(2) state, listening and
// unconnected sockets bound again to their path or abstract name (or never bound), and the names of
// connected sockets: a name bound before connect(2), a name got from accept(2) (accepted again from
// the job's listener, or from a temporary one), datagram sockets connected by name, one way or
// both; and the unix fd kind (FdOps). Other families, sockets connected outside the job, names
// relative paths, data queued on a socket with no peer or whose datagram peer sends elsewhere, a
// datagram socket connected one way to an unnamed socket, and a stream pair whose two names are
// both shared with other sockets are refused.
// Kernel interfaces: NETLINK_SOCK_DIAG (sock_diag(7), unix_diag), recvmsg(2)
// MSG_PEEK with SO_PEEK_OFF (socket(7)), socketpair(2), bind(2), listen(2),
// connect(2), accept4(2), unshare(2) CLONE_NEWNS with a tmpfs and chroot(2) for a
// temporary listener's path, SO_SNDBUFFORCE.
#pragma once

#include <cstddef>
#include <map>
#include <span>
#include <vector>

#include "ckpt/dump_context.h"
#include "ckpt/fd_ops.h"
#include "ckpt/image.h"
#include "ckpt/restore_context.h"
#include "common/fd.h"

namespace fsched::ckpt {

// Dump: every Unix socket of the job (queued data after the pipes' in the page
// stream).
void dump_sockets(std::span<DumpProcess> procs, Manifest& m, ImageWriter& img);
// Queued messages that create_sockets reads from the image and refill_sockets sends
// again, once every process has its fds (the files in flight that messages carry,
// scm_rights.h, are taken from them).
struct SocketRefill {
  struct Queue {
    const UnixSocket* sock = nullptr;
    std::vector<std::vector<std::byte>> msgs;  // as in sock->queued
  };
  std::vector<Queue> queues;
  std::map<std::uint64_t, UniqueFd> gone;  // the restorer's ends of peers that were closed
};

// Restore: the sockets created in init, connected and bound; their queued messages
// read into `later`. Returns socket inode -> fd in init.
// Each connection is made by the process its peer credentials name (unix_peercred.h),
// one of `procs`.
SocketTable create_sockets(InitStash& stash, std::span<RestoreProcess> procs,
                           const InjectionArea& area, const Manifest& m, PageReader& pages,
                           SocketRefill& later);
// Restore, after restore_files for every process: sends the queued messages again
// (with their files in flight, SCM_RIGHTS), closes the peers that were gone, then
// shuts down (shutdown(2)) what was shut down. `init_ctx` is init's, with the tables of
// objects it holds. Throws Error naming the socket and message.
void refill_sockets(SocketRefill& later, InitStash& stash, std::span<RestoreProcess> procs,
                    const FdRestoreCtx& init_ctx);

// FdKind::kUnix.
extern const FdOps kUnixFdOps;

}  // namespace fsched::ckpt
