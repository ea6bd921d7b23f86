/* exit_stamp: write CLOCK_MONOTONIC in nanoseconds to stdout, then _exit(0) at once.
 *
 * The child of benches/subproc.py's exit_latency workload. CLOCK_MONOTONIC is one
 * clock for the whole machine on Linux, so the parent subtracts this stamp from
 * its own reading when process_exited() / wait() come back. Compiled by the
 * harness at the start of a run (cc -O2, static when possible: a short start-up
 * keeps the workload quick); without a C compiler the harness uses a python -S -I
 * one-liner that does the same.
 */
#include <stdio.h>
#include <time.h>
#include <unistd.h>

int main(void)
{
    struct timespec ts;
    char buf[32];
    int len;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    len = snprintf(buf, sizeof buf, "%lld\n",
                   (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
    if (write(1, buf, (size_t)len) != len)
        _exit(1);
    _exit(0);
}
