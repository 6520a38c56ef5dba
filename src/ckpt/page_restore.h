// Restore side of the page stream: writing pages read from an image (image.h
// PageReader) into a process being restored, with process_vm_writev(2). The image code
// only decodes; what is done with the bytes is the restorer's.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <span>

#include "ckpt/image.h"

namespace fsched::ckpt {

// Writes the next sum(remote[i].iov_len) bytes of `pages` into process pid's memory,
// filling the remote ranges in order (process_vm_writev(2); the ranges must be mapped
// and writable), through PageReader::deliver(): whole chunks may be decoded and written
// by the reader's worker thread at the same time as by the caller's, and raw chunks of
// a verified image go from the page cache of pages.img straight to the process.
// Throws what deliver() throws (ImageError for a bad chunk or a read past the end of
// the stream), or fsched::Error with errno, pages.img, the stream offset and the
// address when the kernel refuses a write (ESRCH, EFAULT) or writes only part of it;
// when several chunks fail, the error is the first one in the stream.
void copy_to_process(PageReader& pages, pid_t pid, std::span<const iovec> remote);

}  // namespace fsched::ckpt
