// The kind of a virtual memory area (Manifest Vma::kind): what backs the mapping and
// therefore how the restore recreates it. Stored in manifest.json as the strings of
// kVmaKindNames, which are part of the image format: never rename one.
#pragma once

#include <array>
#include <string>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace fsched::ckpt {

enum class VmaKind {
  kAnon,   // private or shared anonymous memory ("[anon:...]" included)
  kFile,   // a mapped regular file (Vma::path; deleted_key if it was unlinked)
  kHeap,   // [heap], the brk area
  kStack,  // [stack] of the main thread
  kVdso,   // [vdso], [vvar], [vvar_vclock]: mapped by the kernel, moved (not
  kVvar,   // recreated) on restore, and never stored
  kVvarVclock,
  kShm,   // a shared memory object (Vma::shm_key names a ShmObject)
  kSysv,  // a SysV shared memory attach (Vma::shm_key is the shmid)
};

// The one table of names: JSON (de)serialization, messages and fsched-ckpt show.
inline constexpr std::array<std::pair<VmaKind, std::string_view>, 9> kVmaKindNames{{
    {VmaKind::kAnon, "anon"},
    {VmaKind::kFile, "file"},
    {VmaKind::kHeap, "heap"},
    {VmaKind::kStack, "stack"},
    {VmaKind::kVdso, "vdso"},
    {VmaKind::kVvar, "vvar"},
    {VmaKind::kVvarVclock, "vvar_vclock"},
    {VmaKind::kShm, "shm"},
    {VmaKind::kSysv, "sysv"},
}};

// The name of k as the manifest stores it ("anon", "file" ...).
constexpr std::string_view to_string(VmaKind k) {
  for (auto& [kind, name] : kVmaKindNames)
    if (kind == k) return name;
  return "?";
}

// The kind named `name`; throws ImageError naming it if no kind has that name (an
// image from a newer or broken dumper).
inline VmaKind vma_kind_from_string(std::string_view name) {
  for (auto& [kind, n] : kVmaKindNames)
    if (n == name) return kind;
  throw ImageError(fmt::format("image: unknown memory mapping kind \"{}\"", name));
}

// A mapping the kernel makes in every process (vDSO and its data pages): the restore
// moves the new process's own copy to the saved address instead of mapping it.
constexpr bool is_kernel_mapping(VmaKind k) {
  return k == VmaKind::kVdso || k == VmaKind::kVvar || k == VmaKind::kVvarVclock;
}

// JSON: the kind's name. (Not NLOHMANN_JSON_SERIALIZE_ENUM, which maps an unknown
// string silently to the first entry.)
inline void to_json(nlohmann::json& j, VmaKind k) { j = std::string(to_string(k)); }
inline void from_json(const nlohmann::json& j, VmaKind& k) {
  if (!j.is_string()) throw ImageError("image: a memory mapping kind is not a string: " + j.dump());
  k = vma_kind_from_string(j.get_ref<const std::string&>());
}

}  // namespace fsched::ckpt
