// ckpt_unix_kind: one process that holds one kind of Unix socket state (unix(7)):
// files in flight (SCM_RIGHTS: sent, not yet received) or socket options (issue 13).
// Output depends only on the arguments.
//
//   ckpt_unix_kind KIND ROUNDS [TICK_MS]
//
// Each round receives and checks what the previous round sent, sends the next, prints
// one line and sleeps TICK_MS (default 50). Restored kinds:
//   scm_held   a stream socketpair holding two sends: bytes without files, then bytes
//              with a pipe's write end, a regular file and the socket's own other end,
//              all still held by the process. Received in one read, which must stop at
//              the end of the second send and bring the three files, each the same open
//              file description as the one held (kcmp(2) KCMP_FILE); a third send,
//              without files, stays queued for the next round's read
//   scm_alone  files that only the queue holds (opened, sent, closed): on a seqpacket
//              pair, one message with a regular file (O_RDWR|O_NONBLOCK, at an offset
//              that moves every round) sent twice, a directory and /dev/null; on a
//              datagram pair three messages of which only the middle one carries a file.
//              Checked: which messages carry files, one open file description for the
//              file sent twice, its offset, flags and bytes, the directory's inode
//   unix_opts  socket options set on a stream pair, a datagram pair and a listener
//              (SO_PASSCRED, SO_SNDBUF, SO_RCVBUF, SO_RCVTIMEO, SO_SNDTIMEO, SO_PRIORITY,
//              SO_RCVLOWAT, SO_TIMESTAMP, SO_PEEK_OFF), read back every round; each
//              round a datagram goes through the pair and must bring the sender's
//              credentials (SCM_CREDENTIALS) and a timestamp
//   peercred_outside  a socketpair made outside the job (refused)
//   peercred   peer credentials (SO_PEERCRED pid, uid, gid; SO_PEERGROUPS) of the sockets
//              a process and its child share: a stream and a datagram socketpair made by
//              the parent, connections the child made to the parent's listeners at an
//              abstract name and at a path, and one to a path listener the parent then
//              closed (its pid is not restored: uid, gid and groups only). Each process
//              checks its ends every round against what they said at the start
// Kinds the dump must refuse (the job runs on unharmed):
//   passcred_queued a datagram queued on a socket with SO_PASSCRED, read at the end with
//              the credentials of its sender (this process)
//   sock_filter a datagram socket with a classic socket filter (SO_ATTACH_FILTER)
//   unix_oob   a stream socketpair holding an out-of-band byte (MSG_OOB), read at the end
//   dgram_other_sender two datagram sockets bound to abstract names and connected to each
//              other, one holding a datagram that a third named socket sent it before
//              they connected: recvfrom(2) at the end must name that sender
//   scm_pipe   a pipe's read end in flight whose both ends the process closed
//   scm_lock   a regular file in flight that holds a flock(2) lock, closed by the process
//   scm_ofd    a regular file in flight that holds an OFD lock (F_OFD_SETLK), closed by
//              the process
//
// Exit status 0; 1 with a line "FAIL ..." saying what failed.
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/kcmp.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "kind_prog.h"

namespace {

using namespace kindprog;

std::string str(long v) { return std::to_string(v); }

int check(int r, const std::string& what) {
  if (r < 0) die(what);
  return r;
}

bool same_file(int a, int b) { return syscall(SYS_kcmp, getpid(), getpid(), KCMP_FILE, a, b) == 0; }

void send_files(int sock, const std::string& data, const std::vector<int>& fds) {
  iovec iov{const_cast<char*>(data.data()), data.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  std::vector<char> ctl(CMSG_SPACE(sizeof(int) * fds.size()));
  if (!fds.empty()) {
    mh.msg_control = ctl.data();
    mh.msg_controllen = ctl.size();
    cmsghdr* c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  if (sendmsg(sock, &mh, MSG_DONTWAIT) != static_cast<ssize_t>(data.size())) die("sendmsg");
}

// Reads `want` (offering `room` bytes more, so that a read that does not stop where it
// should is seen) and returns the files that came with it; fails if the bytes differ.
std::vector<int> recv_files(int sock, const std::string& want, const std::string& what,
                            std::size_t room = 0) {
  std::string got(want.size() + room, '\0');
  iovec iov{got.data(), got.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * 16)];
  mh.msg_control = ctl;
  mh.msg_controllen = sizeof ctl;
  ssize_t r = recvmsg(sock, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (r < 0) die(what + ": recvmsg");
  got.resize(static_cast<std::size_t>(r));
  if (got != want) fail(what + ": read '" + got + "', expected '" + want + "'");
  if (mh.msg_flags & MSG_CTRUNC) fail(what + ": control data truncated");
  std::vector<int> fds;
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
      for (std::size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) / sizeof(int); ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        fds.push_back(fd);
      }
  return fds;
}

void close_all(const std::vector<int>& fds) {
  for (int fd : fds) close(fd);
}

// A file of 4096 known bytes in the working directory.
const char kFile[] = "ckpt_unix_kind.dat";
char byte_at(long off) { return static_cast<char>('a' + off % 26); }
void make_file() {
  int fd = check(open(kFile, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600), "create the file");
  std::string s;
  for (long i = 0; i < 4096; ++i) s += byte_at(i);
  if (write(fd, s.data(), s.size()) != static_cast<ssize_t>(s.size())) die("write the file");
  close(fd);
}

void run_scm_held(int rounds) {
  make_file();
  int sv[2], p[2];
  check(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), "socketpair");
  check(pipe2(p, O_CLOEXEC), "pipe");
  int file = check(open(kFile, O_RDONLY | O_CLOEXEC), "open the file");
  auto send_round = [&](int r) {
    send_files(sv[0], "pre" + str(r), {});
    send_files(sv[0], "files" + str(r), {p[1], file, sv[0]});
    send_files(sv[0], "post" + str(r), {});
  };
  send_round(1);
  std::string carried;  // the bytes sent after the last files, read with the next ones
  for (int r = 1; r <= rounds; ++r) {
    const std::string w = "round " + str(r);
    // One read for more than is queued: a read stops where the files' send ended.
    std::vector<int> got =
        recv_files(sv[1], carried + "pre" + str(r) + "files" + str(r), w + ": the read", 64);
    carried = "post" + str(r);
    if (got.size() != 3) fail(w + ": " + str(static_cast<long>(got.size())) + " files, not 3");
    if (!same_file(got[0], p[1]) || !same_file(got[1], file) || !same_file(got[2], sv[0]))
      fail(w + ": a received file is not the one sent");
    // The pipe still works through the received end.
    char c = static_cast<char>('A' + r % 26), d = 0;
    if (write(got[0], &c, 1) != 1 || read(p[0], &d, 1) != 1 || d != c) die(w + ": pipe");
    close_all(got);
    send_round(r + 1);
    line("scm_held " + str(r));
    tick();
  }
}

void run_scm_alone(int rounds) {
  make_file();
  int sp[2], dg[2];
  check(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp), "socketpair seqpacket");
  check(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, dg), "socketpair dgram");
  struct stat here {};
  check(stat(".", &here), "stat .");
  auto send_round = [&](int r) {
    int f = check(open(kFile, O_RDWR | O_NONBLOCK | O_CLOEXEC), "open the file");
    if (lseek(f, r * 7, SEEK_SET) != r * 7) die("lseek");
    int dir = check(open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC), "open .");
    int null = check(open("/dev/null", O_WRONLY | O_CLOEXEC), "open /dev/null");
    send_files(sp[0], "four" + str(r), {f, f, dir, null});
    send_files(dg[0], "a" + str(r), {});
    send_files(dg[0], "b" + str(r), {f});
    send_files(dg[0], "c" + str(r), {});
    close(f);
    close(dir);
    close(null);
  };
  send_round(1);
  for (int r = 1; r <= rounds; ++r) {
    const std::string w = "round " + str(r);
    std::vector<int> got = recv_files(sp[1], "four" + str(r), w + " seqpacket");
    if (got.size() != 4) fail(w + ": " + str(static_cast<long>(got.size())) + " files, not 4");
    if (!same_file(got[0], got[1])) fail(w + ": the file sent twice came as two descriptions");
    if (lseek(got[0], 0, SEEK_CUR) != r * 7) fail(w + ": the file's offset moved");
    int fl = fcntl(got[0], F_GETFL);
    if ((fl & O_ACCMODE) != O_RDWR || !(fl & O_NONBLOCK)) fail(w + ": the file's flags changed");
    char c = 0;
    if (read(got[0], &c, 1) != 1 || c != byte_at(r * 7)) fail(w + ": the file's bytes changed");
    struct stat st {};
    check(fstat(got[2], &st), "fstat dir");
    if (!S_ISDIR(st.st_mode) || st.st_ino != here.st_ino) fail(w + ": not the directory sent");
    check(fstat(got[3], &st), "fstat /dev/null");
    if (!S_ISCHR(st.st_mode) || write(got[3], "x", 1) != 1) fail(w + ": not /dev/null");
    std::vector<int> b;
    if (!recv_files(dg[1], "a" + str(r), w + " datagram a").empty())
      fail(w + ": files came with datagram a");
    b = recv_files(dg[1], "b" + str(r), w + " datagram b");
    if (b.size() != 1 || !same_file(b[0], got[0])) fail(w + ": datagram b lost its file");
    if (!recv_files(dg[1], "c" + str(r), w + " datagram c").empty())
      fail(w + ": files came with datagram c");
    close_all(got);
    close_all(b);
    send_round(r + 1);
    line("scm_alone " + str(r));
    tick();
  }
}

// A pipe only the queue holds: its bytes are read at the end.
void run_scm_pipe(int rounds) {
  int sv[2], p[2];
  check(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), "socketpair");
  check(pipe2(p, O_CLOEXEC), "pipe");
  if (write(p[1], "pipe", 4) != 4) die("write pipe");
  send_files(sv[0], "p", {p[0]});
  close(p[0]);
  close(p[1]);
  for (int r = 1; r <= rounds; ++r) {
    line("scm_pipe " + str(r));
    tick();
  }
  std::vector<int> got = recv_files(sv[1], "p", "the pipe's message");
  char buf[8] = {};
  if (got.size() != 1 || read(got[0], buf, sizeof buf) != 4 || std::memcmp(buf, "pipe", 4) != 0)
    fail("the pipe in flight lost its bytes");
}

// A file locked with flock(2) that only the queue holds.
void run_scm_lock(int rounds) {
  make_file();
  int sv[2];
  check(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), "socketpair");
  int f = check(open(kFile, O_RDONLY | O_CLOEXEC), "open the file");
  check(flock(f, LOCK_EX), "flock");
  send_files(sv[0], "l", {f});
  close(f);
  for (int r = 1; r <= rounds; ++r) {
    line("scm_lock " + str(r));
    tick();
  }
  std::vector<int> got = recv_files(sv[1], "l", "the lock's message");
  int other = check(open(kFile, O_RDONLY | O_CLOEXEC), "open the file again");
  if (got.size() != 1 || flock(other, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK)
    fail("the file in flight lost its lock");
}

int int_opt(int fd, int name) {
  int v = 0;
  socklen_t len = sizeof v;
  if (getsockopt(fd, SOL_SOCKET, name, &v, &len) < 0) die("getsockopt " + str(name));
  return v;
}

void set_int(int fd, int name, int v) {
  if (setsockopt(fd, SOL_SOCKET, name, &v, sizeof v) < 0) die("setsockopt " + str(name));
}

// A datagram from `from` read on `to`: its bytes, and the sender's credentials and a
// timestamp when `creds` (the receiver has SO_PASSCRED and SO_TIMESTAMP).
void datagram(int from, int to, const std::string& data, bool creds, const std::string& w) {
  if (send(from, data.data(), data.size(), MSG_DONTWAIT) != static_cast<ssize_t>(data.size()))
    die(w + ": send");
  char buf[64] = {};
  iovec iov{buf, sizeof buf};
  alignas(cmsghdr) char ctl[256];
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = ctl;
  mh.msg_controllen = sizeof ctl;
  ssize_t r = recvmsg(to, &mh, MSG_DONTWAIT);
  if (r != static_cast<ssize_t>(data.size()) ||
      std::string(buf, static_cast<std::size_t>(r)) != data)
    die(w + ": recv");
  bool got_creds = false, got_time = false;
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
      ucred u{};
      std::memcpy(&u, CMSG_DATA(c), sizeof u);
      if (u.pid != getpid() || u.uid != getuid() || u.gid != getgid())
        fail(w + ": credentials pid " + str(u.pid) + " uid " + str(u.uid));
      got_creds = true;
    }
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_TIMESTAMP_OLD) got_time = true;
  }
  if (got_creds != creds || got_time != creds)
    fail(w + ": credentials " + str(got_creds) + " timestamp " + str(got_time) + ", expected " +
         str(creds));
}

void run_unix_opts(int rounds) {
  int st[2], dg[2];
  check(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, st), "socketpair stream");
  check(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, dg), "socketpair dgram");
  int lis = check(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket");
  set_int(dg[1], SO_PASSCRED, 1);
  set_int(dg[1], SO_TIMESTAMP_OLD, 1);
  set_int(dg[0], SO_SNDBUF, 40000);
  set_int(st[1], SO_RCVBUF, 50000);
  set_int(st[1], SO_RCVLOWAT, 2);
  set_int(st[1], SO_PEEK_OFF, 0);
  set_int(lis, SO_PRIORITY, 3);
  timeval rcv{1, 250000}, snd{2, 0};
  if (setsockopt(st[0], SOL_SOCKET, SO_RCVTIMEO_OLD, &rcv, sizeof rcv) < 0 ||
      setsockopt(st[0], SOL_SOCKET, SO_SNDTIMEO_OLD, &snd, sizeof snd) < 0)
    die("setsockopt timeouts");
  const int sndbuf = int_opt(dg[0], SO_SNDBUF), rcvbuf = int_opt(st[1], SO_RCVBUF);
  // As the kernel keeps them (in jiffies): read back once, compared every round.
  auto timeouts = [&] {
    timeval a{}, b{};
    socklen_t la = sizeof a, lb = sizeof b;
    if (getsockopt(st[0], SOL_SOCKET, SO_RCVTIMEO_OLD, &a, &la) < 0 ||
        getsockopt(st[0], SOL_SOCKET, SO_SNDTIMEO_OLD, &b, &lb) < 0)
      die("getsockopt timeouts");
    return std::to_string(a.tv_sec) + "." + std::to_string(a.tv_usec) + "/" +
           std::to_string(b.tv_sec) + "." + std::to_string(b.tv_usec);
  };
  const std::string timeo = timeouts();
  if (timeo.rfind("1.", 0) != 0) fail("SO_RCVTIMEO not set: " + timeo);
  for (int r = 1; r <= rounds; ++r) {
    const std::string w = "round " + str(r);
    if (!int_opt(dg[1], SO_PASSCRED) || !int_opt(dg[1], SO_TIMESTAMP_OLD) ||
        int_opt(dg[0], SO_PASSCRED))
      fail(w + ": SO_PASSCRED / SO_TIMESTAMP changed");
    if (int_opt(dg[0], SO_SNDBUF) != sndbuf || int_opt(st[1], SO_RCVBUF) != rcvbuf)
      fail(w + ": buffer sizes changed");
    if (int_opt(st[1], SO_RCVLOWAT) != 2 || int_opt(st[1], SO_PEEK_OFF) != 0 ||
        int_opt(lis, SO_PRIORITY) != 3)
      fail(w + ": SO_RCVLOWAT, SO_PEEK_OFF or SO_PRIORITY changed");
    if (timeouts() != timeo) fail(w + ": timeouts changed to " + timeouts());
    datagram(dg[0], dg[1], "d" + str(r), true, w + " datagram");
    datagram(dg[1], dg[0], "e" + str(r), false, w + " datagram back");
    line("unix_opts " + str(r));
    tick();
  }
}

void run_passcred_queued(int rounds) {
  int dg[2];
  check(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, dg), "socketpair");
  set_int(dg[1], SO_PASSCRED, 1);
  set_int(dg[1], SO_TIMESTAMP_OLD, 1);
  if (send(dg[0], "q", 1, 0) != 1) die("send");
  for (int r = 1; r <= rounds; ++r) {
    line("passcred_queued " + str(r));
    tick();
  }
  // The one queued datagram, then one more: both with this process's credentials.
  char buf[4];
  ucred u{};
  alignas(cmsghdr) char ctl[256];
  iovec iov{buf, sizeof buf};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = ctl;
  mh.msg_controllen = sizeof ctl;
  if (recvmsg(dg[1], &mh, MSG_DONTWAIT) != 1) die("recvmsg");
  for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
    if (c->cmsg_type == SCM_CREDENTIALS) std::memcpy(&u, CMSG_DATA(c), sizeof u);
  if (u.pid != getpid()) fail("the queued datagram's sender is " + str(u.pid));
}

void run_sock_filter(int rounds) {
  int dg[2];
  check(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, dg), "socketpair");
  sock_filter accept_all[] = {{BPF_RET | BPF_K, 0, 0, 0xffffffff}};
  sock_fprog prog{1, accept_all};
  if (setsockopt(dg[1], SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0)
    die("SO_ATTACH_FILTER");
  for (int r = 1; r <= rounds; ++r) {
    char c = 0;
    if (send(dg[0], "f", 1, 0) != 1 || recv(dg[1], &c, 1, MSG_DONTWAIT) != 1 || c != 'f')
      die("through the filter");
    line("sock_filter " + str(r));
    tick();
  }
}

void run_unix_oob(int rounds) {
  int st[2];
  check(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, st), "socketpair");
  if (send(st[0], "ab", 2, 0) != 2 || send(st[0], "!", 1, MSG_OOB) != 1) die("send");
  for (int r = 1; r <= rounds; ++r) {
    line("unix_oob " + str(r));
    tick();
  }
  char c = 0, buf[4] = {};
  if (recv(st[1], &c, 1, MSG_OOB | MSG_DONTWAIT) != 1 || c != '!') fail("the out-of-band byte");
  if (recv(st[1], buf, sizeof buf, MSG_DONTWAIT) != 2 || std::memcmp(buf, "ab", 2) != 0)
    fail("the bytes before the out-of-band byte");
}

sockaddr_un abstract(const std::string& name, socklen_t& len) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::memcpy(sa.sun_path + 1, name.data(), name.size());
  len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  return sa;
}

void run_dgram_other_sender(int rounds) {
  const std::string me = "unixkind-os-" + str(getpid());
  socklen_t la, lb, lc;
  sockaddr_un a = abstract(me + "-peer", la), b = abstract(me, lb),
              c = abstract(me + "-sender", lc);
  int sa = check(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket");
  int sb = check(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket");
  int sc = check(socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket");
  check(bind(sa, reinterpret_cast<sockaddr*>(&a), la), "bind the peer");
  check(bind(sb, reinterpret_cast<sockaddr*>(&b), lb), "bind");
  check(bind(sc, reinterpret_cast<sockaddr*>(&c), lc), "bind the sender");
  // Sent before the two connect to each other (after, only the peer may send).
  if (sendto(sc, "o", 1, 0, reinterpret_cast<sockaddr*>(&b), lb) != 1) die("sendto");
  check(connect(sb, reinterpret_cast<sockaddr*>(&a), la), "connect");
  check(connect(sa, reinterpret_cast<sockaddr*>(&b), lb), "connect the peer");
  for (int r = 1; r <= rounds; ++r) {
    line("dgram_other_sender " + str(r));
    tick();
  }
  sockaddr_un from{};
  socklen_t lf = sizeof from;
  char ch = 0;
  if (recvfrom(sb, &ch, 1, MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), &lf) != 1 ||
      lf != lc || std::memcmp(&from, &c, lc) != 0)
    fail("the queued datagram's sender changed");
}

// A listener with a connection waiting in its accept queue whose client closed its end:
// no process of the job holds that connection, so the dump cannot give it back.
void run_unix_backlog(int rounds) {
  socklen_t l;
  sockaddr_un a = abstract("unixkind-bl-" + str(getpid()), l);
  int lsn = check(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket");
  check(bind(lsn, reinterpret_cast<sockaddr*>(&a), l), "bind");
  check(listen(lsn, 4), "listen");
  int cl = check(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket");
  check(connect(cl, reinterpret_cast<sockaddr*>(&a), l), "connect");
  if (write(cl, "b", 1) != 1) die("write");
  close(cl);
  for (int r = 1; r <= rounds; ++r) {
    line("unix_backlog " + str(r));
    tick();
  }
  int s = check(accept4(lsn, nullptr, nullptr, SOCK_CLOEXEC), "accept");
  char buf[2];
  if (read(s, buf, 2) != 1 || buf[0] != 'b' || read(s, buf, 1) != 0)
    fail("the waiting connection lost its byte or its end");
}

// SO_PEERCRED and SO_PEERGROUPS of `fd`, as "pid uid gid [groups]".
std::string peer_cred_text(int fd, bool with_pid) {
  ucred cr{};
  socklen_t len = sizeof cr;
  check(getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len), "SO_PEERCRED");
  gid_t groups[256];
  socklen_t gl = sizeof groups;
  check(getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &gl), "SO_PEERGROUPS");
  std::string t = (with_pid ? "pid " + str(cr.pid) + " " : std::string()) + "uid " + str(cr.uid) +
                  " gid " + str(cr.gid) + " groups";
  for (socklen_t i = 0; i < gl / sizeof(gid_t); ++i) t += " " + str(groups[i]);
  return t;
}

struct PeerWant {
  int fd;
  bool with_pid;
  std::string what, want;
};

void check_peers(const std::vector<PeerWant>& wants, int r) {
  for (const PeerWant& w : wants) {
    const std::string now = peer_cred_text(w.fd, w.with_pid);
    if (now != w.want)
      fail("round " + str(r) + ": " + w.what + ": peer " + now + ", not " + w.want);
  }
}

int connect_to(const sockaddr_un& sa, socklen_t len, const std::string& what) {
  int fd = check(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket");
  check(connect(fd, reinterpret_cast<const sockaddr*>(&sa), len), "connect " + what);
  return fd;
}

void run_peercred(int rounds) {
  int sp[2], dg[2];
  check(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), "socketpair stream");
  check(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, dg), "socketpair dgram");
  socklen_t la;
  const sockaddr_un abs = abstract("unixkind-pc-" + str(getpid()), la);
  char cwd[512];
  if (!getcwd(cwd, sizeof cwd)) die("getcwd");
  auto path_addr = [&](const std::string& name, socklen_t& len) {
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    const std::string path = std::string(cwd) + "/" + name;
    unlink(path.c_str());
    std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
    len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
    return sa;
  };
  socklen_t lp, lq;
  const sockaddr_un pth = path_addr("pc_open.sock", lp), gone = path_addr("pc_gone.sock", lq);
  int la_fd = check(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket");
  int lp_fd = check(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket");
  int lq_fd = check(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket");
  check(bind(la_fd, reinterpret_cast<const sockaddr*>(&abs), la), "bind abstract");
  check(bind(lp_fd, reinterpret_cast<const sockaddr*>(&pth), lp), "bind path");
  check(bind(lq_fd, reinterpret_cast<const sockaddr*>(&gone), lq), "bind path (closed later)");
  for (int l : {la_fd, lp_fd, lq_fd}) check(listen(l, 4), "listen");
  // A maker that exits: a socketpair and a connection to the abstract listener, made by
  // a process that is gone (reaped) by the dump; the parent holds them (SCM_RIGHTS).
  int hand[2];
  check(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, hand), "socketpair (hand-over)");
  const pid_t maker = fork();
  if (maker < 0) die("fork");
  if (maker == 0) {
    int mp[2];
    check(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, mp), "socketpair (maker)");
    int mc = connect_to(abs, la, "abstract (maker)");
    send_files(hand[1], "m", {mp[0], mp[1], mc});
    std::_Exit(0);
  }
  int mstatus = 0;
  if (waitpid(maker, &mstatus, 0) != maker || !WIFEXITED(mstatus) || WEXITSTATUS(mstatus) != 0)
    fail("the maker failed (status " + str(mstatus) + ")");
  const std::vector<int> made = recv_files(hand[0], "m", "the maker's sockets");
  if (made.size() != 3) fail("the maker's sockets: " + str(made.size()) + " fds");
  int ma = check(accept4(la_fd, nullptr, nullptr, SOCK_CLOEXEC), "accept the maker's");
  // And one that stays a zombie (reaped only at the end) after making a pair.
  const pid_t zmaker = fork();
  if (zmaker < 0) die("fork");
  if (zmaker == 0) {
    int zp[2];
    check(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, zp), "socketpair (zombie maker)");
    send_files(hand[1], "z", {zp[0], zp[1]});
    std::_Exit(0);
  }
  siginfo_t zinfo{};  // exited, left unreaped (WNOWAIT)
  check(waitid(P_PID, static_cast<id_t>(zmaker), &zinfo, WEXITED | WNOWAIT), "waitid");
  const std::vector<int> zmade = recv_files(hand[0], "z", "the zombie maker's sockets");
  if (zmade.size() != 2) fail("the zombie maker's sockets: " + str(zmade.size()) + " fds");
  close(hand[0]);
  close(hand[1]);
  int go[2];
  check(pipe2(go, O_CLOEXEC), "pipe");
  const pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    close(sp[0]);
    close(dg[0]);
    for (int fd : made) close(fd);
    for (int fd : zmade) close(fd);
    close(ma);
    int ca = connect_to(abs, la, "abstract");
    int cp = connect_to(pth, lp, "path");
    int cq = connect_to(gone, lq, "path closed later");
    for (int l : {la_fd, lp_fd, lq_fd}) close(l);  // the parent's alone
    close(go[1]);
    char c;
    if (read(go[0], &c, 1) != 1) die("wait for the parent");
    std::vector<PeerWant> mine;
    for (auto [fd, with_pid, what] : {std::tuple{sp[1], true, "child's stream pair end"},
                                      {dg[1], true, "child's datagram pair end"},
                                      {ca, true, "child's abstract connection"},
                                      {cp, true, "child's path connection"},
                                      {cq, true, "child's connection to a closed listener"}})
      mine.push_back({fd, with_pid, what, peer_cred_text(fd, with_pid)});
    for (int r = 1; r <= rounds; ++r) {
      check_peers(mine, r);
      tick();
    }
    std::_Exit(0);
  }
  int pa = check(accept4(la_fd, nullptr, nullptr, SOCK_CLOEXEC), "accept abstract");
  int pp = check(accept4(lp_fd, nullptr, nullptr, SOCK_CLOEXEC), "accept path");
  int pq = check(accept4(lq_fd, nullptr, nullptr, SOCK_CLOEXEC), "accept path (closed later)");
  close(lq_fd);
  close(sp[1]);
  close(dg[1]);
  std::vector<PeerWant> mine;
  for (auto [fd, with_pid, what] : {std::tuple{sp[0], true, "parent's stream pair end"},
                                    {dg[0], true, "parent's datagram pair end"},
                                    {pa, true, "parent's abstract connection"},
                                    {pp, true, "parent's path connection"},
                                    {pq, true, "parent's connection from a closed listener"},
                                    {made[0], true, "exited maker's stream pair end 0"},
                                    {made[1], true, "exited maker's stream pair end 1"},
                                    {made[2], true, "exited maker's connection"},
                                    {ma, true, "parent's connection from the exited maker"},
                                    {zmade[0], true, "zombie maker's stream pair end 0"},
                                    {zmade[1], true, "zombie maker's stream pair end 1"}})
    mine.push_back({fd, with_pid, what, peer_cred_text(fd, with_pid)});
  // The pairs name the parent, the connections the child; the exited maker's pair and
  // the connection it made name it.
  auto starts = [](const std::string& t, pid_t pid) {
    return t.rfind("pid " + str(pid) + " ", 0) == 0;
  };
  if (!starts(mine[0].want, getpid()) || !starts(mine[2].want, child) ||
      !starts(mine[4].want, child) || !starts(mine[5].want, maker) ||
      !starts(mine[7].want, getpid()) || !starts(mine[8].want, maker) ||
      !starts(mine[9].want, zmaker))
    fail("peer credentials not as made: " + mine[0].want + " / " + mine[2].want + " / " +
         mine[5].want + " / " + mine[8].want);
  if (write(go[1], "g", 1) != 1) die("start the child");
  for (int r = 1; r <= rounds; ++r) {
    check_peers(mine, r);
    line("peercred " + str(r));
    tick();
  }
  int status = 0;
  if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    fail("the child failed (status " + str(status) + ")");
  if (waitpid(zmaker, &status, 0) != zmaker || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    fail("the zombie maker failed (status " + str(status) + ")");
}

// A socketpair made outside the job: a server of the test listens at the abstract name
// "fsched-e2e-outside-maker" and sends both ends of a pair it makes to each client,
// then closes the connection. Their peer credentials name a process outside the job's
// PID namespace (pid 0 here), which no restore could give: the dump refuses them.
void run_peercred_outside(int rounds) {
  socklen_t la;
  const sockaddr_un abs = abstract("fsched-e2e-outside-maker", la);
  int c = connect_to(abs, la, "the outside maker");
  pollfd pfd{c, POLLIN, 0};
  if (poll(&pfd, 1, 10000) != 1) fail("the outside maker sent nothing");
  const std::vector<int> got = recv_files(c, "o", "the outside maker's pair");
  close(c);
  if (got.size() != 2) fail("the outside maker's pair: " + str(got.size()) + " fds");
  if (peer_cred_text(got[0], true).rfind("pid 0 ", 0) != 0)
    fail("the outside maker's pair: peer " + peer_cred_text(got[0], true));
  for (int r = 1; r <= rounds; ++r) {
    line("peercred_outside " + str(r));
    tick();
  }
  char b = 0;
  if (write(got[0], "x", 1) != 1 || read(got[1], &b, 1) != 1 || b != 'x')
    fail("the outside maker's pair carries nothing");
}

// A file with an OFD lock that only the queue holds (/proc/locks shows no pid for it).
void run_scm_ofd(int rounds) {
  make_file();
  int sv[2];
  check(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), "socketpair");
  int f = check(open(kFile, O_RDWR | O_CLOEXEC), "open the file");
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = 10;
  fl.l_len = 20;
  check(fcntl(f, F_OFD_SETLK, &fl), "F_OFD_SETLK");
  send_files(sv[0], "o", {f});
  close(f);
  for (int r = 1; r <= rounds; ++r) {
    line("scm_ofd " + str(r));
    tick();
  }
  std::vector<int> got = recv_files(sv[1], "o", "the lock's message");
  int other = check(open(kFile, O_RDWR | O_CLOEXEC), "open the file again");
  struct flock probe {};
  probe.l_type = F_WRLCK;
  probe.l_whence = SEEK_SET;
  probe.l_start = 15;
  probe.l_len = 1;
  if (got.size() != 1 || fcntl(other, F_OFD_GETLK, &probe) < 0 || probe.l_type != F_WRLCK)
    fail("the file in flight lost its OFD lock");
}

}  // namespace

int main(int argc, char** argv) {
  static const Kind kKinds[] = {
      {"scm_held", run_scm_held},
      {"scm_alone", run_scm_alone},
      {"scm_pipe", run_scm_pipe},
      {"scm_lock", run_scm_lock},
      {"scm_ofd", run_scm_ofd},
      {"unix_opts", run_unix_opts},
      {"passcred_queued", run_passcred_queued},
      {"sock_filter", run_sock_filter},
      {"unix_oob", run_unix_oob},
      {"dgram_other_sender", run_dgram_other_sender},
      {"unix_backlog", run_unix_backlog},
      {"peercred", run_peercred},
      {"peercred_outside", run_peercred_outside},
  };
  return run_kind(argc, argv, "ckpt_unix_kind", kKinds, 900);
}
