// libFuzzer harness: Slurm's time formats (parse_duration, format_duration,
// format_timestamp). The input is the text of a duration (sbatch --time, --checkpoint);
// its first 8 bytes also serve as a raw double timestamp and int64 duration, as the
// commands get them from the controller's JSON.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "common/error.h"
#include "proto/timefmt.h"

namespace {

[[noreturn]] void bug(const char* what, std::string_view detail) {
  std::fprintf(stderr, "fuzz_timefmt: %s: %.*s\n", what, static_cast<int>(detail.size()),
               detail.data());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace fsched::proto;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  for (bool unlimited : {false, true}) {
    int64_t v;
    try {
      v = parse_duration(text, unlimited);
    } catch (const fsched::Error& e) {
      if (std::string_view(e.what()).find("invalid time specification") == std::string_view::npos)
        bug("unexpected error text", e.what());
      continue;
    }
    if (v < -1 || (v == -1 && !unlimited)) bug("out-of-range duration", text);
    // What squeue prints must read back as the same duration (sbatch --time=$(squeue ...)),
    // as long as the days fit the 9 digits a field may have.
    if (v >= int64_t{1000000000} * 86400) continue;
    std::string f = format_duration(v);
    int64_t back = -2;
    try {
      back = parse_duration(f, true);
    } catch (const fsched::Error&) {
      bug("format_duration output does not parse", f);
    }
    if (back != v) bug("duration does not round-trip", f);
  }
  if (size >= 8) {
    double d;
    int64_t n;
    std::memcpy(&d, data, 8);
    std::memcpy(&n, data, 8);
    std::string ts = format_timestamp(d);
    if (ts.empty()) bug("empty timestamp", text);
    std::string f = format_duration(n);
    if (f.empty()) bug("empty duration", text);
  }
  return 0;
}
