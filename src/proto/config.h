// fsched.conf: the cluster's configuration, shared by fschedctld, fschedd and the
// commands. Slurm's layout: `Key = Value` lines, `#` comments, and NodeName= /
// PartitionName= lines holding several `Key=Value` words.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "proto/preempt_mode.h"

namespace fsched::proto {

struct NodeConf {
  std::string name;
  std::string addr;          // NodeAddr, default the node's name
  uint16_t port = 0;         // Port, default SlurmdPort
  int cpus = 1;              // CPUs
  uint64_t real_memory = 1;  // RealMemory, MiB
};

struct PartitionConf {
  std::string name;
  std::vector<std::string> nodes;  // Nodes=, ranges such as node[1-3] expanded
  bool is_default = false;         // Default=YES
  int64_t max_time = 0;            // MaxTime, seconds; 0 = INFINITE
  bool up = true;                  // State=UP|DOWN
  // PriorityTier (0..65533, default 1): pending jobs of a higher tier are placed first,
  // and with PreemptType = preempt/partition_prio they preempt running jobs of lower tiers.
  int priority_tier = 1;
  int line = 0;  // of its PartitionName line, for errors
};

struct Config {
  std::filesystem::path file;  // where it was read from
  std::string cluster_name = "cluster";
  std::string control_machine;                // ControlMachine (or SlurmctldHost), required
  std::string control_addr;                   // ControlAddr, default ControlMachine
  uint16_t control_port = 6817;               // ControlPort (SlurmctldPort)
  uint16_t slurmd_port = 6818;                // SlurmdPort: default port of fschedd
  std::filesystem::path state_save_location;  // required: controller's SQLite state
  std::filesystem::path slurmd_spool_dir = "/var/spool/fschedd";  // per-job files of fschedd
  std::filesystem::path checkpoint_dir;  // CheckpointDir, default <StateSaveLocation>/checkpoint
  std::string checkpoint_type = "checkpoint/fsched";  // checkpoint/criu is accepted as a synonym
  int max_epochs = 5;                                 // CRIU_MaxEpochs: checkpoints kept per job
  bool incremental = false;                           // CRIU_Incremental
  int full_every = 10;                                // CRIU_FullEvery
  bool pre_dump = false;                              // CRIU_PreDump
  int pre_dump_delay = 5;                             // CRIU_PreDumpDelay, seconds
  // CRIU_TrackMethod: how incremental checkpoints and pre-dumps find the unchanged
  // pages: "kernel" (written bits), "hash" (page hashes), "" for the engine's default
  // (kernel where the kernel has it). fsched-ckpt dump --track-method.
  std::string track_method;
  // PreemptType = preempt/none | preempt/partition_prio: whether a job pending for
  // resources preempts running jobs of partitions with a lower PriorityTier.
  bool preempt_partition_prio = false;
  PreemptMode preempt_mode = PreemptMode::Off;  // PreemptMode: how they are preempted
  // PreemptExemptTime, seconds: a job that started (or was restored) less than this ago
  // is not preempted. Slurm's time formats; -1 (the default) and 0: no exemption.
  int64_t preempt_exempt_time = 0;
  bool load_aware = false;  // CRIU_LoadAware
  double load_threshold_cpu = 0.95, load_threshold_io = 0.50, load_threshold_memory = 0.85;
  int checkpoint_timeout = 600;  // CheckpointTimeout, seconds
  int kill_wait = 30;            // KillWait, seconds between SIGTERM and SIGKILL
  // SlurmdTimeout: seconds without a heartbeat before a node is NOT_RESPONDING; it is
  // also the lease the controller grants a node, after which the node freezes its jobs.
  int slurmd_timeout = 300;
  int slurmctld_timeout = 120;  // SlurmctldTimeout
  // BatchStartTimeout: seconds a launch or restore may take to report its job running;
  // after that the run has failed, is killed, and the job is retried on another node.
  int batch_start_timeout = 10;
  // HeartbeatInterval (fsched): seconds between node heartbeats. When not set: 10, or
  // SlurmdTimeout/3 if that is less (Slurm pings its nodes every SlurmdTimeout/3), so
  // that a short SlurmdTimeout alone is a valid configuration. Twice it must not
  // exceed SlurmdTimeout: one lost heartbeat must not cost a node its lease.
  int heartbeat_interval = 10;
  // ReturnToService (0 or 1): whether a node that was DOWN because it stopped responding
  // returns to service by itself when it registers again. Default 1, unlike Slurm's 0:
  // fencing (the lease and the generations) makes such a rejoin safe. A node set DOWN by
  // an admin always needs `scontrol update NodeName=X State=RESUME`.
  bool return_to_service = true;
  std::string auth_type = "auth/munge";
  // AuthInfo = cred_expire=N,ttl=N,requeue_timeout=N[,socket=PATH], kept as written;
  // its parts below (socket= sets munge_socket, as MungeSocket does).
  std::string auth_info;
  int cred_expire = 120;      // AuthInfo cred_expire=: seconds a launch request stays valid
  int munge_ttl = 300;        // AuthInfo ttl=: MUNGE credential lifetime, seconds
  int requeue_timeout = 60;   // AuthInfo requeue_timeout=: seconds a NOT_RESPONDING node
                              // stays so before it is DOWN and its jobs are recovered
  std::string munge_socket;   // MungeSocket (fsched): munged's socket, default libmunge's
  int munge_socket_line = 0;  // where MungeSocket was set, for errors
  std::filesystem::path ctld_log_file, ctld_pid_file = "/run/fschedctld.pid";
  std::filesystem::path slurmd_log_file, slurmd_pid_file = "/run/fschedd.pid";
  std::filesystem::path ckpt_tool;  // FschedCkptPath: the engine CLI, default beside the daemon
  // RestPort (fsched, as slurmrestd's port): where fschedctld serves the REST API and the
  // web console (docs/rest.md); 0, the default, serves neither. It needs AuthAltTypes =
  // auth/jwt. RestAddr: the address it binds, loopback only unless TLS is set.
  uint16_t rest_port = 0;
  std::string rest_addr = "127.0.0.1";
  // RestTLSCertFile, RestTLSKeyFile (fsched): PEM certificate chain and private key; with
  // them the REST API is HTTPS and RestAddr may be any address.
  std::filesystem::path rest_tls_cert, rest_tls_key;
  // WebRoot (fsched): the built console's files; default the build tree's web/.
  std::filesystem::path web_root;
  std::string auth_alt_types;  // AuthAltTypes: "auth/jwt" or ""
  // AuthAltParameters jwt_key=: the HS256 key tokens are signed with, root-only; default
  // <StateSaveLocation>/jwt_hs256.key, created by fschedctld when missing.
  std::filesystem::path jwt_key;
  std::vector<NodeConf> nodes;
  std::vector<PartitionConf> partitions;
  // "FILE:LINE: Key = value: ..." for every key that is accepted but has no effect
  // (yet, or ever: slurm.conf keys kept for compatibility), for the daemons to log at
  // start, so that a setting that does nothing is never silent.
  std::vector<std::string> warnings;

  const NodeConf* node(std::string_view name) const;
  const PartitionConf* partition(std::string_view name) const;
  const PartitionConf* default_partition() const;  // Default=YES, else the first
};

// The file to read: $FSCHED_CONF if set, else /etc/fsched/fsched.conf.
std::filesystem::path config_path();

// Parses the file. Throws fsched::Error "FILE:LINE: what is wrong" on an unknown
// key, a malformed value (AuthInfo: "FILE:LINE: AuthInfo = VALUE: what"), a duplicate
// node, or HeartbeatInterval * 2 > SlurmdTimeout (on the line of the later of the two),
// and "FILE: ..." when it cannot be read or a required key (ControlMachine,
// StateSaveLocation, a NodeName) is missing.
Config load_config(const std::filesystem::path& file);
Config parse_config(std::string_view text, const std::filesystem::path& file_for_errors);

// The daemons' start-up check of MungeSocket: throws "FILE:LINE: MungeSocket = PATH:
// why" when it is set and is not an existing socket, rather than failing every
// request later.
void check_munge_socket(const Config& c);

// Expands Slurm host lists: "node[1-3],gpu7" -> node1 node2 node3 gpu7. Throws on a
// malformed range.
std::vector<std::string> expand_hostlist(std::string_view list);

}  // namespace fsched::proto
