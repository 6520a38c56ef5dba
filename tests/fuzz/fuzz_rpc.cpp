// libFuzzer harness: decoding of the RPC request bodies that become typed structs --
// the controller's submit (POST /v1/jobs: decode_submit, checked against a
// configuration) and fschedd's launch, restore, checkpoint and signal requests
// (decode_launch/checkpoint/signal of src/noded/node.cpp over the structs and from_json
// of src/proto/node_requests.h). A decoded node request must come back unchanged from
// its to_json (what the controller sends) read again by from_json.
//
// Input: a first line naming the route ("submit", "launch", "restore", "checkpoint",
// "signal"; "submit root" submits as root), then the request body as sent. As the
// server does, a body that is not JSON is refused before any handler runs. A bad body
// must end in proto::RpcError with status 400 or nlohmann::json::exception (which the
// server answers with 400); any other exception, a sanitizer report or a decoded
// request that breaks what the handlers rely on is a bug.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "ctld/controller.h"
#include "noded/node.h"
#include "proto/config.h"
#include "proto/rpc.h"

namespace {

[[noreturn]] void bug(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_rpc: %s: %s\n", what, detail.c_str());
  std::abort();
}

const fsched::proto::Config& config() {
  static const fsched::proto::Config c = fsched::proto::parse_config(
      "ControlMachine=head\n"
      "StateSaveLocation=/var/lib/fsched\n"
      "NodeName=node[1-2] CPUs=2 RealMemory=4000\n"
      "NodeName=big CPUs=64 RealMemory=1000000\n"
      "PartitionName=debug Nodes=node[1-2] Default=YES MaxTime=60 State=UP\n"
      "PartitionName=big Nodes=big MaxTime=INFINITE\n"
      "PartitionName=down Nodes=ALL State=DOWN\n",
      "fuzz.conf");
  return c;
}

void submit(const nlohmann::json& body, bool root) {
  fsched::proto::Caller caller{root ? 0u : 1000u, root ? 0u : 1000u};
  fsched::ctld::SubmitRequest s = fsched::ctld::decode_submit(body, caller, config());
  const fsched::ctld::Job& j = s.job;
  // What the controller's scheduling and launch rely on.
  if (s.script.rfind("#!", 0) != 0) bug("script without #!", s.script);
  if (j.work_dir.empty() || j.work_dir[0] != '/') bug("relative work_dir", j.work_dir);
  if (j.cpus_per_task < 1 || j.ntasks < 1 || j.num_cpus() < 1) bug("no CPUs", body.dump());
  if (j.time_limit < 0 || j.checkpoint_interval < 0) bug("negative time", body.dump());
  if (!s.env.is_object()) bug("env not an object", body.dump());
  const auto* p = config().partition(j.partition);
  if (!p || !p->up) bug("partition missing or down", j.partition);
  if (p->max_time && j.time_limit > p->max_time) bug("time limit above MaxTime", body.dump());
  bool fits = false;
  for (auto& n : p->nodes) {
    auto* nc = config().node(n);
    if (nc->cpus >= j.num_cpus() && nc->real_memory >= j.mem_mb) fits = true;
  }
  if (!fits) bug("accepted a job no node of its partition can hold", body.dump());
}

// What the controller would send for q, decoded again, is q.
template <typename T>
void round_trip(const T& q, const nlohmann::json& body) {
  nlohmann::json sent = q;
  T again;
  try {
    again = sent.get<T>();
  } catch (const std::exception& e) {
    bug("to_json's output refused by from_json", std::string(e.what()) + ": " + body.dump());
  }
  if (nlohmann::json(again) != sent)
    bug("to_json/from_json round trip changed the request", body.dump());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  size_t nl = in.find('\n');
  if (nl == std::string_view::npos) return 0;
  std::string_view route = in.substr(0, nl), text = in.substr(nl + 1);
  nlohmann::json body;  // null when the request has no body, as the server passes it
  if (!text.empty()) {
    body = nlohmann::json::parse(text, nullptr, false);
    if (body.is_discarded()) return 0;  // 400 "request body is not JSON"
  }
  try {
    if (route == "submit" || route == "submit root") {
      submit(body, route == "submit root");
    } else if (route == "launch" || route == "restore") {
      auto q = fsched::noded::decode_launch(body, route == "restore");
      if (q.env.count("PATH") != 1) bug("launch without PATH", body.dump());
      round_trip(q, body);
    } else if (route == "checkpoint") {
      auto q = fsched::noded::decode_checkpoint(body, 600);
      if (q.timeout == 0) bug("checkpoint without a timeout", body.dump());
      round_trip(q, body);
    } else if (route == "signal") {
      round_trip(fsched::noded::decode_signal(body), body);
    }
  } catch (const fsched::proto::RpcError& e) {
    if (e.status() != 400) bug("not a 400 for a bad request", e.what());
  } catch (const nlohmann::json::exception&) {
    // The server answers 400 "bad request: ...".
  }
  return 0;
}
