// ckpt_fsobj: file-system objects that have no path to be reopened by, for
// checkpoint/restore tests. Output depends only on the arguments.
//
//   ckpt_fsobj deleted ROUNDS [TICK_MS]
//   ckpt_fsobj inotify ROUNDS [TICK_MS]
//   ckpt_fsobj sysv ROUNDS [TICK_MS]
//
// deleted: a parent and a forked child share files that were unlinked after being
// opened, in the current directory: a scratch log (one open file description
// O_RDWR|O_APPEND in the parent, a second read-only one inherited by the child, so
// both share its offset), a 64 MiB sparse file with a few data pages, a file mapped
// MAP_SHARED by both (the child stores each round's hash there) and one mapped
// MAP_PRIVATE by the parent and changed in its private copy. Each round the parent
// appends a record, the child reads it through its fd, hashes it and answers through
// a pipe and the shared mapping; the parent checks both and prints a line. At the end
// the parent prints what the files hold (sizes, hashes, link counts, modes).
//
// inotify: watches on directories and a file of ./wdir; one watch is removed so that
// the watch descriptors have a gap. Each round creates and removes files and appends
// to the watched file, then reads the events and prints them (wd, mask, name). It
// sleeps between rounds with no event pending (events queued at a checkpoint are not
// kept by the engine).
//
// sysv: SysV shared memory between a parent and a forked child: a private segment, a
// segment with a key, and one removed (IPC_RMID) while both still have it attached.
// Each round the parent writes a block into the first, the child hashes it into the
// second and the parent checks it; every tenth round prints the segments' ids and
// shmctl(IPC_STAT) sizes and attach counts.
//
// Exit status 0; 1 with a line saying what failed.
#include <fcntl.h>
#include <sys/inotify.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

[[noreturn]] void die(const char* what) {
  std::printf("FAIL %s: %s\n", what, std::strerror(errno));
  std::fflush(stdout);
  std::exit(1);
}

[[noreturn]] void fail(const std::string& what) {
  std::printf("FAIL %s\n", what.c_str());
  std::fflush(stdout);
  std::exit(1);
}

std::uint64_t fnv(const void* p, std::size_t n, std::uint64_t h = 1469598103934665603ull) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

void tick(int ms) {
  timespec ts{ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

void write_all(int fd, const void* buf, std::size_t len) {
  const char* p = static_cast<const char*>(buf);
  while (len) {
    ssize_t n = ::write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) die("write");
    p += n;
    len -= static_cast<std::size_t>(n);
  }
}

void read_all(int fd, void* buf, std::size_t len) {
  char* p = static_cast<char*>(buf);
  while (len) {
    ssize_t n = ::read(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) die("read");
    p += n;
    len -= static_cast<std::size_t>(n);
  }
}

// Content hash of a whole file through its fd (pread: leaves the offset alone).
std::uint64_t file_hash(int fd, std::uint64_t* size) {
  struct stat st {};
  if (::fstat(fd, &st) < 0) die("fstat");
  std::uint64_t h = 1469598103934665603ull;
  static char buf[1 << 16];
  for (off_t at = 0; at < st.st_size;) {
    ssize_t n = ::pread(fd, buf, sizeof buf, at);
    if (n <= 0) die("pread");
    h = fnv(buf, static_cast<std::size_t>(n), h);
    at += n;
  }
  *size = static_cast<std::uint64_t>(st.st_size);
  return h;
}

void describe(const char* name, int fd) {
  struct stat st {};
  if (::fstat(fd, &st) < 0) die("fstat");
  std::uint64_t size = 0, h = file_hash(fd, &size);
  std::printf("%s size %llu hash %016llx links %lu mode %o offset %lld\n", name,
              static_cast<unsigned long long>(size), static_cast<unsigned long long>(h),
              static_cast<unsigned long>(st.st_nlink), st.st_mode & 07777,
              static_cast<long long>(::lseek(fd, 0, SEEK_CUR)));
}

// ---- deleted ------------------------------------------------------------------------

constexpr std::size_t kMapBytes = 1 << 20;
constexpr off_t kSparseBytes = 64 << 20;

int open_unlinked(const char* name, int flags, mode_t mode, off_t size) {
  int fd = ::open(name, flags | O_CREAT | O_EXCL, 0600);
  if (fd < 0) die(name);
  if (::unlink(name) < 0) die("unlink");
  if (::fchmod(fd, mode) < 0) die("fchmod");
  if (size && ::ftruncate(fd, size) < 0) die("ftruncate");
  return fd;
}

int run_deleted(int rounds, int tick_ms) {
  int log = open_unlinked("scratch.log", O_RDWR | O_APPEND, 0640, 0);
  int log_rd = ::open(("/proc/self/fd/" + std::to_string(log)).c_str(), O_RDONLY);
  if (log_rd < 0) die("reopen scratch.log");
  int sparse = open_unlinked("sparse.bin", O_RDWR, 0600, kSparseBytes);
  int shared_fd = open_unlinked("shared.map", O_RDWR, 0600, kMapBytes);
  auto* shared = static_cast<std::uint64_t*>(
      ::mmap(nullptr, kMapBytes, PROT_READ | PROT_WRITE, MAP_SHARED, shared_fd, 0));
  if (shared == MAP_FAILED) die("mmap shared");
  ::close(shared_fd);  // held by the mappings only
  int priv_fd = open_unlinked("private.map", O_RDWR, 0644, kMapBytes);
  for (std::size_t i = 0; i < kMapBytes / 4096; ++i) {
    char page[4096];
    std::memset(page, static_cast<int>('a' + i % 26), sizeof page);
    if (::pwrite(priv_fd, page, sizeof page, static_cast<off_t>(i * 4096)) != 4096) die("pwrite");
  }
  auto* priv = static_cast<unsigned char*>(
      ::mmap(nullptr, kMapBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE, priv_fd, 0));
  if (priv == MAP_FAILED) die("mmap private");
  ::close(priv_fd);

  int to_child[2], to_parent[2];
  if (::pipe(to_child) < 0 || ::pipe(to_parent) < 0) die("pipe");
  pid_t child = ::fork();
  if (child < 0) die("fork");
  if (child == 0) {
    ::close(to_child[1]);
    ::close(to_parent[0]);
    std::uint64_t acc = 0;
    for (int r = 0; r < rounds; ++r) {
      std::uint32_t len = 0;
      read_all(to_child[0], &len, sizeof len);
      std::string rec(len, '\0');
      read_all(log_rd, rec.data(), len);  // the shared offset moves on
      std::uint64_t h = fnv(rec.data(), len);
      shared[r % (kMapBytes / 8)] = h;
      acc ^= h + static_cast<std::uint64_t>(r);
      write_all(to_parent[1], &h, sizeof h);
    }
    // Reported by the parent, so that the output's order does not depend on timing.
    write_all(to_parent[1], &acc, sizeof acc);
    std::_Exit(0);
  }
  ::close(to_child[0]);
  ::close(to_parent[1]);
  for (int r = 0; r < rounds; ++r) {
    std::string rec = "round " + std::to_string(r) + " ";
    rec.append(static_cast<std::size_t>(100 + (r * 37) % 900), static_cast<char>('A' + r % 26));
    rec += "\n";
    write_all(log, rec.data(), rec.size());
    // A page of the sparse file, far apart from the others.
    if (r % 10 == 0) {
      char page[4096];
      std::memset(page, r & 0xff, sizeof page);
      off_t at = static_cast<off_t>(r / 10) * (1 << 22) % kSparseBytes;
      if (::pwrite(sparse, page, sizeof page, at) != 4096) die("pwrite sparse");
    }
    priv[(static_cast<std::size_t>(r) * 4096 * 3) % kMapBytes] = static_cast<unsigned char>(r);
    std::uint32_t len = static_cast<std::uint32_t>(rec.size());
    write_all(to_child[1], &len, sizeof len);
    std::uint64_t h = 0;
    read_all(to_parent[0], &h, sizeof h);
    if (h != fnv(rec.data(), rec.size()) || shared[r % (kMapBytes / 8)] != h)
      fail("round " + std::to_string(r) + ": the child's hash differs");
    std::printf("round %d len %u hash %016llx\n", r, len, static_cast<unsigned long long>(h));
    std::fflush(stdout);
    tick(tick_ms);
  }
  std::uint64_t acc = 0;
  read_all(to_parent[0], &acc, sizeof acc);
  std::printf("child acc %016llx\n", static_cast<unsigned long long>(acc));
  int st = 0;
  if (::waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
    fail("child ended badly");
  describe("log", log);
  describe("log_rd", log_rd);
  describe("sparse", sparse);
  std::printf("shared %016llx private %016llx\n",
              static_cast<unsigned long long>(fnv(shared, kMapBytes)),
              static_cast<unsigned long long>(fnv(priv, kMapBytes)));
  std::printf("done\n");
  return 0;
}

// ---- inotify ------------------------------------------------------------------------

int run_inotify(int rounds, int tick_ms) {
  for (const char* d : {"wdir", "wdir/a", "wdir/b", "wdir/c"})
    if (::mkdir(d, 0755) < 0 && errno != EEXIST) die(d);
  int f = ::open("wdir/f", O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (f < 0) die("wdir/f");
  int in = inotify_init1(IN_CLOEXEC);
  if (in < 0) die("inotify_init1");
  int wa = inotify_add_watch(in, "wdir/a", IN_CREATE | IN_DELETE);
  int wb = inotify_add_watch(in, "wdir/b", IN_CREATE);
  int wc = inotify_add_watch(in, "wdir/c", IN_CREATE | IN_DELETE | IN_MOVED_TO);
  if (wa < 0 || wb < 0 || wc < 0) die("inotify_add_watch");
  if (inotify_rm_watch(in, wb) < 0) die("inotify_rm_watch");
  int wf = inotify_add_watch(in, "wdir/f", IN_MODIFY | IN_CLOSE_WRITE);
  int wtop = inotify_add_watch(in, "wdir", IN_CREATE | IN_DELETE | IN_ONLYDIR);
  if (wf < 0 || wtop < 0) die("inotify_add_watch");
  std::printf("wds a %d c %d f %d top %d\n", wa, wc, wf, wtop);
  // Drain what the set-up caused (the IN_IGNORED of the removed watch).
  ::fcntl(in, F_SETFL, O_NONBLOCK);
  alignas(inotify_event) char buf[8192];
  while (::read(in, buf, sizeof buf) > 0) {
  }
  ::fcntl(in, F_SETFL, 0);
  for (int r = 0; r < rounds; ++r) {
    std::string name = (r % 2 ? "wdir/c/n" : "wdir/a/n") + std::to_string(r);
    int t = ::open(name.c_str(), O_WRONLY | O_CREAT, 0644);
    if (t < 0) die("create");
    ::close(t);
    if (::unlink(name.c_str()) < 0) die("unlink");
    write_all(f, "x", 1);
    if (r % 5 == 0) {
      std::string top = "wdir/t" + std::to_string(r);
      t = ::open(top.c_str(), O_WRONLY | O_CREAT, 0644);
      if (t < 0) die("create top");
      ::close(t);
      ::unlink(top.c_str());
    }
    // Created + deleted in a or c, modified f, and for every fifth round created +
    // deleted in wdir: wait until they are all read.
    int want = 3 + (r % 5 == 0 ? 2 : 0), got = 0;
    std::string line = "round " + std::to_string(r) + ":";
    while (got < want) {
      ssize_t n = ::read(in, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) die("read inotify");
      for (char* p = buf; p < buf + n;) {
        auto* e = reinterpret_cast<inotify_event*>(p);
        line += " " + std::to_string(e->wd) + "/" + std::to_string(e->mask & ~IN_ISDIR);
        if (e->len) line += "/" + std::string(e->name);
        ++got;
        p += sizeof(inotify_event) + e->len;
      }
    }
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
    tick(tick_ms);
  }
  // A watch added after a restore continues the numbering.
  if (::mkdir("wdir/late", 0755) < 0 && errno != EEXIST) die("mkdir late");
  int wl = inotify_add_watch(in, "wdir/late", IN_CREATE);
  if (wl < 0) die("inotify_add_watch late");
  std::printf("late wd %d\ndone\n", wl);
  return 0;
}

// ---- sysv ---------------------------------------------------------------------------

constexpr std::size_t kSeg = 256 * 1024 + 100;  // not a whole number of pages
constexpr key_t kKey = 0x0f5c4ed1;

void describe_seg(const char* name, int id) {
  shmid_ds ds{};
  if (::shmctl(id, IPC_STAT, &ds) < 0) die("shmctl IPC_STAT");
  std::printf("%s id %d size %zu nattch %lu mode %o\n", name, id, ds.shm_segsz,
              static_cast<unsigned long>(ds.shm_nattch), ds.shm_perm.mode & 01777);
}

int run_sysv(int rounds, int tick_ms) {
  int a = ::shmget(IPC_PRIVATE, kSeg, IPC_CREAT | 0600);
  int b = ::shmget(kKey, kSeg, IPC_CREAT | IPC_EXCL | 0640);
  int c = ::shmget(IPC_PRIVATE, 8192, IPC_CREAT | 0600);
  if (a < 0 || b < 0 || c < 0) die("shmget");
  auto* pa = static_cast<unsigned char*>(::shmat(a, nullptr, 0));
  auto* pb = static_cast<std::uint64_t*>(::shmat(b, nullptr, 0));
  auto* pc = static_cast<std::uint64_t*>(::shmat(c, nullptr, 0));
  if (pa == reinterpret_cast<void*>(-1) || pb == reinterpret_cast<void*>(-1) ||
      pc == reinterpret_cast<void*>(-1))
    die("shmat");
  if (::shmctl(c, IPC_RMID, nullptr) < 0) die("shmctl IPC_RMID");
  int to_child[2], to_parent[2];
  if (::pipe(to_child) < 0 || ::pipe(to_parent) < 0) die("pipe");
  pid_t child = ::fork();
  if (child < 0) die("fork");
  if (child == 0) {
    for (int r = 0;; ++r) {
      int cmd = 0;
      read_all(to_child[0], &cmd, sizeof cmd);
      if (cmd < 0) break;
      pb[r % 1000] = fnv(pa + (r * 4096) % (kSeg - 4096), 4096);
      pc[0] += 1;
      write_all(to_parent[1], &r, sizeof r);
    }
    ::shmdt(pa);
    std::_Exit(0);
  }
  for (int r = 0; r < rounds; ++r) {
    std::memset(pa + (r * 4096) % (kSeg - 4096), 'a' + r % 26, 4096);
    pa[kSeg - 1] = static_cast<unsigned char>(r);  // the last, partial page
    write_all(to_child[1], &r, sizeof r);
    int ack = 0;
    read_all(to_parent[0], &ack, sizeof ack);
    std::uint64_t want = fnv(pa + (r * 4096) % (kSeg - 4096), 4096);
    if (pb[r % 1000] != want || pc[0] != static_cast<std::uint64_t>(r + 1))
      fail("round " + std::to_string(r) + ": the child's answer differs");
    std::printf("round %d hash %016llx\n", r, static_cast<unsigned long long>(want));
    if (r % 10 == 0) {
      describe_seg(" a", a);
      describe_seg(" b", b);
      std::printf(" key of b: %d\n", ::shmget(kKey, 0, 0) == b);
    }
    std::fflush(stdout);
    tick(tick_ms);
  }
  int stop = -1;
  write_all(to_child[1], &stop, sizeof stop);
  int st = 0;
  if (::waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
    fail("child ended badly");
  describe_seg("a", a);
  describe_seg("b", b);
  std::printf("a %016llx b %016llx c %llu\n", static_cast<unsigned long long>(fnv(pa, kSeg)),
              static_cast<unsigned long long>(fnv(pb, kSeg)),
              static_cast<unsigned long long>(pc[0]));
  ::shmctl(a, IPC_RMID, nullptr);
  ::shmctl(b, IPC_RMID, nullptr);
  std::printf("done\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: ckpt_fsobj deleted|inotify|sysv ROUNDS [TICK_MS]\n");
    return 2;
  }
  std::string mode = argv[1];
  int rounds = std::atoi(argv[2]);
  int tick_ms = argc > 3 ? std::atoi(argv[3]) : 20;
  std::setvbuf(stdout, nullptr, _IOFBF, 1 << 16);
  if (mode == "deleted") return run_deleted(rounds, tick_ms);
  if (mode == "inotify") return run_inotify(rounds, tick_ms);
  if (mode == "sysv") return run_sysv(rounds, tick_ms);
  std::fprintf(stderr, "ckpt_fsobj: unknown mode %s\n", mode.c_str());
  return 2;
}
