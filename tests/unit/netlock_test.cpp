// The network lock (src/ckpt/netlock.h) on real loopback TCP connections: a locked
// socket receives nothing and its peer's data comes again once it is released; a
// dumper that dies with the socket locked and in repair mode leaves it working (the
// guardian); a held socket is handed to a root client and to no one else.
#include "ckpt/netlock.h"

#include <gtest/gtest.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

namespace fsched::ckpt {
namespace {

struct Conn {
  UniqueFd a, b;  // a connected to b over 127.0.0.1
};

Conn connect_loopback() {
  UniqueFd l(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  EXPECT_EQ(::bind(l.get(), reinterpret_cast<sockaddr*>(&sa), len), 0);
  EXPECT_EQ(::listen(l.get(), 1), 0);
  EXPECT_EQ(::getsockname(l.get(), reinterpret_cast<sockaddr*>(&sa), &len), 0);
  Conn c;
  c.a.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  EXPECT_EQ(::connect(c.a.get(), reinterpret_cast<sockaddr*>(&sa), len), 0);
  c.b.reset(::accept4(l.get(), nullptr, nullptr, SOCK_CLOEXEC));
  return c;
}

int inq(int fd) {
  int n = -1;
  ::ioctl(fd, SIOCINQ, &n);
  return n;
}

// Waits up to `ms` for `fd` to hold `want` bytes to read.
bool arrives(int fd, int want, int ms) {
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < end) {
    if (inq(fd) >= want) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return inq(fd) >= want;
}

TEST(NetLock, LockedSocketReceivesNothingUntilReleased) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (TCP_REPAIR)";
  Conn c = connect_loopback();
  NetLock lock(::getpid(), 0);
  lock.add(c.b.get(), "test socket");
  EXPECT_EQ(lock.size(), 1u);
  EXPECT_FALSE(lock.name().empty());
  ASSERT_EQ(::send(c.a.get(), "0123456789", 10, 0), 10);
  EXPECT_FALSE(arrives(c.b.get(), 1, 300)) << "a locked socket received data";
  lock.release();
  // Dropped, so not acknowledged: the sender retransmits (RTO >= 200 ms).
  EXPECT_TRUE(arrives(c.b.get(), 10, 5000));
}

TEST(NetLock, GuardianGivesBackWhenTheDumperDies) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (TCP_REPAIR)";
  Conn c = connect_loopback();
  const pid_t job = ::getpid();
  pid_t dumper = ::fork();
  ASSERT_GE(dumper, 0);
  if (dumper == 0) {
    // The "dumper": locks the socket, puts it in repair mode, and dies without a word.
    NetLock lock(job, 60);
    lock.add(c.b.get(), "test socket");
    int on = 1;
    if (::setsockopt(c.b.get(), IPPROTO_TCP, TCP_REPAIR, &on, sizeof on) < 0) ::_exit(2);
    ::_exit(0);  // no destructor runs: as after SIGKILL
  }
  int status = 0;
  ASSERT_EQ(::waitpid(dumper, &status, 0), dumper);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  // The guardian saw the channel close with the job (this process) alive: out of repair
  // mode and unlocked, within moments.
  bool out_of_repair = false;
  for (int i = 0; i < 200 && !out_of_repair; ++i) {
    int v = -1;
    socklen_t vl = sizeof v;
    out_of_repair = ::getsockopt(c.b.get(), IPPROTO_TCP, TCP_REPAIR, &v, &vl) == 0 && v == 0;
    if (!out_of_repair) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(out_of_repair);
  ASSERT_EQ(::send(c.a.get(), "abc", 3, 0), 3);
  EXPECT_TRUE(arrives(c.b.get(), 3, 5000)) << "the socket stayed locked";
  char buf[3];
  EXPECT_EQ(::recv(c.b.get(), buf, 3, 0), 3);
}

TEST(NetLock, HeldSocketsGoToARootClientOnce) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (TCP_REPAIR, SO_PEERCRED uid 0)";
  Conn c = connect_loopback();
  struct stat st {};
  ASSERT_EQ(::fstat(c.b.get(), &st), 0);
  // A "job" that is already dead when the dumper says hold: a child reaped later.
  pid_t job = ::fork();
  ASSERT_GE(job, 0);
  if (job == 0) ::_exit(0);
  std::string name;
  {
    NetLock lock(job, 30);
    lock.add(c.b.get(), "test socket");
    name = lock.name();
    lock.hold(30);
  }
  auto held = take_held_sockets(name);
  ASSERT_EQ(held.size(), 1u);
  ASSERT_TRUE(held.count(st.st_ino));
  struct stat st2 {};
  ASSERT_EQ(::fstat(held.at(st.st_ino).get(), &st2), 0);
  EXPECT_EQ(st2.st_ino, st.st_ino);
  // The guardian ends once it has handed them over: a second take finds nothing.
  EXPECT_TRUE(take_held_sockets(name).empty());
  EXPECT_TRUE(take_held_sockets("fsched-netlock-no-such-name").empty());
  ::waitpid(job, nullptr, 0);
}

}  // namespace
}  // namespace fsched::ckpt
