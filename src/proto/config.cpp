#include "proto/config.h"

#include <arpa/inet.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <unordered_set>

#include "common/error.h"
#include "common/text.h"
#include "proto/timefmt.h"

namespace fsched::proto {
namespace {

// Names one host list may expand to, and nodes a configuration may define: bounds the
// time and memory a malformed file can cost (a few bytes of ranges per 100,000 names).
constexpr size_t kMaxHosts = 100000;

// Keeps the place being parsed so that every error says FILE:LINE.
struct Cursor {
  const std::filesystem::path& file;
  int line = 0;
  template <typename... Args>
  [[noreturn]] void error(fmt::format_string<Args...> f, Args&&... args) const {
    throw Error(
        fmt::format("{}:{}: {}", file.string(), line, fmt::format(f, std::forward<Args>(args)...)));
  }
  // A key that parses but changes nothing: said, not silently dropped.
  void ignored(Config& c, std::string_view key, std::string_view value,
               std::string_view why) const {
    c.warnings.push_back(fmt::format("{}:{}: {} = {}: {}", file.string(), line, key, value, why));
  }
};

int64_t to_int(const Cursor& at, std::string_view key, std::string_view v, int64_t lo, int64_t hi) {
  int64_t n = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc{} || p != v.data() + v.size() || n < lo || n > hi)
    at.error("{} = {}: expected an integer from {} to {}", key, v, lo, hi);
  return n;
}

double to_ratio(const Cursor& at, std::string_view key, std::string_view v) {
  std::string s(v);
  char* end = nullptr;
  double d = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || !(d >= 0.0 && d <= 1.0))
    at.error("{} = {}: expected a ratio from 0.0 to 1.0", key, v);
  return d;
}

bool to_bool(const Cursor& at, std::string_view key, std::string_view v) {
  auto l = lower(v);
  if (l == "yes" || l == "true" || l == "1") return true;
  if (l == "no" || l == "false" || l == "0") return false;
  at.error("{} = {}: expected YES or NO", key, v);
}

// MaxTime is INFINITE/UNLIMITED or minutes, as Slurm writes it in slurm.conf.
// An address a socket bound to it is reachable from this host only.
bool is_loopback(const std::string& addr) {
  in_addr a4{};
  if (::inet_pton(AF_INET, addr.c_str(), &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
  return addr == "localhost" || addr == "::1";
}

int64_t to_max_time(const Cursor& at, std::string_view v) {
  auto l = lower(v);
  if (l == "infinite" || l == "unlimited") return 0;
  return to_int(at, "MaxTime", v, 1, int64_t{1} << 40) * 60;
}

// "Key=Value Key=Value" words of NodeName/PartitionName lines.
std::vector<std::pair<std::string, std::string>> words(const Cursor& at, std::string_view s) {
  std::vector<std::pair<std::string, std::string>> out;
  std::istringstream in{std::string(s)};
  std::string w;
  while (in >> w) {
    auto eq = w.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == w.size())
      at.error("'{}': expected Key=Value", w);
    out.emplace_back(w.substr(0, eq), w.substr(eq + 1));
  }
  return out;
}

// A host list of a NodeName= or Nodes= value; its errors say FILE:LINE.
std::vector<std::string> hostlist_at(const Cursor& at, std::string_view key,
                                     std::string_view list) {
  try {
    return expand_hostlist(list);
  } catch (const Error& e) {
    at.error("{}={}: {}", key, list, e.what());
  }
}

// names_seen: the nodes defined so far, to find a duplicate without a scan per node.
void node_line(Config& c, std::unordered_set<std::string>& names_seen, const Cursor& at,
               std::string_view rest) {
  auto kv = words(at, rest);
  std::vector<std::string> names = hostlist_at(at, "NodeName", kv.at(0).second);
  NodeConf proto;
  for (size_t i = 1; i < kv.size(); ++i) {
    auto& [k, v] = kv[i];
    auto key = lower(k);
    if (key == "cpus" || key == "procs")
      proto.cpus = static_cast<int>(to_int(at, k, v, 1, 1 << 20));
    else if (key == "realmemory")
      proto.real_memory = static_cast<uint64_t>(to_int(at, k, v, 1, int64_t{1} << 40));
    else if (key == "nodeaddr")
      proto.addr = v;
    else if (key == "port")
      proto.port = static_cast<uint16_t>(to_int(at, k, v, 1, 65535));
    else if (key == "state" || key == "sockets" || key == "corespersocket" ||
             key == "threadspercore" || key == "boards" || key == "nodehostname" ||
             key == "weight" || key == "feature")
      at.ignored(c, k, v, "accepted for slurm.conf compatibility, has no effect");
    else
      at.error("NodeName line: unknown key '{}'", k);
  }
  for (auto& n : names) {
    if (n == "DEFAULT") continue;
    if (!names_seen.insert(n).second) at.error("NodeName {} is defined twice", n);
    if (c.nodes.size() >= kMaxHosts) at.error("more than {} nodes", kMaxHosts);
    NodeConf nc = proto;
    nc.name = n;
    c.nodes.push_back(std::move(nc));
  }
}

// AuthInfo = cred_expire=N,ttl=N,requeue_timeout=N,socket=PATH: any order, any subset.
// Slurm reads cred_expire, ttl and socket here; requeue_timeout is the seed's (fsched's)
// addition. Every error says "FILE:LINE: AuthInfo = VALUE: what".
void auth_info(Config& c, const Cursor& at, std::string_view value) {
  c.auth_info = std::string(value);
  struct Part {
    std::string_view name;
    int* field;
    int lo, hi;
  };
  const Part parts[] = {
      {"cred_expire", &c.cred_expire, 1, 86400},
      {"ttl", &c.munge_ttl, 1, 86400},
      // 0: DOWN (and recovery) as soon as a node is NOT_RESPONDING.
      {"requeue_timeout", &c.requeue_timeout, 0, 86400},
  };
  std::unordered_set<std::string> given;
  for (size_t i = 0; i <= value.size();) {
    size_t comma = std::min(value.find(',', i), value.size());
    std::string_view w = trim(value.substr(i, comma - i));
    i = comma + 1;
    if (w.empty()) continue;  // a trailing or doubled comma is harmless
    auto eq = w.find('=');
    if (eq == std::string_view::npos)
      at.error(
          "AuthInfo = {}: '{}': expected key=value (cred_expire=, ttl=, requeue_timeout=, "
          "socket=)",
          value, w);
    std::string key = lower(trim(w.substr(0, eq)));
    std::string_view v = trim(w.substr(eq + 1));
    if (!given.insert(key).second) at.error("AuthInfo = {}: {} is given twice", value, key);
    if (key == "socket") {
      if (v.empty()) at.error("AuthInfo = {}: socket= needs a path", value);
      if (!c.munge_socket.empty())
        at.error("AuthInfo = {}: socket= and MungeSocket (line {}) both set munged's socket", value,
                 c.munge_socket_line);
      c.munge_socket = std::string(v);
      c.munge_socket_line = at.line;
      continue;
    }
    auto p = std::find_if(std::begin(parts), std::end(parts),
                          [&](const Part& x) { return x.name == key; });
    if (p == std::end(parts))
      at.error(
          "AuthInfo = {}: unknown key '{}' (expected cred_expire, ttl, requeue_timeout or "
          "socket)",
          value, w.substr(0, eq));
    int64_t n = 0;
    auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (v.empty() || ec == std::errc::invalid_argument || end != v.data() + v.size())
      at.error("AuthInfo = {}: {}={}: not an integer", value, key, v);
    if (ec == std::errc::result_out_of_range || n < p->lo || n > p->hi)
      at.error("AuthInfo = {}: {}={}: out of range {} to {} (seconds)", value, key, v, p->lo,
               p->hi);
    *p->field = static_cast<int>(n);
  }
}

void partition_line(Config& c, const Cursor& at, std::string_view rest) {
  auto kv = words(at, rest);
  PartitionConf p;
  p.name = kv.at(0).second;
  if (c.partition(p.name)) at.error("PartitionName {} is defined twice", p.name);
  for (size_t i = 1; i < kv.size(); ++i) {
    auto& [k, v] = kv[i];
    auto key = lower(k);
    if (key == "nodes")
      p.nodes = lower(v) == "all" ? std::vector<std::string>{"ALL"} : hostlist_at(at, k, v);
    else if (key == "default")
      p.is_default = to_bool(at, k, v);
    else if (key == "maxtime")
      p.max_time = to_max_time(at, v);
    else if (key == "state") {
      auto l = lower(v);
      if (l != "up" && l != "down")
        at.error("PartitionName {}: State={}: expected UP or DOWN", p.name, v);
      p.up = l == "up";
    } else if (key == "prioritytier")
      p.priority_tier = static_cast<int>(to_int(at, k, v, 0, 65533));
    else
      at.error("PartitionName line: unknown key '{}'", k);
  }
  p.line = at.line;
  c.partitions.push_back(std::move(p));
}

}  // namespace

const NodeConf* Config::node(std::string_view name) const {
  for (auto& n : nodes)
    if (n.name == name) return &n;
  return nullptr;
}

const PartitionConf* Config::partition(std::string_view name) const {
  for (auto& p : partitions)
    if (p.name == name) return &p;
  return nullptr;
}

const PartitionConf* Config::default_partition() const {
  for (auto& p : partitions)
    if (p.is_default) return &p;
  return partitions.empty() ? nullptr : &partitions.front();
}

std::filesystem::path config_path() {
  const char* e = std::getenv("FSCHED_CONF");
  return e && *e ? std::filesystem::path(e) : std::filesystem::path("/etc/fsched/fsched.conf");
}

std::vector<std::string> expand_hostlist(std::string_view list) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < list.size()) {
    // A comma inside brackets belongs to the range, not to the list.
    size_t j = i;
    int depth = 0;
    while (j < list.size() && (list[j] != ',' || depth > 0)) {
      if (list[j] == '[') ++depth;
      if (list[j] == ']') --depth;
      ++j;
    }
    std::string_view item = trim(list.substr(i, j - i));
    i = j + 1;
    if (item.empty()) continue;
    auto lb = item.find('[');
    if (lb == std::string_view::npos) {
      if (out.size() >= kMaxHosts) fail("host list '{}': more than {} names", list, kMaxHosts);
      out.emplace_back(item);
      continue;
    }
    auto rb = item.find(']', lb);
    if (rb == std::string_view::npos) fail("host list '{}': unbalanced '['", list);
    std::string prefix(item.substr(0, lb)), suffix(item.substr(rb + 1));
    std::string_view ranges = item.substr(lb + 1, rb - lb - 1);
    size_t k = 0;
    while (k <= ranges.size()) {
      size_t e = ranges.find(',', k);
      if (e == std::string_view::npos) e = ranges.size();
      std::string_view r = ranges.substr(k, e - k);
      k = e + 1;
      auto dash = r.find('-');
      std::string_view a = r.substr(0, dash),
                       b = dash == std::string_view::npos ? r : r.substr(dash + 1);
      unsigned lo = 0, hi = 0;
      auto ra = std::from_chars(a.data(), a.data() + a.size(), lo);
      auto rb2 = std::from_chars(b.data(), b.data() + b.size(), hi);
      if (a.empty() || b.empty() || ra.ec != std::errc{} || rb2.ec != std::errc{} ||
          ra.ptr != a.data() + a.size() || rb2.ptr != b.data() + b.size() || hi < lo ||
          hi - lo > 100000)
        fail("host list '{}': bad range '{}'", list, r);
      if (out.size() + (hi - lo) >= kMaxHosts)
        fail("host list '{}': more than {} names", list, kMaxHosts);
      for (unsigned n = lo; n <= hi; ++n)
        out.push_back(prefix + fmt::format("{:0{}}", n, a.size()) + suffix);
    }
  }
  return out;
}

Config parse_config(std::string_view text, const std::filesystem::path& file) {
  Config c;
  c.file = file;
  Cursor at{file};
  std::map<std::string, int> seen;  // key -> line, to refuse a key set twice
  std::unordered_set<std::string> node_names;
  std::istringstream in{std::string(text)};
  std::string raw;
  while (std::getline(in, raw)) {
    ++at.line;
    std::string_view line = raw;
    if (auto h = line.find('#'); h != std::string_view::npos) line = line.substr(0, h);
    line = trim(line);
    if (line.empty()) continue;
    auto eq = line.find('=');
    if (eq == std::string_view::npos) at.error("'{}': expected Key = Value", line);
    std::string key(trim(line.substr(0, eq)));
    std::string_view value = trim(line.substr(eq + 1));
    std::string lk = lower(key);
    if (value.empty()) at.error("{}: missing value", key);
    if (lk != "nodename" && lk != "partitionname") {
      if (auto it = seen.find(lk); it != seen.end())
        at.error("{} is already set on line {}", key, it->second);
      seen[lk] = at.line;
    }
    std::string v(value);
    if (lk == "clustername")
      c.cluster_name = v;
    else if (lk == "controlmachine" || lk == "slurmctldhost")
      c.control_machine = v;
    else if (lk == "controladdr")
      c.control_addr = v;
    else if (lk == "controlport" || lk == "slurmctldport")
      c.control_port = static_cast<uint16_t>(to_int(at, key, v, 1, 65535));
    else if (lk == "slurmdport")
      c.slurmd_port = static_cast<uint16_t>(to_int(at, key, v, 1, 65535));
    else if (lk == "statesavelocation")
      c.state_save_location = v;
    else if (lk == "slurmdspooldir")
      c.slurmd_spool_dir = v;
    else if (lk == "checkpointdir")
      c.checkpoint_dir = v;
    else if (lk == "checkpointtype") {
      if (v != "checkpoint/fsched" && v != "checkpoint/criu" && v != "checkpoint/none")
        at.error(
            "CheckpointType = {}: expected checkpoint/fsched (or checkpoint/criu, its synonym) or "
            "checkpoint/none",
            v);
      c.checkpoint_type = v;
    } else if (lk == "criu_maxepochs")
      c.max_epochs = static_cast<int>(to_int(at, key, v, 1, 1000000));
    // Incremental checkpoints (docs/incremental.md): the controller asks for a dump on
    // the job's previous checkpoint, with a full one every CRIU_FullEvery.
    else if (lk == "criu_incremental") {
      c.incremental = to_bool(at, key, v);
    } else if (lk == "criu_fullevery") {
      c.full_every = static_cast<int>(to_int(at, key, v, 1, 1000000));
    } else if (lk == "criu_predump") {
      c.pre_dump = to_bool(at, key, v);
    } else if (lk == "criu_predumpdelay") {
      c.pre_dump_delay = static_cast<int>(to_int(at, key, v, 0, 86400));
    } else if (lk == "criu_trackmethod") {
      std::string m = lower(v);
      if (m != "kernel" && m != "hash")
        at.error("CRIU_TrackMethod = {}: expected kernel or hash", v);
      c.track_method = m;
    } else if (lk == "preempttype") {
      if (v != "preempt/none" && v != "preempt/partition_prio")
        at.error(
            "PreemptType = {}: expected preempt/none or preempt/partition_prio (preempt/qos is "
            "not supported: fsched has no QOS)",
            v);
      c.preempt_partition_prio = v == "preempt/partition_prio";
    } else if (lk == "preemptmode") {
      // Slurm needs GANG with SUSPEND ("SUSPEND,GANG"); fsched takes either spelling.
      std::string u = upper(v);
      auto m = parse_enum<PreemptMode>(u == "SUSPEND,GANG" ? "SUSPEND" : u);
      if (!m)
        at.error(
            "PreemptMode = {}: expected OFF, CANCEL, REQUEUE, CHECKPOINT or SUSPEND[,GANG] (GANG "
            "alone, time-slicing, is not supported)",
            v);
      c.preempt_mode = *m;
    } else if (lk == "preemptexempttime") {
      try {
        c.preempt_exempt_time = v == "-1" ? 0 : parse_duration(v);
      } catch (const Error& e) {
        at.error("PreemptExemptTime = {}: {}", v, e.what());
      }
    } else if (lk == "criu_loadaware")
      c.load_aware = to_bool(at, key, v);
    else if (lk == "criu_loadthresholdcpu")
      c.load_threshold_cpu = to_ratio(at, key, v);
    else if (lk == "criu_loadthresholdio")
      c.load_threshold_io = to_ratio(at, key, v);
    else if (lk == "criu_loadthresholdmemory")
      c.load_threshold_memory = to_ratio(at, key, v);
    else if (lk == "checkpointtimeout")
      c.checkpoint_timeout = static_cast<int>(to_int(at, key, v, 1, 86400 * 7));
    else if (lk == "killwait")
      c.kill_wait = static_cast<int>(to_int(at, key, v, 0, 65535));
    else if (lk == "slurmdtimeout")
      c.slurmd_timeout = static_cast<int>(to_int(at, key, v, 1, 65535));
    else if (lk == "slurmctldtimeout") {
      c.slurmctld_timeout = static_cast<int>(to_int(at, key, v, 1, 65535));
      at.ignored(c, key, v, "there is no backup controller to take over: has no effect");
    } else if (lk == "batchstarttimeout")
      c.batch_start_timeout = static_cast<int>(to_int(at, key, v, 1, 65535));
    else if (lk == "heartbeatinterval")
      c.heartbeat_interval = static_cast<int>(to_int(at, key, v, 1, 3600));
    else if (lk == "authtype") {
      if (v != "auth/munge") at.error("AuthType = {}: only auth/munge is supported", v);
      c.auth_type = v;
    } else if (lk == "authinfo") {
      auth_info(c, at, v);
    } else if (lk == "mungesocket") {
      if (!c.munge_socket.empty())
        at.error("MungeSocket = {}: munged's socket is already set by AuthInfo socket= on line {}",
                 v, c.munge_socket_line);
      c.munge_socket = v;
      c.munge_socket_line = at.line;
    } else if (lk == "returntoservice") {
      if (v != "0" && v != "1")
        at.error("ReturnToService = {}: expected 0 or 1 (Slurm's 2 is not supported)", v);
      c.return_to_service = v == "1";
    } else if (lk == "slurmctldlogfile")
      c.ctld_log_file = v;
    else if (lk == "slurmctldpidfile")
      c.ctld_pid_file = v;
    else if (lk == "slurmdlogfile")
      c.slurmd_log_file = v;
    else if (lk == "slurmdpidfile")
      c.slurmd_pid_file = v;
    else if (lk == "fschedckptpath")
      c.ckpt_tool = v;
    // The REST API and web console (docs/rest.md): loopback only unless TLS is set.
    else if (lk == "restport")
      c.rest_port = static_cast<uint16_t>(to_int(at, key, v, 1, 65535));
    else if (lk == "restaddr")
      c.rest_addr = v;
    else if (lk == "resttlscertfile")
      c.rest_tls_cert = v;
    else if (lk == "resttlskeyfile")
      c.rest_tls_key = v;
    else if (lk == "webroot")
      c.web_root = v;
    else if (lk == "authalttypes") {
      if (v != "auth/jwt") at.error("AuthAltTypes = {}: only auth/jwt is supported", v);
      c.auth_alt_types = v;
    } else if (lk == "authaltparameters") {
      if (!v.starts_with("jwt_key=") || v.size() == 8 || v.find(',') != std::string::npos)
        at.error("AuthAltParameters = {}: expected jwt_key=PATH", v);
      c.jwt_key = v.substr(8);
    } else if (lk == "nodename")
      node_line(c, node_names, at, "NodeName=" + v);
    else if (lk == "partitionname")
      partition_line(c, at, "PartitionName=" + v);
    else
      at.error("unknown key '{}'", key);
  }
  // Either preemption key alone does nothing: said at start, as for ignored keys.
  if (auto t = seen.find("preempttype"), m = seen.find("preemptmode");
      t != seen.end() || m != seen.end()) {
    bool on = c.preempt_partition_prio && c.preempt_mode != PreemptMode::Off;
    if (!on && c.preempt_partition_prio)
      c.warnings.push_back(fmt::format(
          "{}:{}: PreemptType = preempt/partition_prio: has no effect while PreemptMode is OFF",
          file.string(), t->second));
    else if (!on && c.preempt_mode != PreemptMode::Off)
      c.warnings.push_back(fmt::format(
          "{}:{}: PreemptMode = {}: has no effect without PreemptType = preempt/partition_prio",
          file.string(), m->second, c.preempt_mode));
  }
  // Checked once the whole file is read: the two keys may come in either order.
  auto hb = seen.find("heartbeatinterval"), st = seen.find("slurmdtimeout");
  if (hb == seen.end())  // Slurm pings every SlurmdTimeout/3
    c.heartbeat_interval = std::clamp(c.slurmd_timeout / 3, 1, c.heartbeat_interval);
  if (c.heartbeat_interval * 2 > c.slurmd_timeout) {
    at.line = std::max(hb == seen.end() ? 0 : hb->second, st == seen.end() ? 0 : st->second);
    at.error(
        "HeartbeatInterval = {}{} and SlurmdTimeout = {}{}: HeartbeatInterval * 2 must not exceed "
        "SlurmdTimeout, or one late heartbeat makes a healthy node NOT_RESPONDING and freezes its "
        "jobs",
        c.heartbeat_interval, hb == seen.end() ? " (default)" : "", c.slurmd_timeout,
        st == seen.end() ? " (default)" : "");
  }
  auto where = [&](const char* what) { fail("{}: {}", file.string(), what); };
  if (c.control_machine.empty()) where("ControlMachine is required");
  if (c.state_save_location.empty()) where("StateSaveLocation is required");
  if (c.nodes.empty()) where("at least one NodeName line is required");
  if (c.control_addr.empty()) c.control_addr = c.control_machine;
  if (c.checkpoint_dir.empty()) c.checkpoint_dir = c.state_save_location / "checkpoint";
  if (c.jwt_key.empty()) c.jwt_key = c.state_save_location / "jwt_hs256.key";
  // Tokens are issued for the REST API only: JWT without it would do nothing.
  if (c.rest_port == 0) {
    for (auto [k, name] : {std::pair{"restaddr", "RestAddr"},
                           {"webroot", "WebRoot"},
                           {"authalttypes", "AuthAltTypes"},
                           {"authaltparameters", "AuthAltParameters"},
                           {"resttlscertfile", "RestTLSCertFile"},
                           {"resttlskeyfile", "RestTLSKeyFile"}})
      if (auto it = seen.find(k); it != seen.end())
        c.warnings.push_back(fmt::format("{}:{}: {}: has no effect without RestPort", file.string(),
                                         it->second, name));
  } else if (c.auth_alt_types.empty()) {
    at.line = seen["restport"];
    at.error("RestPort = {}: the REST API authenticates with JWT: set AuthAltTypes = auth/jwt",
             c.rest_port);
  } else if (c.rest_tls_cert.empty() != c.rest_tls_key.empty()) {
    bool cert = !c.rest_tls_cert.empty();
    at.line = seen[cert ? "resttlscertfile" : "resttlskeyfile"];
    at.error("{}: TLS needs both RestTLSCertFile and RestTLSKeyFile",
             cert ? "RestTLSCertFile" : "RestTLSKeyFile");
  } else if (c.rest_tls_cert.empty() && !is_loopback(c.rest_addr)) {
    // Tokens must not cross a network in clear.
    at.line = seen["restaddr"];
    at.error(
        "RestAddr = {}: without TLS the REST API is served on a loopback address only "
        "(127.0.0.1, ::1 or localhost): set RestTLSCertFile and RestTLSKeyFile, or reach it "
        "through an SSH tunnel",
        c.rest_addr);
  }
  for (auto& n : c.nodes) {
    if (n.addr.empty()) n.addr = n.name;
    if (!n.port) n.port = c.slurmd_port;
  }
  for (auto& p : c.partitions) {
    if (p.nodes.size() == 1 && p.nodes[0] == "ALL") {
      p.nodes.clear();
      for (auto& n : c.nodes) p.nodes.push_back(n.name);
    }
    for (auto& n : p.nodes)
      if (!node_names.count(n))
        fail("{}:{}: PartitionName {}: node {} has no NodeName line", file.string(), p.line, p.name,
             n);
  }
  if (c.partitions.empty()) {
    PartitionConf p{.name = "debug", .is_default = true};
    for (auto& n : c.nodes) p.nodes.push_back(n.name);
    c.partitions.push_back(std::move(p));
  }
  return c;
}

void check_munge_socket(const Config& c) {
  if (c.munge_socket.empty()) return;
  struct stat st {};
  std::string why;
  if (::stat(c.munge_socket.c_str(), &st) < 0)
    why = std::strerror(errno);
  else if (!S_ISSOCK(st.st_mode))
    why = "not a socket";
  if (!why.empty())
    fail("{}:{}: MungeSocket = {}: {} (is munged running, with --socket={}?)", c.file.string(),
         c.munge_socket_line, c.munge_socket, why, c.munge_socket);
}

Config load_config(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) throw Error(fmt::format("cannot read configuration {}", file.string()), errno);
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config(ss.str(), file);
}

}  // namespace fsched::proto
