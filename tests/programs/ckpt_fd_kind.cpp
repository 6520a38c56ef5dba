// ckpt_fd_kind: one process that holds one kind of file descriptor state (issue 13,
// "fd identity and flags"), for checkpoint/restore tests that name the kind that broke.
// Output depends only on the arguments.
//
//   ckpt_fd_kind KIND ROUNDS [TICK_MS]
//
// Each round checks the state the previous round left, changes it, prints one line and
// sleeps TICK_MS (default 50). Restored kinds:
//   flags         status flags of a pipe's two ends, a FIFO, a socket, an eventfd, an
//                 epoll, /dev/null and a directory: O_NONBLOCK and O_ASYNC toggled each
//                 round, O_APPEND on the write ends; a dup of the pipe's read end must
//                 follow its flags (one open file description)
//   opens         separate opens stay separate and dups stay shared (kcmp(2) KCMP_FILE):
//                 two opens of one FIFO's read end with different O_NONBLOCK, two opens
//                 of one regular file with their own offsets and a dup of one of them,
//                 a dup'd directory and a dup'd /dev/null
//   unix_shutdown a stream socketpair with SHUT_WR on one end and a seqpacket pair with
//                 SHUT_RD on one end, checked by their EOFs and EPIPEs every round
//   unix_names    a socket never bound or connected, a datagram socket bound to an
//                 abstract name and one bound to a path, a stream socket listening on an
//                 abstract name: each round checks their names and sends through them
//   pipe_reopen   a pipe's read end opened a second time through /proc/self/fd (as
//                 "/dev/stdout" is), O_NONBLOCK on that open only
//   clone_files   a child sharing the fd table (clone(2) CLONE_FILES): the parent opens
//                 an fd each round that the child must see
//   dgram_shut_rd a datagram socketpair end shut for reading with two datagrams still
//                 queued, read at the end; each round a send to it must fail (EPIPE)
//   unix_peer_gone a stream and a seqpacket socketpair whose other end wrote and then
//                 closed: each round a send must fail with EPIPE; at the end the data
//                 written is read, then end of file
//   unix_accepted sockets accepted from a stream listener on a path (from an unbound
//                 client, from a client bound to its own path, from a client that wrote
//                 and closed) and from a seqpacket listener on an abstract name, and from
//                 a path and an abstract listener since closed (the path's file left):
//                 each round checks every socket's name and peer name, a record each
//                 way, the left file, and a new connection to each listener; data queued
//                 since the start is read at the end
//   dgram_named   datagram sockets bound (abstract, path) and connected to each other by
//                 name, one connected one way to a bound unconnected socket, and a
//                 socketpair with one end bound afterwards: names, peer names and the
//                 sender address of a datagram each way every round; a datagram queued
//                 since the start is read at the end with its sender
// Kinds the dump must refuse (the job runs on unharmed):
//   unix_relative a datagram socket bound to a relative path
//   files_sibling a child and the process it made with CLONE_FILES | CLONE_PARENT,
//                 which share an fd table without being parent and child
//   epoll_closed  an epoll watching a pipe by an fd number since closed (a dup remains)
//   proc_fd       /proc/self/stat held open and read every round
//   pipe_rdwr     a pipe's read end opened again for reading AND writing through
//                 /proc/self/fd: each round writes a byte through it and reads it back
//   dgram_peer_gone a datagram socketpair end whose peer was closed (never sent to since,
//                 so it still holds its dead peer); at the end a send fails (ECONNREFUSED)
//   dgram_no_peer a datagram socket bound to an abstract name holding three datagrams
//                 that an unconnected socket sent to that name, read at the end
//   dgram_one_way a datagram socketpair whose one end disconnected (connect AF_UNSPEC):
//                 the other still sends to it, which has no name to connect to again
//   dgram_one_way_queued a datagram socket connected to a bound socket that is connected
//                 to nothing and sent it a datagram by name, queued until the end
//   dgram_shut_empty a datagram socketpair end shut for reading with "one", an empty
//                 datagram and "two" queued (a peek cannot tell the empty one from the
//                 end of the queue), read at the end; each round a send must fail (EPIPE)
//
// Exit status 0; 1 with a line "FAIL ..." saying what failed.
#include <fcntl.h>
#include <linux/kcmp.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kind_prog.h"

namespace {

using namespace kindprog;

int check(int r, const std::string& what) {
  if (r < 0) die(what);
  return r;
}

// Same open file description? (kcmp(2) on this process)
bool same_file(int a, int b) {
  long r = syscall(SYS_kcmp, getpid(), getpid(), KCMP_FILE, a, b);
  if (r < 0) die("kcmp");
  return r == 0;
}

std::string str(int v) { return std::to_string(v); }

// The status flags a job can change with F_SETFL and sees with F_GETFL.
constexpr int kStatus = O_NONBLOCK | O_ASYNC | O_APPEND;

void want_flags(int fd, int want, const std::string& what, int round) {
  int got = fcntl(fd, F_GETFL);
  if (got < 0) die(what + ": F_GETFL");
  if ((got & kStatus) != want)
    fail(what + ": round " + str(round) + " flags " + str(got & kStatus) + ", want " + str(want));
}

void set_flags(int fd, int flags, const std::string& what) {
  int now = check(fcntl(fd, F_GETFL), what + ": F_GETFL");
  check(fcntl(fd, F_SETFL, (now & ~kStatus) | flags), what + ": F_SETFL");
}

void run_flags(int rounds) {
  int p[2];
  check(pipe2(p, O_CLOEXEC), "pipe2");
  int rdup = check(fcntl(p[0], F_DUPFD_CLOEXEC, 0), "dup");
  check(mkfifo("fdkind.fifo", 0600), "mkfifo");
  int fifo = check(open("fdkind.fifo", O_RDWR | O_CLOEXEC), "open fifo");
  int sp[2];
  check(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), "socketpair");
  int efd = check(eventfd(0, EFD_CLOEXEC), "eventfd");
  int ep = check(epoll_create1(EPOLL_CLOEXEC), "epoll_create1");
  int null = check(open("/dev/null", O_WRONLY | O_CLOEXEC), "open /dev/null");
  int dir = check(open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC), "open .");
  struct Item {
    int fd;
    const char* name;
    int base;   // flags kept throughout
    int async;  // O_ASYNC if the kind keeps it (kinds without fasync: eventfd, epoll, /dev/null,
                // directory do not)
  };
  const Item items[] = {{p[0], "pipe read end", 0, O_ASYNC},
                        {p[1], "pipe write end", O_APPEND, O_ASYNC},
                        {fifo, "fifo", 0, O_ASYNC},
                        {sp[0], "socket", 0, O_ASYNC},
                        {efd, "eventfd", 0, 0},
                        {ep, "epoll", 0, 0},
                        {null, "/dev/null", O_APPEND, 0},
                        {dir, "directory", 0, 0}};
  // Round r's flags of item i: O_NONBLOCK and O_ASYNC in a pattern that changes each
  // round and differs between items.
  auto pattern = [&](int r, int i) {
    return (((r + i) & 1) ? O_NONBLOCK : 0) | (((r + i) & 2) ? items[i].async : 0);
  };
  for (int r = 1; r <= rounds; ++r) {
    for (int i = 0; i < static_cast<int>(std::size(items)); ++i) {
      const Item& it = items[i];
      if (r > 1) want_flags(it.fd, it.base | pattern(r - 1, i), it.name, r);
      if (r > 1 && i == 0) want_flags(rdup, pattern(r - 1, 0), "dup of the pipe read end", r);
      set_flags(it.fd, it.base | pattern(r, i), it.name);
    }
    want_flags(rdup, pattern(r, 0), "dup of the pipe read end", r);
    if (!same_file(rdup, p[0])) fail("the dup of the pipe read end is a separate open");
    line("flags " + str(r));
    tick();
  }
  unlink("fdkind.fifo");  // (a FIFO deleted while open is refused: kept until the end)
}

void run_opens(int rounds) {
  // A FIFO's read end opened twice (separate descriptions), plus a writer.
  check(mkfifo("fdkind.fifo", 0600), "mkfifo");
  int r1 = check(open("fdkind.fifo", O_RDONLY | O_NONBLOCK | O_CLOEXEC), "open fifo");
  int r2 = check(open("fdkind.fifo", O_RDONLY | O_NONBLOCK | O_CLOEXEC), "open fifo again");
  int w = check(open("fdkind.fifo", O_WRONLY | O_CLOEXEC), "open fifo for writing");
  // A regular file opened twice, and a dup of the first open.
  int f1 = check(open("fdkind.data", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600), "open file");
  int f2 = check(open("fdkind.data", O_RDONLY | O_CLOEXEC), "open file again");
  int f1dup = check(fcntl(f1, F_DUPFD_CLOEXEC, 0), "dup file");
  int d1 = check(open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC), "open .");
  int d1dup = check(fcntl(d1, F_DUPFD_CLOEXEC, 0), "dup directory");
  int n1 = check(open("/dev/null", O_RDONLY | O_CLOEXEC), "open /dev/null");
  int n1dup = check(fcntl(n1, F_DUPFD_CLOEXEC, 0), "dup /dev/null");
  off_t read_at = 0;
  for (int r = 1; r <= rounds; ++r) {
    if (same_file(r1, r2)) fail("round " + str(r) + ": the two FIFO opens share a description");
    if (same_file(f1, f2)) fail("round " + str(r) + ": the two file opens share a description");
    if (!same_file(f1, f1dup) || !same_file(d1, d1dup) || !same_file(n1, n1dup))
      fail("round " + str(r) + ": a dup is a separate open now");
    // One FIFO reader blocking, the other not, alternating: each keeps its own flags.
    if (r > 1) {
      want_flags(r1, (r - 1) & 1 ? O_NONBLOCK : 0, "fifo open 1", r);
      want_flags(r2, (r - 1) & 1 ? 0 : O_NONBLOCK, "fifo open 2", r);
    }
    set_flags(r1, r & 1 ? O_NONBLOCK : 0, "fifo open 1");
    set_flags(r2, r & 1 ? 0 : O_NONBLOCK, "fifo open 2");
    std::string rec = "record " + str(r) + "\n";
    if (write(w, rec.data(), rec.size()) != static_cast<ssize_t>(rec.size())) die("write fifo");
    char buf[64];
    if (read(r & 1 ? r2 : r1, buf, rec.size()) != static_cast<ssize_t>(rec.size()))
      die("read fifo");
    // The file: written through f1 (the dup moves with it), read through f2 behind it.
    off_t at = lseek(f1, 0, SEEK_CUR);
    if (lseek(f1dup, 0, SEEK_CUR) != at) fail("round " + str(r) + ": the dup's offset differs");
    if (lseek(f2, 0, SEEK_CUR) != read_at)
      fail("round " + str(r) + ": the second open's offset moved to " +
           str(static_cast<int>(lseek(f2, 0, SEEK_CUR))));
    if (write(r & 1 ? f1 : f1dup, rec.data(), rec.size()) != static_cast<ssize_t>(rec.size()))
      die("write file");
    if (r % 3 == 0) {
      std::vector<char> all(static_cast<std::size_t>(at) + rec.size() - read_at);
      if (read(f2, all.data(), all.size()) != static_cast<ssize_t>(all.size())) die("read file");
      read_at += static_cast<off_t>(all.size());
    }
    line("opens " + str(r));
    tick();
  }
  unlink("fdkind.data");
  unlink("fdkind.fifo");
}

void run_unix_shutdown(int rounds) {
  signal(SIGPIPE, SIG_IGN);
  int s[2], q[2];
  check(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), "socketpair");
  check(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, q), "socketpair seqpacket");
  check(shutdown(s[0], SHUT_WR), "shutdown SHUT_WR");
  check(shutdown(q[0], SHUT_RD), "shutdown SHUT_RD");
  char buf[64];
  for (int r = 1; r <= rounds; ++r) {
    const std::string R = "round " + str(r) + ": ";
    // s[0] cannot send; s[1] reads EOF once its queue is empty; s[1] -> s[0] still works.
    if (send(s[0], "x", 1, MSG_DONTWAIT) != -1 || errno != EPIPE)
      fail(R + "send on the SHUT_WR end did not fail with EPIPE");
    if (recv(s[1], buf, sizeof buf, MSG_DONTWAIT) != 0) fail(R + "no EOF on the peer of SHUT_WR");
    std::string rec = "stream " + str(r);
    if (r > 1) {
      std::string prev = "stream " + str(r - 1);
      if (recv(s[0], buf, prev.size(), MSG_DONTWAIT) != static_cast<ssize_t>(prev.size()) ||
          std::string(buf, prev.size()) != prev)
        fail(R + "lost the record queued on the SHUT_WR end");
    }
    if (send(s[1], rec.data(), rec.size(), 0) != static_cast<ssize_t>(rec.size()))
      die("send to the SHUT_WR end");
    // q[0] reads EOF at once, and its peer cannot send to it; q[0] -> q[1] works.
    if (recv(q[0], buf, sizeof buf, MSG_DONTWAIT) != 0) fail(R + "no EOF on the SHUT_RD end");
    if (send(q[1], "x", 1, MSG_DONTWAIT) != -1 || errno != EPIPE)
      fail(R + "send to the SHUT_RD end did not fail with EPIPE");
    if (send(q[0], rec.data(), rec.size(), 0) != static_cast<ssize_t>(rec.size()))
      die("send from the SHUT_RD end");
    if (recv(q[1], buf, sizeof buf, 0) != static_cast<ssize_t>(rec.size())) die("recv seqpacket");
    line("unix_shutdown " + str(r));
    tick();
  }
}

std::string name_of(int fd) {
  sockaddr_un sa{};
  socklen_t len = sizeof sa;
  check(getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len), "getsockname");
  if (len <= offsetof(sockaddr_un, sun_path)) return "";
  std::string s(sa.sun_path, len - offsetof(sockaddr_un, sun_path));
  if (!s.empty() && s[0] == '\0') return "@" + s.substr(1);
  return s.c_str();
}

sockaddr_un addr(const std::string& name, socklen_t& len) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::memcpy(sa.sun_path, name.data(), name.size());
  if (name[0] == '@') sa.sun_path[0] = '\0';
  len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() +
                               (name[0] == '@' ? 0 : 1));
  return sa;
}

int bound(int type, const std::string& name) {
  int s = check(socket(AF_UNIX, type | SOCK_CLOEXEC, 0), "socket");
  socklen_t len;
  sockaddr_un sa = addr(name, len);
  check(bind(s, reinterpret_cast<sockaddr*>(&sa), len), "bind " + name);
  return s;
}

void run_unix_names(int rounds) {
  // Abstract names are per network namespace: a tag made once (kept in memory across a
  // restore) keeps runs apart.
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  const std::string tag = str(getpid()) + "-" + str(static_cast<int>(now.tv_nsec));
  const std::string dg_abs = "@fdkind-dgram-" + tag, st_abs = "@fdkind-listen-" + tag;
  // Bound by absolute path: a relative one is refused (the dump cannot tell relative
  // to what).
  char cwd[4096];
  if (!getcwd(cwd, sizeof cwd)) die("getcwd");
  const std::string dg_path = std::string(cwd) + "/fdkind.sock";
  if (dg_path.size() >= sizeof(sockaddr_un::sun_path)) fail("working directory path too long");
  unlink(dg_path.c_str());
  int none = check(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket");
  int a = bound(SOCK_DGRAM, dg_abs);
  int b = bound(SOCK_DGRAM, dg_path);
  int l = bound(SOCK_STREAM, st_abs);
  check(listen(l, 4), "listen");
  for (int r = 1; r <= rounds; ++r) {
    const std::string R = "round " + str(r) + ": ";
    if (name_of(none) != "") fail(R + "the unbound socket has a name: " + name_of(none));
    if (name_of(a) != dg_abs) fail(R + "abstract datagram socket named " + name_of(a));
    if (name_of(b) != dg_path) fail(R + "path datagram socket named " + name_of(b));
    if (name_of(l) != st_abs) fail(R + "listening socket named " + name_of(l));
    // Datagrams by name from the unbound socket (which stays unbound: autobind is
    // not used, since a sendto from an unbound socket does not bind it).
    std::string rec = "dgram " + str(r);
    for (const std::string* n : {&dg_abs, &dg_path}) {
      socklen_t len;
      sockaddr_un sa = addr(*n, len);
      if (sendto(none, rec.data(), rec.size(), 0, reinterpret_cast<sockaddr*>(&sa), len) !=
          static_cast<ssize_t>(rec.size()))
        die(R + "sendto " + *n);
    }
    char buf[64];
    for (int s : {a, b})
      if (recv(s, buf, sizeof buf, 0) != static_cast<ssize_t>(rec.size()) ||
          std::string(buf, rec.size()) != rec)
        fail(R + "datagram by name lost");
    // A connection to the abstract listening socket.
    int c = check(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket");
    socklen_t len;
    sockaddr_un sa = addr(st_abs, len);
    check(connect(c, reinterpret_cast<sockaddr*>(&sa), len), R + "connect " + st_abs);
    int acc = check(accept4(l, nullptr, nullptr, SOCK_CLOEXEC), "accept");
    if (write(c, rec.data(), rec.size()) != static_cast<ssize_t>(rec.size())) die("write");
    if (read(acc, buf, sizeof buf) != static_cast<ssize_t>(rec.size())) die("read");
    close(c);
    close(acc);
    line("unix_names " + str(r));
    tick();
  }
  unlink(dg_path.c_str());
}

std::string peer_name_of(int fd) {
  sockaddr_un sa{};
  socklen_t len = sizeof sa;
  check(getpeername(fd, reinterpret_cast<sockaddr*>(&sa), &len), "getpeername");
  if (len <= offsetof(sockaddr_un, sun_path)) return "";
  std::string s(sa.sun_path, len - offsetof(sockaddr_un, sun_path));
  if (!s.empty() && s[0] == '\0') return "@" + s.substr(1);
  return s.c_str();
}

// Socket `fd` must be named `name` and its peer `peer` (exactly those strings).
void want_names(int fd, const std::string& name, const std::string& peer, const std::string& what,
                int round) {
  const std::string R = "round " + str(round) + ": " + what;
  if (name_of(fd) != name) fail(R + " named '" + name_of(fd) + "', want '" + name + "'");
  if (peer_name_of(fd) != peer)
    fail(R + "'s peer named '" + peer_name_of(fd) + "', want '" + peer + "'");
}

// A run's tag for abstract names (per network namespace), kept in memory across a
// restore, and an absolute path in the working directory.
std::string run_tag() {
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  return str(getpid()) + "-" + str(static_cast<int>(now.tv_nsec));
}

std::string cwd_path(const std::string& file) {
  char cwd[4096];
  if (!getcwd(cwd, sizeof cwd)) die("getcwd");
  std::string p = std::string(cwd) + "/" + file;
  if (p.size() >= sizeof(sockaddr_un::sun_path)) fail("working directory path too long");
  unlink(p.c_str());
  return p;
}

int connected_to(int type, const std::string& name, int bound_fd = -1) {
  int c = bound_fd >= 0 ? bound_fd : check(socket(AF_UNIX, type | SOCK_CLOEXEC, 0), "socket");
  socklen_t len;
  sockaddr_un sa = addr(name, len);
  check(connect(c, reinterpret_cast<sockaddr*>(&sa), len), "connect " + name);
  return c;
}

// One record each way through a connected pair (only a -> b when `back` is false).
void both_ways(int a, int b, const std::string& rec, const std::string& what, bool back = true) {
  char buf[64];
  for (auto [from, to] : {std::pair{a, b}, std::pair{b, a}}) {
    if (from == b && !back) break;
    if (write(from, rec.data(), rec.size()) != static_cast<ssize_t>(rec.size()))
      die(what + ": write");
    if (read(to, buf, sizeof buf) != static_cast<ssize_t>(rec.size()) ||
        std::string(buf, rec.size()) != rec)
      fail(what + ": record lost: " + rec);
  }
}

void run_unix_accepted(int rounds) {
  signal(SIGPIPE, SIG_IGN);
  const std::string tag = run_tag();
  const std::string srv = cwd_path("fdkind-acc.sock"), cli = cwd_path("fdkind-cli.sock");
  const std::string old = cwd_path("fdkind-old.sock");
  const std::string abs = "@fdkind-acc-" + tag, abs_old = "@fdkind-old-" + tag;
  int l1 = bound(SOCK_STREAM, srv);
  check(listen(l1, 8), "listen");
  int l2 = bound(SOCK_SEQPACKET, abs);
  check(listen(l2, 8), "listen");
  auto acc = [](int l) { return check(accept4(l, nullptr, nullptr, SOCK_CLOEXEC), "accept"); };
  int c1 = connected_to(SOCK_STREAM, srv);  // unbound client
  int a1 = acc(l1);
  int c2 = connected_to(SOCK_STREAM, srv, bound(SOCK_STREAM, cli));  // bound before connect
  int a2 = acc(l1);
  int c3 = connected_to(SOCK_SEQPACKET, abs);
  int a3 = acc(l2);
  // Listeners closed once they accepted, the path one's file left behind.
  int l3 = bound(SOCK_STREAM, old);
  check(listen(l3, 1), "listen");
  int c4 = connected_to(SOCK_STREAM, old);
  int a4 = acc(l3);
  close(l3);
  struct stat old_st {};
  check(stat(old.c_str(), &old_st), "stat " + old);
  int l4 = bound(SOCK_SEQPACKET, abs_old);
  check(listen(l4, 1), "listen");
  int c5 = connected_to(SOCK_SEQPACKET, abs_old);
  int a5 = acc(l4);
  close(l4);
  // An accepted socket whose client wrote and went.
  int c6 = connected_to(SOCK_STREAM, srv);
  int a6 = acc(l1);
  if (write(c6, "bye", 3) != 3) die("write bye");
  close(c6);
  // Queued on an accepted socket and on a client, read at the end.
  if (write(c2, "early", 5) != 5 || write(a3, "first", 5) != 5) die("write early");
  for (int r = 1; r <= rounds; ++r) {
    const std::string rec = "accepted " + str(r);
    want_names(a1, srv, "", "accepted socket 1", r);
    want_names(c1, "", srv, "client 1", r);
    want_names(a2, srv, cli, "accepted socket 2", r);
    want_names(c2, cli, srv, "bound client 2", r);
    want_names(a3, abs, "", "abstract accepted socket", r);
    want_names(c3, "", abs, "abstract client", r);
    want_names(a4, old, "", "socket of a closed listener", r);
    want_names(c4, "", old, "client of a closed listener", r);
    want_names(a5, abs_old, "", "socket of a closed abstract listener", r);
    want_names(c5, "", abs_old, "client of a closed abstract listener", r);
    if (name_of(a6) != srv)
      fail("round " + str(r) + ": accepted socket of a gone client named " + name_of(a6));
    if (send(a6, "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT) != -1 || errno != EPIPE)
      fail("round " + str(r) + ": a send to a gone client did not fail with EPIPE");
    both_ways(a1, c1, rec, "pair 1");
    // The other way, "early" and "first" wait in the queues.
    both_ways(a2, c2, rec, "pair of the bound client", false);
    both_ways(c3, a3, rec, "abstract pair", false);
    both_ways(a4, c4, rec, "pair of a closed listener");
    both_ways(a5, c5, rec, "pair of a closed abstract listener");
    // The dumped listener's file is the same file, and the listeners still take
    // connections.
    struct stat st {};
    if (stat(old.c_str(), &st) < 0 || !S_ISSOCK(st.st_mode) || st.st_ino != old_st.st_ino)
      fail("round " + str(r) + ": the closed listener's socket file changed");
    for (auto [l, type, name] : {std::tuple{l1, SOCK_STREAM, srv}, {l2, SOCK_SEQPACKET, abs}}) {
      int c = connected_to(type, name);
      int a = acc(l);
      want_names(a, name, "", "new accepted socket", r);
      both_ways(a, c, rec, "new pair");
      close(a);
      close(c);
    }
    line("unix_accepted " + str(r));
    tick();
  }
  char buf[16];
  if (read(a2, buf, sizeof buf) != 5 || std::memcmp(buf, "early", 5) != 0) fail("early lost");
  if (read(c3, buf, sizeof buf) != 5 || std::memcmp(buf, "first", 5) != 0) fail("first lost");
  if (read(a6, buf, sizeof buf) != 3 || std::memcmp(buf, "bye", 3) != 0) fail("bye lost");
  if (read(a6, buf, sizeof buf) != 0) fail("no end of file from the gone client");
  for (const std::string* p : {&srv, &cli, &old}) unlink(p->c_str());
}

void run_dgram_named(int rounds) {
  const std::string tag = run_tag();
  const std::string n1 = "@fdkind-dg1-" + tag, n2 = cwd_path("fdkind-dg2.sock");
  const std::string n3 = cwd_path("fdkind-dg3.sock"), n4 = cwd_path("fdkind-dg4.sock");
  const std::string ne = "@fdkind-e1-" + tag;
  // d1 and d2 bound and connected to each other by name; d3 connected one way to d4,
  // which is connected to nothing; a socketpair whose one end was bound afterwards.
  int d1 = bound(SOCK_DGRAM, n1), d2 = bound(SOCK_DGRAM, n2);
  int d3 = bound(SOCK_DGRAM, n3), d4 = bound(SOCK_DGRAM, n4);
  connected_to(SOCK_DGRAM, n2, d1);
  connected_to(SOCK_DGRAM, n1, d2);
  connected_to(SOCK_DGRAM, n4, d3);
  int e[2];
  check(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, e), "socketpair");
  socklen_t len;
  sockaddr_un sa = addr(ne, len);
  check(bind(e[0], reinterpret_cast<sockaddr*>(&sa), len), "bind " + ne);
  if (send(d1, "early", 5, 0) != 5) die("send early");  // queued on d2 until the end
  // One datagram from `from` to `to`, which must see it sent from `sender`.
  auto through = [](int from, int to, const std::string& sender, const std::string& rec,
                    const std::string& what) {
    if (send(from, rec.data(), rec.size(), 0) != static_cast<ssize_t>(rec.size()))
      die(what + ": send");
    char buf[64];
    sockaddr_un got{};
    socklen_t gl = sizeof got;
    ssize_t n = recvfrom(to, buf, sizeof buf, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&got), &gl);
    if (n != static_cast<ssize_t>(rec.size()) || std::string(buf, rec.size()) != rec)
      fail(what + ": datagram lost: " + rec);
    std::string from_name;
    if (gl > offsetof(sockaddr_un, sun_path)) {
      from_name.assign(got.sun_path, gl - offsetof(sockaddr_un, sun_path));
      from_name = from_name[0] == '\0' ? "@" + from_name.substr(1) : from_name.c_str();
    }
    if (from_name != sender) fail(what + ": sent from '" + from_name + "', want '" + sender + "'");
  };
  for (int r = 1; r <= rounds; ++r) {
    const std::string rec = "dgram " + str(r);
    want_names(d1, n1, n2, "d1", r);
    want_names(d3, n3, n4, "d3", r);
    want_names(e[0], ne, "", "bound socketpair end", r);
    want_names(e[1], "", ne, "other socketpair end", r);
    if (name_of(d2) != n2 || peer_name_of(d2) != n1) fail("round " + str(r) + ": d2's names");
    sockaddr_un none{};
    socklen_t nl = sizeof none;
    if (name_of(d4) != n4 || getpeername(d4, reinterpret_cast<sockaddr*>(&none), &nl) != -1 ||
        errno != ENOTCONN)
      fail("round " + str(r) + ": d4 is named " + name_of(d4) + " or connected");
    through(d2, d1, n2, rec, "d2 -> d1");
    through(d3, d4, n3, rec, "d3 -> d4");
    through(e[0], e[1], ne, rec, "bound end -> other end");
    through(e[1], e[0], "", rec, "other end -> bound end");
    line("dgram_named " + str(r));
    tick();
  }
  // d2's queue: "early" from d1, sent before the first round.
  char buf[16];
  sockaddr_un got{};
  socklen_t gl = sizeof got;
  ssize_t n = recvfrom(d2, buf, sizeof buf, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&got), &gl);
  if (n != 5 || std::memcmp(buf, "early", 5) != 0 || got.sun_path[0] != '\0' ||
      std::string(got.sun_path + 1, gl - offsetof(sockaddr_un, sun_path) - 1) != n1.substr(1))
    fail("the datagram queued on d2 was lost or its sender changed");
  for (const std::string* p : {&n2, &n3, &n4}) unlink(p->c_str());
}

void run_epoll_closed(int rounds) {
  int p[2];
  check(pipe2(p, O_CLOEXEC), "pipe2");
  int ep = check(epoll_create1(EPOLL_CLOEXEC), "epoll_create1");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 0x5eed;
  check(epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev), "epoll_ctl");
  // The watched fd number is closed; the pipe stays open through a dup, so the epoll
  // keeps watching it under the old number.
  int rd = check(fcntl(p[0], F_DUPFD_CLOEXEC, 20), "dup");
  close(p[0]);
  for (int r = 1; r <= rounds; ++r) {
    if (write(p[1], "x", 1) != 1) die("write");
    epoll_event got{};
    if (epoll_wait(ep, &got, 1, 1000) != 1 || got.data.u64 != 0x5eed)
      fail("round " + str(r) + ": the epoll lost its watch");
    char c;
    if (read(rd, &c, 1) != 1) die("read");
    line("epoll_closed " + str(r));
    tick();
  }
}

void run_proc_fd(int rounds) {
  int fd = check(open("/proc/self/stat", O_RDONLY | O_CLOEXEC), "open /proc/self/stat");
  // Its pid as that /proc names it (the job's /proc may be of another PID namespace).
  auto pid_in = [&](const std::string& what) {
    char buf[256] = {};
    if (pread(fd, buf, sizeof buf - 1, 0) <= 0) die("pread /proc/self/stat");
    std::string s(buf);
    if (s.find(" (ckpt_fd_kind) ") == std::string::npos) fail(what + ": another process: " + s);
    return s.substr(0, s.find(' '));
  };
  const std::string first = pid_in("at the start");
  for (int r = 1; r <= rounds; ++r) {
    if (pid_in("round " + str(r)) != first)
      fail("round " + str(r) + ": /proc/self/stat names another process");
    line("proc_fd " + str(r));
    tick();
  }
}

void run_pipe_reopen(int rounds) {
  int p[2];
  check(pipe2(p, O_CLOEXEC), "pipe2");
  int again =
      check(open(("/proc/self/fd/" + str(p[0])).c_str(), O_RDONLY | O_CLOEXEC), "reopen the pipe");
  check(fcntl(again, F_SETFL, O_NONBLOCK), "F_SETFL");
  for (int r = 1; r <= rounds; ++r) {
    if (same_file(p[0], again)) fail("the reopened pipe shares the first description");
    if ((fcntl(p[0], F_GETFL) & O_NONBLOCK) || !(fcntl(again, F_GETFL) & O_NONBLOCK))
      fail("round " + str(r) + ": the two opens' O_NONBLOCK changed");
    if (write(p[1], "xy", 2) != 2) die("write");
    char c;
    if (read(p[0], &c, 1) != 1 || read(again, &c, 1) != 1) die("read");
    line("pipe_reopen " + str(r));
    tick();
  }
}

int g_clone_rounds = 0;

int clone_child(void*) {
  // Sees the fds its parent opens in the shared table: fd 50 + r for round r.
  for (int r = 1; r <= g_clone_rounds; ++r) {
    for (int i = 0; i < 1000 && fcntl(50 + r, F_GETFD) < 0; ++i) usleep(2000);
    if (fcntl(50 + r, F_GETFD) < 0) _exit(3);
  }
  _exit(0);
}

void run_clone_files(int rounds) {
  g_clone_rounds = rounds;
  static std::vector<char> stack(1 << 16);
  pid_t child = clone(clone_child, stack.data() + stack.size(), CLONE_FILES | SIGCHLD, nullptr);
  if (child < 0) die("clone");
  for (int r = 1; r <= rounds; ++r) {
    int fd = check(open("/dev/null", O_RDONLY), "open /dev/null");
    check(dup2(fd, 50 + r), "dup2");
    close(fd);
    line("clone_files " + str(r));
    tick();
  }
  int st = 0;
  if (waitpid(child, &st, 0) != child) die("waitpid");
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    fail("the child sharing the fd table did not see an fd of its parent");
}

void run_unix_relative(int rounds) {
  unlink("fdkind.rel.sock");
  int s = bound(SOCK_DGRAM, "fdkind.rel.sock");
  for (int r = 1; r <= rounds; ++r) {
    if (name_of(s) != "fdkind.rel.sock") fail("round " + str(r) + ": named " + name_of(s));
    line("unix_relative " + str(r));
    tick();
  }
  unlink("fdkind.rel.sock");
}

void run_pipe_rdwr(int rounds) {
  int p[2];
  check(pipe2(p, O_CLOEXEC), "pipe2");
  int rw = check(open(("/proc/self/fd/" + str(p[0])).c_str(), O_RDWR | O_CLOEXEC), "reopen O_RDWR");
  for (int r = 1; r <= rounds; ++r) {
    char c = static_cast<char>('a' + r % 26), got = 0;
    if (write(rw, &c, 1) != 1 || read(p[0], &got, 1) != 1 || got != c)
      fail("round " + str(r) + ": byte through the read-write open");
    line("pipe_rdwr " + str(r));
    tick();
  }
}

void run_dgram_shut_rd(int rounds) {
  int sv[2];
  check(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), "socketpair");
  check(static_cast<int>(send(sv[0], "one", 3, 0)), "send");
  check(static_cast<int>(send(sv[0], "two", 3, 0)), "send");
  check(shutdown(sv[1], SHUT_RD), "shutdown SHUT_RD");
  for (int r = 1; r <= rounds; ++r) {
    if (send(sv[0], "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT) != -1 || errno != EPIPE)
      fail("round " + str(r) + ": a send to the end shut for reading did not fail with EPIPE");
    line("dgram_shut_rd " + str(r));
    tick();
  }
  char buf[8];
  for (const char* want : {"one", "two"})
    if (recv(sv[1], buf, sizeof buf, MSG_DONTWAIT) != 3 || std::memcmp(buf, want, 3) != 0)
      fail(std::string("queued datagram ") + want);
}

void run_dgram_shut_empty(int rounds) {
  int sv[2];
  check(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), "socketpair");
  check(static_cast<int>(send(sv[0], "one", 3, 0)), "send");
  check(static_cast<int>(send(sv[0], "", 0, 0)), "send empty");
  check(static_cast<int>(send(sv[0], "two", 3, 0)), "send");
  check(shutdown(sv[1], SHUT_RD), "shutdown SHUT_RD");
  for (int r = 1; r <= rounds; ++r) {
    if (send(sv[0], "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT) != -1 || errno != EPIPE)
      fail("round " + str(r) + ": a send to the end shut for reading did not fail with EPIPE");
    line("dgram_shut_empty " + str(r));
    tick();
  }
  char buf[8];
  for (const char* want : {"one", "", "two"}) {
    const ssize_t len = static_cast<ssize_t>(std::strlen(want));
    if (recv(sv[1], buf, sizeof buf, MSG_DONTWAIT) != len ||
        std::memcmp(buf, want, static_cast<size_t>(len)) != 0)
      fail(std::string("queued datagram \"") + want + "\"");
  }
}

void run_unix_peer_gone(int rounds) {
  int st[2], sp[2];
  check(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, st), "socketpair stream");
  check(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp), "socketpair seqpacket");
  check(static_cast<int>(send(st[1], "stream tail", 11, 0)), "send");
  check(static_cast<int>(send(sp[1], "rec1", 4, 0)), "send");
  check(static_cast<int>(send(sp[1], "record2", 7, 0)), "send");
  close(st[1]);
  close(sp[1]);
  for (int r = 1; r <= rounds; ++r) {
    for (int fd : {st[0], sp[0]})
      if (send(fd, "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT) != -1 || errno != EPIPE)
        fail("round " + str(r) + ": a send to a closed peer did not fail with EPIPE");
    line("unix_peer_gone " + str(r));
    tick();
  }
  char buf[32];
  ssize_t n = recv(st[0], buf, sizeof buf, MSG_DONTWAIT);
  if (n != 11 || std::memcmp(buf, "stream tail", 11) != 0) fail("stream tail not read back");
  if (recv(st[0], buf, sizeof buf, MSG_DONTWAIT) != 0) fail("no end of file on the stream");
  for (const char* want : {"rec1", "record2"}) {
    n = recv(sp[0], buf, sizeof buf, MSG_DONTWAIT);
    if (n != static_cast<ssize_t>(std::strlen(want)) || std::memcmp(buf, want, n) != 0)
      fail(std::string("seqpacket record ") + want + " not read back");
  }
  if (recv(sp[0], buf, sizeof buf, MSG_DONTWAIT) != 0) fail("no end of file on the seqpacket");
}

void run_dgram_peer_gone(int rounds) {
  int sv[2];
  check(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), "socketpair");
  close(sv[1]);
  for (int r = 1; r <= rounds; ++r) {
    line("dgram_peer_gone " + str(r));
    tick();
  }
  if (send(sv[0], "x", 1, MSG_NOSIGNAL | MSG_DONTWAIT) != -1 || errno != ECONNREFUSED)
    fail("a send to the closed peer did not fail with ECONNREFUSED");
}

void run_dgram_one_way(int rounds) {
  int sv[2];
  check(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), "socketpair");
  sockaddr unspec{};
  unspec.sa_family = AF_UNSPEC;
  check(connect(sv[1], &unspec, sizeof unspec), "disconnect");
  for (int r = 1; r <= rounds; ++r) {
    std::string rec = "one way " + str(r);
    char buf[32];
    if (send(sv[0], rec.data(), rec.size(), 0) != static_cast<ssize_t>(rec.size()) ||
        recv(sv[1], buf, sizeof buf, MSG_DONTWAIT) != static_cast<ssize_t>(rec.size()))
      die("round " + str(r) + ": datagram to the unnamed end");
    sockaddr_un sa{};
    socklen_t len = sizeof sa;
    if (getpeername(sv[1], reinterpret_cast<sockaddr*>(&sa), &len) != -1 || errno != ENOTCONN)
      fail("round " + str(r) + ": the disconnected end is connected");
    line("dgram_one_way " + str(r));
    tick();
  }
}

void run_dgram_one_way_queued(int rounds) {
  const std::string tag = run_tag();
  const std::string na = "@fdkind-owq-a-" + tag, nb = "@fdkind-owq-b-" + tag;
  int a = bound(SOCK_DGRAM, na), b = bound(SOCK_DGRAM, nb);
  connected_to(SOCK_DGRAM, nb, a);  // a -> b; b is connected to nothing
  socklen_t len;
  sockaddr_un sa = addr(na, len);
  check(static_cast<int>(sendto(b, "queued", 6, 0, reinterpret_cast<sockaddr*>(&sa), len)),
        "sendto");
  for (int r = 1; r <= rounds; ++r) {
    line("dgram_one_way_queued " + str(r));
    tick();
  }
  char buf[8];
  if (recv(a, buf, sizeof buf, MSG_DONTWAIT) != 6 || std::memcmp(buf, "queued", 6) != 0)
    fail("the datagram queued on the one-way socket");
}

void run_dgram_no_peer(int rounds) {
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  std::string name = "@fdkind-np-" + str(getpid()) + "-" + str(static_cast<int>(now.tv_nsec));
  int a = bound(SOCK_DGRAM, name);
  int b = check(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket");
  socklen_t len;
  sockaddr_un sa = addr(name, len);
  for (const char* m : {"m1", "m2", "m3"})
    check(static_cast<int>(sendto(b, m, 2, 0, reinterpret_cast<sockaddr*>(&sa), len)), "sendto");
  for (int r = 1; r <= rounds; ++r) {
    line("dgram_no_peer " + str(r));
    tick();
  }
  char buf[8];
  for (const char* want : {"m1", "m2", "m3"})
    if (recv(a, buf, sizeof buf, MSG_DONTWAIT) != 2 || std::memcmp(buf, want, 2) != 0)
      fail(std::string("queued datagram ") + want);
}

int sibling_child(void*) {
  // Shares the fd table of the process that made it, which is not its parent
  // (CLONE_PARENT): sees the fds that one opens.
  for (int r = 1; r <= g_clone_rounds; ++r) {
    for (int i = 0; i < 1000 && fcntl(50 + r, F_GETFD) < 0; ++i) usleep(2000);
    if (fcntl(50 + r, F_GETFD) < 0) _exit(3);
  }
  _exit(0);
}

void run_files_sibling(int rounds) {
  g_clone_rounds = rounds;
  pid_t a = fork();
  if (a < 0) die("fork");
  if (a == 0) {
    static std::vector<char> stack(1 << 16);
    if (clone(sibling_child, stack.data() + stack.size(), CLONE_FILES | CLONE_PARENT, nullptr) < 0)
      _exit(4);
    for (int r = 1; r <= rounds; ++r) {
      int fd = open("/dev/null", O_RDONLY);
      if (fd < 0 || dup2(fd, 50 + r) < 0) _exit(5);
      close(fd);
      tick();
    }
    _exit(0);
  }
  for (int r = 1; r <= rounds; ++r) {
    line("files_sibling " + str(r));
    tick();
  }
  for (int n = 0; n < 2; ++n) {
    int st = 0;
    if (wait(&st) < 0) die("wait");
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail("a child failed: " + str(st));
  }
}

}  // namespace

int main(int argc, char** argv) {
  static const Kind kKinds[] = {
      {"flags", run_flags},
      {"opens", run_opens},
      {"unix_shutdown", run_unix_shutdown},
      {"unix_names", run_unix_names},
      {"epoll_closed", run_epoll_closed},
      {"proc_fd", run_proc_fd},
      {"pipe_reopen", run_pipe_reopen},
      {"clone_files", run_clone_files},
      {"unix_relative", run_unix_relative},
      {"files_sibling", run_files_sibling},
      {"pipe_rdwr", run_pipe_rdwr},
      {"dgram_shut_rd", run_dgram_shut_rd},
      {"dgram_no_peer", run_dgram_no_peer},
      {"dgram_peer_gone", run_dgram_peer_gone},
      {"unix_peer_gone", run_unix_peer_gone},
      {"unix_accepted", run_unix_accepted},
      {"dgram_named", run_dgram_named},
      {"dgram_one_way", run_dgram_one_way},
      {"dgram_one_way_queued", run_dgram_one_way_queued},
      {"dgram_shut_empty", run_dgram_shut_empty},
  };
  return run_kind(argc, argv, "ckpt_fd_kind", kKinds, 900);
}
