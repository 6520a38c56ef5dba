// Unix sockets, the restore side (sockets.h create_sockets, refill_sockets).
// On restore the sockets are created in init, refilled by the restorer, and taken by each
// process. Names come back exactly as getsockname(2) and getpeername(2) report them: a pair
// without names is a socketpair(2); a datagram pair is one too, each end then bound
// to its name (a datagram socket connected one way connects to its peer's name); of a
// stream or seqpacket pair, the end whose name it got from accept(2) (the end sharing
// its name with a listener or with other accepted sockets) is accepted again, from the
// job's listener at that name or from a temporary one, by a client bound to the other
// end's name if it had one. A temporary listener at a path is bound in a scratch
// tmpfs of the restorer's own (same name bytes, another file), so the job's file
// system stays as the dump left it. Each accepted pair is checked to be connected to
// each other (sock_diag), so no stranger connecting to the name meanwhile gets in.
#include "ckpt/sockets.h"

#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <thread>

#include "ckpt/fsaccess.h"
#include "ckpt/remote.h"
#include "ckpt/scm_rights.h"
#include "ckpt/sockets_internal.h"
#include "ckpt/unix_opts.h"
#include "ckpt/unix_peercred.h"
#include "common/error.h"
#include "common/fd.h"

namespace fsched::ckpt {

using namespace sockets_detail;

namespace {

// The address of a name as the image writes it: a path, or an abstract name ("@...",
// a leading NUL and no terminator, unix(7)), so that getsockname(2) gives back exactly
// the bytes the job bound.
sockaddr_un unix_addr(const std::string& name, socklen_t& len, const std::string& what) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (name.empty() || name.size() >= sizeof sa.sun_path) fail("{}: bad name {}", what, name);
  std::memcpy(sa.sun_path, name.c_str(), name.size() + 1);
  len = sizeof sa;
  if (name[0] == '@') {
    sa.sun_path[0] = '\0';
    len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
  }
  return sa;
}

// Binds socket `fd` (in init) to s.name again.
void bind_name(Injector& inj, pid_t init_pid, const InjectionArea& area, const Manifest& m,
               const UnixSocket& s, long fd, const std::string& what) {
  socklen_t len = 0;
  sockaddr_un sa = unix_addr(s.name, len, what);
  if (s.name[0] == '@') {
    // In the network namespace, not the file system: nothing to check or remove. (The
    // dumped job holds it until it is gone, so a restore beside it fails EADDRINUSE.)
    remote_write(init_pid, area.data(), &sa, len);
    inj.call_ok(what + ": bind " + s.name, SYS_bind, static_cast<std::uint64_t>(fd), area.data(),
                len);
    return;
  }
  // Bound by init as the socket's owner in the job: the user controls the path,
  // so what a bind or an unlink there may do is what the job itself could.
  act_as(inj, init_pid, area,
         &owner_of(m, [&](const Fd& f) { return f.kind == FdKind::kUnix && f.file.ino == s.ino; }),
         what);
  // The dumped job's socket file, left behind: removed only if it is a socket.
  // (Looked at by init as the job, so nothing the job could not see is told.)
  std::uint64_t pa = put_string(init_pid, area, 0, s.name);
  const std::uint64_t st_at = area.data() + 4096;
  if (inj.call(SYS_newfstatat, static_cast<std::uint64_t>(AT_FDCWD), pa, st_at,
               AT_SYMLINK_NOFOLLOW) == 0) {
    struct stat st {};
    remote_read(init_pid, st_at, &st, sizeof st);
    if (!S_ISSOCK(st.st_mode))
      fail("restore refused: {}: {} is no longer a socket; not removing it", what, s.name);
    long un = inj.call(SYS_unlinkat, static_cast<std::uint64_t>(AT_FDCWD), pa, 0);
    if (un < 0 && un != -ENOENT)
      throw Error(fmt::format("{}: cannot remove the old socket file {}", what, s.name),
                  static_cast<int>(-un));
  }
  remote_write(init_pid, area.data(), &sa, len);
  inj.call_ok(what + ": bind " + s.name, SYS_bind, static_cast<std::uint64_t>(fd), area.data(),
              len);
  act_as(inj, init_pid, area, nullptr, what);
}

// Connects socket `fd` (in init) to `name`, as the job's process `as` when it is a path
// (the path is the user's; connect(2) needs write permission on the socket file).
void connect_name(Injector& inj, pid_t init_pid, const InjectionArea& area, const Process& as,
                  long fd, const std::string& name, const std::string& what) {
  socklen_t len = 0;
  sockaddr_un sa = unix_addr(name, len, what);
  const bool path = name[0] != '@';
  if (path) act_as(inj, init_pid, area, &as, what);
  remote_write(init_pid, area.data(), &sa, len);
  long r = inj.call(SYS_connect, static_cast<std::uint64_t>(fd), area.data(), len);
  if (path) act_as(inj, init_pid, area, nullptr, what);
  if (r < 0) throw Error(fmt::format("{}: connect to {}", what, name), static_cast<int>(-r));
}

// The sockfs inode of our fd `fd`, as sock_diag and "socket:[ino]" name it.
std::uint64_t socket_ino(int fd, const std::string& what) {
  struct stat st {};
  if (::fstat(fd, &st) < 0) fail_errno("{}: fstat", what);
  return st.st_ino;
}

// Binds our reference `listener` to the path `name` in a thread whose root is an empty
// tmpfs of a mount namespace of its own: the socket file is made there, not in the
// job's file system, which stays as the dump left it (the dumped listener's file, or
// none), and no one else can reach it. The bound name is still the bytes of `name`,
// which is all getsockname(2) and getpeername(2) report. Returns an O_PATH fd of the
// directory that holds the socket file: a process that makes it its working directory
// (fchdir(2) works across mount namespaces) connects to the file's last component, and
// the mount lives as long as the fd.
UniqueFd bind_in_scratch(int listener, const std::string& name, const std::string& what) {
  std::exception_ptr err;
  UniqueFd dir;
  std::thread t([&] {
    try {
      // CLONE_FS and the new mount namespace are this thread's alone.
      if (::unshare(CLONE_FS | CLONE_NEWNS) < 0) fail_errno("{}: unshare", what);
      if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) < 0)
        fail_errno("{}: making / private", what);
      // Open to all: no one else reaches this mount, and the listen and the connect
      // run with the peer credentials of each end (unix_peercred.h).
      if (::mount("fsched-unix-name", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
                  "mode=0755,size=64k") < 0)
        fail_errno("{}: mounting a scratch tmpfs", what);
      if (::chroot("/tmp") < 0 || ::chdir("/") < 0) fail_errno("{}: chroot to scratch", what);
      for (std::size_t at = name.find('/', 1); at != std::string::npos; at = name.find('/', at + 1))
        if (::mkdir(name.substr(0, at).c_str(), 0755) < 0 && errno != EEXIST)
          fail_errno("{}: scratch directory {}", what, name.substr(0, at));
      socklen_t len = 0;
      sockaddr_un sa = unix_addr(name, len, what);
      if (::bind(listener, reinterpret_cast<sockaddr*>(&sa), len) < 0)
        fail_errno("{}: bind {} (scratch)", what, name);
      if (::chmod(name.c_str(), 0777) < 0) fail_errno("{}: chmod {} (scratch)", what, name);
      const std::size_t slash = name.rfind('/');
      const std::string parent = slash == std::string::npos ? "."
                                 : slash == 0               ? "/"
                                                            : name.substr(0, slash);
      dir = UniqueFd(::open(parent.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
      if (!dir) fail_errno("{}: opening scratch directory {}", what, parent);
    } catch (...) {
      err = std::current_exception();
    }
  });
  t.join();
  if (err) std::rethrow_exception(err);
  return dir;
}

}  // namespace

SocketTable create_sockets(InitStash& stash, std::span<RestoreProcess> procs,
                           const InjectionArea& area, const Manifest& m, PageReader& pages,
                           SocketRefill& later) {
  SocketTable table;
  if (m.sockets.empty()) return table;
  Injector& inj = stash.inj();
  RestoreProcess& init = stash.init();
  auto park = [&](long fd, const std::string& what) { return stash.park(fd, what); };
  // Where each socket's peer credentials were given exactly, the host pid they name
  // (checked once all exist; unix_peercred.h).
  std::map<std::uint64_t, pid_t> cred_pid;
  // Makers that had exited by the dump, for the moment (unix_peercred.h).
  StandIns stand_ins(init, area);
  // Runs `call(fd there)` in the process that s's peer credentials name (a stand-in
  // for one that had exited; init when there can be none), as that peer, on init's
  // fd `fd` (-1: none): the process takes it from init for the call. Returns that
  // process.
  auto as_peer = [&](const PeerCred& c, long fd, const std::string& what,
                     const std::function<void(Injector&, long)>& call) -> RestoreProcess& {
    RestoreProcess* by = peer_cred_maker(procs, stand_ins, c, what);
    RestoreProcess& where = by ? *by : init;
    const bool in_init = &where == &init;
    Injector& pinj = where.leader();
    long there = fd < 0 || in_init ? fd : take_from_init(pinj, static_cast<int>(fd), what);
    const Process* baseline =
        in_init || where.rec->zombie || stand_ins.has(where) ? nullptr : where.rec;
    with_peer_cred(where, area, c, baseline, what, [&] { call(pinj, there); });
    if (!in_init && there >= 0) pinj.call(SYS_close, static_cast<std::uint64_t>(there));
    return where;
  };
  // A connected pair of s's type, made by the process its peer credentials name: its
  // two fd numbers in init.
  auto pair = [&](const UnixSocket& s, const std::string& what) {
    int fds[2];
    RestoreProcess& by = as_peer(s.cred, -1, what, [&](Injector& pinj, long) {
      pinj.call_ok(what + ": socketpair", SYS_socketpair, AF_UNIX,
                   static_cast<std::uint64_t>(s.type | SOCK_CLOEXEC), 0, area.data());
      remote_read(pinj.tid(), area.data(), fds, sizeof fds);
    });
    if (&by != &init)
      for (int& fd : fds) {
        long mine = take_fd(inj, by.rec->pid, fd, what);
        by.leader().call(SYS_close, static_cast<std::uint64_t>(fd));
        fd = static_cast<int>(mine);
      }
    return std::pair<int, int>{fds[0], fds[1]};
  };
  auto exact = [&](const UnixSocket& s) {
    if (RestoreProcess* by = peer_cred_maker(procs, stand_ins, s.cred, ""))
      cred_pid[s.ino] = by->host_pid;
  };
  std::map<std::uint64_t, const UnixSocket*> by_ino;
  std::map<std::string, int> holders;  // sockets that carry each name
  for (auto& s : m.sockets) {
    by_ino[s.ino] = &s;
    if (!s.name.empty()) ++holders[s.name];
  }
  auto peer_of = [&](const UnixSocket& s) -> const UnixSocket& {
    auto it = by_ino.find(s.peer);
    if (it == by_ino.end())
      fail_image("image: unix socket {}: its peer {} is not in the image", s.ino, s.peer);
    return *it->second;
  };
  // A datagram socket's peer is where it sends; the peer may send elsewhere.
  auto one_way = [&](const UnixSocket& s) {
    return s.type == SOCK_DGRAM && s.peer && peer_of(s).peer != s.ino;
  };
  // The process whose credentials act for socket s on the file system.
  auto owner = [&](const UnixSocket& s) -> const Process& {
    return owner_of(m, [&](const Fd& f) { return f.kind == FdKind::kUnix && f.file.ino == s.ino; });
  };
  // A stream or seqpacket pair whose end `acc` carries a name it got from accept(2):
  // accepted again from a listener at that name, from a client made in init (bound to
  // `client`'s name when it has one; client is null for a peer that is gone). The
  // listener is the job's own when the image has one at that name (its queue is empty:
  // no process of the job runs yet), else a temporary one, closed after the accept.
  // Returns the accepted and the client fd in init.
  // Connects init's socket `fd` to `name` as s's peer (its connecting process, with its
  // credentials, which are also those the path is reached with); without credentials,
  // from init as the job's process `as`.
  auto connect_as_peer = [&](const UnixSocket& s, const Process& as, long fd,
                             const std::string& name, const std::string& what) {
    if (!s.cred.set) {
      connect_name(inj, init.host_pid, area, as, fd, name, what);
      return;
    }
    socklen_t len = 0;
    const sockaddr_un sa = unix_addr(name, len, what);
    RestoreProcess& by = as_peer(s.cred, fd, what, [&](Injector& pinj, long there) {
      // A path is the user's: a root peer (a setuid program of the job) reaches it with
      // the file-system ids of the socket's owner in the job, never as root.
      if (name[0] != '@' && s.cred.uid == 0 && as.uids.size() == 4 && as.uids[3] != 0) {
        pinj.call(SYS_setfsgid, as.gids.at(3));
        pinj.call(SYS_setfsuid, as.uids[3]);
        if (pinj.call(SYS_setfsuid, static_cast<std::uint64_t>(-1)) != as.uids[3])
          fail("{}: cannot take fsuid {} to connect to {}", what, as.uids[3], name);
      }
      remote_write(pinj.tid(), area.data(), &sa, len);
      long r = pinj.call(SYS_connect, static_cast<std::uint64_t>(there), area.data(), len);
      if (r < 0) throw Error(fmt::format("{}: connect to {}", what, name), static_cast<int>(-r));
    });
    if (&by != &init) cred_pid[s.ino] = by.host_pid;
  };
  // Connects init's socket `fd` as s's peer to the socket file at s's name that
  // bind_in_scratch made in `dir`: from that directory, by the file's last component.
  auto connect_from_dir = [&](const UnixSocket& s, long fd, int dir, const std::string& what) {
    // "./": a last component that starts with '@' is still a path.
    const std::string base = "./" + s.name.substr(s.name.rfind('/') + 1);
    socklen_t len = 0;
    const sockaddr_un sa = unix_addr(base, len, what);
    RestoreProcess& by = as_peer(s.cred, fd, what, [&](Injector& pinj, long there) {
      const pid_t pid = pinj.tid();
      const long d = give_fd(pinj, pid, area, dir, what);
      const long cwd =
          pinj.call_ok(what + ": open its working directory", SYS_openat, AT_FDCWD,
                       put_string(pid, area, 512, "."), O_PATH | O_DIRECTORY | O_CLOEXEC);
      pinj.call_ok(what + ": fchdir to the scratch directory", SYS_fchdir,
                   static_cast<std::uint64_t>(d));
      remote_write(pid, area.data(), &sa, len);
      long r = pinj.call(SYS_connect, static_cast<std::uint64_t>(there), area.data(), len);
      // Back as root (its saved uid), which may search any directory.
      pinj.call_ok(what + ": setresuid", SYS_setresuid, static_cast<std::uint64_t>(-1), 0,
                   static_cast<std::uint64_t>(-1));
      pinj.call_ok(what + ": fchdir back", SYS_fchdir, static_cast<std::uint64_t>(cwd));
      pinj.call(SYS_close, static_cast<std::uint64_t>(cwd));
      pinj.call(SYS_close, static_cast<std::uint64_t>(d));
      if (r < 0)
        throw Error(fmt::format("{}: connect to {} (scratch)", what, s.name), static_cast<int>(-r));
    });
    if (&by != &init) cred_pid[s.ino] = by.host_pid;
  };
  // Listens on init's socket `fd` as `cred` says (see as_peer); true if by its own process.
  auto listen_as = [&](const PeerCred& cred, long fd, int backlog, const std::string& what) {
    RestoreProcess& by = as_peer(cred, fd, what, [&](Injector& pinj, long there) {
      pinj.call_ok(what + ": listen", SYS_listen, static_cast<std::uint64_t>(there),
                   static_cast<std::uint64_t>(backlog));
    });
    return &by != &init;
  };
  auto accepted = [&](const UnixSocket& acc, const UnixSocket* client, const std::string& what) {
    const auto type = static_cast<std::uint64_t>(acc.type | SOCK_CLOEXEC);
    // Non-blocking until the fd is taken (its flags are set then): a connect never
    // waits on a full backlog.
    long c = inj.call_ok(what + ": socket", SYS_socket, AF_UNIX, type | SOCK_NONBLOCK, 0);
    if (client && !client->name.empty()) bind_name(inj, init.host_pid, area, m, *client, c, what);
    long l = -1;
    bool temporary = true;
    std::uint64_t listener_ino = 0;
    for (auto& s : m.sockets)
      if (s.state == TCP_LISTEN && s.type == acc.type && s.name == acc.name) {
        l = table.at(s.ino);
        temporary = false;
        listener_ino = s.ino;
      }
    const Process& as = owner(client ? *client : acc);
    // The client's peer credentials are those its listener recorded at listen(2).
    const PeerCred listener_cred = client ? client->cred : PeerCred{};
    if (!temporary || acc.name[0] == '@') {
      if (temporary) {
        l = inj.call_ok(what + ": socket", SYS_socket, AF_UNIX, type, 0);
        bind_name(inj, init.host_pid, area, m, acc, l, what);
        if (listen_as(listener_cred, l, 1, what) && client) exact(*client);
      } else if (client && cred_pid.count(listener_ino)) {
        exact(*client);
      }
      connect_as_peer(acc, as, c, acc.name, what);
    } else {
      l = inj.call_ok(what + ": socket", SYS_socket, AF_UNIX, type, 0);
      UniqueFd dir = bind_in_scratch(stash.take(static_cast<int>(l), what + " (listener)").get(),
                                     acc.name, what);
      if (listen_as(listener_cred, l, 1, what) && client) exact(*client);
      connect_from_dir(acc, c, dir.get(), what);
    }
    // The connection must be waiting, so the accept does not block.
    UniqueFd lref = stash.take(static_cast<int>(l), what + " (listener)");
    pollfd pfd{lref.get(), POLLIN, 0};
    if (::poll(&pfd, 1, 0) != 1)
      fail("restore refused: {}: its connection to {} did not reach the listener", what, acc.name);
    long a = inj.call_ok(what + ": accept", SYS_accept4, static_cast<std::uint64_t>(l), 0, 0,
                         SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (temporary) inj.call(SYS_close, static_cast<std::uint64_t>(l));
    // What was accepted is our client, not a stranger who connected to the name first.
    std::uint64_t a_ino = socket_ino(stash.take(static_cast<int>(a), what).get(), what);
    std::uint64_t c_ino = socket_ino(stash.take(static_cast<int>(c), what).get(), what);
    auto diag = unix_sockets(a_ino);
    if (!diag.count(a_ino) || diag[a_ino].peer != c_ino)
      fail("restore refused: {}: the connection accepted at {} is not the restore's own", what,
           acc.name);
    return std::pair<int, int>{static_cast<int>(a), static_cast<int>(c)};
  };

  // The other ends of pairs whose peer is gone: the restorer's references only, which
  // it drops once their queues are refilled.
  std::map<std::uint64_t, UniqueFd> gone;
  // Sockets on their own first (listening, unconnected, datagram connected one way),
  // so that a listener is there when the sockets it accepted are made.
  for (auto& s : m.sockets) {
    if ((s.peer && !one_way(s)) || s.peer_gone) continue;
    std::string what = fmt::format("unix socket {}", s.ino);
    long fd = -1;
    if (s.cred.set && s.state != TCP_LISTEN && s.type == SOCK_DGRAM) {
      // One end of a datagram socketpair(2) whose other end is closed: paired again
      // by its maker, the other end closed.
      auto [mine, other] = pair(s, what);
      inj.call(SYS_close, static_cast<std::uint64_t>(other));
      fd = mine;
      exact(s);
    } else {
      fd = inj.call_ok(what + ": socket", SYS_socket, AF_UNIX,
                       static_cast<std::uint64_t>(s.type | SOCK_CLOEXEC), 0);
    }
    if (!s.name.empty()) bind_name(inj, init.host_pid, area, m, s, fd, what);
    if (s.state == TCP_LISTEN && listen_as(s.cred, fd, 128, what)) exact(s);
    table[s.ino] = park(fd, what);
  }
  for (auto& s : m.sockets) {
    if (table.count(s.ino)) continue;
    std::string what = fmt::format("unix socket {}", s.ino);
    if (s.peer_gone) {
      if (s.peer || s.type == SOCK_DGRAM || s.state != TCP_ESTABLISHED)
        fail_image("image: {}: peer gone, but peer {}, type {}, state {}", what, s.peer, s.type,
                   s.state);
      auto [mine, other] = s.name.empty() ? pair(s, what) : accepted(s, nullptr, what);
      if (s.name.empty()) exact(s);
      table[s.ino] = park(mine, what);
      gone[s.ino] = stash.take(other, what + " (its closed peer)");
      inj.call(SYS_close, static_cast<std::uint64_t>(other));
      continue;
    }
    const UnixSocket& peer = peer_of(s);
    if (peer.peer != s.ino)
      fail_image("image: {}: its peer {} is connected to {}", what, peer.ino, peer.peer);
    if (s.type == SOCK_DGRAM || (s.name.empty() && peer.name.empty())) {
      // Each end then binds its own name (a datagram socket's name is always its own).
      auto [mine, other] = pair(s, what);
      exact(s);
      exact(peer);
      if (!s.name.empty()) bind_name(inj, init.host_pid, area, m, s, mine, what);
      if (!peer.name.empty()) bind_name(inj, init.host_pid, area, m, peer, other, what);
      table[s.ino] = park(mine, what);
      table[peer.ino] = park(other, what);
      continue;
    }
    // The accepted end: the one whose name others share (its listener, the other
    // sockets it accepted), else a named one. (The dump refuses both shared.)
    bool mine_accepted =
        !s.name.empty() && (holders[s.name] > 1 || peer.name.empty() || holders[peer.name] < 2);
    const UnixSocket& acc = mine_accepted ? s : peer;
    const UnixSocket& client = mine_accepted ? peer : s;
    auto [a, c] = accepted(acc, &client, what);
    table[acc.ino] = park(a, what);
    table[client.ino] = park(c, what);
  }
  // Datagram sockets connected one way: to their peer's name, now bound.
  for (auto& s : m.sockets) {
    if (!one_way(s)) continue;
    std::string what = fmt::format("unix socket {}", s.ino);
    const UnixSocket& peer = peer_of(s);
    if (peer.name.empty()) fail_image("image: {}: connected one way to an unnamed peer", what);
    connect_name(inj, init.host_pid, area, owner(s), table.at(s.ino), peer.name, what);
    std::uint64_t mine = socket_ino(stash.take(table.at(s.ino), what).get(), what);
    std::uint64_t to = socket_ino(stash.take(table.at(peer.ino), what).get(), what);
    auto diag = unix_sockets(mine);
    if (!diag.count(mine) || diag[mine].peer != to)
      fail("restore refused: {}: connecting to {} reached another socket", what, peer.name);
  }
  // Peer credentials as they were (uid, gid, groups; the pid where it was remade by its
  // own process).
  for (auto& s : m.sockets) {
    if (!s.cred.set) continue;
    std::string what = fmt::format("unix socket {}", s.ino);
    auto it = cred_pid.find(s.ino);
    check_peer_cred(stash.take(table.at(s.ino), what).get(), s.cred,
                    it == cred_pid.end() ? 0 : it->second, what);
  }
  // Options, before anything is sent through them (a send buffer's size counts).
  for (auto& s : m.sockets) {
    if (s.opts.empty()) continue;
    std::string what = fmt::format("unix socket {}", s.ino);
    UniqueFd sock = stash.take(table.at(s.ino), what);
    restore_unix_opts(sock.get(), s.opts, what);
  }
  // Queued data, read now (the page stream is read in order), sent by refill_sockets.
  for (auto& s : m.sockets) {
    if (s.queued.empty()) continue;
    if (!s.peer && !s.peer_gone)
      fail_image("image: unix socket {} has queued data but no peer", s.ino);
    SocketRefill::Queue q{.sock = &s, .msgs = {}};
    for (std::uint64_t len : s.queued) {
      q.msgs.emplace_back(len);
      if (len) pages.read(q.msgs.back());
    }
    later.queues.push_back(std::move(q));
  }
  later.gone = std::move(gone);
  return table;
}

void refill_sockets(SocketRefill& later, InitStash& stash, std::span<RestoreProcess> procs,
                    const FdRestoreCtx& init_ctx) {
  const Manifest& m = *init_ctx.proc.image;
  const SocketTable& table = init_ctx.sockets;
  InFlightRestore in_flight(procs, init_ctx);
  // What was waiting to be read on a socket is sent again by its peer.
  for (auto& q : later.queues) {
    const UnixSocket& s = *q.sock;
    const std::string what = fmt::format("unix socket {}", s.ino);
    UniqueFd peer = s.peer_gone
                        ? std::move(later.gone.at(s.ino))
                        : stash.take(table.at(s.peer), fmt::format("unix socket {}", s.peer));
    // Queued bytes count against the sender's buffer, and a queue can hold a little
    // more than a fresh socket's default: widen it while refilling (root may, with
    // SO_SNDBUFFORCE, socket(7)), then put the default back.
    std::uint64_t total = 0;
    for (std::uint64_t len : s.queued) total += len;
    int old = 0;
    socklen_t ol = sizeof old;
    ::getsockopt(peer.get(), SOL_SOCKET, SO_SNDBUF, &old, &ol);
    int want = static_cast<int>(std::min<std::uint64_t>(total * 2 + 65536, 1u << 30));
    ::setsockopt(peer.get(), SOL_SOCKET, SO_SNDBUFFORCE, &want, sizeof want);
    for (std::size_t i = 0; i < q.msgs.size(); ++i) {
      const std::vector<std::byte>& data = q.msgs[i];
      const std::size_t len = data.size();
      std::vector<UniqueFd> files;
      for (const ScmRights& r : s.rights)
        if (r.msg == i)
          files = in_flight.files(
              r,
              owner_of(m,
                       [&](const Fd& f) { return f.kind == FdKind::kUnix && f.file.ino == s.ino; }),
              fmt::format("{} message {}", what, i));
      // The files go with the first buffer of a send. On a stream, they go with the
      // last kStreamFilesRun bytes of their run (where the buffer that carried them
      // ended, scm_rights.h): sent in one buffer, the run reads as it did.
      constexpr std::size_t kStreamFilesRun = 32768;
      const std::size_t files_at = files.empty() || s.type != SOCK_STREAM || len <= kStreamFilesRun
                                       ? 0
                                       : len - kStreamFilesRun;
      std::size_t sent = 0;
      do {
        ssize_t r;
        if (!files.empty() && sent == files_at) {
          std::vector<int> raw;
          for (auto& f : files) raw.push_back(f.get());
          std::vector<char> ctl(CMSG_SPACE(sizeof(int) * raw.size()));
          iovec iov{const_cast<std::byte*>(data.data() + sent), len - sent};
          msghdr mh{};
          mh.msg_iov = &iov;
          mh.msg_iovlen = 1;
          mh.msg_control = ctl.data();
          mh.msg_controllen = ctl.size();
          cmsghdr* c = CMSG_FIRSTHDR(&mh);
          c->cmsg_level = SOL_SOCKET;
          c->cmsg_type = SCM_RIGHTS;
          c->cmsg_len = CMSG_LEN(sizeof(int) * raw.size());
          std::memcpy(CMSG_DATA(c), raw.data(), sizeof(int) * raw.size());
          r = ::sendmsg(peer.get(), &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
          if (r >= 0 && static_cast<std::size_t>(r) != len - sent)
            fail("{}: refilling its queue: {} bytes with files in flight sent as {}", what,
                 len - sent, r);
          files.clear();
        } else {
          const std::size_t upto = files.empty() ? len : files_at;
          r = ::send(peer.get(), data.data() + sent, upto - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
        }
        if (r < 0 || (r == 0 && len))
          fail_errno("refilling the queue of {} ({} of {} bytes)", what, sent, len);
        sent += static_cast<std::size_t>(r);
        if (s.type != SOCK_STREAM && sent != len)
          fail("refilling {}: datagram of {} bytes cut to {}", what, len, sent);
      } while (sent < len);
    }
    int back = old / 2;  // getsockopt reports the doubled value setsockopt stores
    ::setsockopt(peer.get(), SOL_SOCKET, SO_SNDBUFFORCE, &back, sizeof back);
  }
  // The closed peers go, as they went before the dump: their ends see end of file.
  later.gone.clear();
  // shutdown(2) last, once the queues are refilled (a shut end takes no more data).
  // For a connected stream or seqpacket pair the kernel mirrors each end's shutdown
  // on its peer; doing both ends' again gives the same state, whichever end did it.
  for (auto& s : m.sockets) {
    if (!(s.shutdown & 3)) continue;
    UniqueFd sock = stash.take(table.at(s.ino), fmt::format("unix socket {}", s.ino));
    const int how = (s.shutdown & 3) - 1;  // 1 -> SHUT_RD, 2 -> SHUT_WR, 3 -> SHUT_RDWR
    if (::shutdown(sock.get(), how) < 0) fail_errno("unix socket {}: shutdown({})", s.ino, how);
  }
}

}  // namespace fsched::ckpt
