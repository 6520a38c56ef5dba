// What the scheduler's enum classes share: one table of names per enum, from which
// their text form, parsing, JSON (de)serialization and fmt formatting all derive, so
// that a name is written once. Used by job_state.h, checkpoint_status.h,
// checkpoint_source.h and node_state.h.
//
// Why not NLOHMANN_JSON_SERIALIZE_ENUM: it maps an unknown string to the first entry,
// so a corrupt database row or a newer peer's state would silently become PENDING.
// Here an unknown name is an error naming the value and what was expected.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace fsched::proto {

// One enumerator and its name on the wire, in SQLite and in the commands' output.
template <typename E>
struct EnumName {
  E value;
  std::string_view name;
};

// A scheduler enum E opts in by specializing this with `static constexpr names`, an
// array of EnumName<E> listing every enumerator once, and `static constexpr kind`,
// what a value is called in error messages ("job state").
template <typename E>
struct NamedEnumTraits;

template <typename E>
concept NamedEnum = std::is_enum_v<E> && requires {
  NamedEnumTraits<E>::names;
  NamedEnumTraits<E>::kind;
};

// The name of e. An enumerator missing from its table (a programming error caught by
// the unit tests) gives "?".
template <NamedEnum E>
constexpr std::string_view to_string(E e) {
  for (const auto& n : NamedEnumTraits<E>::names)
    if (n.value == e) return n.name;
  return "?";
}

// The enumerator named exactly text (case matters: these are stored names), if any.
template <NamedEnum E>
constexpr std::optional<E> parse_enum(std::string_view text) {
  for (const auto& n : NamedEnumTraits<E>::names)
    if (n.name == text) return n.value;
  return std::nullopt;
}

// "PENDING, RUNNING, ...": the names, for error messages.
template <NamedEnum E>
std::string enum_names() {
  std::string out;
  for (const auto& n : NamedEnumTraits<E>::names) {
    if (!out.empty()) out += ", ";
    out += n.name;
  }
  return out;
}

// JSON: the name as a string. Reading anything else (an unknown name, a non-string)
// throws nlohmann::json::other_error 501 "unknown KIND 'TEXT' (expected one of ...)",
// which the RPC server answers with 400 and the store reports with the file.
template <NamedEnum E>
void to_json(nlohmann::json& j, E e) {
  j = to_string(e);
}

template <NamedEnum E>
void from_json(const nlohmann::json& j, E& e) {
  std::optional<E> v;
  if (j.is_string()) v = parse_enum<E>(j.get_ref<const std::string&>());
  if (!v)
    throw nlohmann::json::other_error::create(
        501,
        fmt::format("unknown {} {} (expected one of {})", NamedEnumTraits<E>::kind, j.dump(),
                    enum_names<E>()),
        &j);
  e = *v;
}

}  // namespace fsched::proto

// fmt (9, without format_as): a named enum prints as its name, so that log lines and
// messages read as they did when the states were strings.
template <fsched::proto::NamedEnum E>
struct fmt::formatter<E> : fmt::formatter<std::string_view> {
  auto format(E e, fmt::format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(fsched::proto::to_string(e), ctx);
  }
};
