// libFuzzer harness: fsched.conf parsing (parse_config, expand_hostlist).
// The input is the file's text. A bad file must end in fsched::Error whose message
// says where ("FILE:LINE: ..." or "FILE: ..."); any other exception, a sanitizer
// report, a hang or a memory blow-up is a bug.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <string_view>

#include "common/error.h"
#include "proto/config.h"

namespace {

constexpr const char* kFile = "fuzz.conf";

[[noreturn]] void bug(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_config: %s: %s\n", what, detail.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    fsched::proto::Config c = fsched::proto::parse_config(text, kFile);
    // What a successful parse promises the daemons.
    if (c.control_machine.empty() || c.state_save_location.empty() || c.nodes.empty())
      bug("accepted without a required key", std::string(text));
    if (c.partitions.empty() || !c.default_partition()) bug("no partition", std::string(text));
    std::set<std::string> names;
    for (auto& n : c.nodes) names.insert(n.name);
    if (names.size() != c.nodes.size()) bug("a node defined twice", std::string(text));
    for (auto& p : c.partitions)
      for (auto& n : p.nodes)
        if (!names.count(n)) bug("partition names an unknown node", n);
    for (auto& n : c.nodes)
      if (n.port == 0 || n.addr.empty() || n.cpus < 1) bug("node without port/addr/cpus", n.name);
  } catch (const fsched::Error& e) {
    std::string_view msg = e.what();
    if (msg.substr(0, std::string_view(kFile).size() + 1) != std::string(kFile) + ":")
      bug("error does not name the file", e.what());
  }
  // The host list syntax on its own (NodeName=, Nodes=).
  if (size <= 256) {
    try {
      for (auto& n : fsched::proto::expand_hostlist(text))
        if (n.empty()) bug("empty host name", std::string(text));
    } catch (const fsched::Error&) {
    }
  }
  return 0;
}
