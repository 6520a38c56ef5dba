// Pipes and FIFOs (named pipes): capacity and buffered data of every pipe the job
// holds, and the pipe / FIFO fd kinds (FdOps). On restore each pipe is created in
// init and every process takes its ends from there; a FIFO is made again at its path
// if gone and reopened by it. Kernel interfaces: tee(2) to read a buffer without
// consuming it, fcntl(2) F_GETPIPE_SZ/F_SETPIPE_SZ, pipe2(2), mknodat(2), fifo(7).
#pragma once

#include <span>

#include "ckpt/dump_context.h"
#include "ckpt/fd_ops.h"
#include "ckpt/image.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

// Dump: the pipes of the job (manifest and buffered data, which follows the pages in
// the page stream) ...
void dump_pipes(std::span<DumpProcess> procs, Manifest& m, ImageWriter& img);
// ... created in init with their capacity and buffered data.
PipeTable create_pipes(InitStash& stash, const InjectionArea& area, const Manifest& m,
                       PageReader& pages);

// FdKind::kPipe and FdKind::kFifo.
extern const FdOps kPipeFdOps;
extern const FdOps kFifoFdOps;

}  // namespace fsched::ckpt
