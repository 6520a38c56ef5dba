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
// When that process had exited by the dump, the kernel still reports its pid, and so
// must the restored socket: a stand-in process takes that pid in the job's PID
// namespace for the moment of the call (StandIns). A zombie makes its sockets before
// it exits again (pstree.h make_zombies). A connection the restore remakes through a
// scratch path (its listener was closed) is connected by its maker too, from a working
// directory in the scratch file system (sockets_restore.cpp).
//
// Refused at dump: a socket made by a process outside the job's PID namespace (the job
// sees pid 0 in its credentials, which no process of a restored job can give).
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <span>
#include <string>

#include "ckpt/dump_context.h"
#include "ckpt/manifest.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

// Dump: the peer credentials of our reference `sock` to a socket of the job, with the
// pid translated into the job's PID namespace through `procs`; for a maker that is not
// a live process of the job, by asking `holder`, which holds the socket as its fd
// `fd`, with an injected getsockopt(2). PeerCred::set is false for a socket that has
// none (never connected, paired nor listening). Throws UnsupportedError naming `who`
// for a maker outside the job's PID namespace, Error if getsockopt fails.
PeerCred dump_peer_cred(int sock, DumpProcess& holder, int fd, std::span<const DumpProcess> procs,
                        const std::string& who);

// Restore: processes made for the moment in the job's PID namespace, each with the pid
// of a process that made sockets and had exited by the dump (clone3(2) with set_tid,
// injected in init, with exit_signal 0 so that init gets no SIGCHLD). They copy init
// and take no other part in the job: destruction kills them and reaps them (waitpid(2)
// as their tracer, then wait4(2) with __WALL injected in init).
class StandIns {
 public:
  StandIns(RestoreProcess& init, const InjectionArea& area) : init_(init), area_(area) {}
  ~StandIns();
  StandIns(const StandIns&) = delete;
  StandIns& operator=(const StandIns&) = delete;
  // The stand-in with pid `pid` in the job, made on first use; nullptr when another
  // process has that pid (clone3 EEXIST; peer_cred_maker asks only for pids no process
  // of the image has). Throws Error naming `what` on any other failure.
  RestoreProcess* get(int pid, const std::string& what);
  // Whether `p` is one of them.
  bool has(const RestoreProcess& p) const;

 private:
  RestoreProcess& init_;
  const InjectionArea& area_;
  std::map<int, Process> recs_;         // by pid in the job: what RestoreProcess::rec names
  std::map<int, RestoreProcess> made_;  // by pid in the job (node-based: stable addresses)
};

// Restore: the process that makes a socket with peer credentials `c`: the process of
// the image with the pid `c` names (a zombie too, which is not dead yet), else a
// stand-in with that pid; nullptr when there is none (no credentials, or pid 0: an
// image of format 7 or older, made in init then).
RestoreProcess* peer_cred_maker(std::span<RestoreProcess> procs, StandIns& stand_ins,
                                const PeerCred& c, const std::string& what);

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
