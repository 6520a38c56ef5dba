// How an image knows which pages of a mapping are unchanged since its parent image
// (Vma::track, docs/incremental.md). Stored in manifest.json as the strings of
// kTrackMethodNames, which are part of the image format: never rename one.
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace fsched::ckpt {

enum class TrackMethod {
  kNone,    // every page of the mapping is stored (a full image, or nothing to compare)
  kKernel,  // the kernel's written bits since the parent's dump (written_pages.h)
  kHash,    // each page's XXH3-128 against the parent's (page_hashes.h)
};

// The one table of names: JSON, the command line (`--track-method`) and messages.
inline constexpr std::array<std::pair<TrackMethod, std::string_view>, 3> kTrackMethodNames{{
    {TrackMethod::kNone, "none"},
    {TrackMethod::kKernel, "kernel"},
    {TrackMethod::kHash, "hash"},
}};

// The name of t as the manifest stores it ("none", "kernel", "hash").
constexpr std::string_view to_string(TrackMethod t) {
  for (auto& [m, name] : kTrackMethodNames)
    if (m == t) return name;
  return "?";
}

// The method named `name`, or nothing for a name no method has.
constexpr std::optional<TrackMethod> track_method_from_string(std::string_view name) {
  for (auto& [m, n] : kTrackMethodNames)
    if (n == name) return m;
  return std::nullopt;
}

// JSON: the method's name; an unknown one is an ImageError (an image from a newer or
// broken dumper), not silently the first entry.
inline void to_json(nlohmann::json& j, TrackMethod t) { j = std::string(to_string(t)); }
inline void from_json(const nlohmann::json& j, TrackMethod& t) {
  std::optional<TrackMethod> m;
  if (j.is_string()) m = track_method_from_string(j.get_ref<const std::string&>());
  if (!m) throw ImageError("image: unknown page tracking method " + j.dump());
  t = *m;
}

}  // namespace fsched::ckpt
