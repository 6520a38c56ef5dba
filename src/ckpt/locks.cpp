// File locks (locks.h). The kernel's text for a lock, in /proc/locks and in the
// "lock:" lines of /proc/PID/fdinfo/N (fs/locks.c lock_get_status()):
//   [ID: ] [-> ]KIND STATE TYPE PID MAJ:MIN:INO START END
// KIND POSIX, OFDLCK, FLOCK, LEASE, DELEG or ACCESS; STATE ADVISORY (locks) or ACTIVE,
// BREAKING, BREAKER (leases); TYPE READ, WRITE or UNLCK; MAJ:MIN in hex; END "EOF" for
// a range to the end of the file ("0 EOF" for flock and leases). "->" marks a waiter,
// which is a task blocked in F_SETLKW / flock(): that syscall is restarted on restore.
// fdinfo lists the locks whose file is this open file description and whose owner is
// it (OFD, flock, lease) or this process's fd table (POSIX).
#include "ckpt/locks.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>

#include <algorithm>
#include <functional>
#include <charconv>
#include <map>
#include <set>
#include <string_view>
#include <tuple>
#include <vector>

#include "ckpt/inject.h"
#include "ckpt/proc.h"
#include "ckpt/remote.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {

// One lock line as the kernel printed it.
struct LockLine {
  FileLock lock;
  std::string_view kind, state, type;  // the kernel's words (in the text parsed)
  long pid = 0;                        // in the reader's PID namespace; -1 for OFD locks
  unsigned major = 0, minor = 0;
  std::uint64_t ino = 0;
  bool waiter = false;
  std::string_view text;  // the line, for messages
};

// The next whitespace-separated word of `s` from `pos`; "" at the end.
std::string_view word(std::string_view s, std::size_t& pos) {
  while (pos < s.size() && (s[pos] == ' ' || s[pos] == '\t')) ++pos;
  std::size_t b = pos;
  while (pos < s.size() && s[pos] != ' ' && s[pos] != '\t') ++pos;
  return s.substr(b, pos - b);
}

template <typename T>
bool number(std::string_view w, T& v, int base = 10) {
  auto [p, ec] = std::from_chars(w.data(), w.data() + w.size(), v, base);
  return ec == std::errc() && p == w.data() + w.size();
}

// Lock lines of `text`; with `prefix` ("lock:") only the lines that start with it.
// (Written for speed: a job may hold tens of thousands of locks, all in one fdinfo.)
std::vector<LockLine> parse_lock_lines(std::string_view text, std::string_view prefix) {
  std::vector<LockLine> out;
  for (std::size_t at = 0; at < text.size();) {
    std::size_t eol = text.find('\n', at);
    if (eol == std::string_view::npos) eol = text.size();
    std::string_view line = text.substr(at, eol - at);
    at = eol + 1;
    if (!line.starts_with(prefix)) continue;
    std::size_t pos = prefix.size();
    std::string_view w = word(line, pos);
    if (w.ends_with(":")) w = word(line, pos);  // the lock's number
    LockLine l;
    if (w == "->") {
      l.waiter = true;
      w = word(line, pos);
    }
    l.kind = w;
    l.state = word(line, pos);
    l.type = word(line, pos);
    std::string_view pid = word(line, pos), dev = word(line, pos), start = word(line, pos),
                     end = word(line, pos);
    std::size_t c1 = dev.find(':'), c2 = dev.rfind(':');
    if (end.empty() || !number(pid, l.pid) || c1 == c2 || c1 == std::string_view::npos ||
        !number(dev.substr(0, c1), l.major, 16) ||
        !number(dev.substr(c1 + 1, c2 - c1 - 1), l.minor, 16) || !number(dev.substr(c2 + 1), l.ino))
      fail("cannot parse the kernel's lock line \"{}\"", line);
    l.text = line;
    l.lock.kind = l.kind == "POSIX"    ? LockKind::kPosix
                  : l.kind == "OFDLCK" ? LockKind::kOfd
                  : l.kind == "FLOCK"  ? LockKind::kFlock
                  : l.kind == "LEASE"  ? LockKind::kLease
                                       : LockKind::kUnknown;
    l.lock.write = l.type == "WRITE";
    if (l.lock.kind == LockKind::kPosix || l.lock.kind == LockKind::kOfd) {
      l.lock.to_eof = end == "EOF";
      if (!number(start, l.lock.start) || (!l.lock.to_eof && !number(end, l.lock.end)))
        fail("cannot parse the kernel's lock line \"{}\"", line);
    }
    out.push_back(std::move(l));
  }
  return out;
}

std::string kind_name(LockKind k) {
  switch (k) {
    case LockKind::kPosix:
      return "POSIX";
    case LockKind::kOfd:
      return "OFD";
    case LockKind::kFlock:
      return "flock";
    case LockKind::kLease:
      return "lease";
    case LockKind::kUnknown:
      break;
  }
  return "unknown";
}

std::string describe(const FileLock& l) {
  std::string s = fmt::format("{} {} lock", kind_name(l.kind), l.write ? "write" : "read");
  if (l.kind == LockKind::kPosix || l.kind == LockKind::kOfd)
    s += l.to_eof ? fmt::format(" on bytes {}-EOF", l.start)
                  : fmt::format(" on bytes {}-{}", l.start, l.end);
  return s;
}

bool description_lock(LockKind k) { return k != LockKind::kPosix; }

// The locks that /proc/PID/fdinfo of fd `f` of process `r` must list after restore:
// this process's POSIX locks through the fd's open file description and that
// description's other locks, whichever fd of the job recorded them (dump_fd_locks).
std::vector<FileLock> expected_locks(const Manifest& m, const Process& r, const Fd& f) {
  const Fd* first = &f;
  if (f.shared_fd >= 0) {
    first = nullptr;
    for (auto& q : m.processes)
      if (q.pid == f.shared_pid)
        for (auto& g : q.fds)
          if (g.fd == f.shared_fd) first = &g;
    if (!first)
      fail_image("image: process {} fd {} shares the file of process {} fd {}, which it lacks",
                 r.pid, f.fd, f.shared_pid, f.shared_fd);
  }
  std::vector<FileLock> want;
  for (auto& l : first->locks)
    if (description_lock(l.kind)) want.push_back(l);
  // POSIX locks through a dup of the same process are recorded at its first fd.
  const Fd& posix_of = (f.shared_fd >= 0 && f.shared_pid == r.pid) ? *first : f;
  for (auto& l : posix_of.locks)
    if (!description_lock(l.kind)) want.push_back(l);
  std::sort(want.begin(), want.end());
  return want;
}

}  // namespace

void dump_fd_locks(const DumpProcess& p, Fd& f, const std::string& fdinfo,
                   const std::string& where) {
  if (fdinfo.find("\nlock:") == std::string::npos && fdinfo.rfind("lock:", 0) != 0) return;
  const bool same_process_dup = f.shared_fd >= 0 && f.shared_pid == p.rec.pid;
  for (auto& l : parse_lock_lines(fdinfo, "lock:")) {
    if (l.waiter) continue;
    if (l.lock.kind == LockKind::kUnknown)
      fail_unsupported("{}: this kind of lock ({}) is not supported: \"{}\"", where, l.kind,
                       l.text);
    if (l.lock.kind == LockKind::kLease && l.state != "ACTIVE")
      // Being broken: another open waits for the holder to give it up, and the kernel
      // removes it when lease-break-time runs out; neither can be recreated.
      fail_unsupported("{}: a {} that is being broken ({}) is not supported", where,
                       describe(l.lock), l.state);
    if (l.type != "READ" && l.type != "WRITE")
      fail_unsupported("{}: a {} in state {} {} is not supported", where, describe(l.lock), l.state,
                       l.type);
    // Only regular files are reopened as a description of their own that can be shared
    // again (files.cpp); a lock on a directory or a pipe would come back on another one.
    if (f.kind != FdKind::kFile)
      fail_unsupported("{}: a {} on a file of kind {} is not supported", where, describe(l.lock),
                       to_string(f.kind));
    if (same_process_dup) continue;  // recorded at the first fd of the description
    if (f.shared_fd >= 0 && description_lock(l.lock.kind)) continue;  // ditto, other process
    f.locks.push_back(l.lock);
  }
  std::sort(f.locks.begin(), f.locks.end());
}

namespace {

// (major, minor, inode) of a file, as /proc/locks names it.
using FileKey = std::tuple<unsigned, unsigned, std::uint64_t>;

FileKey vma_key(const Vma& v) { return FileKey{major(v.file.dev), minor(v.file.dev), v.file.ino}; }

// A flock lock that no fd of the job shows, on a file that process `pid` maps: the
// mapping keeps the open file description that took it after its fd was closed (mmap(2)
// holds a reference to the description), so it is recorded on that mapping and taken
// again through the mapping's new description at restore. Returns false if the process
// maps no such file (the lock is then held some other way: an fd in flight).
bool attribute_to_mapping(std::span<DumpProcess> all, long pid, const FileKey& k,
                          const FileLock& l) {
  for (auto& p : all) {
    if (p.host_pid != pid) continue;
    for (auto& v : p.rec.vmas)
      if (v.kind == VmaKind::kFile && v.deleted_key.empty() && vma_key(v) == k) {
        v.flock = l.write ? LOCK_EX : LOCK_SH;
        return true;
      }
  }
  return false;
}

// An OFD lock that no fd of the job shows, on a file that a process of the job maps:
// the mapping may be what holds it (taken, mapped, fd closed: the mapping keeps the
// description), or another process outside the job may hold it on the same file.
// /proc/locks shows OFD locks with pid -1, so the two cannot be told apart; restoring
// would lose the first, recording it would take the second's lock: refused (throws
// when `last_try`; returns true if there is such a mapping).
bool refuse_ofd_mapped(std::span<DumpProcess> all, const FileKey& k, const LockLine& l,
                       bool last_try) {
  for (auto& p : all)
    for (auto& v : p.rec.vmas) {
      if (v.kind != VmaKind::kFile || vma_key(v) != k) continue;
      if (!last_try) return true;
      fail_unsupported(
          "process {} (pid {} in the job): mapping {:x}-{:x} of {}: an {} on this file is held "
          "through no fd of the job (through this mapping, or by another process: /proc/locks "
          "does not say whose OFD lock it is): not supported",
          p.host_pid, p.rec.pid, v.start, v.end, v.path, describe(l.lock));
    }
  return false;
}

// Throws UnsupportedError for a lock of /proc/locks (`held`) that a process of the job
// holds and no fd recorded; `key_of` gives the file of an fd with locks.
void check_attributed(std::span<DumpProcess> all, const std::vector<LockLine>& held,
                      const std::function<FileKey(const DumpProcess&, const Fd&)>& key_of,
                      bool last_try, bool& lost_any) {
  std::map<long, const DumpProcess*> by_pid;
  std::map<std::pair<long, FileKey>, long> posix;    // recorded POSIX locks per process, file
  std::set<std::pair<FileKey, LockKind>> described;  // files with recorded flock / leases
  std::map<FileKey, std::string> path_of;
  for (auto& p : all) {
    by_pid[p.host_pid] = &p;
    for (auto& f : p.rec.fds) {
      if (f.locks.empty()) continue;
      FileKey k = key_of(p, f);
      path_of[k] = f.path;
      for (auto& l : f.locks) {
        if (l.kind == LockKind::kPosix)
          ++posix[{p.host_pid, k}];
        else
          described.insert({k, l.kind});
      }
    }
  }
  for (auto& p : all)
    for (auto& v : p.rec.vmas)
      if (v.flock) described.insert({vma_key(v), LockKind::kFlock});
  std::map<std::pair<long, FileKey>, long> seen;
  // OFD locks recorded per file (at the first fd of their description), against those
  // /proc/locks lists; one more there is another description's, which may be a
  // mapping's of the job (its fd closed) or any other process's: see refuse_ofd_mapped.
  std::map<FileKey, long> ofd_recorded, ofd_seen;
  for (auto& p : all)
    for (auto& f : p.rec.fds)
      for (auto& l : f.locks)
        if (l.kind == LockKind::kOfd) ++ofd_recorded[key_of(p, f)];
  for (auto& l : held) {
    if (l.lock.kind == LockKind::kOfd && !l.waiter) {
      FileKey k{l.major, l.minor, l.ino};
      if (++ofd_seen[k] > ofd_recorded[k] && refuse_ofd_mapped(all, k, l, last_try)) {
        lost_any = true;
        return;
      }
      continue;
    }
    auto it = by_pid.find(l.pid);
    if (l.waiter || it == by_pid.end()) continue;  // OFD locks show pid -1: see fdinfo only
    FileKey k{l.major, l.minor, l.ino};
    bool lost = false;
    if (l.lock.kind == LockKind::kPosix)
      lost = ++seen[{l.pid, k}] > posix[{l.pid, k}];
    else if (l.lock.kind == LockKind::kFlock || l.lock.kind == LockKind::kLease)
      // A flock or lease shows the pid that took it; its description may be held by
      // another process of the job now.
      lost = !described.count({k, l.lock.kind});
    if (lost && l.lock.kind == LockKind::kFlock && attribute_to_mapping(all, l.pid, k, l.lock)) {
      described.insert({k, LockKind::kFlock});
      lost = false;
    }
    if (!lost) continue;
    lost_any = true;
    if (!last_try) return;
    const DumpProcess& p = *it->second;
    auto pit = path_of.find(k);
    fail_unsupported(
        "process {} (pid {} in the job): holds a {} on {} through no fd it has open (an fd "
        "in flight in a socket?): not supported",
        p.host_pid, p.rec.pid, describe(l.lock),
        pit != path_of.end() ? pit->second
                             : fmt::format("device {:x}:{:x} inode {}", l.major, l.minor, l.ino));
  }
}

}  // namespace

void check_unattributed_locks(std::span<DumpProcess> all, const std::string& proc_locks) {
  bool any = false;
  for (auto& p : all)
    for (auto& f : p.rec.fds) any = any || !f.locks.empty();
  std::vector<LockLine> held = parse_lock_lines(proc_locks, "");
  if (!any && held.empty()) return;
  // First by stat(2)'s device and inode, which is what the kernel's lines show on most
  // file systems; where they differ (overlayfs, for one) a lock seems lost, and the
  // file is read again from the fd's own lock lines, which name it as /proc/locks does.
  bool lost = false;
  check_attributed(
      all, held,
      [](const DumpProcess&, const Fd& f) {
        return FileKey{major(f.file.dev), minor(f.file.dev), f.file.ino};
      },
      false, lost);
  if (!lost) return;
  check_attributed(
      all, held,
      [](const DumpProcess& p, const Fd& f) {
        auto lines = parse_lock_lines(
            read_file(fmt::format("/proc/{}/fdinfo/{}", p.host_pid, f.fd)), "lock:");
        // The job is frozen: its locks cannot have gone; if they had, nothing matches
        // and the lock is reported lost, never guessed.
        return lines.empty() ? FileKey{} : FileKey{lines[0].major, lines[0].minor, lines[0].ino};
      },
      true, lost);
}

void restore_locks(RestoreProcess& p, const InjectionArea& area) {
  const Process& r = *p.rec;
  Injector& inj = p.leader();
  for (const Fd& f : r.fds) {
    if (f.locks.empty()) continue;
    std::string who = fmt::format("process {} fd {} ({})", r.pid, f.fd, f.path);
    if (f.kind != FdKind::kFile) fail_image("image: {}: locks on a {} fd", who, to_string(f.kind));
    // Highest range first: the kernel keeps an owner's record locks sorted and walks
    // them to place a new one (posix_lock_inode), so ascending order costs a walk of
    // all those taken so far for each lock (O(n^2): 10,000 locks took ~2 s).
    const std::vector<FileLock> todo(f.locks.rbegin(), f.locks.rend());
    // POSIX and OFD locks' struct flock, written at once: one remote write per batch.
    std::vector<struct flock> ranges;
    for (auto& l : todo) {
      if (l.kind != LockKind::kPosix && l.kind != LockKind::kOfd) continue;
      if (!l.to_eof && l.end < l.start) fail_image("image: {}: bad {}", who, describe(l));
      struct flock fl {};
      fl.l_type = l.write ? F_WRLCK : F_RDLCK;
      fl.l_whence = SEEK_SET;
      fl.l_start = static_cast<off_t>(l.start);
      fl.l_len = l.to_eof ? 0 : static_cast<off_t>(l.end - l.start + 1);
      ranges.push_back(fl);
    }
    const std::size_t batch = area.data_size() / sizeof(struct flock);
    std::size_t next = 0;  // index in ranges
    for (std::size_t i = 0; i < todo.size(); ++i) {
      const FileLock& l = todo[i];
      long rc = 0;
      switch (l.kind) {
        case LockKind::kPosix:
        case LockKind::kOfd: {
          std::size_t slot = next % batch;
          if (slot == 0)
            remote_write(p.host_pid, area.data(), &ranges[next],
                         std::min(batch, ranges.size() - next) * sizeof(struct flock));
          ++next;
          rc = inj.call(SYS_fcntl, static_cast<std::uint64_t>(f.fd),
                        l.kind == LockKind::kPosix ? F_SETLK : F_OFD_SETLK,
                        area.data() + slot * sizeof(struct flock));
          break;
        }
        case LockKind::kFlock:
          rc = inj.call(SYS_flock, static_cast<std::uint64_t>(f.fd),
                        static_cast<std::uint64_t>((l.write ? LOCK_EX : LOCK_SH) | LOCK_NB));
          break;
        case LockKind::kLease:
          rc = inj.call(SYS_fcntl, static_cast<std::uint64_t>(f.fd), F_SETLEASE,
                        static_cast<std::uint64_t>(l.write ? F_WRLCK : F_RDLCK));
          break;
        case LockKind::kUnknown:
          fail_image("image: {}: a lock of a kind this engine does not know", who);
      }
      if (rc == -EAGAIN || rc == -EACCES || rc == -EWOULDBLOCK)
        throw Error(fmt::format("{}: cannot take its {} again: a process outside the job holds a "
                                "conflicting lock or has the file open",
                                who, describe(l)),
                    static_cast<int>(-rc));
      if (rc < 0)
        throw Error(fmt::format("{}: cannot take its {} again", who, describe(l)),
                    static_cast<int>(-rc));
    }
  }
  // Read back: the kernel may merge, split or refuse silently; what each fd shows must
  // be exactly what the dump saw.
  for (const Fd& f : r.fds) {
    if (f.kind != FdKind::kFile) continue;
    std::vector<FileLock> want = expected_locks(*p.image, r, f);
    std::string info = read_file(fmt::format("/proc/{}/fdinfo/{}", p.host_pid, f.fd));
    std::vector<FileLock> got;
    for (auto& l : parse_lock_lines(info, "lock:"))
      if (!l.waiter) got.push_back(l.lock);
    std::sort(got.begin(), got.end());
    if (got != want) {
      auto list = [](const std::vector<FileLock>& v) {
        std::string s;
        for (auto& l : v) s += (s.empty() ? "" : ", ") + describe(l);
        return s.empty() ? std::string("none") : s;
      };
      fail("process {} fd {} ({}): after restore it holds [{}], the dump saw [{}]", r.pid, f.fd,
           f.path, list(got), list(want));
    }
  }
}

}  // namespace fsched::ckpt
