// XXH3 (xxhash.h) through the library's run-time dispatch to the widest vector unit the
// CPU has (xxh_x86dispatch.h, exported by Debian's libxxhash: AVX-512, AVX2, else
// SSE2). The hashes are the same; the default entry points run the SSE2 code only:
// 6.3 GB/s against 10.3 on this project's machines, and hashing is most of a restore's
// check of its image (verify_chunks). Include this instead of <xxhash.h>.
#pragma once

#include <xxhash.h>
#if defined(__x86_64__)
#include <xxh_x86dispatch.h>
#endif
