// Range checks for numbers of RPC request bodies. nlohmann::json's get<T>() of an
// arithmetic T is undefined behaviour for a float outside T's range (1e300 as int64_t)
// and silently wraps an integer that does not fit (4294967297 as int -> 1): decoders
// check with json_number_fits<T>() first and refuse the request (400) instead.
#pragma once

#include <cstdint>
#include <limits>
#include <type_traits>
#include <utility>

#include <nlohmann/json.hpp>

namespace fsched::proto {

// Whether the JSON number v converts to T without leaving T's range (a float to an
// integral T is truncated, as get<T>() does). True for non-numbers: get<T>() then
// throws a type error of its own.
template <typename T>
bool json_number_fits(const nlohmann::json& v) {
  static_assert(std::is_arithmetic_v<T> && !std::is_same_v<T, bool>);
  if constexpr (std::is_floating_point_v<T>) {
    return true;
  } else {
    if (v.is_number_unsigned()) return std::in_range<T>(v.get<std::uint64_t>());
    if (v.is_number_integer()) return std::in_range<T>(v.get<std::int64_t>());
    if (v.is_number_float()) {
      double d = v.get<double>();  // NaN fails both comparisons
      return d > static_cast<double>(std::numeric_limits<T>::min()) - 1.0 &&
             d < static_cast<double>(std::numeric_limits<T>::max()) + 1.0;
    }
    return true;
  }
}

}  // namespace fsched::proto
