// fschedctld's core: the job queue, placement of jobs on nodes, the job and
// checkpoint lifecycle (periodic, manual and vacate checkpoints, retention,
// restart from a checkpoint with fallback to an older one) and the RPC routes of
// docs/scheduler.md. All state is in memory, guarded by one mutex, and written
// through to the Store before a change is answered.
#pragma once

#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "ctld/state.h"
#include "ctld/store.h"
#include "proto/config.h"
#include "proto/node_requests.h"
#include "proto/node_state.h"
#include "proto/rpc.h"

namespace fsched::ctld {

// A submit request (POST /v1/jobs) decoded and checked against the configuration,
// without the controller's state: the job (not yet numbered), its script and
// environment, and the output paths with their %j patterns not yet expanded.
// Throws proto::RpcError (400) or nlohmann::json::exception (sent as 400) on a bad body.
struct SubmitRequest {
  Job job;
  std::string script;
  nlohmann::json env;
  std::string stdout_pattern, stderr_pattern;
};
SubmitRequest decode_submit(const nlohmann::json& body, const proto::Caller& caller,
                            const proto::Config& cfg);

// How the controller reaches fschedd: an interface so that the unit tests can put a
// fake node in its place and drive the job lifecycle without daemons.
class NodeClient {
 public:
  virtual ~NodeClient() = default;
  // POSTs body to path (/v1/node/launch, ...) on the node named node and returns its
  // reply, waiting at most timeout_s. Throws proto::RpcError with the node's status on
  // an error reply, and another std::exception (fsched::Error) when no reply came:
  // the controller tells these apart (the request may have been carried out).
  virtual nlohmann::json post(const std::string& node, std::string_view path,
                              const nlohmann::json& body, int timeout_s) = 0;
};
// The real one: proto::Client to the node's NodeAddr:Port in cfg, which must outlive it.
std::unique_ptr<NodeClient> rpc_node_client(const proto::Config& cfg);

class Controller {
 public:
  // Loads the state from <StateSaveLocation>/fsched.db. Checkpoints left Creating by
  // a previous controller stay Creating until their node reports how the dump ended
  // (a daemon's death says nothing about the image). node_rpc: how to reach the nodes,
  // rpc_node_client() when null. Throws fsched::Error.
  explicit Controller(proto::Config cfg, std::unique_ptr<NodeClient> node_rpc = nullptr);
  ~Controller();

  // The MUNGE API's routes (docs/scheduler.md): the user routes, the nodes' reports and
  // POST /v1/token.
  void add_routes(proto::Server& server);
  // The REST API's (docs/rest.md), on a server of its own taking the JWTs this
  // controller issues: the user routes, GET /v1/whoami, and the web console's files
  // from WebRoot (default: the build's web/) with /openapi.json. Throws fsched::Error
  // when WebRoot is set and cannot be read.
  void add_rest_routes(proto::Server& server);
  // Starts the scheduling thread: placement, periodic checkpoints, time limits.
  void start();
  void stop();

 private:
  using json = nlohmann::json;
  using Lock = std::unique_lock<std::mutex>;

  // routes
  // A route's handler: member fn of this controller.
  proto::Server::Handler handler(json (Controller::*fn)(const proto::Request&)) {
    return [this, fn](const proto::Request& r) { return (this->*fn)(r); };
  }
  // The routes people and their tools call, on both servers.
  void add_user_routes(proto::Server& s);
  // POST /v1/token {"lifespan": seconds, "username": name} (MUNGE only: scontrol token):
  // {"token", "user", "expires"}; another user's token for root only (403); 409 when
  // RestPort is not set.
  json issue_token(const proto::Request& r);
  // The REST server's check of a JWT: the caller it names; RpcError(401) otherwise.
  proto::Caller verify_token(std::string_view token) const;
  // Reads (or creates) the JWT key when RestPort is set (constructor).
  void load_jwt_key();
  // POST /v1/jobs/ID/update {"num_retained": N}: owner or root; N = 0 is CRIU_MaxEpochs.
  // Retention runs at once. Replies with the job.
  json update_job(const proto::Request& r);
  // GET /v1/checkpoints/stats: {"hours": [{"hour": Unix time, "counts": {status: n}}]},
  // the last 24 hours oldest first, by trigger time.
  json checkpoint_stats(const proto::Request& r);
  json submit(const proto::Request& r);
  std::string list_jobs(const proto::Request& r);
  json show_job(const proto::Request& r);
  json signal_job(const proto::Request& r);
  json cancel_job(const proto::Request& r);
  json hold_job(const proto::Request& r, bool hold);
  json requeue_job(const proto::Request& r);
  json checkpoint_job(const proto::Request& r, CheckpointSource source);
  json restart_job(const proto::Request& r);
  // POST /v1/jobs/ID/suspend {"description": "...", "in_place": false}: owner or root. A
  // "suspend" checkpoint that stops the job; once Present the job is SUSPENDED with its
  // CPUs and memory released (settle_checkpoint). Replies with the checkpoint; 409 if
  // the job is not running, 500 (the job runs on) if the dump failed. With in_place
  // (Slurm's suspend): the node freezes the run where it is, which keeps its CPUs and
  // memory; replies with the job.
  json suspend_job(const proto::Request& r);
  // POST /v1/jobs/ID/resume: owner or root. A SUSPENDED job becomes PENDING to be
  // restored from its suspend checkpoint (or, if that one is gone, the newest Present
  // one) on any node with room; a failed restore falls back as a restart's does. One
  // suspended in place is thawed where it is and RUNNING again. Replies with the job.
  json resume_job(const proto::Request& r);
  // The in-place halves of suspend_job and resume_job (without mu_). `by`: the
  // preemptor of a PreemptMode=SUSPEND preemption, whose suspend lends the job's CPUs
  // to it (Job::suspended_by); 0 for a user's.
  json suspend_in_place(int64_t job_id, bool stop, const proto::Caller& who, int64_t by = 0);
  // PreemptMode=SUSPEND: each job suspended by a preemption whose CPUs are free again on
  // its node (and the node not kept for a preemptor) is thawed by a worker, its CPUs
  // counted again at once so that schedule() does not give them away meanwhile.
  void resume_preempted();
  json list_checkpoints(const proto::Request& r);
  json delete_checkpoint(const proto::Request& r);
  json list_nodes(const proto::Request& r);
  // POST /v1/nodes/NAME/update {"state": "DOWN"|"DRAIN"|"UNDRAIN"|"RESUME", "reason":
  // "..."}: root only. DOWN and DRAIN need a reason; RESUME ends both, UNDRAIN the drain.
  json update_node(const proto::Request& r);
  json list_partitions(const proto::Request& r);
  json node_heartbeat(const proto::Request& r);
  json node_job_ended(const proto::Request& r);
  json node_op_done(const proto::Request& r);

  // lifecycle (callers hold mu_ unless said otherwise)
  Job& job_of(const std::string& id_text);
  void check_owner(const Job& j, const proto::Caller& c) const;
  void save(const Job& j);
  void save(const Checkpoint& c);
  json api(const Job& j) const;
  // The job's JSON with `last` as its newest checkpoint (or none): needs no lock.
  static json api(const Job& j, const Checkpoint* last, const proto::Config& cfg);
  // j's newest checkpoint, whatever its status, or nullptr.
  const Checkpoint* last_checkpoint(const Job& j) const;
  proto::NodeState node_state(const Node& n) const;
  bool node_up(const Node& n) const;
  void schedule();              // place pending jobs
  void launch(int64_t job_id);  // without mu_: sends launch or restore to the node
  // A launch or restore that failed, with the failure's class when the node named one
  // (docs/failures.md): a restore failing for its image (or unsupported state) marks
  // the checkpoint Failed and falls back to the previous Present one; a transient (or
  // unclassified) failure leaves it Present and retries, on another node if one fits,
  // at most kMaxTransientRestores times.
  // `node_silent`: the node gave no sign of life (BatchStartTimeout): the attempt is
  // the node's failure, not the job's, and counts toward neither limit (as Slurm
  // requeues a job whose batch launch failed on the node's account).
  void launch_failed(Job& j, const std::string& why,
                     std::optional<FailureClass> failure = std::nullopt, bool node_silent = false);
  Checkpoint run_checkpoint(int64_t job_id, CheckpointSource source, const std::string& description,
                            const proto::Caller* who);  // without mu_
  // A dump's outcome, from the checkpoint RPC's reply or the node's later report
  // (op_done): applied once, to a checkpoint still Creating; false if it was not.
  // `image_kind`: "full", "incremental" or "pre-dump" as the node reported it, "" if
  // unknown (an incremental request then stays incremental: its parent is kept);
  // `pre_dump_bytes`: the size of the pre-dump image a "pre-dump" one was made on.
  bool settle_checkpoint(int64_t job_id, int64_t checkpoint_id, CheckpointStatus status,
                         const std::string& reason, uint64_t size, double freeze_ms,
                         const std::string& image_kind, uint64_t pre_dump_bytes = 0);
  // Checkpoint `id` of job `job_id`, or nullptr.
  Checkpoint* find_checkpoint(int64_t job_id, int64_t id);
  // CRIU_Incremental: the checkpoint a new one of job `j` is to be incremental on -- the
  // newest Present one of the job's current run, unless its chain already holds
  // CRIU_FullEvery checkpoints -- or nullptr for a full one.
  const Checkpoint* incremental_parent(const Job& j);
  // Checkpoint `id` and every checkpoint below it (parent_id links), ids.
  std::vector<int64_t> chain_of(int64_t job_id, int64_t id);
  // The launch or restore the node confirmed after the RPC's answer was lost.
  void confirm_launch(Job& j, const std::string& how);
  // Signals a job whose end (cancel, requeue, time limit) was requested while its launch
  // or restore RPC was in flight, once that start is confirmed; nothing otherwise.
  void end_if_requested(const Job& j);
  // Removes an image (Failed, Timeout, Cleared; and any DIR.tmp) on a worker thread,
  // outside mu_: storage may be slow; the record keeps its status and reason.
  void discard_image(const std::string& location);
  // CRIU_MaxEpochs: keeps the newest max_epochs Present checkpoints, every checkpoint
  // their chains need, the one being restored from and the parents of those being
  // written; clears the other Present ones.
  void retain(const Job& j);
  // A Present checkpoint whose image directory an administrator deleted becomes
  // Cleared with that reason (true); one whose directory exists, or cannot be looked
  // at just now, is left alone (false). Looks at the file system under mu_: called
  // for one job's checkpoints when it is restarted.
  bool clear_if_missing(Checkpoint& c);
  // Async signal (SIGKILL after KillWait if escalate) on j's node; thaw_first: the run
  // is suspended in place, thawed first so that it can act on the signal.
  void terminate(const Job& j, int signal, bool escalate, bool thaw_first = false);
  // A job SUSPENDED in place becomes RUNNING again in the books (the time suspended moves
  // its start forward); nothing is sent to the node. No-op for any other job.
  void unsuspend_in_place(Job& j, double now);
  // The cancel or requeue (`request`, asked by uid `by`) of a job suspended in place:
  // RUNNING again in the books, then thawed and ended as a running job is.
  void end_suspended_in_place(Job& j, const std::string& request, uid_t by);
  void release(Job& j, double now);
  void requeue_fresh(Job& j);
  // CRIU_LoadAware: why the node is too busy for a periodic checkpoint, "" if it is not.
  std::string too_busy(const std::string& node) const;
  void skip_checkpoint(Job& j, const std::string& why);  // recorded as Skipped
  void reconcile(const std::string& node, const json& reported_jobs, const json& reported_ops);
  // The heartbeat reply's stale list: every reported run that is not its job's current
  // run on node (job unknown, not RUNNING there, another generation, or node DOWN).
  std::vector<proto::RunRef> stale_runs(const Node& n) const;
  // Node timeouts, driven by the scheduling thread (not by heartbeats): NOT_RESPONDING
  // after SlurmdTimeout of silence, DOWN after SlurmdTimeout + requeue_timeout, and the
  // recovery of the jobs of DOWN nodes once their runs have surely ended.
  void check_nodes(double now);
  // Sets n DOWN with reason (persisted, logged). Its jobs' runs end: at once when the
  // node's lease has surely expired, else they are killed (SIGKILL) and recovered when
  // the node reports them ended or gone, or when its lease has run out.
  void set_down(Node& n, const std::string& reason, double now, const std::string& user);
  // Writes what of n is persisted (NodeAdmin) to the Store.
  void persist(const Node& n);
  // Node drain, driven by the scheduling thread: on every node set DRAIN (and not
  // DOWN), each RUNNING job with checkpointing (--checkpoint) is vacated with a "node
  // drain" checkpoint by a worker (vacate_for_drain); settle_checkpoint() then queues
  // its restore, which schedule() places on another node. Jobs without checkpointing
  // run on. A failed dump is retried (kMaxDrainAttempts) unless its failure is the
  // image's or unsupported state; then the job keeps running there and the node says
  // why (list_nodes' "drain_blocked").
  void drain_nodes(double now);
  void vacate_for_drain(int64_t job_id, const std::string& node);  // without mu_
  // Preemption (PreemptType = preempt/partition_prio, PreemptMode not OFF), driven by
  // the scheduling thread after schedule(): for each job pending for resources, highest
  // PriorityTier first, the node of its partition where stopping running jobs of lower
  // tiers (outside PreemptExemptTime) frees room with the least lost work; those jobs
  // are preempted by workers (preempt_job) and the node is reserved for the preemptor
  // until they have stopped.
  void preempt(double now);
  // Preempts job `id` for job `by` as PreemptMode says: a "preemption" checkpoint that
  // stops it (settle_checkpoint() queues its restore), or, with REQUEUE, CANCEL or a
  // failed dump, requeue (cancel if --no-requeue, or with CANCEL). Without mu_.
  void preempt_job(int64_t id, int64_t by);
  // The PriorityTier of j's partition (0 if the partition is gone).
  int tier_of(const Job& j) const;
  // Whether the lease of n (counted by the node from a send before the controller's
  // last receipt) has surely run out: no heartbeat for SlurmdTimeout.
  bool lease_expired(const Node& n, double now) const;
  // The run of j on its node ended because of the node (DOWN): NODE_FAIL recorded, then
  // (--requeue) PENDING to be restored from the newest Present checkpoint or started
  // from scratch; an end that was asked for (cancel, requeue, time limit) is honoured.
  void recover(Job& j, double now, const std::string& why);
  // BatchStartTimeout: launches and restores sent long enough ago, not confirmed, with
  // no sign of them at the node, have failed: their run is abandoned and retried.
  void check_batch_start(double now);
  // Appends "TIME: what" to j's history (saved by the caller).
  void note(Job& j, const std::string& what);
  void periodic();                       // due checkpoints and time limits
  void spawn(std::function<void()> fn);  // a worker thread, joined at stop()
  friend struct ControllerTestAccess;    // tests/unit/controller_test.cpp: the routes without a
                                         // server

  proto::Config cfg_;
  std::string jwt_key_;                   // HS256 key of the REST API's tokens (RestPort set)
  std::unique_ptr<NodeClient> node_rpc_;  // after cfg_, which the real one refers to
  Store store_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::map<int64_t, Job> jobs_;
  std::map<int64_t, std::vector<Checkpoint>> ckpts_;  // by job, oldest first
  std::map<std::string, Node> nodes_;
  std::set<int64_t> ckpt_busy_;  // jobs with a checkpoint in flight
  // Jobs whose launch or restore RPC is in flight, with that run's generation: an
  // answer for another generation (a run abandoned meanwhile) is ignored.
  std::map<int64_t, int64_t> launching_;
  // When the current unconfirmed launch or restore of a job was sent (BatchStartTimeout).
  std::map<int64_t, double> launch_sent_;
  std::set<int64_t> ckpt_rpc_;  // jobs whose checkpoint RPC from this controller is in flight
  // Transient failures of a job's restore from one checkpoint, by job id. In memory
  // only: a restarted controller counts anew, which still bounds the retries.
  struct RestoreRetry {
    int64_t checkpoint_id = 0;
    int failures = 0;
    std::string avoid_node;  // where the last attempt failed: another node is tried first
    double not_before = 0;   // Unix time of the next attempt
  };
  std::map<int64_t, RestoreRetry> restore_retries_;
  // The drain's attempts to move a job, by job id, for its run `generation` (a new
  // run, or a new DRAIN of the node, starts afresh). In memory: a restarted controller
  // tries again.
  struct DrainMove {
    int64_t generation = 0;
    bool in_flight = false;  // a worker is dumping it
    int failures = 0;
    double not_before = 0;  // Unix time of the next attempt
    std::string blocked;    // why the drain leaves it running, "" while it tries
  };
  std::map<int64_t, DrainMove> drain_moves_;
  // Jobs being preempted (victim -> preemptor), until they are no longer RUNNING; and
  // the node each preemptor waits on (preemptor -> node), kept from jobs of lower tiers
  // until it is placed or its victims have all stopped. In memory.
  std::map<int64_t, int64_t> preempting_;
  std::map<int64_t, std::string> reserved_;
  // Jobs suspended by a preemption being thawed, their CPUs already counted again.
  std::set<int64_t> resuming_;
  double started_ = 0;  // Unix time the controller was built: the nodes' grace period
  bool stopping_ = false;
  std::thread loop_;
  int workers_ = 0;
  std::condition_variable workers_done_;
};

}  // namespace fsched::ctld
