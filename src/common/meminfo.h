// /proc/meminfo (proc(5)), for the node's report and the dumper's memory budget.
#pragma once

#include <cstdint>
#include <string_view>

namespace fsched {

// The value of /proc/meminfo field `field` (with its colon: "MemAvailable:") in KiB;
// 0 if the file cannot be read or has no such field.
std::uint64_t meminfo_kib(std::string_view field);

}  // namespace fsched
