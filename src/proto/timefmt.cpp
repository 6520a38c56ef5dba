#include "proto/timefmt.h"

#include <time.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <vector>

#include <fmt/format.h>

#include "common/error.h"
#include "common/text.h"

namespace fsched::proto {

namespace {

// One field of a duration: digits only (no sign, no spaces), at most 9 of them so
// that days * 86400 and friends cannot overflow.
bool parse_field(std::string_view s, int64_t& out) {
  if (s.empty() || s.size() > 9) return false;
  if (!std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

bool parse_fields(std::string_view s, std::vector<int64_t>& out) {
  while (true) {
    auto colon = s.find(':');
    int64_t v = 0;
    if (!parse_field(s.substr(0, colon), v)) return false;
    out.push_back(v);
    if (colon == std::string_view::npos) break;
    s.remove_prefix(colon + 1);
  }
  return out.size() <= 3;
}

}  // namespace

int64_t parse_duration(std::string_view text, bool allow_unlimited) {
  std::string_view s = trim(text);
  if (allow_unlimited && (iequals(s, "UNLIMITED") || iequals(s, "INFINITE") || s == "-1"))
    return -1;
  auto bad = [&]() -> int64_t {
    fail(
        "invalid time specification \"{}\": use minutes, minutes:seconds, hours:minutes:seconds, "
        "days-hours, days-hours:minutes or days-hours:minutes:seconds{}",
        text, allow_unlimited ? ", or UNLIMITED" : "");
  };
  // Slurm does not range-check the fields (90:00 is 90 minutes), and neither do we.
  std::vector<int64_t> f;
  if (auto dash = s.find('-'); dash != std::string_view::npos) {
    int64_t days = 0;
    if (!parse_field(s.substr(0, dash), days) || !parse_fields(s.substr(dash + 1), f)) return bad();
    int64_t h = f[0], m = f.size() > 1 ? f[1] : 0, sec = f.size() > 2 ? f[2] : 0;
    return days * 86400 + h * 3600 + m * 60 + sec;
  }
  if (!parse_fields(s, f)) return bad();
  switch (f.size()) {
    case 1:
      return f[0] * 60;
    case 2:
      return f[0] * 60 + f[1];
    default:
      return f[0] * 3600 + f[1] * 60 + f[2];
  }
}

std::string format_duration(int64_t seconds) {
  if (seconds < 0) return "UNLIMITED";
  int64_t d = seconds / 86400, h = seconds / 3600 % 24, m = seconds / 60 % 60, s = seconds % 60;
  if (d) return fmt::format("{}-{:02}:{:02}:{:02}", d, h, m, s);
  if (h) return fmt::format("{}:{:02}:{:02}", h, m, s);
  return fmt::format("{}:{:02}", m, s);
}

std::string format_timestamp(double unix_seconds) {
  // Beyond time_t's range the conversion below would be undefined: no such date.
  if (!(unix_seconds > 0) || !(unix_seconds < 9223372036854775808.0)) return "Unknown";
  time_t t = static_cast<time_t>(std::floor(unix_seconds));
  struct tm tm {};
  if (!localtime_r(&t, &tm)) return "Unknown";
  char buf[32];
  size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return std::string(buf, n);
}

}  // namespace fsched::proto
