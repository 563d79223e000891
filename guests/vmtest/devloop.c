/*
 * devloop.c: devloop=N. For N seconds, read 64 bytes from virtio-rng and
 * ping the gateway (when net is configured), over and over, while the host
 * kills device processes (DeviceRestartTests). An rng read that is never
 * answered fails the check; pings may be lost (a restarted vionet drops the
 * frames it had in flight) but the rings must not stall: the last second
 * must see answers again. Result: `vmtest: devloop ok rng_reads=R pings=P
 * answered=A`.
 */
#include "vmtest.h"

void devloop_run(u32 seconds)
{
    char why[160];
    u8 buf[64];
    u64 start = rdtsc(), limit = us_to_tsc((u64)seconds * 1000000);
    u32 reads = 0, pings = 0, answered = 0, lost_in_a_row = 0;
    bool rng = true, net = opt.have_ip && opt.have_gw;
    while (rdtsc() - start < limit) {
        if (rng) {
            if (!rng_read_once(buf, sizeof(buf), why, sizeof(why))) {
                if (reads == 0) {
                    rng = false;           /* no device: pings only */
                } else {
                    check_fail("devloop", "rng read %u: %s", reads + 1, why);
                    return;
                }
            } else {
                reads++;
            }
        }
        if (net) {
            pings++;
            if (net_ping_once(200000)) {
                answered++;
                lost_in_a_row = 0;
            } else {
                lost_in_a_row++;
            }
        }
    }
    /* The rings must not have stalled: pings answered again at the end. */
    for (int i = 0; net && lost_in_a_row && i < 20; i++) {
        pings++;
        if (net_ping_once(500000)) {
            answered++;
            lost_in_a_row = 0;
        }
    }
    if (net && lost_in_a_row) {
        check_fail("devloop", "net: the last %u pings were not answered (%u of %u)", lost_in_a_row, answered, pings);
        return;
    }
    check_ok("devloop", "rng_reads=%u pings=%u answered=%u", reads, pings, answered);
}
