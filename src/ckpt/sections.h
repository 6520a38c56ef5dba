// The sections of an image's page stream (image.h) and their one fixed order.
//
// Dump appends the data of each kind of state to the page stream, and restore reads it
// back, section by section in kSectionOrder: dump.cpp and restore.cpp both iterate
// that list, so the two cannot drift apart. The writer records where each section
// starts (ImageWriter::begin_section(), manifest "sections"), validate_manifest()
// checks the list against the parts' sizes, and the reader checks, as restore enters
// each section, that it stands exactly at the recorded offset
// (PageReader::enter_section()), so a part that read too much or too little is named
// instead of silently shifting every later byte.
//
// The order is part of the image format (kImageFormatVersion): changing it, or adding
// a section, is a format change. Restore needs shm before pages (a mapping of a shared
// memory object or deleted file is made from the fd its section created) and pipes
// and sockets after them (their fds are installed with the files, after memory).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace fsched::ckpt {

enum class Section {
  kShm,           // shared memory objects' pages (Manifest::shm, in that order)
  kDeletedFiles,  // contents of deleted-while-open files (Manifest::deleted_files)
  kSysvShm,       // SysV segments' present pages (Manifest::sysv_shm)
  kPages,         // every process's VMA page runs (processes, then VMAs, in order)
  kPipes,         // bytes buffered in pipes (Manifest::pipes)
  kSockets,       // messages queued on Unix sockets (Manifest::sockets)
  kPageHashes,    // a hash of each page of the mappings with Vma::track kHash (page_hashes.h)
};

// The order of the sections in the page stream; every image of this format holds all of
// them, each exactly once (an empty section starts where the next one does), except
// that images before format 11 end without "page_hashes" (which is then empty). The
// restore reads none of "page_hashes": only the next dump does.
inline constexpr std::array<Section, 7> kSectionOrder = {
    Section::kShm,   Section::kDeletedFiles, Section::kSysvShm,    Section::kPages,
    Section::kPipes, Section::kSockets,      Section::kPageHashes,
};

// The section's name in the manifest ("shm", "deleted_files", "sysv_shm", "pages",
// "pipes", "sockets", "page_hashes").
constexpr std::string_view section_name(Section s) {
  switch (s) {
    case Section::kShm:
      return "shm";
    case Section::kDeletedFiles:
      return "deleted_files";
    case Section::kSysvShm:
      return "sysv_shm";
    case Section::kPages:
      return "pages";
    case Section::kPipes:
      return "pipes";
    case Section::kSockets:
      return "sockets";
    case Section::kPageHashes:
      return "page_hashes";
  }
  return "?";
}

// The section called `name`, or nothing for a name no section has.
constexpr std::optional<Section> section_from_name(std::string_view name) {
  for (Section s : kSectionOrder)
    if (section_name(s) == name) return s;
  return std::nullopt;
}

// Position of a section in kSectionOrder (0 for the first).
constexpr std::size_t section_index(Section s) {
  for (std::size_t i = 0; i < kSectionOrder.size(); ++i)
    if (kSectionOrder[i] == s) return i;
  return kSectionOrder.size();
}

// One entry of manifest "sections": the section called `name` starts `offset` bytes
// into the logical page stream. Kept as a name so that validate_manifest() can name an
// unknown one.
struct SectionStart {
  std::string name;
  std::uint64_t offset = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(SectionStart, name, offset)

}  // namespace fsched::ckpt
