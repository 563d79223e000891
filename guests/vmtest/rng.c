/* rng.c: virtio-rng. Two 64-byte reads must be neither all zero nor equal. */
#include "vmtest.h"

static struct vdev rng;

/* Fills buf completely; the device may return fewer bytes than asked per request. */
static bool rng_read(u8 *buf, u32 len, char *why, size_t whysz)
{
    struct vq *q = &rng.vqs[0];
    u8 *dma = dma_alloc(len);
    if (!dma) {
        snprintf(why, whysz, "viornd0: out of DMA memory");
        return false;
    }
    for (u32 got = 0; got < len;) {
        struct vseg seg = { dma, len - got, true };
        int head = vq_add(q, &seg, 1);
        vq_kick(q);
        u64 start = rdtsc();
        u32 n = 0;
        int id;
        while ((id = vq_get_used(q, &n)) < 0)
            if (rdtsc() - start > us_to_tsc(2000000)) {
                snprintf(why, whysz, "viornd0: no answer within 2 s");
                return false;
            }
        if (id != head || n == 0 || n > len - got) {
            snprintf(why, whysz, "viornd0: bad completion id=%d len=%u", id, n);
            return false;
        }
        memcpy(buf + got, dma, n);
        got += n;
    }
    return true;
}

void rng_check(struct pci_dev *p)
{
    char why[160];
    if (!vdev_init(&rng, p, "viornd0", 0, why, sizeof(why)) || !vdev_setup_queue(&rng, 0, 64, why, sizeof(why))) {
        check_fail("rng", "%s", why);
        return;
    }
    vq_no_interrupts(&rng.vqs[0], true);
    irq_register(&rng);        /* shares lines with others: its ISR must be read too */
    vdev_driver_ok(&rng);
    u8 a[64], b[64];
    if (!rng_read(a, sizeof(a), why, sizeof(why)) || !rng_read(b, sizeof(b), why, sizeof(why))) {
        check_fail("rng", "%s", why);
        return;
    }
    bool zero = true;
    for (u32 i = 0; i < sizeof(a); i++)
        if (a[i] || b[i])
            zero = false;
    if (zero)
        check_fail("rng", "viornd0: both reads are all zero");
    else if (memcmp(a, b, sizeof(a)) == 0)
        check_fail("rng", "viornd0: the two reads are equal");
    else
        check_ok("rng", "bytes=%u+%u first=%02x%02x%02x%02x", (u32)sizeof(a), (u32)sizeof(b), a[0], a[1], a[2], a[3]);
}

/* For devloop.c: one read of `len` bytes (at most 64) through a buffer kept
 * across calls; false (with why) when the device gives no answer in 2 s. */
bool rng_read_once(u8 *buf, u32 len, char *why, size_t whysz)
{
    static u8 *dma;
    struct vq *q = &rng.vqs[0];
    if (!q->size || len == 0 || len > 64) {
        snprintf(why, whysz, "viornd0: not set up");
        return false;
    }
    if (!dma && !(dma = dma_alloc(64))) {
        snprintf(why, whysz, "viornd0: out of DMA memory");
        return false;
    }
    struct vseg seg = { dma, len, true };
    int head = vq_add(q, &seg, 1);
    vq_kick(q);
    u64 start = rdtsc();
    u32 n = 0;
    int id;
    while ((id = vq_get_used(q, &n)) < 0)
        if (rdtsc() - start > us_to_tsc(2000000)) {
            snprintf(why, whysz, "viornd0: no answer within 2 s");
            return false;
        }
    if (id != head || n == 0 || n > len) {
        snprintf(why, whysz, "viornd0: bad completion id=%d len=%u", id, n);
        return false;
    }
    memcpy(buf, dma, n);
    return true;
}
