// Checking and decompressing chunks of pages.img (chunk_decode.h).
#include "ckpt/chunk_decode.h"

#include <new>
#include <string>

#include "common/error.h"

namespace fsched::ckpt::image_detail {

void fail_checksum(const fs::path& path, std::size_t index, const ChunkInfo& c, std::uint64_t h) {
  bad_image(
      "{}: chunk {} at offset {}: checksum mismatch (xxh3 of {} stored bytes is {}, "
      "manifest says {})",
      path.native(), index, c.offset, c.stored, hex64(h), hex64(c.xxh3));
}

void zstd_decode_chunk(ZSTD_DCtx* dctx, const fs::path& path, std::size_t index, const ChunkInfo& c,
                       const std::byte* src, std::byte* dst) {
  unsigned long long content = ZSTD_getFrameContentSize(src, c.stored);
  if (content == ZSTD_CONTENTSIZE_ERROR)
    bad_image("{}: chunk {} at offset {}: not a zstd frame", path.native(), index, c.offset);
  if (content != c.raw)
    bad_image("{}: chunk {} at offset {}: zstd frame holds {} bytes, manifest says {}",
              path.native(), index, c.offset,
              content == ZSTD_CONTENTSIZE_UNKNOWN ? std::string("an unknown number of")
                                                  : std::to_string(content),
              c.raw);
  std::size_t r = ZSTD_decompressDCtx(dctx, dst, c.raw, src, c.stored);
  if (ZSTD_isError(r))
    bad_image("{}: chunk {} at offset {}: zstd decompression failed: {}", path.native(), index,
              c.offset, ZSTD_getErrorName(r));
  if (r != c.raw)
    bad_image("{}: chunk {} at offset {}: decompressed to {} bytes, manifest says {}",
              path.native(), index, c.offset, r, c.raw);
}

ChunkBytes ChunkDecoder::get(std::size_t index, std::byte* out) {
  const ChunkInfo& c = table_.chunks[index];
  if (verified_) {
    if (!c.zstd) return {file_.map() + c.offset, true};
    if (const std::byte* src = file_.resident_range(c.offset, c.stored)) {
      zstd_decode_chunk(dctx(), file_.path(), index, c, src, out);
      return {out, false};
    }
  }
  if (c.zstd && !stored_)
    stored_ = std::make_unique_for_overwrite<std::byte[]>(table_.max_zstd_stored);
  std::byte* dst = c.zstd ? stored_.get() : out;
  if (!xxh_) {
    xxh_.reset(XXH3_createState());
    if (!xxh_) throw std::bad_alloc();
  }
  XXH3_64bits_reset(xxh_.get());
  std::size_t got = file_.copy_hash(c.offset, c.stored, dst, xxh_.get());
  if (got < c.stored)
    bad_image(
        "{}: chunk {} at offset {}: truncated: file ends at offset {}, {} of {} stored "
        "bytes missing",
        file_.path().native(), index, c.offset, c.offset + got, c.stored - got, c.stored);
  std::uint64_t h = XXH3_64bits_digest(xxh_.get());
  if (h != c.xxh3) fail_checksum(file_.path(), index, c, h);
  if (c.zstd) zstd_decode_chunk(dctx(), file_.path(), index, c, stored_.get(), out);
  return {out, false};
}

ZSTD_DCtx* ChunkDecoder::dctx() {
  if (!dctx_) {
    dctx_.reset(ZSTD_createDCtx());
    if (!dctx_) fail("{}: cannot create zstd decompression context", file_.path().native());
  }
  return dctx_.get();
}

}  // namespace fsched::ckpt::image_detail
