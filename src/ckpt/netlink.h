// Netlink sockets (netlink(7)), as programs open them to ask the kernel about links,
// addresses and routes (NETLINK_ROUTE) or generic families (NETLINK_GENERIC): protocol,
// type, bound port id (nl_pid), multicast groups, connected destination and the
// SOL_NETLINK options. Restored by socket(2) + bind(2) to the same port id inside the
// process; refused at dump with messages queued on it (a request's answer not yet read,
// a dump in progress, multicast notifications): they are the kernel's answers to
// requests of the past and cannot be made again.
// Kernel interfaces: pidfd_getfd(2), getsockopt(2) SO_DOMAIN/SO_PROTOCOL/SO_TYPE and
// SOL_NETLINK NETLINK_LIST_MEMBERSHIPS, getsockname(2), getpeername(2), recv(2)
// MSG_PEEK; bind(2), connect(2), setsockopt(2) NETLINK_ADD_MEMBERSHIP.
#pragma once

#include <string>

#include "ckpt/dump_context.h"
#include "ckpt/fd_ops.h"

namespace fsched::ckpt {

// Dump, for a socket fd the Unix socket table does not know (sockets.cpp): if fd f of
// process p is a netlink socket, fills f (kind FdKind::kNetlink and its nl_ fields) and
// returns true; false if it is of another family. Throws UnsupportedError naming `who`
// for messages queued on it or a socket type other than SOCK_RAW/SOCK_DGRAM.
bool dump_netlink(const DumpProcess& p, Fd& f, const std::string& who);

// FdKind::kNetlink. Its open fails with an Error naming the port id when another socket
// of the network namespace holds it by then: port ids are the namespace's, and which are
// free at the restore cannot be known at the dump.
extern const FdOps kNetlinkFdOps;

}  // namespace fsched::ckpt
