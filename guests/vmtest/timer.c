/*
 * timer.c: the TSC is the guest's only clock. It is calibrated once against PIT
 * channel 2 (gate and output read through port 0x61), which both QEMU and our VMM
 * provide: count 10 ms of PIT ticks (1.193182 MHz) and see how far the TSC moved.
 */
#include "vmtest.h"

#define PIT_HZ 1193182u
#define CAL_MS 10u
#define MAX_ROUNDS 30

u64 tsc_hz = 1000000000ull;     /* replaced by tsc_calibrate(); a guess until then */
u64 tsc_cal_err_ppm;            /* worst-case calibration error, for the boot line */

/*
 * One CAL_MS run of PIT channel 2. Every port access is a VM exit that may take long
 * on a busy host, so the start (count write) and the end (OUT2 rising) are each known
 * only within an interval of TSC readings; the round reports the midpoint and the
 * width of that uncertainty. Returns false if OUT2 never rises (no PIT).
 */
static bool one_round(u64 *ticks, u64 *uncertainty)
{
    u16 latch = (u16)(PIT_HZ * CAL_MS / 1000);
    outb(0x61, (u8)((inb(0x61) & ~0x02) | 0x01));  /* gate ch2 on, speaker off */
    outb(0x43, 0xB0);                               /* ch2, lo/hi byte, mode 0 */
    outb(0x42, (u8)latch);
    u64 s0 = rdtsc();
    outb(0x42, (u8)(latch >> 8));                   /* counting starts here */
    u64 s1 = rdtsc(), low_seen = s1;
    for (;;) {
        u64 t0 = rdtsc();
        u8 v = inb(0x61);
        u64 t1 = rdtsc();
        if (v & 0x20) {                             /* rose between low_seen and t1 */
            u64 lo = low_seen - s1, hi = t1 - s0;
            *ticks = (lo + hi) / 2;
            *uncertainty = hi - lo;
            return true;
        }
        low_seen = t0;
        if (t1 - s1 > (1ull << 32))                 /* about a second at any clock */
            return false;
    }
}

/*
 * Rounds until one is bracketed within 0.5% (on an idle host the first is, within
 * ~0.1%; on a loaded one a single exit can take milliseconds), at most MAX_ROUNDS;
 * the narrowest round wins. tsc_cal_err_ppm is its worst-case error.
 */
bool tsc_calibrate(void)
{
    u64 best = 0, best_unc = ~0ull;
    for (int i = 0; i < MAX_ROUNDS; i++) {
        u64 t, unc;
        if (!one_round(&t, &unc))
            return false;
        if (unc < best_unc) {
            best = t;
            best_unc = unc;
        }
        if (best_unc * 200 < best)
            break;
    }
    /* OUT2 already high (QEMU -M microvm has no port 0x61 gate): no real count, keep the guess. */
    if (best == 0 || best * 1000 / CAL_MS < 50000000ull)
        return false;
    tsc_hz = best * 1000 / CAL_MS;
    tsc_cal_err_ppm = best_unc / 2 * 1000000 / best;
    return true;
}

u64 tsc_to_us(u64 ticks) { return ticks / (tsc_hz / 1000000 ? tsc_hz / 1000000 : 1); }
u64 tsc_to_ns(u64 ticks) { return (ticks * 1000) / (tsc_hz / 1000000 ? tsc_hz / 1000000 : 1); }
u64 us_to_tsc(u64 us) { return us * (tsc_hz / 1000000); }

void udelay(u64 us)
{
    u64 start = rdtsc(), span = us_to_tsc(us);
    while (rdtsc() - start < span)
        cpu_relax();
}
