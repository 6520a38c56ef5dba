// scontrol: shows jobs, nodes and partitions, acts on jobs (checkpoint
// create/vacate/restart/list/delete, requeue, hold, release, suspend, resume) and sets
// nodes DOWN, DRAIN or back in service (update NodeName=X State=DOWN|DRAIN|UNDRAIN|RESUME).
#include <algorithm>
#include <charconv>
#include <iostream>
#include <map>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "cmds/cmd_common.h"
#include "cmds/format.h"
#include "common/error.h"

namespace cmds = fsched::cmds;
using fsched::fail;
using nlohmann::json;

namespace {

// Slurm's "Key=Value" arguments, keys compared without case. allowed: the keys
// this action takes, as spelled in its help. Returns them under those spellings.
std::map<std::string, std::string> parse_settings(const std::vector<std::string>& words,
                                                  std::vector<std::string_view> allowed) {
  std::map<std::string, std::string> out;
  for (const auto& w : words) {
    auto eq = w.find('=');
    std::string key = w.substr(0, eq);
    auto it = std::find_if(allowed.begin(), allowed.end(),
                           [&](std::string_view a) { return cmds::iequals(a, key); });
    if (eq == std::string::npos || it == allowed.end()) {
      std::string expected;
      for (auto a : allowed) expected += fmt::format("{}{}=...", expected.empty() ? "" : " or ", a);
      fail("Invalid argument: {}{}", w,
           allowed.empty() ? " (this command takes none)" : " (expected " + expected + ")");
    }
    out[std::string(*it)] = w.substr(eq + 1);
  }
  return out;
}

int64_t checkpoint_id(const std::string& text) {
  try {
    return cmds::parse_job_id(text);
  } catch (const fsched::Error&) {
    fail("Invalid checkpoint id specified: {}", text);
  }
}

std::string job_path(int64_t id, std::string_view rest = "") {
  return fmt::format("/v1/jobs/{}{}", id, rest);
}

// The entity of `show`: job(s), node(s), partition(s), any case.
std::string show_entity(const std::string& word) {
  for (std::string_view e : {"job", "node", "partition"})
    if (cmds::iequals(word, e) || cmds::iequals(word, std::string(e) + "s")) return std::string(e);
  fail("Invalid entity: {} (expected job, node or partition)", word);
}

// Finds the item named `name` in list, or all of them when name is "".
std::vector<json> select_named(const json& list, const std::string& name, std::string_view what) {
  std::vector<json> out;
  for (const auto& item : list)
    if (name.empty() || item.value("name", "") == name) out.push_back(item);
  if (!name.empty() && out.empty()) fail("{} {} not found", what, name);
  return out;
}

// Clearer messages than CLI11's for a missing or unknown command or action.
void check_words(int argc, char** argv) {
  std::vector<std::string_view> words;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "-h" || a == "--help" || a == "-V" || a == "--version") return;  // CLI11 answers these
    if (!a.starts_with("-")) words.push_back(a);
  }
  auto one_of = [](std::string_view w, std::initializer_list<std::string_view> list) {
    return std::any_of(list.begin(), list.end(),
                       [&](std::string_view c) { return cmds::iequals(c, w); });
  };
  if (words.empty())
    fail(
        "no command given: use show, update, checkpoint, requeue, hold, release, suspend, resume "
        "or token (see --help)");
  if (!one_of(words[0], {"show", "update", "checkpoint", "requeue", "hold", "release", "suspend",
                         "resume", "token"}))
    fail(
        "invalid command: {} (use show, update, checkpoint, requeue, hold, release, suspend, "
        "resume or token)",
        words[0]);
  if (cmds::iequals(words[0], "update") && words.size() < 2)
    fail(
        "update needs NodeName=NODES State=DOWN|DRAIN|UNDRAIN|RESUME [Reason=TEXT] or JobId=ID "
        "NumRetained=N");
  if (cmds::iequals(words[0], "show") && words.size() < 2)
    fail("show needs what to show: job [ID], node [NAME] or partition [NAME]");
  if (cmds::iequals(words[0], "checkpoint")) {
    if (words.size() < 2 || !one_of(words[1], {"create", "vacate", "restart", "list", "delete"}))
      fail("checkpoint needs an action: create, vacate, restart, list or delete, then a job id");
    if (words.size() < 3) fail("checkpoint {} needs a job id", words[1]);
  }
  if (one_of(words[0], {"requeue", "hold", "release", "suspend", "resume"}) && words.size() < 2)
    fail("{} needs a job id", words[0]);
}

// A subcommand and its help.
struct Action {
  std::string_view name, help;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"scontrol: view and modify fsched jobs, nodes and partitions", "scontrol"};
  app.set_version_flag("-V,--version", "scontrol (fsched) " FSCHED_VERSION);
  app.fallthrough();  // lets --json follow the subcommand's words
  app.require_subcommand(1);
  bool as_json = false;
  app.add_flag("--json", as_json, "Print the API's JSON instead of Slurm's text");

  std::string entity, name;
  auto* show = app.add_subcommand("show", "show job [ID] | node [NAME] | partition [NAME]");
  show->add_option("entity", entity, "job, node or partition")->required();
  show->add_option("name", name, "A job id, node or partition name (default: all)");

  std::string job;
  std::vector<std::string> settings;
  auto* ckpt = app.add_subcommand("checkpoint", "Checkpoint operations on a job");
  ckpt->require_subcommand(1);
  for (const Action& a : {
           Action{"create", "checkpoint create ID [Description=TEXT]: checkpoint the running job"},
           Action{"vacate",
                  "checkpoint vacate ID [Description=TEXT]: checkpoint the job, then stop it "
                  "(it becomes pending, reason Vacated)"},
           Action{"restart",
                  "checkpoint restart ID [CheckpointId=N]: restore the job from its last (or the "
                  "given) checkpoint"},
           Action{"list", "checkpoint list ID [--json]: the job's checkpoints, oldest first"},
           Action{"delete", "checkpoint delete ID CheckpointId=N: delete a checkpoint's files"},
       }) {
    auto* sub = ckpt->add_subcommand(std::string(a.name), std::string(a.help));
    sub->add_option("job_id", job, "Job id")->required();
    sub->add_option("settings", settings, "Key=Value arguments");
  }

  std::vector<std::string> update_words;
  auto* update = app.add_subcommand(
      "update",
      "update NodeName=NODES State=DOWN|DRAIN Reason=TEXT | State=UNDRAIN|RESUME: take nodes "
      "out of service (DOWN: their jobs are requeued; DRAIN: their jobs with checkpointing move "
      "to other nodes, the others run on) or return them to service. update JobId=ID "
      "NumRetained=N: keep the job's newest N checkpoints (0: the cluster's CRIU_MaxEpochs)");
  update->add_option("settings", update_words, "Key=Value arguments")->required();

  std::vector<std::string> ids;
  for (const Action& a : {
           Action{"requeue",
                  "requeue ID[,ID...]: put jobs back in the queue (running ones are "
                  "stopped and start again)"},
           Action{"hold", "hold ID[,ID...]: keep pending jobs from starting"},
           Action{"release", "release ID[,ID...]: let held jobs start"},
           Action{"suspend",
                  "suspend [--in-place] ID[,ID...]: checkpoint running jobs, stop them and "
                  "release their CPUs and memory (state SUSPENDED)"},
           Action{"resume",
                  "resume ID[,ID...]: restore suspended jobs from their suspend checkpoint, on "
                  "any node with room (thaw those suspended in place)"},
       }) {
    auto* sub = app.add_subcommand(std::string(a.name), std::string(a.help));
    sub->add_option("job_id", ids, "Job ids (also comma-separated)")->required();
  }
  bool in_place = false;
  app.get_subcommand("suspend")->add_flag(
      "--in-place", in_place,
      "Slurm's suspend: freeze the job where it is, keeping its CPUs and memory, instead of "
      "checkpointing it and freeing its node");
  std::vector<std::string> token_words;
  auto* token = app.add_subcommand(
      "token",
      "token [lifespan=SECONDS] [username=NAME]: print SLURM_JWT=... , a token for the REST API "
      "and web console (default lifespan 1800 s; another user's token for root only)");
  token->add_option("settings", token_words, "Key=Value arguments");
  for (auto* sub : app.get_subcommands({})) sub->ignore_case();
  for (auto* sub : ckpt->get_subcommands({})) sub->ignore_case();

  return cmds::run("scontrol", app, [&]() -> int {
    check_words(argc, argv);
    app.parse(argc, argv);

    auto config = cmds::load_config();
    auto client = cmds::controller(config);
    // A checkpoint's reply waits for the dump, which the controller bounds by
    // CheckpointTimeout.
    int slow_timeout = config.checkpoint_timeout + 60;

    if (show->parsed()) {
      std::string what = show_entity(entity);
      if (what == "job") {
        std::vector<json> jobs;
        if (!name.empty()) {
          jobs.push_back(client.call("GET", job_path(cmds::parse_job_id(name))));
        } else {
          json all = client.call("GET", "/v1/jobs").at("jobs");
          jobs.assign(all.begin(), all.end());
          std::sort(jobs.begin(), jobs.end(), [](const json& a, const json& b) {
            return a.value("job_id", int64_t{0}) < b.value("job_id", int64_t{0});
          });
        }
        if (as_json) {
          std::cout << json::object({{"jobs", jobs}}).dump(2) << std::endl;
        } else if (jobs.empty()) {
          std::cout << "No jobs in the system" << std::endl;
        } else {
          for (const auto& j : jobs) std::cout << cmds::show_job(j);
        }
      } else if (what == "node") {
        auto nodes = select_named(client.call("GET", "/v1/nodes").at("nodes"), name, "Node");
        if (as_json)
          std::cout << json::object({{"nodes", nodes}}).dump(2) << std::endl;
        else
          for (const auto& n : nodes) std::cout << cmds::show_node(n);
      } else {
        auto parts =
            select_named(client.call("GET", "/v1/partitions").at("partitions"), name, "Partition");
        if (as_json)
          std::cout << json::object({{"partitions", parts}}).dump(2) << std::endl;
        else
          for (const auto& p : parts) std::cout << cmds::show_partition(p);
      }
      std::cout.flush();
      return 0;
    }

    if (token->parsed()) {
      auto s = parse_settings(token_words, {"lifespan", "username"});
      json body = json::object();
      if (s.count("lifespan")) {
        try {
          body["lifespan"] = cmds::parse_job_id(s["lifespan"]);
        } catch (const fsched::Error&) {
          fail("Invalid lifespan: {} (expected seconds)", s["lifespan"]);
        }
      }
      if (s.count("username")) body["username"] = s["username"];
      json t = client.call("POST", "/v1/token", body);
      std::cout << "SLURM_JWT=" << t.at("token").get<std::string>() << std::endl;
      return 0;
    }

    if (update->parsed() && !update_words.empty() &&
        cmds::iequals(update_words[0].substr(0, update_words[0].find('=')), "JobId")) {
      auto s = parse_settings(update_words, {"JobId", "NumRetained"});
      if (!s.count("NumRetained")) fail("update JobId=ID needs NumRetained=N");
      const std::string& v = s["NumRetained"];
      int64_t n = 0;
      auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
      if (v.empty() || ec != std::errc() || end != v.data() + v.size() || n < 0)
        fail("Invalid NumRetained: {} (expected a number of checkpoints, 0 for the default)", v);
      client.call("POST", job_path(cmds::parse_job_id(s["JobId"]), "/update"),
                  {{"num_retained", n}});
      return 0;
    }

    if (update->parsed()) {
      // Slurm prints nothing when it works, and goes on to the next node when one fails.
      int status = 0;
      for (const auto& [node, body] : cmds::node_update_requests(update_words)) {
        try {
          client.call("POST", fmt::format("/v1/nodes/{}/update", node), body);
        } catch (const fsched::proto::RpcError& e) {
          cmds::print_error("scontrol", fmt::format("update of node {}: {}", node, e.what()));
          status = 1;
        }
      }
      return status;
    }

    if (ckpt->parsed()) {
      int64_t id = cmds::parse_job_id(job);
      std::string action = ckpt->get_subcommands().at(0)->get_name();
      if (action == "create" || action == "vacate") {
        auto s = parse_settings(settings, {"Description"});
        client.set_timeout(slow_timeout);
        json c = client.call("POST", job_path(id, action == "create" ? "/checkpoint" : "/vacate"),
                             {{"description", s.count("Description") ? s["Description"] : ""}});
        if (as_json)
          std::cout << c.dump(2) << std::endl;
        else
          std::cout << cmds::checkpoint_summary(c) << std::endl;
      } else if (action == "restart") {
        auto s = parse_settings(settings, {"CheckpointId"});
        json body = json::object();
        if (s.count("CheckpointId")) body["checkpoint_id"] = checkpoint_id(s["CheckpointId"]);
        json j = client.call("POST", job_path(id, "/restart"), body);
        if (as_json) {
          std::cout << j.dump(2) << std::endl;
        } else {
          // The reply is the job, which says which checkpoint it will be restored from
          // (restore_from); the list says what it falls back to should that restore fail.
          std::vector<json> list;
          try {
            // Named: a range-for over a member of the temporary reply would read freed memory.
            json reply = client.call("GET", job_path(id, "/checkpoints"));
            for (const auto& c : reply.at("checkpoints")) list.push_back(c);
          } catch (const std::exception&) {
            // The restart is done; only its message is the poorer.
          }
          std::cout << cmds::restart_message(id, j, list) << std::endl;
        }
      } else if (action == "list") {
        parse_settings(settings, {});
        json list = client.call("GET", job_path(id, "/checkpoints"));
        if (as_json) {
          std::cout << list.dump(2) << std::endl;
        } else {
          std::vector<json> cs(list.at("checkpoints").begin(), list.at("checkpoints").end());
          std::cout << cmds::checkpoint_table(cs) << std::flush;
        }
      } else {  // delete
        auto s = parse_settings(settings, {"CheckpointId"});
        if (!s.count("CheckpointId")) fail("checkpoint delete needs CheckpointId=N");
        json c = client.call("DELETE", job_path(id, fmt::format("/checkpoints/{}",
                                                                checkpoint_id(s["CheckpointId"]))));
        if (as_json)
          std::cout << c.dump(2) << std::endl;
        else
          std::cout << cmds::checkpoint_summary(c) << std::endl;
      }
      return 0;
    }

    // requeue, hold, release, suspend, resume: Slurm prints nothing when they work, and
    // goes on to the next job when one fails.
    std::string action = app.get_subcommands().at(0)->get_name();
    if (action == "suspend") client.set_timeout(slow_timeout);  // it waits for the dump
    std::vector<int64_t> jobs;
    for (const auto& i : ids)
      for (auto id : cmds::parse_job_ids(i)) jobs.push_back(id);
    int status = 0;
    for (auto id : jobs) {
      try {
        client.call("POST", job_path(id, "/" + action),
                    action == "suspend" && in_place ? json{{"in_place", true}} : json::object());
      } catch (const fsched::proto::RpcError& e) {
        cmds::print_error("scontrol", fmt::format("{} of job {}: {}", action, id, e.what()));
        status = 1;
      }
    }
    return status;
  });
}
