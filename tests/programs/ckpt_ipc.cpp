// ckpt_ipc: a parent and a forked child talking through every kind of IPC the engine
// restores, for checkpoint/restore tests.
//
//   ckpt_ipc [ROUNDS [OUTFILE]] [--exit-code N] [--tick-ms MS] [--child-sleep-us US]
//
// The two processes share a MAP_SHARED|MAP_ANONYMOUS mapping (created before fork)
// holding a process-shared pthread mutex, a counter only changed under it, atomic
// counters and one slot per round. They are connected by a SOCK_STREAM socketpair and a
// SOCK_DGRAM socketpair, and share one eventfd (EFD_SEMAPHORE, the same open file
// description in both).
//
// Parent: an epoll loop over a periodic timerfd, its end of the datagram pair and the
// eventfd. Every timer tick lets it send one record (round number, length, a
// deterministic payload of up to ~100 KB) down the stream socket, keeping up to four
// records in flight, so the stream socket usually holds queued data. Per record it also
// bumps the shared counters (mutex + atomics), which the child bumps concurrently.
// Child: an epoll loop over its stream and datagram ends. It reads a record, hashes it,
// bumps the shared counters, stores the hash in the record's shared slot, sleeps a
// little, replies with a datagram (round, hash, length) and posts the eventfd. The
// parent checks the reply and the slot against its own hash, writes one line per round
// to OUTFILE (and every tenth to stdout) and acknowledges with a datagram, which the
// child folds into a checksum. A record of length 0 ends the child, which reports its
// totals in a last datagram and exits with status 7; the parent reaps it, checks the
// counters (every increment under the mutex must be there) and prints the totals.
//
// Output depends only on the arguments. Exit status: 0, or --exit-code N; 1 if a check
// fails (with a line saying which).
#include <fcntl.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

namespace {

constexpr int kWindow = 4;                    // records in flight
constexpr int kIncrements = 1000;             // shared-counter increments per record, per process
constexpr std::uint32_t kMagic = 0x49504331;  // "IPC1"

struct Shared {
  pthread_mutex_t mutex;
  std::uint64_t counter;        // only under mutex
  std::uint64_t parent_rounds;  // only under mutex
  std::uint64_t child_rounds;   // only under mutex
  std::atomic<std::uint64_t> atomic_counter;
  std::atomic<std::uint64_t> child_bytes;
  // One slot per round, after the struct: the child's hash of that round's record.
  std::uint64_t* slot() { return reinterpret_cast<std::uint64_t*>(this + 1); }
};

struct Header {
  std::uint32_t magic;
  std::uint32_t len;
  std::uint64_t round;
};

struct Reply {
  std::uint64_t round;
  std::uint64_t hash;
  std::uint64_t len;
};

struct Ack {
  std::uint64_t round;
  std::uint64_t check;
};

struct Bye {
  std::uint64_t magic;
  std::uint64_t records;
  std::uint64_t bytes;
  std::uint64_t acks;
  std::uint64_t ack_sum;
};

[[noreturn]] void die(const char* who, const char* what) {
  std::fprintf(stderr, "ckpt_ipc %s: %s: %s\n", who, what, std::strerror(errno));
  std::exit(99);
}

void write_all(int fd, const void* buf, std::size_t len, const char* who) {
  const char* p = static_cast<const char*>(buf);
  while (len > 0) {
    ssize_t n = ::write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      die(who, "write");
    }
    p += n;
    len -= static_cast<std::size_t>(n);
  }
}

bool read_all(int fd, void* buf, std::size_t len, const char* who) {
  char* p = static_cast<char*>(buf);
  while (len > 0) {
    ssize_t n = ::read(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      die(who, "read");
    }
    if (n == 0) return false;
    p += n;
    len -= static_cast<std::size_t>(n);
  }
  return true;
}

void send_dgram(int fd, const void* buf, std::size_t len, const char* who) {
  for (;;) {
    ssize_t n = ::send(fd, buf, len, 0);
    if (n == static_cast<ssize_t>(len)) return;
    if (n < 0 && errno == EINTR) continue;
    die(who, "send datagram");
  }
}

// One datagram of exactly `len` bytes; false if none is queued (nonblocking).
bool recv_dgram(int fd, void* buf, std::size_t len, bool block, const char* who) {
  for (;;) {
    ssize_t n = ::recv(fd, buf, len, block ? 0 : MSG_DONTWAIT);
    if (n == static_cast<ssize_t>(len)) return true;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && !block && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
    if (n < 0) die(who, "recv datagram");
    errno = EPROTO;
    die(who, "datagram of the wrong size");
  }
}

std::uint64_t splitmix(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

std::uint32_t record_len(std::uint64_t r) {
  return static_cast<std::uint32_t>(256 + (r * 7919 + 13) % 100000);
}

void make_payload(std::uint64_t r, std::vector<unsigned char>& buf) {
  buf.resize(record_len(r));
  std::uint64_t s = splitmix(r + 0x1234);
  for (std::size_t i = 0; i < buf.size(); i += 8) {
    s = splitmix(s);
    for (std::size_t k = 0; k < 8 && i + k < buf.size(); ++k)
      buf[i + k] = static_cast<unsigned char>(s >> (8 * k));
  }
}

std::uint64_t fnv(const unsigned char* p, std::size_t n) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

void bump(Shared* sh, bool parent) {
  for (int i = 0; i < kIncrements; ++i) {
    if (int e = pthread_mutex_lock(&sh->mutex)) {
      errno = e;
      die(parent ? "parent" : "child", "pthread_mutex_lock");
    }
    sh->counter++;
    if (i == kIncrements - 1) (parent ? sh->parent_rounds : sh->child_rounds)++;
    pthread_mutex_unlock(&sh->mutex);
    sh->atomic_counter.fetch_add(1, std::memory_order_relaxed);
  }
}

int epoll_add(int ep, int fd, const char* who) {
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = fd;
  if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) die(who, "epoll_ctl");
  return fd;
}

[[noreturn]] void child_main(Shared* sh, int stream, int dgram, int efd, int sleep_us) {
  const char* who = "child";
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die(who, "epoll_create1");
  epoll_add(ep, stream, who);
  epoll_add(ep, dgram, who);
  std::vector<unsigned char> buf;
  Bye bye{0x425945, 0, 0, 0, 0};
  bool stopping = false;
  const std::uint64_t one = 1;
  for (;;) {
    epoll_event evs[4];
    int n = epoll_wait(ep, evs, 4, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      die(who, "epoll_wait");
    }
    bool stream_ready = false;
    for (int i = 0; i < n; ++i) {
      if (evs[i].data.fd == dgram) {
        Ack a;
        while (recv_dgram(dgram, &a, sizeof a, false, who)) {
          bye.acks++;
          bye.ack_sum = splitmix(bye.ack_sum ^ a.check ^ (a.round << 32));
        }
      } else if (evs[i].data.fd == stream) {
        stream_ready = true;
      }
    }
    if (!stream_ready || stopping) continue;
    Header h;
    if (!read_all(stream, &h, sizeof h, who)) die(who, "unexpected end of the stream");
    if (h.magic != kMagic) {
      errno = EPROTO;
      die(who, "bad record header");
    }
    if (h.len == 0) {
      stopping = true;
      // Every acknowledgement is sent before the stop record, but on another socket.
      while (bye.acks < bye.records) {
        Ack a;
        recv_dgram(dgram, &a, sizeof a, true, who);
        bye.acks++;
        bye.ack_sum = splitmix(bye.ack_sum ^ a.check ^ (a.round << 32));
      }
      send_dgram(dgram, &bye, sizeof bye, who);
      std::_Exit(7);
    }
    buf.resize(h.len);
    if (!read_all(stream, buf.data(), h.len, who)) die(who, "unexpected end of the stream");
    Reply rep{h.round, fnv(buf.data(), buf.size()), h.len};
    bump(sh, false);
    sh->slot()[h.round] = rep.hash;
    sh->child_bytes.fetch_add(h.len);
    bye.records++;
    bye.bytes += h.len;
    if (sleep_us > 0) {
      timespec ts{0, sleep_us * 1000L};
      while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
      }
    }
    send_dgram(dgram, &rep, sizeof rep, who);
    write_all(efd, &one, sizeof one, who);
  }
}

[[noreturn]] void usage() {
  std::fprintf(stderr,
               "usage: ckpt_ipc [ROUNDS [OUTFILE]] [--exit-code N] [--tick-ms MS] "
               "[--child-sleep-us US]\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t rounds = 1000;
  std::string out_path;
  int exit_code = 0, tick_ms = 4, sleep_us = 6000;
  std::vector<std::string> pos;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> int {
      if (i + 1 >= argc) usage();
      return std::atoi(argv[++i]);
    };
    if (a == "--exit-code")
      exit_code = next();
    else if (a == "--tick-ms")
      tick_ms = next();
    else if (a == "--child-sleep-us")
      sleep_us = next();
    else if (a.starts_with("--"))
      usage();
    else
      pos.push_back(a);
  }
  if (pos.size() > 2) usage();
  if (!pos.empty()) rounds = std::strtoull(pos[0].c_str(), nullptr, 10);
  if (pos.size() > 1) out_path = pos[1];
  const char* who = "parent";

  int out_fd = -1;
  if (!out_path.empty()) {
    out_fd = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (out_fd < 0) die(who, out_path.c_str());
  }

  const std::size_t shared_size = sizeof(Shared) + rounds * sizeof(std::uint64_t);
  void* mem = mmap(nullptr, shared_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) die(who, "mmap");
  auto* sh = static_cast<Shared*>(mem);
  pthread_mutexattr_t ma;
  pthread_mutexattr_init(&ma);
  pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
  pthread_mutex_init(&sh->mutex, &ma);
  new (&sh->atomic_counter) std::atomic<std::uint64_t>(0);
  new (&sh->child_bytes) std::atomic<std::uint64_t>(0);

  int st[2], dg[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, st) != 0) die(who, "socketpair stream");
  if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, dg) != 0) die(who, "socketpair dgram");
  int efd = eventfd(0, EFD_SEMAPHORE | EFD_CLOEXEC);
  if (efd < 0) die(who, "eventfd");

  char line[256];
  int len = std::snprintf(line, sizeof line, "ckpt_ipc rounds %llu window %d\n",
                          static_cast<unsigned long long>(rounds), kWindow);
  write_all(STDOUT_FILENO, line, static_cast<std::size_t>(len), who);

  pid_t child = fork();
  if (child < 0) die(who, "fork");
  if (child == 0) {
    ::close(st[0]);
    ::close(dg[0]);
    if (out_fd >= 0) ::close(out_fd);
    child_main(sh, st[1], dg[1], efd, sleep_us);
  }
  ::close(st[1]);
  ::close(dg[1]);
  const int stream = st[0], dgram = dg[0];

  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
  if (tfd < 0) die(who, "timerfd_create");
  itimerspec its{};
  its.it_interval.tv_nsec = tick_ms * 1000000L;
  its.it_value.tv_nsec = tick_ms * 1000000L;
  if (timerfd_settime(tfd, 0, &its, nullptr) != 0) die(who, "timerfd_settime");
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die(who, "epoll_create1");
  epoll_add(ep, tfd, who);
  epoll_add(ep, dgram, who);
  epoll_add(ep, efd, who);

  std::vector<std::uint64_t> expected(rounds);
  std::vector<unsigned char> payload;
  std::uint64_t sent = 0, received = 0, events = 0, credits = 0, chain = 0;
  int failures = 0;
  while (received < rounds || events < rounds) {
    epoll_event evs[4];
    int n = epoll_wait(ep, evs, 4, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      die(who, "epoll_wait");
    }
    for (int i = 0; i < n; ++i) {
      int fd = evs[i].data.fd;
      if (fd == tfd) {
        std::uint64_t ticks;
        if (!read_all(tfd, &ticks, sizeof ticks, who)) die(who, "timerfd read");
        credits = credits + ticks > 2 ? 2 : credits + ticks;
      } else if (fd == efd) {
        std::uint64_t one;
        if (!read_all(efd, &one, sizeof one, who)) die(who, "eventfd read");
        if (one != 1) {
          len = std::snprintf(line, sizeof line, "FAIL eventfd read %llu, not 1\n",
                              static_cast<unsigned long long>(one));
          write_all(STDOUT_FILENO, line, static_cast<std::size_t>(len), who);
          failures++;
        }
        events++;
      } else if (fd == dgram) {
        Reply rep;
        if (!recv_dgram(dgram, &rep, sizeof rep, false, who)) continue;
        bool ok = rep.round == received && rep.round < rounds && rep.hash == expected[rep.round] &&
                  sh->slot()[rep.round] == rep.hash && rep.len == record_len(rep.round);
        chain = splitmix(chain ^ rep.hash);
        len = std::snprintf(
            line, sizeof line, "round %5llu len %6llu hash %016llx chain %016llx %s\n",
            static_cast<unsigned long long>(rep.round), static_cast<unsigned long long>(rep.len),
            static_cast<unsigned long long>(rep.hash), static_cast<unsigned long long>(chain),
            ok ? "ok" : "FAIL");
        if (!ok) failures++;
        if (out_fd >= 0) write_all(out_fd, line, static_cast<std::size_t>(len), who);
        if (!ok || rep.round % 10 == 9)
          write_all(STDOUT_FILENO, line, static_cast<std::size_t>(len), who);
        Ack a{rep.round, chain};
        send_dgram(dgram, &a, sizeof a, who);
        received++;
      }
    }
    while (sent < rounds && credits > 0 && sent - received < kWindow) {
      make_payload(sent, payload);
      expected[sent] = fnv(payload.data(), payload.size());
      Header h{kMagic, static_cast<std::uint32_t>(payload.size()), sent};
      write_all(stream, &h, sizeof h, who);
      write_all(stream, payload.data(), payload.size(), who);
      bump(sh, true);
      sent++;
      credits--;
    }
  }
  Header stop{kMagic, 0, rounds};
  write_all(stream, &stop, sizeof stop, who);
  Bye bye;
  recv_dgram(dgram, &bye, sizeof bye, true, who);
  int status = 0;
  while (waitpid(child, &status, 0) < 0) {
    if (errno != EINTR) die(who, "waitpid");
  }
  std::uint64_t total_bytes = 0;
  for (std::uint64_t r = 0; r < rounds; ++r) total_bytes += record_len(r);
  const std::uint64_t want = 2 * rounds * kIncrements;
  pthread_mutex_lock(&sh->mutex);
  const bool counters_ok = sh->counter == want && sh->atomic_counter.load() == want &&
                           sh->parent_rounds == rounds && sh->child_rounds == rounds &&
                           sh->child_bytes.load() == total_bytes;
  std::string tail;
  len = std::snprintf(line, sizeof line,
                      "counter %llu atomic %llu parent_rounds %llu child_rounds %llu "
                      "child_bytes %llu %s\n",
                      static_cast<unsigned long long>(sh->counter),
                      static_cast<unsigned long long>(sh->atomic_counter.load()),
                      static_cast<unsigned long long>(sh->parent_rounds),
                      static_cast<unsigned long long>(sh->child_rounds),
                      static_cast<unsigned long long>(sh->child_bytes.load()),
                      counters_ok ? "ok" : "FAIL");
  pthread_mutex_unlock(&sh->mutex);
  tail.append(line, static_cast<std::size_t>(len));
  const bool bye_ok = bye.magic == 0x425945 && bye.records == rounds && bye.bytes == total_bytes &&
                      bye.acks == rounds;
  len = std::snprintf(
      line, sizeof line, "child records %llu bytes %llu acks %llu ack_sum %016llx %s\n",
      static_cast<unsigned long long>(bye.records), static_cast<unsigned long long>(bye.bytes),
      static_cast<unsigned long long>(bye.acks), static_cast<unsigned long long>(bye.ack_sum),
      bye_ok ? "ok" : "FAIL");
  tail.append(line, static_cast<std::size_t>(len));
  const bool child_ok = WIFEXITED(status) && WEXITSTATUS(status) == 7;
  len = std::snprintf(line, sizeof line, "child status %d %s; events %llu; chain %016llx\n",
                      WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status),
                      child_ok ? "ok" : "FAIL", static_cast<unsigned long long>(events),
                      static_cast<unsigned long long>(chain));
  tail.append(line, static_cast<std::size_t>(len));
  if (!counters_ok || !bye_ok || !child_ok) failures++;
  len = std::snprintf(line, sizeof line, "done failures %d exit %d\n", failures,
                      failures ? 1 : exit_code);
  tail.append(line, static_cast<std::size_t>(len));
  write_all(STDOUT_FILENO, tail.data(), tail.size(), who);
  if (out_fd >= 0) write_all(out_fd, tail.data(), tail.size(), who);
  return failures ? 1 : exit_code;
}
