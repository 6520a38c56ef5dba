// fsched-ckpt: the checkpoint/restore engine's command-line tool.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "ckpt/engine.h"
#include "ckpt/parent_chain.h"
#include "ckpt/image.h"
#include "ckpt/imagekey.h"
#include "ckpt/manifest.h"
#include "common/error.h"
#include "common/failure.h"

namespace ck = fsched::ckpt;

namespace {

void write_pidfile(const std::string& path, pid_t pid) {
  if (path.empty()) return;
  std::ofstream f(path);
  f << pid << "\n";
  if (!f) fsched::fail("cannot write pid file {}", path);
}

std::string mib(std::uint64_t b) { return fmt::format("{:.1f} MiB", b / 1048576.0); }

int show(const std::string& dir, bool json, const std::string& key_file) {
  auto key = ck::load_image_key(ck::image_key_path(key_file));
  auto img = ck::ImageReader::open(dir, key);
  const auto& j = img->manifest();
  if (json) {
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  auto m = ck::parse_manifest(j, dir);
  std::cout << fmt::format(
      "image {}\n  format {} engine {} kernel {} xfeatures {:#x} xstate {} bytes\n", dir,
      j.value("format_version", 0), j.value("engine_version", "?"), m.kernel, m.xfeatures,
      m.xstate_size);
  std::cout << fmt::format(
      "  pages: {} stored in {} ({} chunks)\n", mib(j.value("pages_logical_bytes", 0ULL)),
      mib(j.value("pages_stored_bytes", 0ULL)), j.contains("chunks") ? j["chunks"].size() : 0);
  // The chain of an incremental image: each link with the pages it holds itself, of
  // the processes' mappings and of the shared memory objects, deleted files and SysV
  // segments (which every dump that tracks compares by hash).
  struct Own {
    std::uint64_t mine = 0, below = 0;
  };
  auto add = [](Own& o, const auto& runs, const auto& parent_runs) {
    for (auto& r : runs) o.mine += r.second;
    for (auto& r : parent_runs) o.below += r.second;
  };
  auto own_pages = [&](const ck::Manifest& mm) {
    Own mem, objects;
    for (auto& p : mm.processes)
      for (auto& v : p.vmas) add(mem, v.runs, v.parent_runs);
    for (auto& o : mm.shm) add(objects, o.runs, o.parent_runs);
    for (auto& o : mm.deleted_files) add(objects, o.runs, o.parent_runs);
    for (auto& o : mm.sysv_shm) add(objects, o.runs, o.parent_runs);
    std::string out = fmt::format("{} / {} pages", mem.mine, mem.below);
    if (!mm.shm.empty() || !mm.deleted_files.empty() || !mm.sysv_shm.empty())
      out += fmt::format(", shared objects {} / {} pages", objects.mine, objects.below);
    return out;
  };
  // How the link found its unchanged pages (track_method.h), over its mappings.
  auto methods = [](const ck::Manifest& mm) {
    std::set<std::string_view> seen;
    for (auto& p : mm.processes)
      for (auto& v : p.vmas)
        if (v.track != ck::TrackMethod::kNone) seen.insert(ck::to_string(v.track));
    std::string out;
    for (auto name : seen) out += (out.empty() ? "" : "+") + std::string(name);
    return out.empty() ? std::string("-") : out;
  };
  std::cout << fmt::format("  kind {} id {}\n", m.kind, m.image_id.empty() ? "-" : m.image_id);
  if (m.kind == "incremental") {
    std::cout << "  chain (newest first; pages stored in the link / taken from below; "
                 "tracking method):\n";
    ck::Manifest cur = m;
    std::filesystem::path cur_dir = dir;
    for (std::size_t depth = 0; depth <= ck::kMaxChainLinks; ++depth) {
      std::cout << fmt::format("    {} {} {}; {}\n", cur_dir.string(), cur.kind, own_pages(cur),
                               methods(cur));
      if (cur.kind != "incremental") break;
      const std::filesystem::path next = ck::parent_dir(cur_dir, cur);
      ck::Manifest pm;
      try {
        pm = ck::parse_manifest(ck::ImageReader::open(next, key)->manifest(), next.string());
      } catch (const std::exception& e) {
        std::cout << fmt::format("    {} unreadable: {}\n", next.string(), e.what());
        break;
      }
      if (pm.image_id != cur.parent.image_id) {
        std::cout << fmt::format("    {} is image {}, not the parent {} (replaced)\n",
                                 next.string(), pm.image_id, cur.parent.image_id);
        break;
      }
      cur = std::move(pm);
      cur_dir = next;
    }
  }
  for (auto& p : m.processes) {
    std::uint64_t pages = 0;
    for (auto& v : p.vmas)
      for (auto& r : v.runs) pages += r.second;
    std::cout << fmt::format("process {} (parent {}, pgid {}, sid {}) {} uid {} cwd {}\n", p.pid,
                             p.ppid, p.pgid, p.sid, p.exe, p.uids.empty() ? 0 : p.uids[0], p.cwd);
    std::cout << fmt::format(
        "  {} threads, {} VMAs, {} stored pages ({}), {} fds, {} signal handlers\n",
        p.threads.size(), p.vmas.size(), pages, mib(pages * 4096), p.fds.size(),
        p.sigactions.size());
    for (auto& t : p.threads)
      std::cout << fmt::format("  thread {} \"{}\" rip {:#x}\n", t.tid, t.comm,
                               t.regs.size() > 16 ? t.regs[16] : 0);
    for (auto& v : p.vmas)
      std::cout << fmt::format(
          "  {:#014x}-{:#014x} {}{}{}{} {:>8} {}\n", v.start, v.end, v.prot & 1 ? 'r' : '-',
          v.prot & 2 ? 'w' : '-', v.prot & 4 ? 'x' : '-', v.shared ? 's' : 'p',
          [&] {
            std::uint64_t n = 0;
            for (auto& r : v.runs) n += r.second;
            return n;
          }(),
          v.path.empty() ? fmt::format("[{}]", to_string(v.kind)) : v.path);
    for (auto& f : p.fds)
      std::cout << fmt::format(
          "  fd {} {} {} flags {:o} pos {}{}\n", f.fd, to_string(f.kind), f.path, f.flags, f.pos,
          f.shared_fd >= 0 ? fmt::format(" (shared with pid {} fd {})", f.shared_pid, f.shared_fd)
                           : "");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"fsched-ckpt: transparent checkpoint/restore of batch jobs"};
  app.set_version_flag("--version", "fsched-ckpt (fsched) " FSCHED_VERSION);
  app.require_subcommand(1);
  // The controller decides from the exit code whether an image is still worth
  // restoring (docs/failures.md): each class of failure has its own.
  app.footer(fmt::format(
      "Exit status of dump, restore, show and verify (docs/failures.md):\n"
      "  0 success\n"
      "  {} transient failure: may succeed later or on another node (also any unclassified error)\n"
      "  {} usage: bad command line or option\n"
      "  {} image: the image is bad or does not match (corrupt, unsigned, malformed)\n"
      "  {} unsupported: the job holds state the engine cannot checkpoint or restore exactly\n"
      "run and a foreground restore exit with the job's own status once the job runs.",
      fsched::kExitTransient, fsched::kExitUsage, fsched::kExitImage, fsched::kExitUnsupported));

  ck::RunOptions ro;
  bool run_detach = false;
  std::string run_pidfile;
  auto* run =
      app.add_subcommand("run", "start a job under the engine's init in a new PID namespace");
  run->add_flag("--detach,-d", run_detach, "print the host PID of the job's init and return");
  run->add_option("--pidfile", run_pidfile, "write the init's host PID to this file");
  run->add_option("--stdout", ro.stdout_path, "append the job's stdout to this file");
  run->add_option("--stderr", ro.stderr_path, "append the job's stderr to this file");
  run->add_option("--cwd", ro.cwd, "working directory of the job");
  run->add_option("--user", ro.user, "run the job as this user");
  run->add_option("--status-file", ro.status_file, "the init writes the job's exit status here");
  run->add_option("command", ro.argv, "command and arguments (after --)")->required();

  ck::DumpOptions dopt;
  bool dump_json = false;
  std::string dump_dir;
  auto* dump =
      app.add_subcommand("dump", "checkpoint a job: freeze, write the image, kill or thaw");
  dump->add_option("--pid,-t", dopt.pid, "host PID of the job's init (from fsched-ckpt run)")
      ->required();
  dump->add_option("--dir,-D", dump_dir, "image directory to create")->required();
  dump->add_flag("--leave-running,-R", dopt.leave_running, "let the job continue after the dump");
  dump->add_option("--compress-level", dopt.compress_level,
                   "zstd level, 1..19 or negative for faster (default -7)")
      ->check(CLI::Range(-50, 19));
  dump->add_flag(
      "--direct-io", dopt.direct_io,
      "write the page data with O_DIRECT, past the page cache: for images not read back soon here");
  dump->add_option("--tcp-hold", dopt.tcp_hold_s,
                   "seconds a killed job's TCP sockets stay held, locked, for a restore on this "
                   "host to take them over (default 120; 0: closed at once)")
      ->check(CLI::Range(0, 86400));
  dump->add_flag("!--no-pre-copy", dopt.pre_copy,
                 "with --parent and --leave-running: copy the pages written since the parent "
                 "under the freeze instead of before it, with the job running (no memory for "
                 "the early copies; a longer freeze)");
  dump->add_flag("--track-mem", dopt.track_mem,
                 "track the pages the job writes from now on, for a later dump with --parent "
                 "(needs --leave-running; implied by --parent with --leave-running)");
  const char* method_help =
      "how the pages unchanged since the parent are found: kernel (the kernel's written "
      "bits; the job takes a fault on its first write to each page after a dump) or hash "
      "(every page hashed and compared with the parent's: nothing between dumps, but a "
      "longer freeze); default kernel where the kernel has it, else hash";
  std::string dump_method, pre_method;
  dump->add_option("--track-method", dump_method, method_help)
      ->check(CLI::IsMember({"kernel", "hash"}));
  std::string dump_parent;
  dump->add_option("--parent", dump_parent,
                   "an earlier image of the job: store only the pages written since (an "
                   "incremental image), when the job's tracking goes back to it");
  dump->add_flag("--json", dump_json, "print the figures as JSON");
  const std::string key_help = fmt::format(
      "the cluster's image key (default $FSCHED_IMAGE_KEY or {})", ck::kDefaultImageKeyPath);
  dump->add_option("--key", dopt.key_file, key_help + "; made if missing");

  ck::DumpOptions popt;
  std::string pre_dir;
  bool pre_json = false;
  auto* predump = app.add_subcommand(
      "pre-dump",
      "copy a running job's memory and start tracking what it writes: a later dump with "
      "--parent DIR stores only what changed, and freezes the job for less");
  predump->add_option("--pid,-t", popt.pid, "host PID of the job's init (from fsched-ckpt run)")
      ->required();
  predump->add_option("--dir,-D", pre_dir, "image directory to create")->required();
  predump->add_option("--compress-level", popt.compress_level, "zstd level (default -7)")
      ->check(CLI::Range(-50, 19));
  predump->add_option("--key", popt.key_file, key_help + "; made if missing");
  predump->add_flag("--json", pre_json, "print the figures as JSON");
  predump->add_option("--track-method", pre_method, method_help)
      ->check(CLI::IsMember({"kernel", "hash"}));

  ck::RestoreOptions res;
  std::string res_dir, res_pidfile;
  bool res_detach = false, res_json = false;
  auto* restore =
      app.add_subcommand("restore", "recreate a job from its image and let it continue");
  restore->add_option("--dir,-D", res_dir, "image directory")->required();
  restore->add_flag("--detach,-d", res_detach,
                    "print the host PID of the restored init and return");
  restore->add_option("--pidfile", res_pidfile, "write the restored init's host PID to this file");
  restore->add_flag("--json", res_json, "print the figures as JSON on stderr");
  restore->add_option("--key", res.key_file, key_help);

  auto* check = app.add_subcommand("check", "check that this kernel has what the engine needs");

  std::string show_dir;
  bool show_json = false;
  auto* showc = app.add_subcommand("show", "print what an image holds");
  showc->add_option("--dir,-D", show_dir, "image directory")->required();
  showc->add_flag("--json", show_json, "the whole manifest as JSON");
  std::string show_key;
  showc->add_option("--key", show_key, key_help);

  // For fschedd: whether a checkpoint whose writer it lost track of is complete and
  // intact (manifest HMAC, checksum and format, chunk table, every chunk's xxh3).
  std::string verify_dir;
  auto* verifyc = app.add_subcommand(
      "verify", "check that an image is complete and intact (no process is created)");
  verifyc->add_option("--dir,-D", verify_dir, "image directory")->required();
  std::string verify_key;
  verifyc->add_option("--key", verify_key, key_help);
  bool verify_chain = false;
  verifyc->add_flag("--chain", verify_chain,
                    "of an incremental image, also every parent image it is restored from "
                    "(as restore checks them: identity, signature, every chunk)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::cerr << "fsched-ckpt: " << e.what() << " (see --help)\n";
    return fsched::kExitUsage;
  }

  try {
    if (*run) {
      pid_t pid = ck::run_job(ro);
      write_pidfile(run_pidfile, pid);
      if (run_detach) {
        std::cout << pid << std::endl;
        return 0;
      }
      return ck::wait_job(pid);
    }
    if (*dump) {
      dopt.dir = dump_dir;
      dopt.parent = dump_parent;
      if (!dump_method.empty()) dopt.track_method = ck::track_method_from_string(dump_method);
      auto st = ck::dump(dopt);
      if (dump_json) {
        nlohmann::json j{
            {"processes", st.processes},       {"threads", st.threads},
            {"memory_bytes", st.memory_bytes}, {"image_bytes", st.image_bytes},
            {"freeze_ms", st.freeze_ms},       {"dump_ms", st.dump_ms},
            {"incremental", st.incremental},   {"track_method", ck::to_string(st.track)}};
        if (!st.full_because.empty()) j["full_because"] = st.full_because;
        if (!st.tcp_freeze.empty()) j["tcp_freeze"] = st.tcp_freeze;
        if (dopt.leave_running) j["held_bytes"] = st.held_bytes;
        if (dopt.leave_running && !dopt.parent.empty()) {
          j["pre_copied_bytes"] = st.pre_copied_bytes;
          j["pre_copy_ms"] = st.pre_copy_ms;
        }
        for (auto& [name, ms] : st.phases_ms) j["phases_ms"][name] = ms;
        std::cout << j.dump() << "\n";
      } else {
        if (!st.full_because.empty())
          std::cout << "full image, not incremental: " << st.full_because << "\n";
        std::cout << fmt::format(
            "dumped {} processes, {} threads: {} of memory, image {} in {}; frozen {:.0f} ms, "
            "total "
            "{:.0f} ms{}\n",
            st.processes, st.threads, mib(st.memory_bytes), mib(st.image_bytes), dump_dir,
            st.freeze_ms, st.dump_ms, dopt.leave_running ? " (job left running)" : " (job killed)");
      }
      return 0;
    }
    if (*predump) {
      popt.dir = pre_dir;
      if (!pre_method.empty()) popt.track_method = ck::track_method_from_string(pre_method);
      auto st = ck::pre_dump(popt);
      nlohmann::json j{{"processes", st.processes},
                       {"memory_bytes", st.memory_bytes},
                       {"image_bytes", st.image_bytes},
                       {"freeze_ms", st.freeze_ms},
                       {"dump_ms", st.dump_ms}};
      for (auto& [name, ms] : st.phases_ms) j["phases_ms"][name] = ms;
      if (pre_json)
        std::cout << j.dump() << "\n";
      else
        std::cout << fmt::format(
            "pre-dumped {} processes: {} of memory, image {} in {}; frozen "
            "{:.0f} ms, total {:.0f} ms (job left running)\n",
            st.processes, mib(st.memory_bytes), mib(st.image_bytes), pre_dir, st.freeze_ms,
            st.dump_ms);
      return 0;
    }
    if (*restore) {
      res.dir = res_dir;
      auto st = ck::restore(res);
      write_pidfile(res_pidfile, st.init_pid);
      if (res_json) {
        nlohmann::json j{{"restore_ms", st.restore_ms}, {"verify_ms", st.verify_ms},
                         {"processes", st.processes},   {"threads", st.threads},
                         {"pid", st.init_pid},          {"tcp_taken_over", st.tcp_taken_over},
                         {"tcp_reset", st.tcp_reset}};
        for (auto& [name, ms] : st.phases_ms) j["phases_ms"][name] = ms;
        std::cerr << j.dump() << std::endl;
      }
      if (res_detach) {
        std::cout << st.init_pid << std::endl;
        return 0;
      }
      return ck::wait_job(st.init_pid);
    }
    if (*check) {
      bool all = true;
      for (auto& f : ck::check_kernel()) {
        std::cout << fmt::format("{:<48} {}  {}\n", f.name, f.ok ? "ok" : "MISSING", f.detail);
        all = all && f.ok;
      }
      std::cout << (all ? "Looks good.\n" : "Some features are missing.\n");
      return all ? 0 : 1;
    }
    if (*showc) return show(show_dir, show_json, show_key);
    if (*verifyc) {
      const std::vector<std::byte> key = ck::load_image_key(ck::image_key_path(verify_key));
      auto reader = ck::ImageReader::open(verify_dir, key);
      if (verify_chain && reader->manifest().value("kind", std::string()) == "incremental") {
        const ck::Manifest m = ck::parse_manifest(reader->manifest(), verify_dir);
        auto chain = ck::ParentChain::open(verify_dir, m, key, reader.get());
        std::cout << "image " << verify_dir << " and its " << chain->links().size()
                  << " parent image(s) are intact\n";
        return 0;
      }
      reader->verify_chunks();
      std::cout << "image " << verify_dir << " is intact\n";
      return 0;
    }
  } catch (const fsched::Error& e) {
    std::cerr << "fsched-ckpt: " << e.what() << "\n";
    return fsched::exit_code_of(e.failure_class());
  } catch (const std::exception& e) {
    // Not classified where it was thrown (out of memory, a library's error): transient,
    // so that the controller does not condemn an image for it.
    std::cerr << "fsched-ckpt: " << e.what() << "\n";
    return fsched::kExitTransient;
  }
  return 0;
}
