// Files in flight: fds that a process of the job sent over a Unix socket with
// SCM_RIGHTS (unix(7)) and that the receiver has not taken yet. The dump peeks at the
// queue (recvmsg(2) MSG_PEEK installs a reference to each in-flight file in the
// dumper) and names each file either as an fd of the job that shares its open file
// description (kcmp(2) KCMP_FILE), or, when no process of the job holds it any more
// (sent, then closed), as a regular file, directory or device to open again by path.
// The restore sends the same messages again, with SCM_RIGHTS, once every process has
// its fds: the receiver gets the same open file descriptions, in the same messages.
// Refused at dump: in-flight pipes, sockets and other kinds that no process of the job
// holds, deleted files, files with locks, an owner (F_SETOWN) or a signal (F_SETSIG).
#pragma once

#include <span>
#include <string>
#include <vector>

#include "ckpt/dump_context.h"
#include "ckpt/fd_ops.h"
#include "ckpt/manifest.h"
#include "common/fd.h"

namespace fsched::ckpt {

// Dump side: names the in-flight files of one dump, sharing what was seen before.
class InFlightDump {
 public:
  // `procs` have their fds recorded (dump_files); in-flight files that no process holds
  // go to m.in_flight.
  InFlightDump(std::span<DumpProcess> procs, Manifest& m) : procs_(procs), m_(m) {}
  // The files of one message, given as the dumper's own references (closed on return).
  // `who` names the socket and its process for messages. Throws UnsupportedError for
  // the files listed in the header comment.
  std::vector<InFlightFd> add(std::vector<UniqueFd> fds, const std::string& who);

 private:
  std::span<DumpProcess> procs_;
  Manifest& m_;
  std::vector<UniqueFd> seen_;  // the dumper's reference to each m.in_flight entry
};

// Restore side: the restorer's own references to the files of one message, taken with
// pidfd_getfd(2) from the restored process that holds the description, or opened
// again in init (`init_ctx`) with the credentials of `owner`, the receiving socket's
// owner. Throws Error("<who>: ...") when a file cannot be had, ImageError when the
// image names an fd or file it does not hold.
class InFlightRestore {
 public:
  InFlightRestore(std::span<RestoreProcess> procs, const FdRestoreCtx& init_ctx)
      : procs_(procs), init_(init_ctx) {}
  std::vector<UniqueFd> files(const ScmRights& r, const Process& owner, const std::string& who);

 private:
  std::span<RestoreProcess> procs_;
  const FdRestoreCtx& init_;
  std::map<int, UniqueFd> opened_;  // m.in_flight index -> the restorer's reference
};

}  // namespace fsched::ckpt
