// Slurm's duration formats (the checkpoint guide lists them for --checkpoint) and the
// time strings squeue and scontrol print.
#include <stdlib.h>
#include <time.h>

#include <gtest/gtest.h>

#include "common/error.h"
#include "proto/timefmt.h"

using fsched::proto::format_duration;
using fsched::proto::format_timestamp;
using fsched::proto::parse_duration;

TEST(ParseDuration, EveryFormatOfTheCheckpointGuide) {
  EXPECT_EQ(parse_duration("30"), 30 * 60);                            // minutes
  EXPECT_EQ(parse_duration("30:00"), 30 * 60);                         // minutes:seconds
  EXPECT_EQ(parse_duration("2:30:00"), 2 * 3600 + 30 * 60);            // hours:minutes:seconds
  EXPECT_EQ(parse_duration("1-0"), 86400);                             // days-hours
  EXPECT_EQ(parse_duration("1-0:30"), 86400 + 30 * 60);                // days-hours:minutes
  EXPECT_EQ(parse_duration("1-2:30:00"), 86400 + 2 * 3600 + 30 * 60);  // days-hours:minutes:seconds
  // The guide's suggested intervals.
  EXPECT_EQ(parse_duration("5:00"), 300);
  EXPECT_EQ(parse_duration("1:00:00"), 3600);
  EXPECT_EQ(parse_duration("2:00:00"), 7200);
}

TEST(ParseDuration, FieldsAreSlurms) {
  EXPECT_EQ(parse_duration("0"), 0);
  EXPECT_EQ(parse_duration("1"), 60);
  EXPECT_EQ(parse_duration("0:45"), 45);
  EXPECT_EQ(parse_duration("1:30"), 90);
  EXPECT_EQ(parse_duration("90:00"), 5400);  // Slurm does not range-check the first field
  EXPECT_EQ(parse_duration("2-12"), 2 * 86400 + 12 * 3600);
  EXPECT_EQ(parse_duration("3-04:05:06"), 3 * 86400 + 4 * 3600 + 5 * 60 + 6);
  EXPECT_EQ(parse_duration("0-0:0:1"), 1);
  EXPECT_EQ(parse_duration(" 10 "), 600);  // blanks around it, as from a #SBATCH line
}

TEST(ParseDuration, Unlimited) {
  EXPECT_EQ(parse_duration("UNLIMITED", true), -1);
  EXPECT_EQ(parse_duration("unlimited", true), -1);
  EXPECT_EQ(parse_duration("Infinite", true), -1);
  EXPECT_EQ(parse_duration("-1", true), -1);
  EXPECT_THROW(parse_duration("UNLIMITED"), fsched::Error);
  EXPECT_THROW(parse_duration("INFINITE", false), fsched::Error);
}

TEST(ParseDuration, MalformedThrows) {
  for (const char* bad :
       {"",      " ",    "abc",       "10m",  "1.5",        "-5",  "+5",  "1:2:3:4",
        "1-",    "-1-2", "1-2:3:4:5", "1--2", "1-2-3",      ":30", "30:", "1::2",
        "1-:30", "a-1",  "1-a",       "1 2",  "1234567890", "0x10"}) {
    EXPECT_THROW(parse_duration(bad), fsched::Error) << '"' << bad << '"';
    EXPECT_THROW(parse_duration(bad, true), fsched::Error) << '"' << bad << '"';
  }
}

TEST(ParseDuration, ErrorNamesTheTextAndTheFormats) {
  try {
    parse_duration("10x");
    FAIL() << "no throw";
  } catch (const fsched::Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("\"10x\""), std::string::npos) << m;
    EXPECT_NE(m.find("days-hours:minutes:seconds"), std::string::npos) << m;
    EXPECT_NE(m.find("minutes:seconds"), std::string::npos) << m;
    EXPECT_EQ(m.find("UNLIMITED"), std::string::npos) << m;
  }
  try {
    parse_duration("soon", true);
    FAIL() << "no throw";
  } catch (const fsched::Error& e) {
    EXPECT_NE(std::string(e.what()).find("UNLIMITED"), std::string::npos) << e.what();
  }
}

TEST(FormatDuration, SqueueTimeColumn) {
  EXPECT_EQ(format_duration(0), "0:00");
  EXPECT_EQ(format_duration(5), "0:05");
  EXPECT_EQ(format_duration(135), "2:15");
  EXPECT_EQ(format_duration(3599), "59:59");
  EXPECT_EQ(format_duration(3600), "1:00:00");
  EXPECT_EQ(format_duration(3723), "1:02:03");
  EXPECT_EQ(format_duration(86399), "23:59:59");
  EXPECT_EQ(format_duration(86400), "1-00:00:00");
  EXPECT_EQ(format_duration(93784), "1-02:03:04");
  EXPECT_EQ(format_duration(12 * 86400 + 5), "12-00:00:05");
  EXPECT_EQ(format_duration(-1), "UNLIMITED");
}

TEST(FormatDuration, RoundTripsThroughParse) {
  for (int64_t s : {0, 59, 60, 61, 3599, 3600, 3661, 86399, 86400, 90061, 1000000})
    EXPECT_EQ(parse_duration(format_duration(s)), s) << format_duration(s);
}

TEST(FormatTimestamp, LocalTimeIso) {
  ::setenv("TZ", "UTC", 1);
  ::tzset();
  EXPECT_EQ(format_timestamp(1763700000), "2025-11-21T04:40:00");
  EXPECT_EQ(format_timestamp(1763700300.9), "2025-11-21T04:45:00");  // fractions dropped
  EXPECT_EQ(format_timestamp(0), "Unknown");
  EXPECT_EQ(format_timestamp(-5), "Unknown");
  ::setenv("TZ", "Asia/Kolkata", 1);  // +05:30, no DST
  ::tzset();
  if (format_timestamp(1763700000) != "2025-11-21T04:40:00") {  // zone data may be absent
    EXPECT_EQ(format_timestamp(1763700000), "2025-11-21T10:10:00");
  }
  ::unsetenv("TZ");
  ::tzset();
}
