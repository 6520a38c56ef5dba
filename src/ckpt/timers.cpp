// Timers: the three interval timers of a process (getitimer(2)/setitimer(2), by
// injection). POSIX timers (timer_create(2)) are posix_timers.cpp's.
#include "ckpt/timers.h"

#include <sys/syscall.h>
#include <sys/time.h>

#include "ckpt/proc.h"
#include "ckpt/remote.h"
#include "common/error.h"

namespace fsched::ckpt {

void dump_timers(DumpProcess& p) {
  p.rec.itimers.clear();
  for (int which : {ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF}) {
    p.inj->call_ok(fmt::format("getitimer({})", which), SYS_getitimer,
                   static_cast<std::uint64_t>(which), p.scratch);
    itimerval v{};
    remote_read(p.host_pid, p.scratch, &v, sizeof v);
    // A periodic ITIMER_REAL that has expired waits, unarmed (value 0), until its
    // SIGALRM is dequeued, which arms it again (kernel/signal.c, dequeue_signal): it is
    // kept, not taken for a disarmed timer.
    if (v.it_value.tv_sec == 0 && v.it_value.tv_usec == 0 && v.it_interval.tv_sec == 0 &&
        v.it_interval.tv_usec == 0)
      continue;
    p.rec.itimers.push_back({which, static_cast<std::uint64_t>(v.it_interval.tv_sec),
                             static_cast<std::uint64_t>(v.it_interval.tv_usec),
                             static_cast<std::uint64_t>(v.it_value.tv_sec),
                             static_cast<std::uint64_t>(v.it_value.tv_usec)});
  }
}

void restore_timers(RestoreProcess& p, const InjectionArea& area) {
  for (auto& t : p.rec->itimers) {
    itimerval v{};
    v.it_interval.tv_sec = static_cast<time_t>(t.interval_sec);
    v.it_interval.tv_usec = static_cast<suseconds_t>(t.interval_usec);
    v.it_value.tv_sec = static_cast<time_t>(t.value_sec);
    v.it_value.tv_usec = static_cast<suseconds_t>(t.value_usec);
    // Expired and waiting for its signal to be taken (see dump_timers): a value of 0
    // would disarm it, so it expires once more at once; that SIGALRM merges with the
    // one pending in the image, whose delivery arms it again as before.
    if (v.it_value.tv_sec == 0 && v.it_value.tv_usec == 0) v.it_value.tv_usec = 1;
    remote_write(p.host_pid, area.data(), &v, sizeof v);
    p.leader().call_ok(fmt::format("process {}: setitimer({})", p.rec->pid, t.which), SYS_setitimer,
                       static_cast<std::uint64_t>(t.which), area.data(), 0);
  }
}

}  // namespace fsched::ckpt
