// The peer credentials of Unix sockets (unix(7) SO_PEERCRED, SO_PEERGROUPS): the
// process id, effective uid and gid and supplementary groups of whoever made the
// connection. The kernel records them once, from the calling process: both ends of a
// socketpair(2) get the caller's; connect(2) gives the accepted end the connecting
// process's and the connecting end the listener's, which listen(2) recorded.
//
// A restore that made every socket in init as root would give every restored socket a
// root peer (pid 1, uid 0): a program that trusts its peer by uid would trust it more.
// So each is remade by the process whose pid the credentials name, when that is a
// live process of the job, with those effective ids and groups for the moment of the
// call (setresuid(2) keeps the saved uid 0, so the process takes root back after);
// by init with those ids otherwise. The restore checks uid, gid and groups of every
// restored socket, and the pid where it was remade by its own process.
//
// Not restored (docs/state-kinds.md): the pid when the process that made the
// connection is not a live process of the job (it exited, or is outside the job), or
// when the restore had to connect through a scratch path (sockets.cpp
// connect_in_scratch): the restored peer pid is then init's (1) or, seen from the job,
// 0.
#pragma once

#include <sys/types.h>

#include <functional>
#include <span>
#include <string>

#include "ckpt/dump_context.h"
#include "ckpt/manifest.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

// Dump: the peer credentials of our reference `sock` to a socket of the job, with the
// pid translated into the job's PID namespace through `procs` (0 when it is not a
// live process of the job). PeerCred::set is false for a socket that has none (never
// connected, paired nor listening). Throws Error naming `who` if getsockopt fails.
PeerCred dump_peer_cred(int sock, std::span<const DumpProcess> procs, const std::string& who);

// Restore: the live process of the job whose pid `c` names, or nullptr.
RestoreProcess* peer_cred_process(std::span<RestoreProcess> procs, const PeerCred& c);

// Restore: runs `call` (injected calls into `where`, a process still running as root)
// with the effective uid, gid and groups of `c`, then puts back root and the
// file-system credentials of `baseline` (act_as; nullptr: root's). `c` not set: just
// runs `call`. Throws Error naming `what`.
void with_peer_cred(RestoreProcess& where, const InjectionArea& area, const PeerCred& c,
                    const Process* baseline, const std::string& what,
                    const std::function<void()>& call);

// Restore: the same, for the calling thread of the restorer itself (raw setresuid(2)
// and friends change only the calling thread's credentials). Not undone: for a thread
// that ends after its calls.
void take_peer_cred_in_this_thread(const PeerCred& c, const std::string& what);

// Restore: fails (Error naming `what`) unless our reference `sock` reports the uid,
// gid and groups of `c`, and, when `host_pid` > 0, that host pid.
void check_peer_cred(int sock, const PeerCred& c, pid_t host_pid, const std::string& what);

}  // namespace fsched::ckpt
