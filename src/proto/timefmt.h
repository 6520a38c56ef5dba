// Slurm's time formats, for sbatch --time/--checkpoint and for what squeue and
// scontrol print.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace fsched::proto {

// Parses a duration in any of Slurm's formats and returns it in seconds:
// "M", "M:S", "H:M:S", "D-H", "D-H:M", "D-H:M:S". With allow_unlimited,
// "UNLIMITED" and "INFINITE" (any case) return -1.
// Throws fsched::Error naming the text and the accepted formats when malformed.
int64_t parse_duration(std::string_view text, bool allow_unlimited = false);

// squeue's TIME column: "M:SS", "H:MM:SS" or "D-HH:MM:SS"; negative -> "UNLIMITED".
std::string format_duration(int64_t seconds);

// scontrol's timestamps: "2026-11-21T12:34:56" in local time; 0 -> "Unknown".
std::string format_timestamp(double unix_seconds);

}  // namespace fsched::proto
