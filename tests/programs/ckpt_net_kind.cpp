// ckpt_net_kind: one process (or two) holding one kind of TCP/UDP socket state (issue
// 13, "TCP and UDP sockets"), for checkpoint/restore tests that name the kind that
// broke. Output depends only on the arguments (and NET_PEER_PORT for "outside").
//
//   ckpt_net_kind KIND ROUNDS [TICK_MS]
//
// Each round checks the state the previous round left, uses it, prints one line and
// sleeps TICK_MS (default 50). Every socket must stay owned by the process's uid.
// Restored kinds:
//   listen   a TCP listener on 127.0.0.1 (SO_REUSEADDR, backlog 7) and one on ::1
//            (IPV6_V6ONLY): each round connects to both, accepts, echoes a line
//   pair     a TCP connection between a parent and its child over 127.0.0.1, both
//            directions kept loaded (200 KB written ahead of the reader, so both
//            receive queues hold data and the send queues hold unsent bytes); each
//            round both sides read 16 KB, check the byte stream and write 16 KB more
//   pair6    the same over ::1
//   outside  a TCP connection to the echo server on 127.0.0.1:NET_PEER_PORT (outside
//            the job); the echo of each line is read one round late, so it is queued
//   udp      a UDP socket bound to 127.0.0.1 and one connected to it: datagrams both
//            ways each round, with the sender's address checked
//   opts     socket options on a listener, a connection, an unconnected TCP socket
//            and an IPv6 UDP socket, read back every round
// Kinds the dump must refuse (the job runs on unharmed):
//   backlog    a listener with a connection always waiting in its accept queue
//   close_wait a connection its peer (in the same process) has shut for writing
//   udp_queued a UDP socket with a datagram always waiting in its receive queue
//   repair_undo a connection used every round, and a UDP socket with a datagram
//              queued: the refused dump must leave the connection usable
//   urgent     two connections, each round sending a line and an urgent byte
//              (MSG_OOB) on one and reading the other's: urgent data always pending
//   urgent_read a connection whose urgent byte was read out of band (MSG_OOB) before
//              the line sent ahead of it, which is read at the end: the mark stays
//              inside the receive queue all the run
//   so_error   a UDP socket connected to a port nobody listens on: each round's
//              datagram brings back an ICMP error, pending (SO_ERROR) until the next
//   bindtodevice a UDP socket bound to device lo (SO_BINDTODEVICE) and 127.0.0.1,
//              sending a datagram to itself each round
//   filter     the same with a socket filter (SO_ATTACH_FILTER, accept all) instead
//   freebind   the same with IP_FREEBIND instead
//   transparent the same with IP_TRANSPARENT instead (needs CAP_NET_ADMIN)
//   ip_options the same with IP options (IP_OPTIONS: four NOPs) instead
//   raw        a raw ICMP socket (SOCK_RAW) whose type is checked each round
//   packet     a packet socket (AF_PACKET, SOCK_DGRAM, no protocol: receives nothing)
//
// Exit status 0; 1 with a line "FAIL ..." saying what failed.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "kind_prog.h"

namespace {

using namespace kindprog;

void check_owner(int fd, const char* what) {
  struct stat st {};
  if (fstat(fd, &st) < 0) die(std::string("fstat ") + what);
  if (st.st_uid != getuid())
    fail(std::string(what) + ": socket owned by uid " + std::to_string(st.st_uid) +
         ", process uid " + std::to_string(getuid()));
}

sockaddr_storage addr_of(int family, int port) {
  sockaddr_storage ss{};
  if (family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(static_cast<uint16_t>(port));
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  } else {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(static_cast<uint16_t>(port));
    a->sin6_addr = in6addr_loopback;
  }
  return ss;
}

socklen_t len_of(int family) {
  return family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
}

int port_of(int fd) {
  sockaddr_storage ss{};
  socklen_t l = sizeof ss;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &l) < 0) die("getsockname");
  return ntohs(ss.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&ss)->sin_port
                                       : reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
}

int geti(int fd, int level, int name, const char* what) {
  int v = 0;
  socklen_t l = sizeof v;
  if (getsockopt(fd, level, name, &v, &l) < 0) die(std::string("getsockopt ") + what);
  return v;
}

void seti(int fd, int level, int name, int v, const char* what) {
  if (setsockopt(fd, level, name, &v, sizeof v) < 0) die(std::string("setsockopt ") + what);
}

void expect(int fd, int level, int name, int want, const char* what) {
  int v = geti(fd, level, name, what);
  if (v != want)
    fail(std::string(what) + " is " + std::to_string(v) + ", not " + std::to_string(want));
}

int listener(int family, int backlog) {
  int fd = socket(family, SOCK_STREAM, 0);
  if (fd < 0) die("socket");
  seti(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
  if (family == AF_INET6) seti(fd, IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY");
  auto a = addr_of(family, 0);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), len_of(family)) < 0) die("bind");
  if (listen(fd, backlog) < 0) die("listen");
  return fd;
}

int connect_to(int family, int port) {
  int fd = socket(family, SOCK_STREAM, 0);
  if (fd < 0) die("socket");
  auto a = addr_of(family, port);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), len_of(family)) < 0) die("connect");
  return fd;
}

void read_exact(int fd, char* buf, size_t n, const char* what) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) die(std::string("read ") + what);
    if (r == 0) fail(std::string(what) + ": unexpected end of stream");
    got += static_cast<size_t>(r);
  }
}

void write_all(int fd, const std::string& s, const char* what) {
  size_t done = 0;
  while (done < s.size()) {
    ssize_t r = write(fd, s.data() + done, s.size() - done);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) die(std::string("write ") + what);
    done += static_cast<size_t>(r);
  }
}

// ---- listen ---------------------------------------------------------------------

void run_listen(int rounds) {
  int l4 = listener(AF_INET, 7), l6 = listener(AF_INET6, 7);
  const int p4 = port_of(l4), p6 = port_of(l6);
  for (int i = 0; i < rounds; ++i) {
    for (int l : {l4, l6}) {
      check_owner(l, "listener");
      expect(l, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
      expect(l, SOL_SOCKET, SO_ACCEPTCONN, 1, "SO_ACCEPTCONN");
      tcp_info ti{};
      socklen_t tl = sizeof ti;
      if (getsockopt(l, IPPROTO_TCP, TCP_INFO, &ti, &tl) < 0) die("TCP_INFO");
      if (ti.tcpi_sacked != 7) fail("backlog is " + std::to_string(ti.tcpi_sacked) + ", not 7");
    }
    if (port_of(l4) != p4 || port_of(l6) != p6) fail("listener port changed");
    expect(l6, IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY");
    for (auto [l, fam, port] : {std::tuple{l4, AF_INET, p4}, std::tuple{l6, AF_INET6, p6}}) {
      int c = connect_to(fam, port);
      int a = accept(l, nullptr, nullptr);
      if (a < 0) die("accept");
      std::string msg = "hello " + std::to_string(i);
      write_all(c, msg, "client");
      std::vector<char> buf(msg.size());
      read_exact(a, buf.data(), buf.size(), "accepted");
      if (std::string(buf.begin(), buf.end()) != msg) fail("echo differs");
      close(a);
      close(c);
    }
    line("round " + std::to_string(i + 1) + " listen ok");
    tick();
  }
}

// ---- pair -----------------------------------------------------------------------

constexpr size_t kChunk = 16384, kAhead = 200 * 1024;

char stream_byte(uint64_t pos, int who) {
  return static_cast<char>((pos * 131 + pos / 7 + who * 29) & 0xff);
}

// One side of the loaded connection: writes its stream (nonblocking, as far as the
// buffers take it) up to `target`, kAhead past what the peer must have read, and
// reads and checks the peer's, writing more while it waits so neither side starves.
struct Side {
  int fd;
  int me;
  uint64_t target = 0, written = 0, readpos = 0;
  void pump() {
    char buf[8192];
    while (written < target) {
      size_t n = std::min<uint64_t>(sizeof buf, target - written);
      for (size_t k = 0; k < n; ++k) buf[k] = stream_byte(written + k, me);
      ssize_t r = send(fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
      if (r < 0) die("send");
      written += static_cast<uint64_t>(r);
    }
  }
  void take(size_t n) {
    std::vector<char> buf(n);
    size_t got = 0;
    while (got < n) {
      ssize_t r = recv(fd, buf.data() + got, n - got, MSG_DONTWAIT);
      if (r > 0) {
        got += static_cast<size_t>(r);
        continue;
      }
      if (r == 0) fail("pair: peer closed");
      if (errno != EAGAIN && errno != EINTR) die("recv");
      pump();
      usleep(1000);
    }
    for (size_t k = 0; k < n; ++k)
      if (buf[k] != stream_byte(readpos + k, 1 - me))
        fail("pair: byte " + std::to_string(readpos + k) + " of the stream differs");
    readpos += n;
  }
  void round(int i) {
    target = kAhead + static_cast<uint64_t>(i + 1) * kChunk;
    pump();
    take(kChunk);
  }
  // The rest of both streams.
  void finish(int rounds) {
    const uint64_t total = kAhead + static_cast<uint64_t>(rounds) * kChunk;
    target = total;
    while (readpos < total) take(std::min<uint64_t>(kChunk, total - readpos));
    for (pump(); written < total; pump()) usleep(1000);
  }
};

void run_pair(int rounds, int family) {
  int l = listener(family, 4);
  int c = connect_to(family, port_of(l));
  int a = accept(l, nullptr, nullptr);
  if (a < 0) die("accept");
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    close(c);
    Side s{a, 1};
    for (int i = 0; i < rounds; ++i) {
      check_owner(a, "child's socket");
      s.round(i);
      tick();  // paced like the parent: both directions stay loaded
    }
    s.finish(rounds);
    _exit(0);
  }
  close(a);
  Side s{c, 0};
  for (int i = 0; i < rounds; ++i) {
    check_owner(c, "parent's socket");
    check_owner(l, "listener");
    s.round(i);
    line("round " + std::to_string(i + 1) + " pair ok");
    tick();
  }
  s.finish(rounds);
  int st = 0;
  if (waitpid(child, &st, 0) < 0) die("waitpid");
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail("pair: child failed");
}

// ---- outside --------------------------------------------------------------------

void run_outside(int rounds) {
  const char* p = getenv("NET_PEER_PORT");
  if (!p) fail("NET_PEER_PORT not set");
  int c = connect_to(AF_INET, std::atoi(p));
  std::string pending;
  for (int i = 0; i < rounds; ++i) {
    check_owner(c, "connection");
    if (!pending.empty()) {
      std::vector<char> buf(pending.size());
      read_exact(c, buf.data(), buf.size(), "echo");
      if (std::string(buf.begin(), buf.end()) != pending) fail("echo differs");
    }
    pending = "line " + std::to_string(i) + "\n";
    write_all(c, pending, "connection");
    line("round " + std::to_string(i + 1) + " outside ok");
    tick();
  }
}

// ---- udp ------------------------------------------------------------------------

void run_udp(int rounds) {
  int a = socket(AF_INET, SOCK_DGRAM, 0), b = socket(AF_INET, SOCK_DGRAM, 0);
  auto any = addr_of(AF_INET, 0);
  if (bind(a, reinterpret_cast<sockaddr*>(&any), sizeof(sockaddr_in)) < 0) die("bind");
  auto to_a = addr_of(AF_INET, port_of(a));
  if (connect(b, reinterpret_cast<sockaddr*>(&to_a), sizeof(sockaddr_in)) < 0) die("connect");
  const int pa = port_of(a), pb = port_of(b);
  for (int i = 0; i < rounds; ++i) {
    check_owner(a, "bound udp");
    check_owner(b, "connected udp");
    if (port_of(a) != pa || port_of(b) != pb) fail("udp port changed");
    std::string msg = "dgram " + std::to_string(i);
    if (send(b, msg.data(), msg.size(), 0) < 0) die("send");
    char buf[64];
    sockaddr_in from{};
    socklen_t fl = sizeof from;
    ssize_t r = recvfrom(a, buf, sizeof buf, 0, reinterpret_cast<sockaddr*>(&from), &fl);
    if (r < 0) die("recvfrom");
    if (std::string(buf, static_cast<size_t>(r)) != msg) fail("udp datagram differs");
    if (ntohs(from.sin_port) != pb) fail("udp sender port differs");
    if (sendto(a, buf, static_cast<size_t>(r), 0, reinterpret_cast<sockaddr*>(&from), fl) < 0)
      die("sendto");
    r = recv(b, buf, sizeof buf, 0);
    if (r < 0) die("recv");
    if (std::string(buf, static_cast<size_t>(r)) != msg) fail("udp reply differs");
    line("round " + std::to_string(i + 1) + " udp ok");
    tick();
  }
}

// ---- opts -----------------------------------------------------------------------

struct IntOpt {
  int level, name, value;
  const char* text;
};

void run_opts(int rounds) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  // IP_TOS first: it sets the priority too (ip(7)).
  const IntOpt lopts[] = {{IPPROTO_IP, IP_TOS, 0x10, "IP_TOS"},
                          {SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE"},
                          {IPPROTO_TCP, TCP_KEEPIDLE, 77, "TCP_KEEPIDLE"},
                          {IPPROTO_TCP, TCP_KEEPINTVL, 11, "TCP_KEEPINTVL"},
                          {IPPROTO_TCP, TCP_KEEPCNT, 5, "TCP_KEEPCNT"},
                          {SOL_SOCKET, SO_PRIORITY, 3, "SO_PRIORITY"},
                          {SOL_SOCKET, SO_RCVLOWAT, 2, "SO_RCVLOWAT"},
                          {SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT"},
                          {IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY"},
                          {IPPROTO_TCP, TCP_MAXSEG, 1000, "TCP_MAXSEG"},
                          {IPPROTO_IP, IP_TTL, 33, "IP_TTL"}};
  for (auto& o : lopts) seti(l, o.level, o.name, o.value, o.text);
  seti(l, SOL_SOCKET, SO_RCVBUF, 65536, "SO_RCVBUF");
  seti(l, SOL_SOCKET, SO_SNDBUF, 32768, "SO_SNDBUF");
  const int rcvbuf = geti(l, SOL_SOCKET, SO_RCVBUF, "SO_RCVBUF");
  const int sndbuf = geti(l, SOL_SOCKET, SO_SNDBUF, "SO_SNDBUF");
  linger lg{1, 3};
  if (setsockopt(l, SOL_SOCKET, SO_LINGER, &lg, sizeof lg) < 0) die("SO_LINGER");
  timeval tv{1, 500000};
  if (setsockopt(l, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) < 0) die("SO_RCVTIMEO");
  auto a4 = addr_of(AF_INET, 0);
  if (bind(l, reinterpret_cast<sockaddr*>(&a4), sizeof(sockaddr_in)) < 0) die("bind");
  if (listen(l, 5) < 0) die("listen");
  // A connection with options of its own (SO_KEEPALIVE, TCP_NODELAY, IP_TOS).
  int c = connect_to(AF_INET, port_of(l));
  int a = accept(l, nullptr, nullptr);
  if (a < 0) die("accept");
  const IntOpt copts[] = {{SOL_SOCKET, SO_KEEPALIVE, 1, "conn SO_KEEPALIVE"},
                          {IPPROTO_TCP, TCP_NODELAY, 1, "conn TCP_NODELAY"},
                          {IPPROTO_TCP, TCP_KEEPIDLE, 99, "conn TCP_KEEPIDLE"},
                          {IPPROTO_IP, IP_TOS, 0x8, "conn IP_TOS"}};
  for (auto& o : copts) seti(c, o.level, o.name, o.value, o.text);
  timeval stv{2, 500000};
  if (setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &stv, sizeof stv) < 0) die("SO_SNDTIMEO");
  // Never connected: corked, unbound.
  int u = socket(AF_INET, SOCK_STREAM, 0);
  seti(u, IPPROTO_TCP, TCP_CORK, 1, "TCP_CORK");
  // IPv6 UDP.
  int d = socket(AF_INET6, SOCK_DGRAM, 0);
  const IntOpt dopts[] = {{IPPROTO_IPV6, IPV6_V6ONLY, 1, "IPV6_V6ONLY"},
                          {IPPROTO_IPV6, IPV6_UNICAST_HOPS, 9, "IPV6_UNICAST_HOPS"},
                          {IPPROTO_IPV6, IPV6_TCLASS, 0x20, "IPV6_TCLASS"},
                          {SOL_SOCKET, SO_BROADCAST, 1, "SO_BROADCAST"}};
  for (auto& o : dopts) seti(d, o.level, o.name, o.value, o.text);
  auto a6 = addr_of(AF_INET6, 0);
  if (bind(d, reinterpret_cast<sockaddr*>(&a6), sizeof(sockaddr_in6)) < 0) die("bind6");
  for (int i = 0; i < rounds; ++i) {
    for (auto& o : lopts) expect(l, o.level, o.name, o.value, o.text);
    expect(l, SOL_SOCKET, SO_RCVBUF, rcvbuf, "SO_RCVBUF");
    expect(l, SOL_SOCKET, SO_SNDBUF, sndbuf, "SO_SNDBUF");
    linger g{};
    socklen_t gl = sizeof g;
    if (getsockopt(l, SOL_SOCKET, SO_LINGER, &g, &gl) < 0) die("SO_LINGER");
    if (g.l_onoff != 1 || g.l_linger != 3) fail("SO_LINGER differs");
    timeval t{};
    socklen_t tl = sizeof t;
    if (getsockopt(l, SOL_SOCKET, SO_RCVTIMEO, &t, &tl) < 0) die("SO_RCVTIMEO");
    if (t.tv_sec != 1 || t.tv_usec != 500000) fail("SO_RCVTIMEO differs");
    for (auto& o : copts) expect(c, o.level, o.name, o.value, o.text);
    tl = sizeof t;
    if (getsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &t, &tl) < 0) die("SO_SNDTIMEO");
    if (t.tv_sec != 2 || t.tv_usec != 500000) fail("conn SO_SNDTIMEO differs");
    expect(u, IPPROTO_TCP, TCP_CORK, 1, "TCP_CORK");
    for (auto& o : dopts) expect(d, o.level, o.name, o.value, o.text);
    for (int fd : {l, c, a, u, d}) check_owner(fd, "socket");
    std::string msg = "opts " + std::to_string(i);
    write_all(c, msg, "conn");
    std::vector<char> buf(msg.size());
    read_exact(a, buf.data(), buf.size(), "accepted");
    if (std::string(buf.begin(), buf.end()) != msg) fail("opts: data differs");
    line("round " + std::to_string(i + 1) + " opts ok");
    tick();
  }
}

// ---- refused --------------------------------------------------------------------

void run_backlog(int rounds) {
  int l = listener(AF_INET, 8);
  const int port = port_of(l);
  std::vector<int> clients{connect_to(AF_INET, port)};  // always one waiting
  for (int i = 0; i < rounds; ++i) {
    clients.push_back(connect_to(AF_INET, port));
    int a = accept(l, nullptr, nullptr);  // the oldest: one stays queued
    if (a < 0) die("accept");
    close(a);
    close(clients.front());
    clients.erase(clients.begin());
    line("round " + std::to_string(i + 1) + " backlog ok");
    tick();
  }
}

void run_close_wait(int rounds) {
  int l = listener(AF_INET, 4);
  int c = connect_to(AF_INET, port_of(l));
  int a = accept(l, nullptr, nullptr);
  if (a < 0) die("accept");
  if (shutdown(c, SHUT_WR) < 0) die("shutdown");
  for (int i = 0; i < rounds; ++i) {
    char b;
    if (recv(a, &b, 1, MSG_PEEK) != 0) fail("close_wait: no end of stream");
    std::string msg = "cw " + std::to_string(i);
    write_all(a, msg, "close_wait");
    std::vector<char> buf(msg.size());
    read_exact(c, buf.data(), buf.size(), "half-closed");
    line("round " + std::to_string(i + 1) + " close_wait ok");
    tick();
  }
}

void run_udp_queued(int rounds) {
  int a = socket(AF_INET, SOCK_DGRAM, 0), b = socket(AF_INET, SOCK_DGRAM, 0);
  auto any = addr_of(AF_INET, 0);
  if (bind(a, reinterpret_cast<sockaddr*>(&any), sizeof(sockaddr_in)) < 0) die("bind");
  auto to_a = addr_of(AF_INET, port_of(a));
  if (connect(b, reinterpret_cast<sockaddr*>(&to_a), sizeof(sockaddr_in)) < 0) die("connect");
  if (send(b, "first", 5, 0) < 0) die("send");
  for (int i = 0; i < rounds; ++i) {
    std::string msg = "q " + std::to_string(i);
    if (send(b, msg.data(), msg.size(), 0) < 0) die("send");
    char buf[64];
    if (recv(a, buf, sizeof buf, 0) < 0) die("recv");  // the previous one: one stays queued
    line("round " + std::to_string(i + 1) + " udp_queued ok");
    tick();
  }
}

// A connection (dumped first, into repair mode) and then a refused UDP socket: the
// failed dump must take the connection out of repair mode (a send in repair mode
// fails EINVAL), so that the job talks on through it.
void run_repair_undo(int rounds) {
  int l = listener(AF_INET, 4);
  int c = connect_to(AF_INET, port_of(l));
  int a = accept(l, nullptr, nullptr);
  if (a < 0) die("accept");
  int u = socket(AF_INET, SOCK_DGRAM, 0), v = socket(AF_INET, SOCK_DGRAM, 0);
  auto any = addr_of(AF_INET, 0);
  if (bind(u, reinterpret_cast<sockaddr*>(&any), sizeof(sockaddr_in)) < 0) die("bind");
  auto to_u = addr_of(AF_INET, port_of(u));
  if (connect(v, reinterpret_cast<sockaddr*>(&to_u), sizeof(sockaddr_in)) < 0) die("connect");
  if (send(v, "queued", 6, 0) < 0) die("send");  // never read
  for (int i = 0; i < rounds; ++i) {
    std::string msg = "undo " + std::to_string(i);
    write_all(c, msg, "connection");
    std::vector<char> buf(msg.size());
    read_exact(a, buf.data(), buf.size(), "accepted");
    if (std::string(buf.begin(), buf.end()) != msg) fail("repair_undo: data differs");
    write_all(a, msg, "accepted");
    read_exact(c, buf.data(), buf.size(), "connection");
    line("round " + std::to_string(i + 1) + " repair_undo ok");
    tick();
  }
}

// Two connections: an urgent byte always waits on at least one of them (each round
// sends on one before reading the other's), so a dump at any instant sees one.
void run_urgent(int rounds) {
  int l = listener(AF_INET, 4);
  int c[2], a[2];
  for (int k = 0; k < 2; ++k) {
    c[k] = connect_to(AF_INET, port_of(l));
    a[k] = accept(l, nullptr, nullptr);
    if (a[k] < 0) die("accept");
  }
  auto send_urgent = [&](int k, int i) {
    std::string msg = "urg " + std::to_string(i);
    write_all(c[k], msg, "urgent line");
    const char b = static_cast<char>('a' + i % 26);
    if (send(c[k], &b, 1, MSG_OOB) != 1) die("send MSG_OOB");
  };
  auto take_urgent = [&](int k, int i) {
    // The urgent byte (out of band), then the line before it (reading stops at the
    // mark; the urgent byte is not in the stream).
    char b = 0;
    for (int tries = 0; recv(a[k], &b, 1, MSG_OOB) != 1; ++tries) {
      if (errno != EAGAIN && errno != EINTR) die("recv MSG_OOB");
      if (tries > 5000) fail("urgent: no urgent byte");
      usleep(1000);
    }
    if (b != static_cast<char>('a' + i % 26)) fail("urgent: urgent byte differs");
    std::string msg = "urg " + std::to_string(i);
    std::vector<char> buf(msg.size());
    read_exact(a[k], buf.data(), buf.size(), "urgent line");
    if (std::string(buf.begin(), buf.end()) != msg) fail("urgent: line differs");
  };
  send_urgent(0, 0);
  for (int i = 0; i < rounds; ++i) {
    send_urgent((i + 1) % 2, i + 1);
    take_urgent(i % 2, i);
    line("round " + std::to_string(i + 1) + " urgent ok");
    tick();
  }
}

void run_urgent_read(int rounds) {
  int l = listener(AF_INET, 4);
  int c = connect_to(AF_INET, port_of(l));
  int a = accept(l, nullptr, nullptr);
  if (a < 0) die("accept");
  write_all(c, "head", "urgent_read line");
  if (send(c, "U", 1, MSG_OOB) != 1) die("send MSG_OOB");
  char b = 0;
  for (int tries = 0; recv(a, &b, 1, MSG_OOB) != 1; ++tries) {
    if (errno != EAGAIN && errno != EINTR) die("recv MSG_OOB");
    if (tries > 5000) fail("urgent_read: no urgent byte");
    usleep(1000);
  }
  if (b != 'U') fail("urgent_read: urgent byte differs");
  for (int i = 0; i < rounds; ++i) {
    int at_mark = 1;
    if (ioctl(a, SIOCATMARK, &at_mark) < 0) die("SIOCATMARK");
    if (at_mark) fail("urgent_read: at the mark before reading the line");
    line("round " + std::to_string(i + 1) + " urgent_read ok");
    tick();
  }
  char buf[4];
  read_exact(a, buf, sizeof buf, "urgent_read line");
  if (std::string(buf, sizeof buf) != "head") fail("urgent_read: line differs");
}

// The error of a datagram to a closed port comes back as ICMP port unreachable and
// waits in sk_err (a connected UDP socket) until a call reports it.
void run_so_error(int rounds) {
  int closed = socket(AF_INET, SOCK_DGRAM, 0);
  auto any = addr_of(AF_INET, 0);
  if (bind(closed, reinterpret_cast<sockaddr*>(&any), sizeof(sockaddr_in)) < 0) die("bind");
  auto to = addr_of(AF_INET, port_of(closed));
  close(closed);  // nobody on that port now
  int u = socket(AF_INET, SOCK_DGRAM, 0);
  if (connect(u, reinterpret_cast<sockaddr*>(&to), sizeof(sockaddr_in)) < 0) die("connect");
  for (int i = 0; i < rounds; ++i) {
    // The previous round's error, if it came back (reading it clears it).
    int err = 0;
    socklen_t el = sizeof err;
    if (getsockopt(u, SOL_SOCKET, SO_ERROR, &err, &el) < 0) die("SO_ERROR");
    if (err != 0 && err != ECONNREFUSED) fail("so_error: error " + std::to_string(err));
    if (send(u, "ping", 4, 0) < 0 && errno != ECONNREFUSED) die("send");
    line("round " + std::to_string(i + 1) + " so_error ok");
    tick();
  }
}

// A UDP socket bound to 127.0.0.1 that sends a datagram to itself each round, after
// `setup` gave it the option the dump must refuse.
void run_udp_self(int rounds, const char* kind, void (*setup)(int)) {
  int u = socket(AF_INET, SOCK_DGRAM, 0);
  if (u < 0) die("socket");
  setup(u);
  auto any = addr_of(AF_INET, 0);
  if (bind(u, reinterpret_cast<sockaddr*>(&any), sizeof(sockaddr_in)) < 0) die("bind");
  auto self = addr_of(AF_INET, port_of(u));
  for (int i = 0; i < rounds; ++i) {
    std::string msg = std::string(kind) + " " + std::to_string(i);
    if (sendto(u, msg.data(), msg.size(), 0, reinterpret_cast<sockaddr*>(&self),
               sizeof(sockaddr_in)) < 0)
      die("sendto");
    char buf[64];
    ssize_t r = recv(u, buf, sizeof buf, 0);
    if (r < 0) die("recv");
    if (std::string(buf, static_cast<size_t>(r)) != msg)
      fail(std::string(kind) + ": datagram differs");
    line("round " + std::to_string(i + 1) + " " + kind + " ok");
    tick();
  }
}

void bind_to_lo(int fd) {
  if (setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, "lo", 3) < 0) die("SO_BINDTODEVICE");
}

void attach_filter(int fd) {
  sock_filter accept_all[] = {{BPF_RET | BPF_K, 0, 0, 0xffffffffU}};
  sock_fprog prog{1, accept_all};
  if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0) die("SO_ATTACH_FILTER");
}

void set_freebind(int fd) { seti(fd, IPPROTO_IP, IP_FREEBIND, 1, "IP_FREEBIND"); }
void set_transparent(int fd) { seti(fd, IPPROTO_IP, IP_TRANSPARENT, 1, "IP_TRANSPARENT"); }

void set_ip_options(int fd) {
  const unsigned char nops[4] = {1, 1, 1, 1};  // IPOPT_NOP
  if (setsockopt(fd, IPPROTO_IP, IP_OPTIONS, nops, sizeof nops) < 0) die("IP_OPTIONS");
}

// A socket of `family`, `type` and `protocol` held and checked each round.
void run_hold(int rounds, const char* kind, int family, int type, int protocol) {
  int fd = socket(family, type, protocol);
  if (fd < 0) die(std::string("socket for ") + kind);
  for (int i = 0; i < rounds; ++i) {
    expect(fd, SOL_SOCKET, SO_TYPE, type, "SO_TYPE");
    expect(fd, SOL_SOCKET, SO_DOMAIN, family, "SO_DOMAIN");
    line("round " + std::to_string(i + 1) + " " + kind + " ok");
    tick();
  }
}

const Kind kKinds[] = {
    {"listen", run_listen},
    {"pair", [](int r) { run_pair(r, AF_INET); }},
    {"pair6", [](int r) { run_pair(r, AF_INET6); }},
    {"outside", run_outside},
    {"udp", run_udp},
    {"opts", run_opts},
    {"backlog", run_backlog},
    {"close_wait", run_close_wait},
    {"udp_queued", run_udp_queued},
    {"repair_undo", run_repair_undo},
    {"urgent", run_urgent},
    {"so_error", run_so_error},
    {"urgent_read", run_urgent_read},
    {"bindtodevice", [](int r) { run_udp_self(r, "bindtodevice", bind_to_lo); }},
    {"filter", [](int r) { run_udp_self(r, "filter", attach_filter); }},
    {"freebind", [](int r) { run_udp_self(r, "freebind", set_freebind); }},
    {"transparent", [](int r) { run_udp_self(r, "transparent", set_transparent); }},
    {"ip_options", [](int r) { run_udp_self(r, "ip_options", set_ip_options); }},
    {"raw", [](int r) { run_hold(r, "raw", AF_INET, SOCK_RAW, IPPROTO_ICMP); }},
    {"packet", [](int r) { run_hold(r, "packet", AF_PACKET, SOCK_DGRAM, 0); }},
};

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  return run_kind(argc, argv, "ckpt_net_kind", kKinds);
}
