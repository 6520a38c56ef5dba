// The on-disk checkpoint image: a directory holding a versioned manifest and a
// stream of page data stored as xxh3-checksummed chunks, each zstd-compressed or,
// when zstd does not shrink it meaningfully, stored as is.
//
// Layout of an image directory DIR (files 0600, directory 0700):
//   DIR/manifest.json   the manifest (JSON object, see manifest.h); the writer adds
//                       "format_version", "engine_version", the chunk table "chunks"
//                       and the section starts "sections"
//   DIR/manifest.xxh3   16 lowercase hex digits: XXH3-64 of manifest.json's bytes
//   DIR/manifest.hmac   64 lowercase hex digits: HMAC-SHA256 of manifest.json's bytes
//                       with the cluster's image key (imagekey.h), when signed
//   DIR/pages.img       concatenated chunks; each chunk holds up to kChunkRawBytes bytes
//                       of the logical page stream
// The page stream is one logical byte string: the dumper appends the contents of
// memory pages, pipes and sockets in sections, in the fixed order of sections.h, and
// the restorer reads them back in that order, so the parts of the manifest only need
// sizes, not offsets. Manifest "sections" is an array, in stream order, of
// {"name": section name (sections.h), "offset": logical stream offset where the
// section starts}: the check that dump and restore agree on where each section is.
//
// Versions: "format_version" (kImageFormatVersion) is the version of this layout and
// the only version a reader checks; "engine_version" is the build that wrote the image,
// kept for diagnosis only, so that an image outlives an upgrade of the engine as long
// as the format stays.
//
// Chunk table: manifest "chunks" is an array with one object per chunk, in stream
// order: {"offset": file offset in pages.img, "stored": bytes in pages.img, "raw":
// logical bytes (1..kChunkRawBytes), "xxh3": 16 hex digits, XXH3-64 of the stored
// bytes}. Chunk 0 is at offset 0 and every further chunk starts at the first multiple
// of kChunkAlignBytes after the end of the one before (the gap is zeros), so that the
// writer can write pages.img with O_DIRECT; the file ends where the last chunk ends.
// A chunk is one zstd frame, except when it has
// "zstd": false: then its stored bytes are the logical bytes themselves (stored ==
// raw). The writer does that when zstd would keep >= kStoreRawPercent % of the bytes
// (incompressible memory), which lets the reader skip zstd entirely. An absent "zstd"
// key means a zstd frame (images written before the key existed).
//
// Crash safety: the writer builds DIR.tmp/, fsyncs every file and the directory,
// then renames DIR.tmp to DIR and fsyncs the parent, so a directory named DIR is
// always complete. An ImageWriter destroyed before commit() removes DIR.tmp.
//
// Reading: blocks of pages.img that are in the page cache are read through an
// mmap(2) of it (user-space copies and in-place hashing are several times faster than
// pread(2)'s in-kernel copy), other blocks with pread(2), so that a short pages.img or
// an I/O error is reported as fsched::Error. Images are never modified after
// commit(); truncating pages.img while verify_chunks() runs or a PageReader is alive,
// or an I/O error on a page the kernel is still reading ahead, can instead kill the
// process with SIGBUS.
//
// Errors: whatever says the image is bad or does not match -- not an image, a bad
// checksum or HMAC, another format, a malformed chunk or section list, a truncated or
// corrupt chunk, a read past the end of the stream, a section entered at the wrong
// offset -- throws fsched::ImageError (FailureClass::kImage: no retry anywhere helps);
// a failing system call (EIO, ENOMEM, ENOSPC, ESRCH ...) throws fsched::Error with its
// errno (transient).
//
// Implementation, one file per part (the internal headers are not for the rest of the
// engine): image_files.{h,cpp} file names and helpers; image_writer.cpp ImageWriter;
// chunk_table.{h,cpp} the chunk table and its JSON; pages_file.{h,cpp} pages.img
// opened and mapped for reading; chunk_decode.{h,cpp} checking and decompressing
// chunks; page_reader.{h,cpp} PageReader; image_reader.cpp ImageReader::open() and
// verify_chunks(). Writing pages into a process is the restore side's
// (page_restore.h, through PageReader::deliver()).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ckpt/sections.h"

namespace fsched::ckpt {

// The image format this build writes, and the oldest it reads. History
// (docs/image-format.md): 1: contiguous chunks. 2: chunks aligned to kChunkAlignBytes.
// 3: page-stream sections recorded in manifest "sections" (and, since late format 2,
// manifests signed with the image key). 4: kinds of state a format-3 engine would
// silently drop (job-control stops, seccomp strict mode, ...): a format-3 engine must
// refuse these images, so the format changed. 5: more of them (a flock held through a
// file mapping, chroot, cgroup and login uid, new fd and timer kinds). 6: files in
// flight in Unix sockets, Unix socket options, names of accepted and connected Unix
// sockets; file locks as arrays. 7: peer credentials of Unix sockets
// (UnixSocket::cred) and the network lock's hand-over name (Manifest::netlock). 8: the
// pid in those credentials of a maker that had exited (a format-7 engine would make
// the socket as init). 9: incremental images (Manifest::image_id, kind, parent;
// Vma::parent_runs): a format-8 engine would restore one without its parent's pages.
// 10: a mapping's runs as a string (PageRuns, manifest.h). 11: page hashes for the
// next incremental dump (Vma::track, section "page_hashes"). 12: SysV segments taken
// from the parent chain (SysvShm::parent_runs, track): a format-11 engine would leave
// those pages zero. A build reads formats
// kOldestImageFormat..kImageFormatVersion (an older image lacks only state that did not
// exist then; its fields take their defaults); another is refused with an ImageError
// naming both. Rule: a new manifest field that an engine of the same format would
// ignore while restoring means a new format.
inline constexpr int kImageFormatVersion = 12;
inline constexpr int kOldestImageFormat = 3;
// Alignment of chunk offsets in pages.img, in bytes (the O_DIRECT block size of the
// file systems we write to; see open(2), O_DIRECT).
inline constexpr std::size_t kChunkAlignBytes = 4096;
// Largest manifest.json a reader accepts, in bytes.
inline constexpr std::size_t kMaxManifestBytes = 256u << 20;
// Raw (uncompressed) bytes per chunk of the page stream.
inline constexpr std::size_t kChunkRawBytes = 4u << 20;
// A chunk whose zstd frame would be >= this percentage of its raw size is stored
// uncompressed ("zstd": false in the chunk table).
inline constexpr unsigned kStoreRawPercent = 97;
// Maximum number of threads ImageReader::verify_chunks() hashes with (it also stays
// within the CPUs the process may run on, and uses one thread per 8 MiB of pages.img
// at most, so small images are verified by the calling thread alone).
inline constexpr unsigned kVerifyThreads = 2;

// Writes an image. Not thread-safe; append_pages() hands full chunks to internal
// worker threads (two, one per CPU at most) so that compression overlaps with reading
// the job's memory and two chunks are compressed at once.
// Memory use is bounded by a few chunks whatever the image size, plus the budget of
// hold() while it holds.
// A failure in a worker is reported by the next append_pages() or commit(). Once a
// call has thrown (except commit() refusing a non-object manifest) the writer stays
// failed: every further call throws; destroy it to remove DIR.tmp.
class ImageWriter {
 public:
  // Creates DIR.tmp (mode 0700; a stale DIR.tmp from a crashed dump is removed first).
  // zstd_level: zstd compression level (1..19, or negative for the fast levels).
  // direct_io: write pages.img with O_DIRECT (open(2)), from the writer's aligned
  // buffers straight to the disk, bypassing the page cache; each chunk write then
  // waits for the disk. Falls back to buffered writes where the file system refuses
  // O_DIRECT (EINVAL).
  // Throws fsched::Error naming the path if DIR already exists or DIR.tmp cannot be
  // created (EACCES, ENOSPC, ENOENT of the parent ...).
  static std::unique_ptr<ImageWriter> create(const std::filesystem::path& dir, int zstd_level,
                                             bool direct_io = false);

  virtual ~ImageWriter() = default;

  // Appends bytes to the logical page stream. Throws fsched::Error on a write
  // failure (ENOSPC, EIO) naming pages.img.
  virtual void append_pages(std::span<const std::byte> data) = 0;

  // Zero-copy append, in two calls: append_space() returns the free rest of the
  // current chunk buffer (1 to kChunkRawBytes bytes; a full chunk is handed to the
  // worker first), the caller fills a prefix of it, and append_done(n) appends those
  // n bytes (n <= the view's size). The view is valid until append_done(); no other
  // call may come between the two. Throw like append_pages().
  virtual std::span<std::byte> append_space() = 0;
  virtual void append_done(std::size_t n) = 0;

  // on: from now on, each chunk written to pages.img is also handed to the disk at
  // once (sync_file_range(2) SYNC_FILE_RANGE_WRITE), so that commit()'s fsync has
  // little left to wait for. That call can block on a slow disk, so a dump keeps it
  // off while a job that is to be thawed before the commit is frozen. Default off.
  virtual void set_eager_writeback(bool on) = 0;

  // From now on, full chunks are kept in memory as they are, neither compressed nor
  // written, until release_held() or commit(), as long as they fit in `budget` bytes:
  // a dump that thaws the job before its commit then only copies the job's memory
  // while it is frozen, and zstd and the writes run after the thaw. The buffers
  // (budget rounded down to whole chunks) are allocated here and their pages populated
  // (madvise(2) MADV_POPULATE_WRITE), so that the frozen copy takes no page fault.
  // The chunk that does not fit releases the held ones, and from then on the writer
  // works as without hold(). Nothing is held when budget < 2 chunks or the buffers
  // cannot be allocated. Throws like append_pages() if the writer failed before.
  virtual void hold(std::uint64_t budget) = 0;
  // Hands the held chunks, in stream order, to the compression threads, and stops
  // holding. Throws like append_pages().
  virtual void release_held() = 0;
  // Bytes of page stream hold() keeps in memory now: the full chunks held and the one
  // being filled; 0 when not holding (never asked, or released).
  virtual std::uint64_t held_bytes() const = 0;

  // Fills part of a deferred append: the bytes [offset, offset + dst.size()) of it, in
  // dst. Must not throw.
  using DeferredFill = std::function<void(std::uint64_t offset, std::span<std::byte> dst)>;
  // Appends `n` bytes whose contents `fill` provides later: while holding (hold()), the
  // bytes are reserved in the held chunks and filled only when the held chunks go to
  // compression (release_held(), commit(), or a chunk that does not fit the budget),
  // so that a dump can put pages it copied before the freeze into the stream without
  // copying them while the job is frozen. When not holding, fill runs at once. `fill`
  // is called once or more, for pieces that together cover [0, n), and must stay
  // callable (its sources alive) until commit(). Throws like append_pages().
  virtual void append_deferred(std::size_t n, DeferredFill fill) = 0;

  // Section s of the page stream starts here, at logical_bytes(): commit() records it
  // in manifest "sections". Sections must begin in kSectionOrder, each once (any may be
  // empty); throws fsched::Error (a bug of the dumper) otherwise.
  virtual void begin_section(Section s) = 0;

  // Bytes appended so far (logical, uncompressed).
  virtual std::uint64_t logical_bytes() const = 0;
  // Bytes written to pages.img so far (stored, i.e. compressed or raw); final after
  // commit().
  virtual std::uint64_t stored_bytes() const = 0;

  // Flushes the last chunk, stores `manifest` (adding format_version, engine_version,
  // chunks and sections), writes manifest.xxh3, fsyncs, renames DIR.tmp to DIR.
  // Throws fsched::Error on any failure; DIR then does not exist.
  virtual void commit(nlohmann::json manifest) = 0;

  // Path of the finished image (DIR).
  virtual const std::filesystem::path& path() const = 0;

  // commit() also writes DIR/manifest.hmac: HMAC-SHA256 of manifest.json's bytes with
  // `key` (the cluster's image key, imagekey.h), 64 hex digits and a newline.
  virtual void sign_with(std::vector<std::byte> key) = 0;
};

// Receives bytes of the page stream from PageReader::deliver().
class PageSink {
 public:
  virtual ~PageSink() = default;

  // Bytes [at, at + len) of the delivery -- stream offsets P + at.., P being the reader's
  // position when deliver() was called -- are at data (len >= 1). Every byte of a
  // delivery is put exactly once, in stream order from the caller's thread except for
  // whole chunks, which the reader's worker thread may put at the same time: put() must
  // be safe to call from two threads for disjoint ranges. `data` is valid during the
  // call only, and may point into a read-only shared mapping of pages.img: hand it to
  // the kernel only (a system call reading it fails with EFAULT where a user-space read
  // of a page the file lost would kill the process with SIGBUS). May throw: the
  // delivery then fails with the first error in the stream.
  virtual void put(const std::byte* data, std::size_t len, std::uint64_t at) = 0;
};

// Chunk buffers passed from one PageReader to the next: a reader made with the pool
// takes its two buffers from it and gives them back when it is destroyed, so that
// readers made one after another (the links of a parent chain, parent_chain.h) reuse
// memory already faulted in, where each new 4 MiB buffer costs its first use ~1 to 4 ms
// of page faults on these machines. Thread-safe.
class ChunkBufferPool {
 public:
  // A buffer of at least `bytes`: a kept one, else a new one. Throws std::bad_alloc.
  std::unique_ptr<std::byte[]> take(std::size_t bytes);
  // Keeps `b`, of `bytes`, for a later take().
  void give(std::unique_ptr<std::byte[]> b, std::size_t bytes);

 private:
  std::mutex mu_;
  std::vector<std::pair<std::size_t, std::unique_ptr<std::byte[]>>> free_;  // guarded by mu_
};

// Reads the logical page stream of an image sequentially. It does not depend on the
// ImageReader that made it staying alive. Not thread-safe (one caller thread); a
// worker thread reads, checks (xxh3) and decompresses chunk k+1 while the caller
// consumes chunk k (double buffering), so it holds two chunk buffers of up to
// kChunkRawBytes (and, for images with zstd chunks, up to two compressed chunks).
// Every chunk is checked against the chunk table before any of its bytes is handed
// out. After a chunk error (checksum mismatch, bad zstd frame, truncated pages.img,
// I/O error) the reader is failed: every further next() and read() throws that error.
class PageReader {
 public:
  virtual ~PageReader() = default;

  // Zero-copy read: returns a view of the next n bytes of the stream, 1 <= n <= max,
  // and advances the stream position by n. The bytes live in the reader's buffer of
  // the current chunk; the view stays valid until the next call to next(), read() or
  // deliver() on this reader (whatever its outcome) or the reader's
  // destruction, and must not be used after that. Views never span two chunks: n is
  // min(max, bytes left in the current chunk), so with max >= kChunkRawBytes each call
  // returns the rest of a whole chunk (kChunkRawBytes bytes, fewer only for the last chunk). When
  // the current chunk is used up the call first takes the next one from the worker (waiting for it
  // to be decoded) and lets the worker start on the one after it. next(0) returns an empty view and
  // consumes nothing (it still rethrows an earlier chunk error). Throws fsched::Error if max > 0
  // and the stream is at its end
  // ("... past the end of the page stream ...", consuming nothing; the reader stays
  // usable), or naming the chunk index and pages.img offset if the next chunk is bad
  // (see above; the reader is then failed).
  virtual std::span<const std::byte> next(std::size_t max) = 0;

  // Fills `out` with the next out.size() bytes of the stream (a copy out of the
  // buffers next() returns views of). Throws fsched::Error naming the chunk index and
  // pages.img offset on a checksum mismatch, a zstd error or a stream shorter than
  // the chunk table says; bytes of `out` before the bad chunk are then filled. A read
  // past the end of the stream throws before consuming anything.
  virtual void read(std::span<std::byte> out) = 0;

  // Hands the next `len` bytes of the stream to `sink` (see PageSink) and advances the
  // position past them; how restore writes pages into a process (page_restore.h).
  // When the process may run on more than one CPU (sched_getaffinity(2) when the reader
  // was made), whole chunks are shared with the worker thread: each thread decodes a
  // chunk and hands it to the sink, so that two CPUs do the sink's work. When the reader
  // comes from an ImageReader whose verify_chunks() succeeded, raw chunks go from the
  // page cache of pages.img straight to the sink and zstd chunks resident there are
  // decompressed in place, neither copied nor hashed again. Throws like read() (an
  // ImageError "... past the end of the page stream ..." before consuming anything if
  // len is more than is left), or what the sink threw; when several chunks fail, the
  // error is the first one in the stream. After an error in the chunks shared with the
  // worker the reader is failed (like a chunk error).
  virtual void deliver(std::uint64_t len, PageSink& sink) = 0;

  // Moves forward to stream offset `off`: chunks wholly before it are neither read nor
  // decoded (nor checked: a reader of a damaged image may pass over the damage), and
  // the chunk that holds it is decoded when it is first read.
  // Throws ImageError if `off` is before position() or past the end of the stream, or
  // the error of a chunk decoded ahead before the call.
  virtual void skip_to(std::uint64_t off) = 0;

  // pages.img, for messages.
  virtual const std::filesystem::path& path() const = 0;

  // The logical stream offset of the next byte to be read.
  virtual std::uint64_t position() const = 0;

  // The restorer is about to read section s: checks that the stream stands exactly
  // where the manifest says s starts. Throws fsched::ImageError naming the section and
  // both offsets if it does not (a part before it read more or less than was dumped,
  // or the manifest lies), or if the manifest records no start for s.
  virtual void enter_section(Section s) = 0;
};

// Opens an image for restore or inspection.
class ImageReader {
 public:
  // Reads manifest.json and manifest.xxh3 and checks the checksum, that the manifest
  // parses, holds no number that is not an integer, and that format_version is
  // kOldestImageFormat..kImageFormatVersion (whatever engine_version wrote it).
  // Throws fsched::ImageError with the path and what is wrong ("DIR is not a
  // checkpoint image (no manifest.json)", "manifest checksum mismatch", "image format
  // 2 (written by engine V), this engine reads formats 3 to 4", ...); fsched::Error (transient)
  // only when DIR does not exist or a file cannot be read (errno). Also checks that "sections" is
  // an array of {"name": a known section, "offset": integer} (the order is validate_manifest()'s),
  // and that the chunk table is well-formed (offsets aligned as above, sizes in range, "zstd" a
  // boolean, stored == raw for a raw chunk, totals consistent); it does not read pages.img. With a
  // non-empty `key`, manifest.hmac must hold the HMAC of manifest.json's bytes with that key, and
  // is checked first, before anything of the manifest is parsed
  // ("HMAC mismatch ..."). Files are read only if they are regular files (not links,
  // FIFOs or devices), manifest.json up to kMaxManifestBytes.
  static std::unique_ptr<ImageReader> open(const std::filesystem::path& dir,
                                           std::span<const std::byte> key = {});

  virtual ~ImageReader() = default;
  virtual const nlohmann::json& manifest() const = 0;
  virtual const std::filesystem::path& path() const = 0;

  // Reads all of pages.img and checks every chunk's size and xxh3 against the chunk
  // table, and that pages.img has no trailing bytes. Does not decompress. Chunks are
  // hashed by up to kVerifyThreads threads (the caller's and helpers), in place in the
  // page cache where resident; the result does not depend on the thread count.
  // Throws fsched::Error naming the first bad chunk in stream order (index, file
  // offset): a checksum mismatch, or a truncated pages.img ("truncated: chunk I at
  // offset O needs ... bytes missing in total, K of N chunks incomplete") when every
  // chunk before the missing bytes is fine; else "trailing bytes after the last chunk"
  // if pages.img is longer than the table; or the open/read error (errno) naming
  // pages.img.
  virtual void verify_chunks() const = 0;

  // A sequential reader of the logical page stream from its start (see PageReader).
  // Opens pages.img -- after a successful verify_chunks(), reuses its mapping of it,
  // whose page tables are then filled -- and starts decoding chunk 0 on the reader's
  // worker thread.
  // Throws fsched::Error naming pages.img if it cannot be opened (unless the stream
  // is empty: then pages.img is not opened at all).
  virtual std::unique_ptr<PageReader> pages() const = 0;

  // The same reader standing at stream offset `off` (bytes), with nothing decoded yet:
  // the chunk that holds `off` is decoded when it is first read, and by deliver() on
  // either of its threads, so that a delivery from the middle of the stream (a parent
  // image's pages, parent_chain.h) does not wait for one chunk before sharing the rest.
  // With a `pool`, the reader's chunk buffers come from it and go back to it. Throws
  // like pages(), or ImageError if `off` is past the end of the stream.
  virtual std::unique_ptr<PageReader> pages_at(std::uint64_t off,
                                               std::shared_ptr<ChunkBufferPool> pool) const = 0;
};

// One image for verify_images(): its reader, and what its errors are prefixed with
// ("parent image DIR (of DIR)"), nothing if empty.
struct ImageToVerify {
  const ImageReader* reader;
  std::string context;
};

// ImageReader::verify_chunks() of several images, added one by one: their chunks are
// hashed by one pool of up to kVerifyThreads threads, which starts on the first
// image's chunks while the caller opens the next (a chain's links), and which the
// caller's thread joins in finish(). Not thread-safe (one caller).
class ImageVerifier {
 public:
  ImageVerifier();
  // Stops and joins the pool (errors are dropped) if finish() was not called.
  ~ImageVerifier();
  ImageVerifier(const ImageVerifier&) = delete;
  ImageVerifier& operator=(const ImageVerifier&) = delete;

  // Adds `reader` (made by ImageReader::open; it must outlive the verifier), whose
  // errors finish() prefixes with `context` ("parent image DIR (of DIR)") unless it is
  // empty. Opens pages.img; an error doing so is kept for finish(). Throws only
  // std::bad_alloc.
  void add(const ImageReader& reader, std::string context);
  // Hashes, with the pool, until every chunk added is checked, then throws what
  // verify_chunks() would throw for the first image, in the order added, that fails
  // (an ImageError prefixed with its context when there is one); images after it may
  // be left unverified. Call once.
  void finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ImageReader::verify_chunks() of every image in `images` (readers made by
// ImageReader::open), their chunks hashed by one pool of up to kVerifyThreads threads:
// a chain of small images verifies at the speed of one large one. Throws what
// verify_chunks() throws for the first image, in the given order, that fails (its
// context prefixed, as an ImageError, when there is one); images after it may be
// left unverified.
void verify_images(std::span<const ImageToVerify> images);

}  // namespace fsched::ckpt
