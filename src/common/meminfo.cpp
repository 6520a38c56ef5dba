// /proc/meminfo (meminfo.h).
#include "common/meminfo.h"

#include <fstream>
#include <string>

namespace fsched {

std::uint64_t meminfo_kib(std::string_view field) {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  std::uint64_t kb = 0;
  while (in >> key >> kb >> unit)
    if (key == field) return kb;
  return 0;
}

}  // namespace fsched
