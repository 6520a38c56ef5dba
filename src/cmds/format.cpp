#include "cmds/format.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <map>
#include <optional>

#include <fmt/format.h>

#include "cmds/cmd_common.h"
#include "common/error.h"
#include "common/text.h"
#include "proto/checkpoint_status.h"
#include "proto/job_state.h"
#include "proto/node_state.h"
#include "proto/timefmt.h"

namespace fsched::cmds {

namespace {

// The controller may leave a field out or null (last_checkpoint before the first);
// these read such fields as their defaults instead of throwing.
const json* field(const json& j, std::string_view key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string str(const json& j, std::string_view key, std::string_view def = "") {
  const json* v = field(j, key);
  if (!v) return std::string(def);
  if (v->is_string()) return v->get<std::string>();
  return v->dump();
}

double real(const json& j, std::string_view key, double def = 0) {
  const json* v = field(j, key);
  return v && v->is_number() ? v->get<double>() : def;
}

int64_t num(const json& j, std::string_view key, int64_t def = 0) {
  const json* v = field(j, key);
  if (!v || !v->is_number()) return def;
  return v->is_number_float() ? static_cast<int64_t>(v->get<double>()) : v->get<int64_t>();
}

bool flag(const json& j, std::string_view key, bool def = false) {
  const json* v = field(j, key);
  return v && v->is_boolean() ? v->get<bool>() : def;
}

// Slurm prints unset strings as "(null)".
std::string or_null(std::string s) { return s.empty() ? "(null)" : s; }

void rstrip(std::string& s) {
  while (!s.empty() && s.back() == ' ') s.pop_back();
}

// Pads or truncates to width (0 = leave as is), on the left when right-justified.
std::string fit(std::string v, int width, bool right) {
  if (width <= 0) return v;
  auto w = static_cast<size_t>(width);
  if (v.size() > w) return v.substr(0, w);
  return right ? std::string(w - v.size(), ' ') + v : v + std::string(w - v.size(), ' ');
}

// A state the controller names and these commands do not know (a newer controller)
// counts as not active, and prints as it is.
bool is_active(std::string_view state) {
  auto s = proto::parse_enum<proto::JobState>(state);
  return s && proto::is_active(*s);
}

std::string job_user(const json& job) {
  std::string u = str(job, "user");
  return u.empty() ? user_name(static_cast<uid_t>(num(job, "uid"))) : u;
}

std::string job_time_limit(const json& job) {
  int64_t limit = num(job, "time_limit");
  return limit > 0 ? proto::format_duration(limit) : "UNLIMITED";
}

std::string time_or_na(double t) { return t > 0 ? proto::format_timestamp(t) : "N/A"; }

std::string nodelist_reason(const json& job) {
  std::string nodes = str(job, "nodes");
  if (str(job, "state") == "PENDING" || nodes.empty())
    return "(" + str(job, "reason", "None") + ")";
  return nodes;
}

std::string squeue_header(char spec) {
  switch (spec) {
    case 'i':
    case 'A':
      return "JOBID";
    case 'j':
      return "NAME";
    case 'u':
      return "USER";
    case 'U':
      return "UID";
    case 'g':
      return "GROUP";
    case 'G':
      return "GID";
    case 'P':
      return "PARTITION";
    case 't':
      return "ST";
    case 'T':
      return "STATE";
    case 'M':
      return "TIME";
    case 'l':
      return "TIME_LIMIT";
    case 'L':
      return "TIME_LEFT";
    case 'D':
      return "NODES";
    case 'R':
      return "NODELIST(REASON)";
    case 'N':
      return "NODELIST";
    case 'r':
      return "REASON";
    case 'C':
      return "CPUS";
    case 'c':
      return "MIN_CPUS";
    case 'm':
      return "MIN_MEMORY";
    case 'V':
      return "SUBMIT_TIME";
    case 'S':
      return "START_TIME";
    case 'e':
      return "END_TIME";
    case 'Z':
      return "WORK_DIR";
    case 'o':
      return "COMMAND";
    default:
      return "";
  }
}

std::string squeue_value(char spec, const json& job) {
  switch (spec) {
    case 'i':
    case 'A':
      return std::to_string(num(job, "job_id"));
    case 'j':
      return str(job, "name");
    case 'u':
      return job_user(job);
    case 'U':
      return std::to_string(num(job, "uid"));
    case 'g':
      return group_name(static_cast<gid_t>(num(job, "gid")));
    case 'G':
      return std::to_string(num(job, "gid"));
    case 'P':
      return str(job, "partition");
    case 't':
      return state_code(str(job, "state"));
    case 'T':
      return str(job, "state");
    case 'M':
      return proto::format_duration(std::max<int64_t>(num(job, "run_time"), 0));
    case 'l':
      return job_time_limit(job);
    case 'L': {
      int64_t limit = num(job, "time_limit");
      if (limit <= 0) return "UNLIMITED";
      return proto::format_duration(std::max<int64_t>(limit - num(job, "run_time"), 0));
    }
    case 'D':
      return std::to_string(num(job, "num_nodes", 1));
    case 'R':
      return nodelist_reason(job);
    case 'N':
      return str(job, "nodes");
    case 'r':
      return str(job, "reason", "None");
    case 'C': {
      int64_t cpus = num(job, "num_cpus");
      if (cpus <= 0) cpus = num(job, "cpus_per_task", 1) * num(job, "ntasks", 1);
      return std::to_string(cpus);
    }
    case 'c':
      return std::to_string(num(job, "cpus_per_task", 1));
    case 'm': {
      int64_t mb = num(job, "mem_mb");
      return mb > 0 ? std::to_string(mb) + "M" : "0";
    }
    case 'V':
      return time_or_na(real(job, "submit_time"));
    case 'S':
      return time_or_na(real(job, "start_time"));
    case 'e':
      return time_or_na(real(job, "end_time"));
    case 'Z':
      return str(job, "work_dir");
    case 'o':
      return str(job, "command");
    default:
      return "";
  }
}

std::string duration_seconds(double d) { return fmt::format("{:.2f}s", d); }

}  // namespace

// ---- small pieces -------------------------------------------------------------

std::string state_code(std::string_view state) {
  if (auto s = proto::parse_enum<proto::JobState>(state)) return std::string(proto::short_code(*s));
  return std::string(state);
}

std::string parse_job_state(std::string_view text) {
  for (const auto& s : proto::kJobStateNames)
    if (iequals(text, s.name) || iequals(text, s.code)) return std::string(s.name);
  if (iequals(text, "ALL")) return "ALL";
  fail("Invalid job state specified: {}", text);
}

std::string scontrol_duration(int64_t seconds) {
  if (seconds < 0) return "UNLIMITED";
  int64_t d = seconds / 86400, h = seconds / 3600 % 24, m = seconds / 60 % 60, s = seconds % 60;
  if (d) return fmt::format("{}-{:02}:{:02}:{:02}", d, h, m, s);
  return fmt::format("{:02}:{:02}:{:02}", h, m, s);
}

std::string human_size(double bytes) {
  if (bytes < 1024) return fmt::format("{}B", static_cast<int64_t>(std::max(bytes, 0.0)));
  static constexpr char kUnits[] = {'K', 'M', 'G', 'T', 'P'};
  double v = bytes / 1024;
  size_t u = 0;
  while (v >= 1024 && u + 1 < sizeof kUnits) {
    v /= 1024;
    ++u;
  }
  return fmt::format("{:.1f}{}", v, kUnits[u]);
}

std::string compress_hostlist(std::span<const std::string> names) {
  struct Group {
    std::string prefix;
    size_t width = 0;  // digits of zero-padded numbers; 0 = not padded
    std::vector<uint64_t> numbers;
    std::string plain;  // a name without a trailing number
  };
  std::vector<Group> groups;
  for (const auto& name : names) {
    size_t d = name.size();
    while (d > 0 && std::isdigit(static_cast<unsigned char>(name[d - 1]))) --d;
    std::string_view digits = std::string_view(name).substr(d);
    uint64_t n = 0;
    if (digits.empty() || digits.size() > 18 ||
        std::from_chars(digits.data(), digits.data() + digits.size(), n).ec != std::errc()) {
      groups.push_back({.plain = name});
      continue;
    }
    std::string prefix = name.substr(0, d);
    size_t width = digits.size() > 1 && digits.front() == '0' ? digits.size() : 0;
    auto it = std::find_if(groups.begin(), groups.end(), [&](const Group& g) {
      return g.plain.empty() && g.prefix == prefix &&
             (g.width == width || (width == 0 && g.width == digits.size()));
    });
    if (it == groups.end()) {
      groups.push_back({.prefix = prefix, .width = width});
      it = groups.end() - 1;
    }
    it->numbers.push_back(n);
  }

  std::string out;
  for (auto& g : groups) {
    if (!out.empty()) out += ',';
    if (!g.plain.empty()) {
      out += g.plain;
      continue;
    }
    std::sort(g.numbers.begin(), g.numbers.end());
    g.numbers.erase(std::unique(g.numbers.begin(), g.numbers.end()), g.numbers.end());
    auto pad = [&](uint64_t n) { return fmt::format("{:0{}}", n, g.width); };
    if (g.numbers.size() == 1) {
      out += g.prefix + pad(g.numbers[0]);
      continue;
    }
    std::string ranges;
    for (size_t i = 0; i < g.numbers.size();) {
      size_t j = i;
      while (j + 1 < g.numbers.size() && g.numbers[j + 1] == g.numbers[j] + 1) ++j;
      if (!ranges.empty()) ranges += ',';
      ranges += pad(g.numbers[i]);
      if (j > i) ranges += "-" + pad(g.numbers[j]);
      i = j + 1;
    }
    out += g.prefix + "[" + ranges + "]";
  }
  return out;
}

// ---- squeue -------------------------------------------------------------------

bool job_selected(const json& job, const JobFilter& filter) {
  if (!filter.job_ids.empty() && std::find(filter.job_ids.begin(), filter.job_ids.end(),
                                           num(job, "job_id")) == filter.job_ids.end())
    return false;
  if (!filter.uids.empty() && std::find(filter.uids.begin(), filter.uids.end(),
                                        static_cast<uid_t>(num(job, "uid"))) == filter.uids.end())
    return false;
  if (!filter.partitions.empty() && std::find(filter.partitions.begin(), filter.partitions.end(),
                                              str(job, "partition")) == filter.partitions.end())
    return false;
  std::string state = str(job, "state");
  if (filter.states.empty()) return !filter.job_ids.empty() || is_active(state);
  return std::any_of(filter.states.begin(), filter.states.end(),
                     [&](const std::string& s) { return s == "ALL" || s == state; });
}

std::vector<FormatItem> parse_squeue_format(std::string_view format) {
  std::vector<FormatItem> items(1);  // items[0]: literal text before the first field
  for (size_t i = 0; i < format.size(); ++i) {
    if (format[i] != '%') {
      items.back().suffix += format[i];
      continue;
    }
    size_t start = i++;
    if (i < format.size() && format[i] == '%') {
      items.back().suffix += '%';
      continue;
    }
    FormatItem item;
    if (i < format.size() && format[i] == '.') {
      item.right = true;
      ++i;
    }
    while (i < format.size() && std::isdigit(static_cast<unsigned char>(format[i])) &&
           item.width < 10000)
      item.width = item.width * 10 + (format[i++] - '0');
    if (i >= format.size())
      fail("Invalid job format specification: \"{}\" ends inside \"{}\"", format,
           format.substr(start));
    item.spec = format[i];
    if (squeue_header(item.spec).empty())
      fail(
          "Invalid job format specification: %{} in \"{}\" (supported: %i %A %j %u %U %g %G %P "
          "%t %T %M %l %L %D %R %N %r %C %c %m %V %S %e %Z %o)",
          item.spec, format);
    items.push_back(std::move(item));
  }
  return items;
}

std::string squeue_table(std::span<const json> jobs, std::string_view format, bool header) {
  auto items = parse_squeue_format(format);
  auto line = [&](auto value_of) {
    std::string s;
    for (const auto& it : items) {
      if (it.spec) s += fit(value_of(it.spec), it.width, it.right);
      s += it.suffix;
    }
    rstrip(s);
    return s + "\n";
  };
  std::string out;
  if (header) out += line([](char spec) { return squeue_header(spec); });
  for (const auto& job : jobs) out += line([&](char spec) { return squeue_value(spec, job); });
  return out;
}

// ---- scontrol -----------------------------------------------------------------

std::string show_job(const json& job) {
  std::string out;
  auto add = [&](std::string_view l) {
    out += out.empty() ? "" : "   ";
    out += l;
    out += '\n';
  };
  uid_t uid = static_cast<uid_t>(num(job, "uid"));
  gid_t gid = static_cast<gid_t>(num(job, "gid"));
  std::string nodes = str(job, "nodes");
  std::string stdout_path = str(job, "stdout");
  std::string stderr_path = str(job, "stderr");
  int64_t interval = num(job, "checkpoint_interval");
  int64_t time_limit = num(job, "time_limit");

  add(fmt::format("JobId={} JobName={}", num(job, "job_id"), str(job, "name")));
  add(fmt::format("UserId={}({}) GroupId={}({})", job_user(job), uid, group_name(gid), gid));
  add(fmt::format("JobState={} Reason={}", str(job, "state"), str(job, "reason", "None")));
  add(fmt::format("Requeue={} Restarts={} JobVersion={} BatchFlag=1 ExitCode={}",
                  flag(job, "requeue", true) ? 1 : 0, num(job, "restarts"),
                  num(job, "job_version", 1), str(job, "exit_code", "0:0")));
  add(fmt::format("RunTime={} TimeLimit={}", scontrol_duration(num(job, "run_time")),
                  time_limit > 0 ? scontrol_duration(time_limit) : "UNLIMITED"));
  add(fmt::format("SubmitTime={} StartTime={} EndTime={}",
                  proto::format_timestamp(real(job, "submit_time")),
                  proto::format_timestamp(real(job, "start_time")),
                  proto::format_timestamp(real(job, "end_time"))));
  add(fmt::format("Partition={} NodeList={} BatchHost={}", or_null(str(job, "partition")),
                  or_null(nodes), or_null(nodes)));
  int64_t cpus = num(job, "num_cpus");
  if (cpus <= 0) cpus = num(job, "cpus_per_task", 1) * num(job, "ntasks", 1);
  add(fmt::format("NumNodes={} NumCPUs={} NumTasks={} CPUs/Task={} MinMemoryNode={}",
                  num(job, "num_nodes", 1), cpus, num(job, "ntasks", 1),
                  num(job, "cpus_per_task", 1),
                  num(job, "mem_mb") > 0 ? std::to_string(num(job, "mem_mb")) + "M" : "0"));
  // Paths get a line each: they may hold blanks.
  add("Command=" + or_null(str(job, "command")));
  add("WorkDir=" + or_null(str(job, "work_dir")));
  add("StdErr=" + or_null(stderr_path.empty() ? stdout_path : stderr_path));
  add("StdIn=/dev/null");
  add("StdOut=" + or_null(stdout_path));
  add(fmt::format("Checkpoint={} CheckpointDir={}",
                  interval > 0 ? scontrol_duration(interval) : "NONE",
                  or_null(str(job, "checkpoint_dir"))));
  if (const json* last = field(job, "last_checkpoint"); last && last->is_object())
    add(fmt::format("LastCheckpoint={} LastCheckpointTime={} LastCheckpointStatus={}",
                    num(*last, "checkpoint_id"), proto::format_timestamp(real(*last, "time")),
                    str(*last, "status", "Unknown")));
  else
    add("LastCheckpoint=NONE LastCheckpointTime=N/A LastCheckpointStatus=N/A");
  // What happened to the job's runs (requeues, node failures, restores), oldest first:
  // the controller keeps the last few, each "TIME what".
  if (const json* h = field(job, "history"); h && h->is_array())
    for (const json& e : *h)
      if (e.is_string()) add("Event=" + e.get<std::string>());
  return out + "\n";
}

std::string show_node(const json& node) {
  std::string out;
  auto add = [&](std::string_view l) {
    out += out.empty() ? "" : "   ";
    out += l;
    out += '\n';
  };
  std::string name = str(node, "name");
  std::vector<std::string> parts;
  if (const json* p = field(node, "partitions"); p && p->is_array())
    for (const auto& v : *p)
      if (v.is_string()) parts.push_back(v.get<std::string>());
  add("NodeName=" + name);
  add(fmt::format("CPUAlloc={} CPUTot={} CPULoad={:.2f}", num(node, "alloc_cpus"),
                  num(node, "cpus"), real(node, "load")));
  add(fmt::format("NodeAddr={} NodeHostName={} Port={}", or_null(str(node, "addr")), name,
                  num(node, "port")));
  add(fmt::format("RealMemory={} AllocMem={} FreeMem={}", num(node, "real_memory"),
                  num(node, "alloc_memory"), num(node, "free_memory")));
  add("State=" + str(node, "state", "UNKNOWN") +
      (flag(node, "not_responding") ? "+NOT_RESPONDING" : ""));
  add("Partitions=" + or_null(fmt::format("{}", fmt::join(parts, ","))));
  add("LastHeartbeat=" + proto::format_timestamp(real(node, "last_heartbeat")));
  if (std::string reason = str(node, "reason"); !reason.empty()) {
    double t = node_reason_time(node);
    add(t > 0 ? fmt::format("Reason={} [{}@{}]", reason, node_reason_user(node),
                            proto::format_timestamp(t))
              : "Reason=" + reason);
  }
  // Jobs a drain leaves running (their checkpoint failed), one line each.
  if (const json* b = field(node, "drain_blocked"); b && b->is_array())
    for (const auto& x : *b)
      add(fmt::format("DrainBlocked=JobId={} ({})", num(x, "job_id"), str(x, "why")));
  return out + "\n";
}

std::string node_reason_user(const json& node) {
  if (std::string u = str(node, "reason_user"); !u.empty()) return u;
  if (const json* uid = field(node, "reason_uid"); uid && uid->is_number_integer())
    return user_name(static_cast<uid_t>(uid->get<int64_t>()));
  return "root";
}

double node_reason_time(const json& node) {
  double t = real(node, "reason_time");
  return t > 0 ? t : real(node, "down_time");
}

std::vector<std::pair<std::string, json>> node_update_requests(
    std::span<const std::string> settings) {
  std::string nodes, state, reason;
  bool has_reason = false;
  for (const auto& w : settings) {
    auto eq = w.find('=');
    std::string key = lower(std::string_view(w).substr(0, eq));
    std::string value = eq == std::string::npos ? "" : w.substr(eq + 1);
    if (eq == std::string::npos || (key != "nodename" && key != "state" && key != "reason"))
      fail(
          "Invalid input: {} (update takes NodeName=NODES State=DOWN|DRAIN|UNDRAIN|RESUME "
          "[Reason=TEXT])",
          w);
    if (key == "nodename")
      nodes = value;
    else if (key == "state")
      state = upper(value);
    else {
      reason = value;
      has_reason = true;
    }
  }
  if (nodes.empty()) fail("update needs NodeName=NODES (only nodes can be updated)");
  if (state.empty()) fail("update needs State=DOWN, DRAIN, UNDRAIN or RESUME");
  if (state != "DOWN" && state != "DRAIN" && state != "UNDRAIN" && state != "RESUME")
    fail("Invalid node state specified: {} (expected DOWN, DRAIN, UNDRAIN or RESUME)", state);
  if ((state == "DOWN" || state == "DRAIN") && (!has_reason || trim(reason).empty()))
    fail("You must specify a reason when DOWNING or DRAINING a node. Request denied");
  json body{{"state", state}};
  if (has_reason) body["reason"] = reason;
  std::vector<std::pair<std::string, json>> out;
  for (auto& n : proto::expand_hostlist(nodes)) out.emplace_back(n, body);
  if (out.empty()) fail("update needs NodeName=NODES (only nodes can be updated)");
  return out;
}

std::string show_partition(const json& partition) {
  std::vector<std::string> nodes;
  if (const json* n = field(partition, "nodes"); n && n->is_array())
    for (const auto& v : *n)
      if (v.is_string()) nodes.push_back(v.get<std::string>());
  int64_t max_time = num(partition, "max_time");
  std::string out;
  out += "PartitionName=" + str(partition, "name") + "\n";
  out += fmt::format("   AllocNodes=ALL Default={}\n", flag(partition, "default") ? "YES" : "NO");
  out += fmt::format("   MaxNodes=1 MaxTime={}\n",
                     max_time > 0 ? scontrol_duration(max_time) : "UNLIMITED");
  out += "   Nodes=" + or_null(compress_hostlist(nodes)) + "\n";
  out += fmt::format("   State={} TotalCPUs={} TotalNodes={}\n", str(partition, "state", "UP"),
                     num(partition, "total_cpus"), num(partition, "total_nodes", nodes.size()));
  return out + "\n";
}

std::string checkpoint_table(std::span<const json> checkpoints) {
  const std::vector<std::string> head = {
      "ID",     "DESCRIPTION", "TRIGGER_TIME", "COMPLETION_TIME", "DURATION",
      "STATUS", "SOURCE",      "VERSION",      "LOCATION",        "SIZE",
      "KIND",   "PARENT",      "FREEZE",       "CHAIN_SIZE",      "REASON"};
  const std::vector<bool> right = {true,  false, false, false, true, false, false, true,
                                   false, true,  false, true,  true, true,  false};
  std::vector<std::vector<std::string>> rows;
  for (const auto& c : checkpoints) {
    double done = real(c, "completion_time");
    std::string status = str(c, "status");
    bool has_size = status == "Present" || status == "Cleared";
    rows.push_back({
        std::to_string(num(c, "checkpoint_id")),
        str(c, "description").empty() ? "-" : str(c, "description"),
        proto::format_timestamp(real(c, "trigger_time")),
        proto::format_timestamp(done),
        done > 0 ? duration_seconds(real(c, "duration")) : "-",
        status,
        str(c, "source"),
        std::to_string(num(c, "job_version")),
        str(c, "location").empty() ? "-" : str(c, "location"),
        has_size ? human_size(real(c, "size")) : "-",
        str(c, "kind", "full"),
        num(c, "parent_id") ? std::to_string(num(c, "parent_id")) : "-",
        status == "Present" ? fmt::format("{:.0f}ms", real(c, "freeze_ms")) : "-",
        // Its own image and every image it needs (docs/incremental.md).
        has_size ? human_size(std::max(real(c, "chain_size"), real(c, "size"))) : "-",
        // Last: a reason is free text, blanks included.
        str(c, "reason").empty() ? "-" : str(c, "reason"),
    });
  }
  std::vector<size_t> width(head.size());
  for (size_t i = 0; i < head.size(); ++i) {
    width[i] = head[i].size();
    for (const auto& r : rows) width[i] = std::max(width[i], r[i].size());
  }
  auto line = [&](const std::vector<std::string>& cells) {
    std::string s;
    for (size_t i = 0; i < cells.size(); ++i) {
      if (i) s += "  ";
      s += fit(cells[i], static_cast<int>(width[i]), right[i]);
    }
    rstrip(s);
    return s + "\n";
  };
  std::string out = line(head);
  for (const auto& r : rows) out += line(r);
  return out;
}

std::string checkpoint_summary(const json& c) {
  std::string s = fmt::format("Checkpoint {} of job {} is {}", num(c, "checkpoint_id"),
                              num(c, "job_id"), str(c, "status", "Unknown"));
  std::string status = str(c, "status");
  std::string reason = str(c, "reason");
  std::string location = str(c, "location");
  if (status == "Present")
    s += fmt::format(": {} ({} in {})", location, human_size(real(c, "size")),
                     duration_seconds(real(c, "duration")));
  else if (!reason.empty())
    s += ": " + reason;
  else if (!location.empty())
    s += ": " + location;
  return s;
}

std::string restart_message(int64_t job_id, const json& job, std::span<const json> checkpoints) {
  int64_t from = num(job, "restore_from");
  if (from <= 0) return fmt::format("Job {} restarting", job_id);
  std::string s = fmt::format("Job {} restarting from checkpoint {}", job_id, from);
  int64_t fallback = 0;
  for (const auto& c : checkpoints) {
    int64_t id = num(c, "checkpoint_id");
    if (str(c, "status") == proto::to_string(proto::CheckpointStatus::Present) && id < from)
      fallback = std::max(fallback, id);
  }
  if (fallback) s += fmt::format(", or from checkpoint {} should its restore fail", fallback);
  return s;
}

// ---- sinfo --------------------------------------------------------------------

std::string sinfo_state(std::string_view node_state) {
  if (auto s = proto::parse_enum<proto::NodeState>(upper(node_state)))
    return std::string(proto::sinfo_name(*s));
  return lower(node_state);
}

std::string sinfo_node_state(const json& node) {
  return sinfo_state(str(node, "state", "UNKNOWN")) + (flag(node, "not_responding") ? "*" : "");
}

namespace {

std::vector<std::string> string_list(const json& j, std::string_view key) {
  std::vector<std::string> out;
  if (const json* a = field(j, key); a && a->is_array())
    for (const auto& v : *a)
      if (v.is_string()) out.push_back(v.get<std::string>());
  return out;
}

std::string partition_label(const json& p) {
  return str(p, "name") + (flag(p, "default") ? "*" : "");
}

std::string node_state_of(std::span<const json> nodes, const std::string& name) {
  for (const auto& n : nodes)
    if (str(n, "name") == name) return sinfo_node_state(n);
  return "unk";
}

}  // namespace

std::string sinfo_table(std::span<const json> partitions, std::span<const json> nodes) {
  struct Row {
    std::string partition, avail, limit, state;
    std::vector<std::string> nodes;
  };
  std::vector<Row> rows;
  for (const auto& p : partitions) {
    int64_t max_time = num(p, "max_time");
    Row base{partition_label(p),
             lower(str(p, "state", "UP")),
             max_time > 0 ? proto::format_duration(max_time) : "infinite",
             "n/a",
             {}};
    size_t first = rows.size();
    for (const auto& name : string_list(p, "nodes")) {
      std::string state = node_state_of(nodes, name);
      auto it = std::find_if(rows.begin() + static_cast<std::ptrdiff_t>(first), rows.end(),
                             [&](const Row& r) { return r.state == state; });
      if (it == rows.end()) {
        rows.push_back(base);
        rows.back().state = state;
        it = rows.end() - 1;
      }
      it->nodes.push_back(name);
    }
    if (rows.size() == first) rows.push_back(base);  // a partition without nodes
  }
  size_t pw = std::string_view("PARTITION").size();
  for (const auto& r : rows) pw = std::max(pw, r.partition.size());
  auto line = [&](const std::string& part, const std::string& avail, const std::string& limit,
                  const std::string& count, const std::string& state, const std::string& list) {
    std::string s = fmt::format("{:<{}} {:>5} {:>10} {:>6} {:>6} {}", part, pw, avail, limit, count,
                                state, list);
    rstrip(s);
    return s + "\n";
  };
  std::string out = line("PARTITION", "AVAIL", "TIMELIMIT", "NODES", "STATE", "NODELIST");
  for (const auto& r : rows)
    out += line(r.partition, r.avail, r.limit, std::to_string(r.nodes.size()), r.state,
                compress_hostlist(r.nodes));
  return out;
}

std::string sinfo_node_table(std::span<const json> partitions, std::span<const json> nodes) {
  struct Row {
    std::string node, partition, state;
  };
  std::vector<Row> rows;
  for (const auto& n : nodes) {
    std::string name = str(n, "name");
    for (const auto& p : partitions) {
      auto pn = string_list(p, "nodes");
      if (std::find(pn.begin(), pn.end(), name) == pn.end()) continue;
      rows.push_back({name, partition_label(p), sinfo_node_state(n)});
    }
  }
  size_t nw = std::string_view("NODELIST").size(), pw = std::string_view("PARTITION").size();
  for (const auto& r : rows) {
    nw = std::max(nw, r.node.size());
    pw = std::max(pw, r.partition.size());
  }
  auto line = [&](const std::string& node, const std::string& count, const std::string& part,
                  const std::string& state) {
    std::string s = fmt::format("{:<{}} {:>6} {:<{}} {:<6}", node, nw, count, part, pw, state);
    rstrip(s);
    return s + "\n";
  };
  std::string out = line("NODELIST", "NODES", "PARTITION", "STATE");
  for (const auto& r : rows) out += line(r.node, "1", r.partition, r.state);
  return out;
}

std::string sinfo_reasons_table(std::span<const json> nodes) {
  struct Row {
    std::string reason, user, time;
    std::vector<std::string> nodes;
  };
  std::vector<Row> rows;
  for (const auto& n : nodes) {
    std::string reason = str(n, "reason");
    if (reason.empty() && upper(str(n, "state")) != "DOWN") continue;
    Row r{reason.empty() ? "none" : reason,
          node_reason_user(n),
          proto::format_timestamp(node_reason_time(n)),
          {}};
    auto it = std::find_if(rows.begin(), rows.end(), [&](const Row& x) {
      return x.reason == r.reason && x.user == r.user && x.time == r.time;
    });
    if (it == rows.end()) {
      rows.push_back(std::move(r));
      it = rows.end() - 1;
    }
    it->nodes.push_back(str(n, "name"));
  }
  // Slurm's "%50E %9u %19H %N": fixed widths, a longer value cut.
  auto line = [&](const std::string& reason, const std::string& user, const std::string& time,
                  const std::string& list) {
    std::string s = fmt::format("{} {} {} {}", fit(reason, 50, false), fit(user, 9, false),
                                fit(time, 19, false), list);
    rstrip(s);
    return s + "\n";
  };
  std::string out = line("REASON", "USER", "TIMESTAMP", "NODELIST");
  for (const auto& r : rows) out += line(r.reason, r.user, r.time, compress_hostlist(r.nodes));
  return out;
}

}  // namespace fsched::cmds
