// libfsched-ckpt: checkpoint and restore of a job's process tree.
// All functions need root (CAP_SYS_PTRACE, CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE)
// and throw fsched::Error with a one-line message naming what failed and where.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "ckpt/track_method.h"

namespace fsched::ckpt {

// ---- run: start a job under the engine's init -------------------------------------
struct RunOptions {
  std::vector<std::string> argv;         // command and arguments (argv[0] looked up in PATH)
  std::string stdout_path, stderr_path;  // appended to (O_APPEND); empty: inherit
  std::string cwd;                       // working directory; empty: current
  std::string user;                      // run as this user (uid, gid, groups); empty: caller
  std::string status_file;               // init writes the job's exit status here; optional
};
// Starts fsched-init as pid 1 of a new PID namespace and session; it runs the job with
// stdin from /dev/null. Returns the host PID of that init, a child of the caller.
// Throws Error if the command cannot be found or the user does not exist.
pid_t run_job(const RunOptions& opt);
// Waits for a child init and returns the job's exit status as a shell would report
// it: the exit code, or 128 + signal number.
int wait_job(pid_t init_pid);

// ---- dump ---------------------------------------------------------------------------
struct DumpOptions {
  pid_t pid = 0;               // host PID of a job's init (from run_job)
  std::filesystem::path dir;   // image directory to create; must not exist
  bool leave_running = false;  // thaw the job afterwards instead of killing it
  // zstd level. A fast (negative) level by default: the job stays frozen while its
  // memory is compressed. python3 holding 215 MiB (bench/ckpt_bench.py python-200,
  // medians of 3): level 1 dumps in 659 ms to 119.9 MiB, level -7 in 433 ms to
  // 132.8 MiB; repetitive text is still stored >100x smaller.
  int compress_level = -7;
  // Write the page data with O_DIRECT (ImageWriter::create). A 2 GiB random job
  // dumped (killed) in 2.6-3.2 s instead of 2.5-9.4 s here, but its restore right
  // after then reads the image from the disk (3.4-7.7 s instead of 1.0-2.0), and a
  // --leave-running dump stays frozen longer (2.7-3.4 s instead of 2.1-2.3: the
  // disk, not the page cache, sets the pace). For images that will not be read back
  // soon on this node; it keeps them out of the page cache.
  bool direct_io = false;
  // The cluster's image key (imagekey.h) that signs the manifest; "" for
  // $FSCHED_IMAGE_KEY or the default path. Created if missing.
  std::string key_file;
  // Seconds the TCP sockets of a killed job stay held, locked, for a restore on this
  // host to take them over (netlock.h); 0 closes them at once.
  unsigned tcp_hold_s = 120;
  // Track the job's written pages from this dump on (CRIU's --track-mem), so that a
  // later dump with `parent` = this image stores only what changed
  // (docs/incremental.md). Only with leave_running. Implied by `parent` with
  // leave_running: an incremental dump of a job left running keeps it tracked.
  bool track_mem = false;
  // An earlier image of the same job, which tracking started at: this image stores
  // only the pages written since and names it as its parent. When the job's tracking
  // does not go back to that image (another image was dumped since, a dump failed,
  // the job was restored), the image is full and DumpStats::incremental says so.
  std::filesystem::path parent;
  // How the pages unchanged since the parent are found (track_method.h): the kernel's
  // written bits (kKernel: a fault on the job's first write to each page after a dump),
  // or hashes of every page compared with the parent's (kHash: no cost to the running
  // job, but the dump reads and hashes all its memory while frozen). Unset: kKernel
  // where the kernel has it (written_pages.h), else kHash. Used with track_mem or parent.
  std::optional<TrackMethod> track_method;
  // An incremental dump left running with the kernel's tracking first copies, while
  // the job runs, the pages written since the parent (precopy.h), so that the freeze
  // copies only what is written after that. Off: those pages are copied under the
  // freeze, and the dump needs no memory for the copies (up to what it stores).
  bool pre_copy = true;
};
struct DumpStats {
  int processes = 0, threads = 0;
  std::uint64_t memory_bytes = 0;  // non-zero page contents stored
  std::uint64_t image_bytes = 0;   // bytes of the image directory's files
  double freeze_ms = 0;            // how long the job was stopped
  double dump_ms = 0;              // the whole dump, including the durable commit
  // Where the time went, in order: {"seize", ms} (freeze and attach), {"layout", ms}
  // (ids, namespaces, mappings), {"process", ms} (threads, signals, credentials...),
  // {"state", ms} (files, sockets), {"pages", ms}, then "thaw" and "commit" or
  // "commit" and "kill".
  std::vector<std::pair<std::string, double>> phases_ms;
  bool incremental = false;                // pages since DumpOptions::parent only
  TrackMethod track = TrackMethod::kNone;  // how those were found (kNone: a full image)
  std::string full_because;                // why not, when a parent was given
  // Bytes of page stream copied under the freeze and compressed and written only after
  // the thaw (ImageWriter::hold: a dump left running), as held at the thaw; 0 when
  // nothing was held or the job outgrew the estimate.
  std::uint64_t held_bytes = 0;
  // The pre-copy round of an incremental dump left running (precopy.h), before the
  // freeze: bytes of pages it found written since the parent and copied out of the
  // running job, and how long it took (ms); 0 when there was none.
  std::uint64_t pre_copied_bytes = 0;
  double pre_copy_ms = 0;
  // What kept the job from running while its TCP connections were in repair mode, so
  // that a dumper killed then cannot harm it (cgroup_freeze.h): "cgroup PATH", "none:
  // WHY" (only ptrace), "" when the job had no connection.
  std::string tcp_freeze;
};
// Freezes every thread of the tree (ptrace), writes the image, then kills the job or
// lets it continue. On any failure the job is thawed unharmed and no directory `dir`
// exists (a partial `dir.tmp` is removed).
DumpStats dump(const DumpOptions& opt);

// Pre-dump (docs/incremental.md): freezes the tree only to read its memory layout and
// start (or reset) tracking its written pages, thaws it, then writes the private pages
// and the shared memory objects, deleted files and SysV segments (with their page
// hashes) of the running job to an
// image of kind "pre-dump" in `opt.dir`, which a later `dump` takes as its parent.
// Uses pid, dir, compress_level, direct_io, key_file and track_method of `opt`. Not
// restorable by itself. Failure: as dump().
DumpStats pre_dump(const DumpOptions& opt);

// ---- restore ------------------------------------------------------------------------
struct RestoreOptions {
  std::filesystem::path dir;
  // The cluster's image key (imagekey.h); "" for $FSCHED_IMAGE_KEY or the default path.
  // The image's manifest HMAC is checked with it before anything else.
  std::string key_file;
};
struct RestoreStats {
  pid_t init_pid = 0;  // host PID of the restored init, a child of the caller
  int processes = 0, threads = 0;
  double restore_ms = 0;  // from start until the job runs again
  double verify_ms = 0;   // of which: verifying the image before creating processes
  std::vector<std::pair<std::string, double>> phases_ms;  // as in DumpStats
  // TCP connections: the dumped sockets taken over from the network lock's guardian
  // (netlock.h), and those their peers had reset (the program gets ECONNRESET).
  int tcp_taken_over = 0, tcp_reset = 0;
};
// Verifies the image (manifest, every chunk checksum, CPU xstate features, mapped
// files unchanged), then recreates the tree in a new PID namespace and lets it run.
// On failure nothing it created is left alive.
RestoreStats restore(const RestoreOptions& opt);

// ---- check and show -----------------------------------------------------------------
struct Feature {
  std::string name;
  bool ok = false;
  std::string detail;
};
// Probes the kernel features the engine needs (like `criu check`).
std::vector<Feature> check_kernel();

// The XCR0 register of this CPU: which xstate components (SSE, AVX, AVX-512...) exist.
std::uint64_t cpu_xfeatures();

// 32 lowercase hex digits from getrandom(2): image ids, tracking epochs. Throws Error
// if getrandom fails.
std::string random_id();

}  // namespace fsched::ckpt
