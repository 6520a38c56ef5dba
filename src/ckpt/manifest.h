// The data model of a checkpoint image: what the dumper records about the job and
// the restorer recreates. Stored as manifest.json (see image.h); page contents go to
// the page stream in sections, in the one order of sections.h (kSectionOrder), and
// within a section in the order its parts appear here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ckpt/fd_kind.h"
#include "ckpt/lock_kind.h"
#include "ckpt/sections.h"
#include "ckpt/track_method.h"
#include "ckpt/vma_kind.h"

namespace fsched::ckpt {

// Identity of a file as seen by stat(2), to detect that a file changed after dump.
struct FileId {
  std::uint64_t ino = 0;
  std::uint64_t size = 0;     // bytes
  std::int64_t mtime_ns = 0;  // st_mtim in nanoseconds since the epoch
  // Checked on restore against what a path opens (fsaccess.h); 0 in images older than
  // these fields, where they are not compared.
  std::uint64_t dev = 0;      // st_dev, compared only within the boot that dumped it
  unsigned mode = 0;          // st_mode: file type and permissions
  unsigned uid = 0, gid = 0;  // owner
};

// A NUMA memory policy as get_mempolicy(2) reports it (mempolicy.h): the mode with its
// flags (MPOL_F_STATIC_NODES ...) and the node mask in 64-bit words, trailing zero words
// dropped. The default ({0, {}}) is also what images before it imply.
struct MemPolicy {
  int mode = 0;
  std::vector<std::uint64_t> nodes;
  bool operator==(const MemPolicy&) const = default;
};

// Runs of pages of a mapping, {first page index within the VMA, count}, in increasing
// order. In the manifest (format 10) a string: base64 (RFC 4648, padded) of unsigned
// LEB128 numbers, two per run: its first page minus the end of the run before (0
// before the first run), and its count. An incremental image of a job that writes a
// page here and there holds tens of thousands of runs: as [first, count] arrays they
// made its manifest ~2 MiB, whose parse was most of a chain restore's checking time.
// Formats 3 to 9 wrote arrays, which are still read (and written for runs out of
// order, which no dump makes). A std::vector by inheritance, for its JSON form alone.
struct PageRuns : std::vector<std::pair<std::uint64_t, std::uint64_t>> {
  using vector::vector;
};
// Throws nlohmann::json::type_error for a malformed string (bad base64, a number
// longer than 64 bits, an odd count of numbers, a run past 2^64).
void to_json(nlohmann::json& j, const PageRuns& r);
void from_json(const nlohmann::json& j, PageRuns& r);

// One virtual memory area, as /proc/PID/maps and smaps show it.
struct Vma {
  std::uint64_t start = 0, end = 0;  // [start, end) virtual addresses, page aligned
  int prot = 0;                      // PROT_* bits
  bool shared = false;               // MAP_SHARED
  VmaKind kind = VmaKind::kAnon;     // what backs it (vma_kind.h)
  std::string shm_key;
  std::string path;  // file path for VmaKind::kFile
  // A "file" mapping of a file deleted while mapped: the DeletedFile with this key
  // (its path is then only where the file was).
  std::string deleted_key;
  // kind "sysv": a SysV shared memory attach (shmat(2)) of segment shm_key (its shmid);
  // the attach's SHM_RDONLY / SHM_EXEC flags.
  int shmat_flags = 0;
  std::uint64_t pgoff = 0;  // file offset in bytes
  FileId file;              // identity of the mapped file
  // smaps VmFlags the restore sets and reads back (madvise.h); images older than
  // Process::vmflags_all hold only gd, dc, hg, nh, dd.
  std::vector<std::string> vmflags;
  // Runs of pages stored in the page stream: {first page index within the VMA, count}.
  PageRuns runs;
  // Of an incremental image (Manifest::parent): runs of pages not written since the
  // parent image, which the restore takes from the parent chain at the same address
  // (zero where no link has data). Pages in neither list are zero.
  PageRuns parent_runs;
  // How the dump chose parent_runs (track_method.h): kHash puts a hash of each page of
  // runs and parent_runs, in address order, in the page stream's "page_hashes"
  // section (page_hashes.h), for the next image to compare with.
  TrackMethod track = TrackMethod::kNone;
  // Guard regions (madvise(2) MADV_GUARD_INSTALL; madvise.h): {first page, count}.
  std::vector<std::pair<std::uint64_t, std::uint64_t>> guards;
  // A flock(2) lock held through the open file description of this file mapping alone
  // (the fd that took it was closed after mmap(2), as the JVM does with its perf data
  // file): LOCK_SH or LOCK_EX, taken again on the file's new description; 0 if none.
  int flock = 0;
  MemPolicy mempolicy;  // mbind(2) policy of its own (mempolicy.h)
};

// A file registered in an epoll instance (epoll_ctl(2)).
struct EpollTarget {
  int fd = -1;               // its fd number in the process
  std::uint32_t events = 0;  // EPOLLIN, EPOLLET ...
  std::uint64_t data = 0;    // epoll_data, as the kernel holds it
};

// A watch of an inotify instance, as /proc/PID/fdinfo shows it (proc(5)), with the
// path the dumper found for the watched inode.
struct InotifyWatch {
  int wd = 0;              // watch descriptor
  std::uint64_t ino = 0;   // watched inode
  std::uint64_t sdev = 0;  // its file system's device, kernel encoding (major << 20 | minor)
  std::uint32_t mask = 0;  // IN_* events and flags (IN_ONESHOT, IN_EXCL_UNLINK)
  int handle_type = 0;     // file handle (name_to_handle_at(2)) of the inode
  std::string handle_hex;
  std::string path;
};

// A file lock held through an fd (locks.h), as /proc/PID/fdinfo shows it.
struct FileLock {
  LockKind kind = LockKind::kUnknown;
  bool write = false;       // F_WRLCK / LOCK_EX / write lease; else read / LOCK_SH
  std::uint64_t start = 0;  // first byte (posix, ofd)
  std::uint64_t end = 0;    // last byte, inclusive (posix, ofd), unless to_eof
  bool to_eof = true;       // the range runs to the end of the file (and beyond)
  bool operator==(const FileLock&) const = default;
  auto operator<=>(const FileLock&) const = default;
};

// An open file descriptor.
struct Fd {
  int fd = -1;
  FdKind kind = FdKind::kFile;  // which unit dumps and restores it (fd_kind.h, fd_ops.h)
  std::string path;
  int flags = 0;         // open flags from fdinfo (O_ACCMODE, O_APPEND, O_CLOEXEC ...)
  std::int64_t pos = 0;  // file offset in bytes
  FileId file;           // for "file": identity and size at dump time (bytes)
  // A "file" unlinked while open: key of its DeletedFile (or of a ShmObject, when the
  // job also maps it as shared memory); path is where the file was.
  std::string deleted_key;
  // Same open file description as an fd restored earlier: {ns pid, fd}; {0,-1} if none.
  int shared_pid = 0;
  int shared_fd = -1;
  // Event fds (eventfds.cpp):
  std::uint64_t count = 0;                      // eventfd counter; timerfd expirations not yet read
  bool semaphore = false;                       // EFD_SEMAPHORE
  int clockid = 0, settime_flags = 0;           // timerfd
  std::uint64_t value_ns = 0, interval_ns = 0;  // timerfd: time left, period (ns)
  std::uint64_t sigmask = 0;                    // signalfd
  std::vector<EpollTarget> targets;             // epoll
  std::vector<InotifyWatch> watches;            // inotify, by wd
  // Locks and signal-driven I/O (locks.h, fown.h). Absent in images of older engines,
  // where these defaults are what a new open gives: nothing to restore.
  std::vector<FileLock> locks;  // posix locks this process holds through this fd; ofd,
                                // flock and lease locks of the open file description
                                // (recorded at its first fd only)
  int owner_type = 0;           // F_GETOWN_EX: F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP
  int owner = 0;                // its pid, tid or pgid in the job's PID namespace; 0 none
  int owner_signal = 0;         // F_GETSIG; 0: SIGIO
  int pidfd_pid = 0;            // pidfd (pidfd.h): its pid (or tid) in the job's PID namespace
  // netlink socket (netlink.h): protocol, SOCK_RAW or SOCK_DGRAM, bound port id (0: not
  // bound), connected destination, groups (NETLINK_LIST_MEMBERSHIPS words), SOL_NETLINK
  // flags that are on.
  int nl_protocol = 0, nl_type = 0;
  std::uint32_t nl_portid = 0, nl_dst_portid = 0, nl_dst_group = 0;
  std::vector<std::uint32_t> nl_groups;
  std::vector<int> nl_options;
  // Pseudo-terminal ends (tty.h; absent in older images, which hold none). The
  // termios, window size and packet mode are the pair's (the slave's, as the master's
  // ioctls show them too); f.file has the slave's owner, group and mode.
  int pty_index = -1;             // N of /dev/pts/N
  bool pty_master = false;        // the /dev/ptmx end; else the slave
  std::string termios_hex;        // struct termios2 (TCGETS2)
  std::vector<unsigned> winsize;  // TIOCGWINSZ: rows, columns, x pixels, y pixels
  bool pty_packet = false;        // TIOCGPKT (master)
  bool tty_exclusive = false;     // TIOCGEXCL of this end
};

struct SigAction {
  int sig = 0;
  std::uint64_t handler = 0, flags = 0, restorer = 0, mask = 0;
};

// One seccomp filter of a thread (seccomp(2) SECCOMP_SET_MODE_FILTER).
struct SeccompFilter {
  std::uint64_t flags = 0;  // SECCOMP_FILTER_FLAG_* it was installed with
  std::string prog_hex;     // its struct sock_filter instructions, hex
};

// What confines a thread (capabilities(7), prctl(2), seccomp(2)), restored exactly so a
// restored job never has more privilege than it had.
struct Confinement {
  std::uint64_t cap_inh = 0, cap_prm = 0, cap_eff = 0, cap_bnd = 0, cap_amb = 0;
  unsigned securebits = 0;  // prctl(PR_GET_SECUREBITS)
  bool no_new_privs = false;
  int seccomp_mode = 0;                // 0 none, 2 filter (1, strict, is refused)
  std::vector<SeccompFilter> filters;  // oldest first
};

// A thread's scheduling attributes (struct sched_attr, sched_setattr(2)).
struct SchedAttr {
  unsigned policy = 0;      // SCHED_OTHER, SCHED_BATCH, SCHED_IDLE, SCHED_FIFO, ...
  std::uint64_t flags = 0;  // SCHED_FLAG_RESET_ON_FORK only
  int nice = 0;             // SCHED_OTHER/SCHED_BATCH
  unsigned priority = 0;    // SCHED_FIFO/SCHED_RR
  std::uint64_t runtime = 0, deadline = 0, period = 0;  // SCHED_DEADLINE, ns
  unsigned util_min = 0, util_max = 1024;               // utilization clamps
  bool operator==(const SchedAttr&) const = default;
};

struct Thread {
  int tid = 0;                      // TID in the job's PID namespace
  std::vector<std::uint64_t> regs;  // struct user_regs_struct as 64-bit words
  std::string xstate_hex;           // NT_X86_XSTATE regset
  std::uint64_t sigmask = 0;
  std::uint64_t rseq_addr = 0, rseq_len = 0, rseq_sig = 0;  // rseq_len 0: none
  std::uint64_t robust_list = 0, robust_len = 0;
  std::uint64_t clear_tid_addr = 0;  // set_tid_address(2) value
  std::uint64_t altstack_sp = 0, altstack_size = 0;
  int altstack_flags = 0;
  std::string comm;                      // thread name, /proc/PID/task/TID/comm
  std::vector<std::string> pending_hex;  // per-thread pending siginfo_t, hex
  Confinement confinement;               // capabilities, securebits, no_new_privs, seccomp
  SchedAttr sched;                       // procattr.h
  std::uint64_t timerslack_ns = 0;       // PR_GET_TIMERSLACK; 0: not recorded (older image)
  int pdeath_signal = 0;                 // PR_GET_PDEATHSIG; 0: none
  MemPolicy mempolicy;                   // set_mempolicy(2) policy (mempolicy.h)
};

struct Rlimit {
  int resource = 0;
  std::uint64_t cur = 0, max = 0;
};

struct ItimerVal {
  int which = 0;
  std::uint64_t interval_sec = 0, interval_usec = 0, value_sec = 0, value_usec = 0;
};

// A POSIX timer (timer_create(2); posix_timers.h).
struct PosixTimer {
  int id = 0;                 // the kernel's timer id, restored as it was
  int clockid = 0;            // as the kernel keeps it (CPU clocks of the process: negative)
  int notify = 0;             // SIGEV_SIGNAL, SIGEV_NONE or SIGEV_THREAD_ID
  int signo = 0;              // signal sent on expiry (SIGEV_SIGNAL, SIGEV_THREAD_ID)
  std::uint64_t sigval = 0;   // sigev_value, as a pointer
  int tid = 0;                // SIGEV_THREAD_ID: the target thread's TID in the job
  std::int64_t value_ns = 0;  // time left (0: disarmed)
  std::int64_t interval_ns = 0;
  bool signal_pending = false;  // its signal was queued, not yet taken: fires again at restore
};

struct Process {
  int pid = 0, ppid = 0, pgid = 0, sid = 0;  // in the job's PID namespace; ppid 0 for init
  int exit_signal = 17;                      // signal sent to the parent on exit
  bool zombie = false;                       // exited, not yet reaped by its parent
  int exit_status = 0;                       // for a zombie: wait status (waitpid(2) form)
  // The signal of a job-control stop (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU) the process
  // was in at dump time; 0: running. Restored as a stop again (pstree.h).
  int stop_signal = 0;
  std::string exe;
  FileId exe_file;
  std::string cwd;
  FileId cwd_file;  // identity of the working directory
  unsigned umask = 022;
  unsigned personality = 0;
  int dumpable = 1;
  std::vector<unsigned> uids, gids;  // real, effective, saved, fs
  std::vector<unsigned> groups;
  // prctl(PR_SET_MM_MAP) fields; see prctl(2).
  std::uint64_t start_code = 0, end_code = 0, start_data = 0, end_data = 0, start_brk = 0, brk = 0,
                start_stack = 0, arg_start = 0, arg_end = 0, env_start = 0, env_end = 0;
  std::string auxv_hex;
  std::vector<Vma> vmas;
  std::vector<Fd> fds;
  // Shares its parent's fd table (clone(2) CLONE_FILES): created so again, its fds are
  // its parent's (false in older images).
  bool files_of_parent = false;
  std::vector<SigAction> sigactions;
  std::vector<Rlimit> rlimits;
  std::vector<ItimerVal> itimers;
  std::vector<std::string> shared_pending_hex;  // process-wide pending siginfo_t, hex
  std::vector<Thread> threads;                  // threads[0] is the thread-group leader
  // Process-control attributes (procattr.h). `procattr` says they were recorded: images
  // of engines before them restore without touching them (their defaults are not what
  // the kernel gives a new process, e.g. utilization clamps).
  bool procattr = false;
  // Placement (placement.h); `placement` says it was recorded (older images: untouched).
  bool placement = false;
  std::string root;              // root directory (chroot(2)) as the host sees it; "" for "/"
  FileId root_id;                // its identity at dump
  std::string cgroup;            // cgroup v2 path relative to the job init's; "" for the same
  std::string loginuid;          // /proc/PID/loginuid ("4294967295": unset); "" without audit
  bool child_subreaper = false;  // PR_SET_CHILD_SUBREAPER
  int thp_disable = 0;           // PR_GET_THP_DISABLE's value
  std::uint64_t membarrier = 0;  // membarrier(2) registrations (MEMBARRIER_CMD_REGISTER_* bits)
  int oom_score_adj = 0;         // /proc/PID/oom_score_adj
  // Memory-mapping flags (madvise.h): `vmflags_all` says Vma::vmflags holds every flag
  // the restore sets (older images: only gd dc hg nh dd, and only those are checked);
  // `mlockall` is the mlockall(2) MCL_FUTURE | MCL_ONFAULT in force, 0 if none.
  bool vmflags_all = false;
  int mlockall = 0;
  // POSIX timers (posix_timers.h); absent in older images, whose engines refused them.
  std::vector<PosixTimer> posix_timers;
  // Controlling terminal (tty.h): the index of the job's pty, -1 none (and in older
  // images); for a session leader with one, the terminal's foreground process group.
  int ctty = -1;
  int ctty_pgrp = 0;
};

// A pipe of the job: its buffered bytes are section "pipes" of the page stream, in
// the order of Manifest::pipes.
struct Pipe {
  std::uint64_t ino = 0;       // pipefs inode, as in "pipe:[ino]"
  std::uint64_t capacity = 0;  // bytes, F_GETPIPE_SZ
  std::uint64_t bytes = 0;     // bytes buffered at dump time
  std::string path;            // a named pipe (FIFO); empty for pipe(2) pipes
};

// A shared memory object mapped MAP_SHARED by the job: shared anonymous memory
// (inherited across fork), a memfd, or a file in /dev/shm (POSIX shared memory and
// semaphores). Stored once however many processes map it; its data pages are section
// "shm" of the page stream, in the order of Manifest::shm.
struct ShmObject {
  std::string key;   // "dev:inode" of the object
  std::string path;  // /dev/shm/NAME if it still has that name, else empty
  unsigned mode = 0600, uid = 0, gid = 0;
  std::uint64_t size = 0;                                     // bytes
  std::vector<std::pair<std::uint64_t, std::uint64_t>> runs;  // {first page, count} with data
  // Of an incremental image: pages equal to the parent's (by hash), which the restore
  // takes from the parent chain's object with the same key (parent_chain.h).
  PageRuns parent_runs;
  // kHash: a hash of each page of runs and parent_runs is in "page_hashes" (before
  // the processes' mappings'), for the next image to compare with.
  TrackMethod track = TrackMethod::kNone;
  int seals = -1;  // F_GET_SEALS (memfd.h); -1: not recorded (an older engine's image)
};

// A regular file the job holds open or mapped after it was unlinked (deleted while
// open): its contents are in the image, stored once however many fds and mappings
// refer to it. Its data is section "deleted_files" of the page stream, in the order of
// Manifest::deleted_files. Restored as a new unlinked file in the same directory.
struct DeletedFile {
  std::string key;   // "major:minor:inode", as for ShmObject
  std::string path;  // where it was, without " (deleted)"
  unsigned mode = 0600, uid = 0, gid = 0;
  std::uint64_t size = 0;                                     // bytes
  std::vector<std::pair<std::uint64_t, std::uint64_t>> runs;  // {first page, count} with data
  // As ShmObject::parent_runs and track: pages equal to the parent image's file with
  // the same key, and whether this file's page hashes are in "page_hashes" (after the
  // shared memory objects').
  PageRuns parent_runs;
  TrackMethod track = TrackMethod::kNone;
  int seals = -1;  // F_GET_SEALS of a memfd or tmpfs file (memfd.h); -1: none or not recorded
};

// A SysV shared memory segment (shmget(2)) of the job's IPC namespace, attached or not.
// Its present pages are section "sysv_shm" of the page stream, in the order of
// Manifest::sysv_shm. Restored with the same shmid (kernel.shm_next_id) in the
// restored job's new IPC namespace.
struct SysvShm {
  int id = -1;             // shmid
  int key = 0;             // IPC_PRIVATE (0) for a private or removed segment
  std::uint64_t size = 0;  // bytes, shm_segsz
  unsigned mode = 0600, uid = 0, gid = 0;
  bool removed = false;  // IPC_RMID done, still attached (SHM_DEST)
  std::vector<std::pair<std::uint64_t, std::uint64_t>> runs;  // {first page, count} with data
  // As ShmObject::parent_runs and track (format 12): pages equal to the parent image's
  // segment with the same id and size (key sysv_object_key(id) in the parent chain and
  // in the parent's hashes), and whether this segment's page hashes are in
  // "page_hashes" (after the processes' mappings').
  PageRuns parent_runs;
  TrackMethod track = TrackMethod::kNone;
};

// The key of SysV segment `id` among the objects of a parent chain and of an image's
// page hashes (ParentChain, ParentHashes): a shmid is restored as it was in the job's
// IPC namespace, so it names the same segment from one image of a chain to the next;
// "sysv:" keeps it apart from the "dev:inode" keys of shm objects and deleted files.
inline std::string sysv_object_key(int id) { return "sysv:" + std::to_string(id); }

// A Unix socket of the job. Its queued data (bytes waiting to be read on it) is section
// "sockets" of the page stream, in the order of Manifest::sockets.
// A socket option (getsockopt(2) level and name) and its value as getsockopt returned
// it, of a TCP, UDP (inet.h) or Unix socket (unix_opts.h).
struct InetSockOpt {
  int level = 0, name = 0;  // getsockopt(2) level and option
  std::string hex;          // its value as getsockopt returned it
};

// A file in flight in a Unix socket's queue (unix(7) SCM_RIGHTS), as the receiver
// will get it: the open file description of fd `fd` of job process `pid`, when a
// process of the job holds it too, else (pid 0) Manifest::in_flight[file], opened
// again by path.
struct InFlightFd {
  int pid = 0;
  int fd = -1;
  int file = -1;
};
// The files one queued message carries, in the order the receiver gets them.
struct ScmRights {
  std::uint32_t msg = 0;  // index into UnixSocket::queued
  std::vector<InFlightFd> fds;
};

// SO_PEERCRED and SO_PEERGROUPS of a Unix socket (unix_peercred.h).
struct PeerCred {
  bool set = false;              // false: it has none (never connected, paired nor listening), or
                                 // the image predates them
  int pid = 0;                   // in the job's PID namespace, of a live process or one that
                                 // had exited; 0: made outside the namespace (before format 8:
                                 // or by a process that had exited)
  unsigned uid = 0, gid = 0;     // effective ids of that process then
  std::vector<unsigned> groups;  // its supplementary groups then
};

struct UnixSocket {
  std::uint64_t ino = 0;              // sockfs inode, as in "socket:[ino]"
  int type = 1;                       // SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET
  int state = 0;                      // TCP_ESTABLISHED, TCP_LISTEN, TCP_CLOSE (unconnected)
  std::uint64_t peer = 0;             // inode of the connected peer (in the job), 0 if none
  std::string name;                   // bound path; "@..." for abstract names
  std::vector<std::uint64_t> queued;  // sizes in bytes of the queued messages
  // shutdown(2) state, the kernel's sk_shutdown (issue 13): bit 1 = no more receiving
  // (RCV_SHUTDOWN), bit 2 = no more sending (SEND_SHUTDOWN); 0 in older images.
  int shutdown = 0;
  // A connected stream or seqpacket socket whose peer was closed (its queue still
  // readable, then end of file; writes fail with EPIPE): remade as a pair whose other
  // end is closed once the queue is refilled from it.
  bool peer_gone = false;
  // Files passed with SCM_RIGHTS and not yet received (scm_rights.h), by message.
  std::vector<ScmRights> rights;
  // Options that differ from a fresh socket's (unix_opts.h).
  std::vector<InetSockOpt> opts;
  PeerCred cred;  // its peer's credentials (unix_peercred.h)
};

// A TCP or UDP socket of the job (inet.h), by inode; fds of kind "inet" name it by
// Fd::file.ino. Absent in images of older engines (which refused these sockets).
struct InetSocket {
  std::uint64_t ino = 0;
  int family = 2;    // AF_INET, AF_INET6
  int type = 1;      // SOCK_STREAM (TCP), SOCK_DGRAM (UDP)
  int state = 7;     // TCP state: TCP_LISTEN, TCP_ESTABLISHED; UDP: 1 connected, 7 not
  unsigned uid = 0;  // the socket's owner (sock_i_uid), checked after restore
  std::string local_addr, peer_addr;  // numeric (inet_ntop); "" when unbound / unconnected
  int local_port = 0, peer_port = 0;
  int backlog = 0;  // listen(2) backlog
  std::vector<InetSockOpt> opts;
  // TCP established (TCP_REPAIR): sequence numbers after the queues (TCP_QUEUE_SEQ),
  // the queues, how much of the send queue was not sent yet, negotiated options.
  std::uint32_t snd_seq = 0, rcv_seq = 0;
  std::string sendq_hex, recvq_hex;
  std::uint32_t unsent = 0;
  std::uint32_t mss = 0, tcpi_options = 0, snd_wscale = 0, rcv_wscale = 0, timestamp = 0;
  std::uint32_t snd_wl1 = 0, snd_wnd = 0, max_window = 0, rcv_wnd = 0, rcv_wup = 0;
};

// What an image is (docs/incremental.md).
struct ParentImage {
  std::string dir;       // the parent's image directory, relative to this image's parent
                         // directory when it is a sibling, else absolute
  std::string image_id;  // its Manifest::image_id
};

struct Manifest {
  // 32 hex digits, random, made by the dump: how an incremental image names its parent.
  std::string image_id;
  // "full", "incremental" (its pages since `parent` only) or "pre-dump" (private memory
  // only, taken while the job ran; not restorable by itself). Absent: "full".
  std::string kind = "full";
  ParentImage parent;              // of an incremental image; empty otherwise
  std::string kernel;              // uname -r at dump time
  std::uint64_t xfeatures = 0;     // XCR0 of the dumping CPU
  std::uint64_t xstate_size = 0;   // bytes of the NT_X86_XSTATE regset
  std::int64_t dump_time_ns = 0;   // CLOCK_REALTIME
  std::string boot_id;             // /proc/sys/kernel/random/boot_id of the dumping host
  std::vector<Process> processes;  // parents before children
  std::vector<Pipe> pipes;
  std::vector<ShmObject> shm;
  std::vector<DeletedFile> deleted_files;
  std::vector<SysvShm> sysv_shm;
  std::vector<UnixSocket> sockets;
  std::vector<InetSocket> inet_sockets;  // TCP and UDP (inet.h); absent in older images
  // The abstract socket name at which the network lock's guardian holds the killed
  // job's TCP sockets for a restore on this host (netlock.h); "" without TCP sockets.
  std::string netlock;
  // Files in flight that no process of the job holds (regular files, directories,
  // devices), which InFlightFd::file indexes; Fd::fd is unused (-1).
  std::vector<Fd> in_flight;
  // Where each section of the page stream starts, in kSectionOrder; written by
  // ImageWriter::commit() (image.h), checked by validate_manifest().
  std::vector<SectionStart> sections;
};

// JSON mapping of the manifest; absent keys keep their defaults.
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(MemPolicy, mode, nodes)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(FileId, ino, size, mtime_ns, dev, mode, uid, gid)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(Vma, start, end, prot, shared, kind, shm_key, path,
                                                deleted_key, shmat_flags, pgoff, file, vmflags,
                                                runs, parent_runs, track, guards, flock, mempolicy)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(EpollTarget, fd, events, data)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(InotifyWatch, wd, ino, sdev, mask, handle_type,
                                                handle_hex, path)
// A lock as [kind, write, start, end, to_eof]: a job may hold tens of thousands, each
// converted while the job is frozen, and an array costs far less than an object with
// its keys (format 6). Formats 3 to 5 wrote objects, which are still read.
inline void to_json(nlohmann::json& j, const FileLock& l) {
  j = nlohmann::json::array({l.kind, l.write, l.start, l.end, l.to_eof});
}
inline void from_json(const nlohmann::json& j, FileLock& l) {
  l = FileLock{};
  if (j.is_array()) {
    if (j.size() != 5)
      throw nlohmann::json::type_error::create(302, "a lock is an array of 5 values", &j);
    j[0].get_to(l.kind);
    j[1].get_to(l.write);
    j[2].get_to(l.start);
    j[3].get_to(l.end);
    j[4].get_to(l.to_eof);
    return;
  }
  l.kind = j.value("kind", l.kind);
  l.write = j.value("write", l.write);
  l.start = j.value("start", l.start);
  l.end = j.value("end", l.end);
  l.to_eof = j.value("to_eof", l.to_eof);
}
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(
    Fd, fd, kind, path, flags, pos, file, deleted_key, shared_pid, shared_fd, count, semaphore,
    clockid, settime_flags, value_ns, interval_ns, sigmask, targets, watches, locks, owner_type,
    owner, owner_signal, pidfd_pid, nl_protocol, nl_type, nl_portid, nl_dst_portid, nl_dst_group,
    nl_groups, nl_options, pty_index, pty_master, termios_hex, winsize, pty_packet, tty_exclusive)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(SigAction, sig, handler, flags, restorer, mask)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(SeccompFilter, flags, prog_hex)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(Confinement, cap_inh, cap_prm, cap_eff, cap_bnd,
                                                cap_amb, securebits, no_new_privs, seccomp_mode,
                                                filters)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(SchedAttr, policy, flags, nice, priority, runtime,
                                                deadline, period, util_min, util_max)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(Thread, tid, regs, xstate_hex, sigmask, rseq_addr,
                                                rseq_len, rseq_sig, robust_list, robust_len,
                                                clear_tid_addr, altstack_sp, altstack_size,
                                                altstack_flags, comm, pending_hex, confinement,
                                                sched, timerslack_ns, pdeath_signal, mempolicy)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(Rlimit, resource, cur, max)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(ItimerVal, which, interval_sec, interval_usec,
                                                value_sec, value_usec)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(PosixTimer, id, clockid, notify, signo, sigval, tid,
                                                value_ns, interval_ns, signal_pending)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(
    Process, pid, ppid, pgid, sid, exit_signal, zombie, exit_status, stop_signal, exe, exe_file,
    cwd, cwd_file, umask, personality, dumpable, uids, gids, groups, start_code, end_code,
    start_data, end_data, start_brk, brk, start_stack, arg_start, arg_end, env_start, env_end,
    auxv_hex, vmas, fds, sigactions, rlimits, itimers, shared_pending_hex, threads, procattr,
    child_subreaper, thp_disable, membarrier, oom_score_adj, vmflags_all, mlockall, files_of_parent,
    placement, root, root_id, cgroup, loginuid, posix_timers, ctty, ctty_pgrp)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(Pipe, ino, capacity, bytes, path)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(ShmObject, key, path, mode, uid, gid, size, runs,
                                                parent_runs, track, seals)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(DeletedFile, key, path, mode, uid, gid, size, runs,
                                                parent_runs, track, seals)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(SysvShm, id, key, size, mode, uid, gid, removed,
                                                runs, parent_runs, track)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(InetSockOpt, level, name, hex)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(InFlightFd, pid, fd, file)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(ScmRights, msg, fds)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(PeerCred, set, pid, uid, gid, groups)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(UnixSocket, ino, type, state, peer, name, queued,
                                                shutdown, peer_gone, rights, opts, cred)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(InetSocket, ino, family, type, state, uid,
                                                local_addr, peer_addr, local_port, peer_port,
                                                backlog, opts, snd_seq, rcv_seq, sendq_hex,
                                                recvq_hex, unsent, mss, tcpi_options, snd_wscale,
                                                rcv_wscale, timestamp, snd_wl1, snd_wnd, max_window,
                                                rcv_wnd, rcv_wup)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(ParentImage, dir, image_id)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(Manifest, image_id, kind, parent, kernel, xfeatures,
                                                xstate_size, dump_time_ns, boot_id, processes,
                                                pipes, shm, deleted_files, sysv_shm, sockets,
                                                inet_sockets, netlock, in_flight, sections)

// `j` (an image's manifest, ImageReader::manifest()) as a Manifest. Throws ImageError
// "WHERE: malformed manifest: ..." when a field has the wrong type.
Manifest parse_manifest(const nlohmann::json& j, const std::string& where);

// Hex helpers for binary blobs stored in the manifest.
std::string to_hex(const void* data, std::size_t len);
std::vector<std::uint8_t> from_hex(const std::string& hex);

}  // namespace fsched::ckpt
