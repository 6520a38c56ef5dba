// Restore: verify the image completely, then build the tree in a new PID namespace
// and turn each helper process into its saved self by injected syscalls, finishing
// with credentials, registers and signal masks; all tasks are released together.
// Any failure kills the new namespace's init, and with it everything created.
#include <sys/ptrace.h>
#include <sys/utsname.h>
#include <sys/wait.h>

#include <chrono>
#include <csignal>

#include "ckpt/creds.h"
#include "ckpt/deleted.h"
#include "ckpt/engine.h"
#include "ckpt/files.h"
#include "ckpt/fown.h"
#include "ckpt/fsaccess.h"
#include "ckpt/imagekey.h"
#include "ckpt/inet.h"
#include "ckpt/inotify.h"
#include "ckpt/madvise.h"
#include "ckpt/locks.h"
#include "ckpt/memory.h"
#include "ckpt/parent_chain.h"
#include "ckpt/pipes.h"
#include "ckpt/mempolicy.h"
#include "ckpt/placement.h"
#include "ckpt/procattr.h"
#include "ckpt/pstree.h"
#include "ckpt/restore_context.h"
#include "ckpt/tty.h"
#include "ckpt/sections.h"
#include "ckpt/shmem.h"
#include "ckpt/signals.h"
#include "ckpt/sockets.h"
#include "ckpt/sysvshm.h"
#include "ckpt/threads.h"
#include "ckpt/timers.h"
#include "ckpt/posix_timers.h"
#include "ckpt/validate.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {

double ms_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

void check_cpu(const Manifest& m) {
  std::uint64_t here = cpu_xfeatures();
  if (m.xfeatures != here)
    fail(
        "restore refused: the image was dumped on a CPU with xstate features {:#x}, this CPU "
        "has {:#x}",
        m.xfeatures, here);
}

// Kills the new namespace through its init and collects every task as their tracer,
// children and threads first: a dying init waits until its namespace is empty, and a
// traced task leaves only once its tracer has seen it exit.
void kill_restored(std::vector<RestoreProcess>& procs) {
  if (procs.empty()) return;
  ::kill(procs[0].host_pid, SIGKILL);
  for (auto p = procs.rbegin(); p != procs.rend(); ++p)
    for (auto t = p->threads.rbegin(); t != p->threads.rend(); ++t) {
      if (t->inj) t->inj->abandon();
      int st;
      while (::waitpid(t->host_tid, &st, __WALL) > 0 && !WIFEXITED(st) && !WIFSIGNALED(st)) {
      }
    }
}

}  // namespace

RestoreStats restore(const RestoreOptions& o) {
  auto t0 = std::chrono::steady_clock::now();
  auto reader = ImageReader::open(o.dir, load_image_key(image_key_path(o.key_file)));
  // ImageReader::open() has checked the format version; which engine build wrote the
  // image does not matter (image.h, "Versions").
  Manifest m = parse_manifest(reader->manifest(), o.dir.string());
  if (m.kind == "pre-dump")
    fail_usage(
        "{} is a pre-dump: it holds memory only and is not restorable by itself (dump "
        "with --parent {} to make an image that is)",
        o.dir.string(), o.dir.string());
  if (m.processes.empty()) fail_image("{}: the image holds no process", o.dir.string());
  validate_manifest(m, reader->manifest().value("pages_logical_bytes", std::uint64_t{0}));
  check_cpu(m);
  // The image's pages and every link of an incremental image's chain, verified before
  // any process exists.
  std::unique_ptr<ParentChain> chain;
  if (m.kind == "incremental")
    chain = ParentChain::open(o.dir, m, load_image_key(image_key_path(o.key_file)), reader.get());
  else if (m.kind == "full")
    reader->verify_chunks();
  else
    fail_image("{}: unknown image kind \"{}\"", o.dir.string(), m.kind);
  check_files(m);
  check_deleted_files(m);
  check_inotify_watches(m);
  RestoreStats st;
  st.verify_ms = ms_since(t0);
  auto lap = std::chrono::steady_clock::now();
  st.phases_ms.emplace_back("verify", st.verify_ms);
  auto phase = [&](const char* name) {
    auto now = std::chrono::steady_clock::now();
    st.phases_ms.emplace_back(name, std::chrono::duration<double, std::milli>(now - lap).count());
    lap = now;
  };

  InjectionArea area;
  std::vector<RestoreProcess> procs;
  try {
    create_tree(m, area, procs);
    phase("tree");
    auto pages = reader->pages();
    std::vector<RestoreProcess*> live;  // zombies are complete once made (make_zombies)
    for (auto& p : procs)
      if (!p.rec->zombie) live.push_back(&p);
    // From here on every path is resolved with the job's file-system credentials
    // (fsaccess.h); init takes those of each object's owner while it creates it.
    for (auto* p : live)
      if (p->rec->pid != 1)
        act_as(p->leader(), p->host_pid, area, p->rec, fmt::format("process {}", p->rec->pid));
    InitStash stash(procs[0]);
    InetRestore inet(m);  // TCP connections in repair mode until all exist (inet.h)
    ShmTable shm;
    PipeTable pipes;
    SocketTable sockets;
    SocketRefill refill;  // queued messages, sent once every fd exists
    // The page stream, section by section in the order dump wrote it (sections.h); the
    // reader checks that each section starts where the dump recorded.
    for (Section s : kSectionOrder) {
      if (s == Section::kPageHashes) break;  // for the next dump (page_hashes.h), not us
      pages->enter_section(s);
      switch (s) {
        case Section::kShm:
          shm = create_shm(stash, area, m, *pages, chain.get());
          break;
        case Section::kDeletedFiles:
          create_deleted_files(stash, area, m, *pages, shm, chain.get());
          break;
        case Section::kSysvShm:
          create_sysv_shm(procs[0], m, *pages, chain.get());
          break;
        case Section::kPages:
          for (auto* p : live) restore_memory(*p, area, *pages, shm, chain.get());
          finish_sysv_shm(procs[0], m);
          phase("memory");
          break;
        case Section::kPipes:
          pipes = create_pipes(stash, area, m, *pages);
          break;
        case Section::kSockets:
          sockets = create_sockets(stash, procs, area, m, *pages, refill);
          break;
        case Section::kPageHashes:
          break;
      }
    }
    make_zombies(procs, area);
    std::uint64_t restored_end = reader->manifest().value("pages_logical_bytes", std::uint64_t{0});
    for (const SectionStart& sec : m.sections)
      if (sec.name == section_name(Section::kPageHashes)) restored_end = sec.offset;
    if (pages->position() != restored_end)
      throw ImageError(
          fmt::format("{}: the restore read {} bytes of a page stream whose restored "
                      "part is {}",
                      o.dir.string(), pages->position(), restored_end));
    for (auto* p : live) {
      restore_files(*p, area, pipes, sockets, shm);
      restore_signals(*p, area);
      restore_process_attrs(*p, area);
      restore_threads(*p, area);
      restore_placement(*p, area);
    }
    refill_sockets(
        refill, stash, procs,
        FdRestoreCtx{
            .proc = procs[0], .area = area, .pipes = pipes, .sockets = sockets, .objects = shm});
    auto tcp = inet.finish();
    st.tcp_taken_over = tcp.taken_over;
    st.tcp_reset = tcp.reset;
    seal_shm_objects(stash, m, shm);
    stash.close_all();
    close_ptys_in_init(procs[0]);  // the job's fds hold the masters now (tty.h)
    for (auto* p : live) {
      restore_creds(*p, area);
      // With the job's credentials: a lease needs them, an fd owner records them.
      restore_locks(*p, area);
      restore_fd_owners(*p, area);
      restore_process_ctl(*p, area);
      restore_thread_mempolicies(*p, area);
      restore_vma_locks(*p);
      restore_pending_signals(*p, area);
      restore_timers(*p, area);
      restore_posix_timers(*p, area);
      unmap_injection_area(*p, area);
    }
    for (auto* p : live)
      for (auto& t : p->threads) t.inj->restore();
    queue_stops(procs);
    phase("state");
  } catch (...) {
    kill_restored(procs);
    throw;
  }
  for (auto& p : procs) {
    if (p.rec->zombie) continue;
    st.threads += static_cast<int>(p.threads.size());
    for (auto& t : p.threads) {
      t.inj.reset();  // nothing left to put back: the final state is installed
      ::ptrace(PTRACE_DETACH, t.host_tid, nullptr, nullptr);
    }
  }
  st.processes = static_cast<int>(procs.size());
  st.init_pid = procs[0].host_pid;
  st.restore_ms = ms_since(t0);
  return st;
}

}  // namespace fsched::ckpt
