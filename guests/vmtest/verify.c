/*
 * verify.c: blk_verify=N. For N seconds, pass after pass over the whole disk:
 * each 16 KiB chunk is written with the pattern of (pass, sector) and read
 * back at once; any I/O error or mismatch fails the check. At the end every
 * sector is read once more and compared with what its last pass wrote. The
 * host recomputes the same pattern to check the image (DeviceRestartTests):
 * sectors below stop_sector hold pass `passes`, the rest pass `passes`-1.
 *
 * Pattern of sector s in pass p (p >= 1): x = s * 2654435761 ^ p * 40503,
 * then for each byte x = x * 1103515245 + 12345, byte = x >> 16 (32-bit).
 */
#include "vmtest.h"

#define SECTOR 512u
#define CHUNK 32u                      /* sectors: 16 KiB */

static void pattern(u8 *out, u32 pass, u64 sector)
{
    u32 x = (u32)sector * 2654435761u ^ pass * 40503u;
    for (u32 i = 0; i < SECTOR; i++) {
        x = x * 1103515245u + 12345u;
        out[i] = (u8)(x >> 16);
    }
}

static bool check_range(const u8 *buf, u32 pass, u64 first, u32 count, char *why, size_t whysz)
{
    u8 want[SECTOR];
    for (u32 k = 0; k < count; k++) {
        pattern(want, pass, first + k);
        if (memcmp(buf + (u64)k * SECTOR, want, SECTOR) != 0) {
            snprintf(why, whysz, "sector %lu of pass %u reads back wrong", first + k, pass);
            return false;
        }
    }
    return true;
}

void blk_verify_run(u32 seconds)
{
    char why[160];
    u64 cap = blk_capacity();
    u8 *wbuf = dma_alloc(CHUNK * SECTOR), *rbuf = dma_alloc(CHUNK * SECTOR);
    if (cap == 0 || !wbuf || !rbuf) {
        check_fail("verify", "vioblk0: no disk or no memory");
        return;
    }
    u64 start = rdtsc(), limit = us_to_tsc((u64)seconds * 1000000);
    u32 pass = 0;
    u64 stop = 0, chunks = 0;
    bool timeout = false;
    while (!timeout) {
        pass++;
        for (stop = 0; stop < cap;) {
            if (rdtsc() - start > limit) {
                timeout = true;
                break;
            }
            u32 n = cap - stop < CHUNK ? (u32)(cap - stop) : CHUNK;
            for (u32 k = 0; k < n; k++)
                pattern(wbuf + (u64)k * SECTOR, pass, stop + k);
            if (!blk_transfer(true, stop, wbuf, n, why, sizeof(why)) ||
                !blk_transfer(false, stop, rbuf, n, why, sizeof(why)) ||
                !check_range(rbuf, pass, stop, n, why, sizeof(why))) {
                check_fail("verify", "pass %u: %s", pass, why);
                return;
            }
            stop += n;
            chunks++;
        }
    }
    if (stop == 0) {                   /* stopped at a pass boundary */
        pass--;
        stop = cap;
    }
    for (u64 s = 0; s < cap;) {
        u32 n = cap - s < CHUNK ? (u32)(cap - s) : CHUNK;
        u32 p = s < stop ? pass : pass - 1;
        if (!blk_transfer(false, s, rbuf, n, why, sizeof(why))) {
            check_fail("verify", "final read: %s", why);
            return;
        }
        if (p > 0 && !check_range(rbuf, p, s, n, why, sizeof(why))) {
            check_fail("verify", "final read: %s", why);
            return;
        }
        s += n;
    }
    check_ok("verify", "seconds=%u passes=%u stop_sector=%lu chunks=%lu capacity=%lu",
             seconds, pass, stop, chunks, cap);
}
