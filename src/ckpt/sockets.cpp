// Unix sockets: socket pairs and connected pairs inside the job (with the data queued
// in them and their shutdown(2) state), listening sockets and unconnected sockets,
// bound again to their path or abstract name, or never bound. What the
// kernel knows of each (type, state, peer, name, queue length) comes from
// NETLINK_SOCK_DIAG (sock_diag(7), unix_diag); queued data is read with MSG_PEEK
// (SO_PEEK_OFF for datagrams, socket(7)) through our own reference to the socket
// (pidfd_getfd(2)), so a job that keeps running loses nothing. The restore side is
// sockets_restore.cpp.
// Sockets of other families (netlink, packet...; TCP and UDP are inet.cpp's) or
// connected outside the job are refused with the process and fd named.
#include "ckpt/sockets.h"

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <set>

#include "ckpt/netlink.h"
#include "ckpt/remote.h"
#include "ckpt/scm_rights.h"
#include "ckpt/sockets_internal.h"
#include "ckpt/unix_opts.h"
#include "ckpt/unix_peercred.h"
#include "common/error.h"
#include "common/fd.h"

namespace fsched::ckpt {

namespace sockets_detail {

std::map<std::uint64_t, DiagInfo> unix_sockets(std::uint64_t only) {
  UniqueFd nl(::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (!nl) fail_errno("socket(NETLINK_SOCK_DIAG)");
  struct {
    nlmsghdr nlh;
    unix_diag_req req;
  } msg{};
  msg.nlh.nlmsg_len = sizeof msg;
  msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  msg.nlh.nlmsg_flags = only ? NLM_F_REQUEST : NLM_F_REQUEST | NLM_F_DUMP;
  msg.req.sdiag_family = AF_UNIX;
  msg.req.udiag_states = ~0U;
  msg.req.udiag_ino = static_cast<std::uint32_t>(only);
  msg.req.udiag_cookie[0] = msg.req.udiag_cookie[1] = ~0U;  // no cookie to check
  msg.req.udiag_show = UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN;
  if (::send(nl.get(), &msg, sizeof msg, 0) != sizeof msg) fail_errno("sock_diag request");
  std::map<std::uint64_t, DiagInfo> out;
  std::vector<char> buf(1 << 16);
  for (;;) {
    ssize_t n = ::recv(nl.get(), buf.data(), buf.size(), 0);
    if (n < 0) fail_errno("sock_diag reply");
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(h, static_cast<unsigned>(n));
         h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type == NLMSG_DONE) return out;
      if (h->nlmsg_type == NLMSG_ERROR) {
        if (only) return out;  // no such socket (any more)
        fail("sock_diag: error reply");
      }
      auto* d = static_cast<unix_diag_msg*>(NLMSG_DATA(h));
      DiagInfo info;
      info.type = d->udiag_type;
      info.state = d->udiag_state;
      int len = static_cast<int>(h->nlmsg_len - NLMSG_LENGTH(sizeof *d));
      for (auto* a = reinterpret_cast<rtattr*>(d + 1); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        if (a->rta_type == UNIX_DIAG_PEER) {
          info.peer = *static_cast<std::uint32_t*>(RTA_DATA(a));
          info.has_peer = true;
        }
        if (a->rta_type == UNIX_DIAG_SHUTDOWN)
          info.shutdown = *static_cast<std::uint8_t*>(RTA_DATA(a));
        if (a->rta_type == UNIX_DIAG_RQLEN)
          info.rqueue = static_cast<unix_diag_rqlen*>(RTA_DATA(a))->udiag_rqueue;
        if (a->rta_type == UNIX_DIAG_NAME) {
          std::string s(static_cast<char*>(RTA_DATA(a)), RTA_PAYLOAD(a));
          if (!s.empty() && s[0] == '\0') s[0] = '@';  // abstract name
          info.name = s.c_str();
        }
      }
      out[d->udiag_ino] = info;
      if (only) return out;
    }
  }
}

}  // namespace sockets_detail

using namespace sockets_detail;

namespace {

// One queued message (a stream: a run of bytes), with the files it carries
// (SCM_RIGHTS), as the dumper's own references that the peek installed.
struct Peeked {
  std::string data;
  std::vector<UniqueFd> fds;
  std::string from;  // a datagram's sender, as recvfrom(2) names it ("@..." abstract)
};

// Peeks at `len` bytes of `sock`'s queue from its peek offset (SO_PEEK_OFF, which the
// peek moves on). The files a message carries come with it; a stream peek stops at
// the end of the first buffer that carries files, as a read would.
ssize_t peek_one(int sock, std::vector<char>& buf, std::size_t len, std::vector<UniqueFd>& fds,
                 std::string& from, const std::string& who) {
  // SCM_MAX_FD (253) files per message.
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * 253)];
  iovec iov{buf.data(), len};
  sockaddr_un sa{};
  msghdr mh{};
  mh.msg_name = &sa;
  mh.msg_namelen = sizeof sa;
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = ctl;
  mh.msg_controllen = sizeof ctl;
  ssize_t r = ::recvmsg(sock, &mh, MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (r < 0) return r;
  from.clear();
  if (mh.msg_namelen > offsetof(sockaddr_un, sun_path)) {
    const std::size_t n =
        std::min<std::size_t>(mh.msg_namelen - offsetof(sockaddr_un, sun_path), sizeof sa.sun_path);
    from.assign(sa.sun_path, n);
    if (!from.empty() && from[0] == '\0') from[0] = '@';  // abstract, as unix_sockets() names it
    from = from.c_str();
  }
  fds.clear();
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      const std::size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < n; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        fds.emplace_back(fd);
      }
    }
  if (mh.msg_flags & MSG_CTRUNC)
    fail_unsupported("{}: a queued message carries more files than a message may (SCM_RIGHTS)",
                     who);
  if (mh.msg_flags & MSG_TRUNC) fail_unsupported("{}: queued datagram too large", who);
  return r;
}

void set_peek_off(int sock, int off, const std::string& who) {
  if (::setsockopt(sock, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof off) < 0)
    fail_errno("{}: SO_PEEK_OFF", who);
}

// The data queued for reading on `sock`, message by message, without consuming it.
// A socket shut for reading (shutdown(2) SHUT_RD, or its stream peer's SHUT_WR) reads 0
// at the end of its queue: for a seqpacket socket, whose rqueue counts all queued bytes,
// that end is told from an empty message by the bytes seen. A stream's queue comes as
// runs of bytes, each ending with the buffer of a send that carried files (a read
// stops there, and a peek too). Where that buffer starts in its run, no peek tells: a
// peek goes on past the bytes asked for, to the next buffer with files.
std::vector<Peeked> peek_queue(int sock, int type, std::uint32_t rqueue, bool rcv_shut,
                               const std::string& who) {
  std::vector<Peeked> msgs;
  if (type == SOCK_STREAM && !rqueue) return msgs;
  std::vector<char> buf(std::max<std::size_t>(rqueue, 1) + 65536);
  int old = -1;
  socklen_t ol = sizeof old;
  ::getsockopt(sock, SOL_SOCKET, SO_PEEK_OFF, &old, &ol);
  set_peek_off(sock, 0, who);
  // The job's peek offset is put back however this ends.
  struct Restore {
    int sock, old;
    ~Restore() { ::setsockopt(sock, SOL_SOCKET, SO_PEEK_OFF, &old, sizeof old); }
  } restore{sock, old};
  std::uint64_t seen = 0;
  std::vector<UniqueFd> fds;
  for (;;) {
    const std::size_t want = type == SOCK_STREAM ? rqueue - seen : buf.size();
    std::string from;
    ssize_t r = peek_one(sock, buf, want, fds, from, who);
    if (r < 0) {
      if (errno == EAGAIN) break;
      fail_errno("{}: peeking at its queue", who);
    }
    if (type == SOCK_STREAM) {
      if (r == 0) break;
      msgs.push_back(Peeked{std::string(buf.data(), static_cast<std::size_t>(r)), std::move(fds)});
      fds.clear();
      seen += static_cast<std::uint64_t>(r);
      if (seen >= rqueue) break;
      continue;
    }
    if (r == 0 && rcv_shut && type == SOCK_SEQPACKET && seen == rqueue) break;
    if (r == 0 && rcv_shut)
      fail_unsupported(
          "{}: a datagram socket shut for reading (its end of queue reads as an empty "
          "datagram) is not supported",
          who);
    // The peek offset does not move past an empty datagram.
    if (r == 0) fail_unsupported("{}: an empty datagram is queued (unsupported)", who);
    msgs.push_back(
        Peeked{std::string(buf.data(), static_cast<std::size_t>(r)), std::move(fds), from});
    fds.clear();
    seen += static_cast<std::uint64_t>(r);
  }
  return msgs;
}

// The fd: its socket inode from the link "socket:[ino]"; the socket itself is
// dumped by dump_sockets.
void dump_unix_fd(const FdDumpCtx& c, Fd& f) {
  f.file.ino = std::stoull(c.link.substr(8));
  f.path.clear();
}

long open_unix_fd(const FdRestoreCtx& c, const Fd& f, const std::string& who) {
  auto it = c.sockets.find(f.file.ino);
  if (it == c.sockets.end())
    fail_image("image: {}: socket {} is not in the image", who, f.file.ino);
  return adopt_from_init(c, it->second, f, who);
}

}  // namespace

const FdOps kUnixFdOps{.kind = FdKind::kUnix,
                       .anon_link = nullptr,
                       .dump = dump_unix_fd,
                       .open = open_unix_fd,
                       .finish = nullptr,
                       .shareable = true,
                       .seekable = false};

void dump_sockets(std::span<DumpProcess> procs, Manifest& m, ImageWriter& img) {
  std::set<std::uint64_t> in_job;
  for (auto& p : procs)
    for (auto& f : p.rec.fds)
      if (f.kind == FdKind::kUnix) in_job.insert(f.file.ino);
  if (in_job.empty()) return;
  auto diag = unix_sockets();
  InFlightDump in_flight(procs, m);
  std::map<std::uint64_t, std::string> who_of;  // socket inode -> its process and fd
  // A name held by more than one socket of the job: a listener's, which the sockets it
  // accepted carry too (restore accepts them from it again).
  std::map<std::string, int> holders;
  for (std::uint64_t ino : in_job)
    if (auto it = diag.find(ino); it != diag.end() && !it->second.name.empty())
      ++holders[it->second.name];
  std::set<std::uint64_t> done;
  for (auto& p : procs) {
    for (auto& f : p.rec.fds) {
      if (f.kind != FdKind::kUnix || !done.insert(f.file.ino).second) continue;
      std::string who = fmt::format("process {} (pid {} in the job), fd {} -> socket:[{}]",
                                    p.host_pid, p.rec.pid, f.fd, f.file.ino);
      auto it = diag.find(f.file.ino);
      if (it == diag.end()) {
        if (dump_netlink(p, f, who)) continue;  // netlink.h
        fail_unsupported(
            "{}: not a Unix, TCP, UDP or netlink socket (packet ... sockets are not supported)",
            who);
      }
      const DiagInfo& d = it->second;
      if (d.type != SOCK_STREAM && d.type != SOCK_DGRAM && d.type != SOCK_SEQPACKET)
        fail_unsupported("{}: unsupported socket type {}", who, d.type);
      UnixSocket s;
      s.ino = f.file.ino;
      s.type = d.type;
      s.state = d.state;
      s.name = d.name;
      s.shutdown = d.shutdown;
      // A name is bound again at restore (create_sockets), by path or in the abstract
      // namespace; a relative path names a file relative to a directory the kernel
      // does not report.
      if (!d.name.empty() && d.name[0] != '/' && d.name[0] != '@')
        fail_unsupported("{}: bound to the relative path {} (not supported)", who, d.name);
      if (d.state == TCP_LISTEN) {
        if (d.name.empty())
          fail_unsupported("{}: listening socket without a name (not supported)", who);
        // Waiting connections are half-made sockets no process of the job holds (their
        // clients' ends are checked on their own): they could not be handed back.
        if (d.rqueue)
          fail_unsupported(
              "{}: a listening Unix socket with {} connection(s) waiting to be accepted is not "
              "supported",
              who, d.rqueue);
      } else if (d.peer) {
        if (!in_job.count(d.peer))
          fail_unsupported("{}: connected to a socket outside the job (unsupported)", who);
        s.peer = d.peer;
        auto pit = diag.find(d.peer);
        if (pit == diag.end())
          fail("{}: its peer socket:[{}] vanished during the dump", who, d.peer);
        const DiagInfo& peer = pit->second;
        if (d.type == SOCK_DGRAM && peer.peer != s.ino) {
          // Connected one way only: restore connects it to its peer's name, which it
          // needs, and the peer's own sends go elsewhere, so it cannot refill this queue.
          if (peer.name.empty())
            fail_unsupported(
                "{}: a datagram socket connected to an unnamed socket that is not connected "
                "back to it (not supported)",
                who);
          if (d.rqueue)
            fail_unsupported(
                "{}: datagrams queued on a socket whose peer is not connected back to it "
                "(their senders are unknown; not supported)",
                who);
        }
        // Of a connected stream pair, the end whose name others share was accepted
        // from their listener; the other end bound its own name. Both shared is a
        // name bound twice (a path unlinked and bound again), which restore cannot tell.
        if (d.type != SOCK_DGRAM && !d.name.empty() && !peer.name.empty() && holders[d.name] > 1 &&
            holders[peer.name] > 1)
          fail_unsupported(
              "{}: connected socket named {} whose peer is named {}, both names held by other "
              "sockets of the job (not supported)",
              who, d.name, peer.name);
      } else if (d.state == TCP_ESTABLISHED) {
        // A datagram socket's peer is only where it sends; a datagram's sender is gone.
        // (One that others connected to is TCP_ESTABLISHED too, with no peer: unconnected.)
        if (d.type == SOCK_DGRAM && d.has_peer)
          fail_unsupported("{}: a datagram socket whose peer is gone (not supported)", who);
        if (d.type != SOCK_DGRAM) s.peer_gone = true;
      }
      UniqueFd mine = grab_fd(p.host_pid, f.fd, who);
      s.opts = dump_unix_opts(mine.get(), d.type, who);
      s.cred = dump_peer_cred(mine.get(), p, f.fd, procs, who);
      // Out-of-band data (unix(7) MSG_OOB, Linux 5.15): a byte kept apart from the queue,
      // or marked within it (SO_OOBINLINE), which no peek of the queue shows.
      if (d.type == SOCK_STREAM && d.state == TCP_ESTABLISHED) {
        char oob = 0;
        int inl = 0;
        socklen_t il = sizeof inl;
        ::getsockopt(mine.get(), SOL_SOCKET, SO_OOBINLINE, &inl, &il);
        if (::recv(mine.get(), &oob, 1, MSG_OOB | MSG_PEEK | MSG_DONTWAIT) == 1)
          fail_unsupported("{}: out-of-band data (MSG_OOB) is queued: not supported", who);
        if (inl && d.rqueue)
          fail_unsupported("{}: data queued with SO_OOBINLINE on (a mark in it?): not supported",
                           who);
      }
      who_of[s.ino] = who;
      if (d.state != TCP_LISTEN) {
        for (auto& msg : peek_queue(mine.get(), d.type, d.rqueue, d.shutdown & 1, who)) {
          // Refilled at restore by its peer: without one, the senders' addresses that
          // recvfrom(2) reports would be lost.
          if (!s.peer && !s.peer_gone)
            fail_unsupported(
                "{}: data queued on a socket with no peer (sent to its name) is not supported",
                who);
          // Refilled from its peer, each datagram must have come from it: recvfrom(2)
          // names the sender.
          if (d.type == SOCK_DGRAM && s.peer) {
            auto pd = diag.find(s.peer);
            const std::string peer_name = pd != diag.end() ? pd->second.name : "";
            if (msg.from != peer_name)
              fail_unsupported(
                  "{}: a datagram queued from {} while its peer is {}: not supported (the "
                  "restore sends the queue from the peer)",
                  who, msg.from.empty() ? "an unnamed socket" : msg.from,
                  peer_name.empty() ? "unnamed" : peer_name);
          }
          if (!msg.fds.empty())
            s.rights.push_back(ScmRights{.msg = static_cast<std::uint32_t>(s.queued.size()),
                                         .fds = in_flight.add(std::move(msg.fds), who)});
          s.queued.push_back(msg.data.size());
          if (!msg.data.empty())
            img.append_pages(std::as_bytes(std::span(msg.data.data(), msg.data.size())));
        }
      }
      m.sockets.push_back(std::move(s));
    }
  }
  // Queued messages that carry their senders' credentials, or will be read with them:
  // the restore sends them again as itself.
  std::map<std::uint64_t, const UnixSocket*> by_ino;
  for (auto& s : m.sockets) by_ino[s.ino] = &s;
  for (auto& s : m.sockets) {
    if (s.queued.empty()) continue;
    auto peer = by_ino.find(s.peer);
    if (passes_credentials(s.opts) ||
        (peer != by_ino.end() && passes_credentials(peer->second->opts)))
      fail_unsupported(
          "{}: {} message(s) queued between sockets that pass credentials (SO_PASSCRED, "
          "SO_PASSSEC, SO_PASSPIDFD): not supported (the restore would send them as another "
          "process)",
          who_of[s.ino], s.queued.size());
  }
}

}  // namespace fsched::ckpt
