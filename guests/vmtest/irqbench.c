/*
 * irqbench.c: bench workloads that learn of completions from the device's
 * interrupt (MSI-X when the device offers it, else INTx + ISR), next to a polled
 * QD1 run with the same latency accounting. Run in `bench` mode after the polled
 * workloads of blk.c and net.c; each device is reset and set up afresh (no
 * EVENT_IDX, so every used-ring update that the driver did not suppress
 * interrupts). Lines:
 *
 *   vmtest bench: blk_qd1_poll iops=N median_us=X p99_us=Y n=N
 *   vmtest bench: blk_qd1_irq iops=N median_us=X p99_us=Y n=N via=msix|intx
 *   vmtest bench: blk_qd32_irq iops=N n=N via=...
 *   vmtest bench: net_tx_irq fps=N frames=N via=...
 *
 * Latency: from just before the kick to the moment the guest has the completion
 * (the interrupt was counted by the CPL0 stub and the used ring read). CPL3 still
 * spins while it waits (no hlt at CPL3), but on the interrupt's counter, not the
 * ring. A request whose interrupt does not come within 1 s is taken from the ring
 * and counted as missed: any miss fails the line.
 */
#include "vmtest.h"

#define CC_MSIX_CONFIG 0x10
#define CC_QUEUE_MSIX_VECTOR 0x1A
#define BLK_QUEUE 128
#define NET_QUEUE 256
#define IB_QD_MAX 32
#define LAT_MAX 65536

struct ib_req { u32 type, reserved; u64 sector; } __attribute__((packed));

static struct vdev bd, nd;
static struct ib_req *hdrs[IB_QD_MAX];
static u8 *stats[IB_QD_MAX], *bufs[IB_QD_MAX];
static int slot_of[1024];
static u64 capacity;
static u32 lat[LAT_MAX];

/* How the guest learns of a queue's interrupt. */
struct waiter {
    bool msix;
    int vec;                    /* msix_count index */
    int line;                   /* INTx */
    struct vdev *d;
    u32 seen;
    u32 missed;
};

static void waiter_init(struct waiter *w, struct vdev *d, bool msix, int vec)
{
    w->msix = msix;
    w->vec = vec;
    w->d = d;
    w->line = d->irq;
    w->missed = 0;
    if (msix) {
        w->seen = msix_count[vec];
    } else if (w->line >= 0) {
        (void)vr_read8(&d->isr, 0);
        w->seen = irq_count[w->line];
        pic_unmask(w->line);
    }
}

/* Waits for the next queue interrupt; false (counted as missed) after 1 s. */
static bool waiter_wait(struct waiter *w)
{
    u64 t0 = rdtsc(), limit = us_to_tsc(1000000);
    for (;;) {
        if (w->msix) {
            u32 c = msix_count[w->vec];
            if (c != w->seen) {
                w->seen = c;
                return true;
            }
        } else if (w->line >= 0) {
            u32 c = irq_count[w->line];
            if (c != w->seen) {
                w->seen = c;
                u8 isr = vr_read8(&w->d->isr, 0);
                pic_unmask(w->line);
                if (isr & 1)
                    return true;
                continue;       /* shared line, or the line re-raised before the ISR read */
            }
        }
        if (rdtsc() - t0 > limit) {
            w->missed++;
            return false;
        }
        cpu_relax();
    }
}

/* In-place heapsort: lat[] can hold tens of thousands of samples. */
static void sift(u32 *a, u32 n, u32 i)
{
    for (;;) {
        u32 l = 2 * i + 1, m = i;
        if (l < n && a[l] > a[m]) m = l;
        if (l + 1 < n && a[l + 1] > a[m]) m = l + 1;
        if (m == i) return;
        u32 t = a[i]; a[i] = a[m]; a[m] = t;
        i = m;
    }
}
static void heapsort32(u32 *a, u32 n)
{
    for (u32 i = n / 2; i-- > 0;)
        sift(a, n, i);
    for (u32 end = n; end > 1; end--) {
        u32 t = a[0]; a[0] = a[end - 1]; a[end - 1] = t;
        sift(a, end - 1, 0);
    }
}

static u32 ops(u32 base)
{
    u64 n = (u64)base * opt.bench_scale / 100;
    return n == 0 ? 1 : n > 1000000 ? 1000000 : (u32)n;
}

static bool vector_for_queue(struct vdev *d, u16 q, u16 v)
{
    vr_write16(&d->common, CC_QUEUE_SELECT, q);
    vr_write16(&d->common, CC_QUEUE_MSIX_VECTOR, v);
    return vr_read16(&d->common, CC_QUEUE_MSIX_VECTOR) == v;
}

/* ---- block ---- */

static int blk_submit(int s)
{
    u64 blocks = capacity / 8;
    hdrs[s]->type = 0;
    hdrs[s]->reserved = 0;
    hdrs[s]->sector = blocks ? (rand64() % blocks) * 8 : 0;
    *stats[s] = 0xFF;
    struct vseg seg[3] = { { hdrs[s], sizeof(struct ib_req), false }, { bufs[s], 4096, true }, { stats[s], 1, true } };
    int head = vq_add(&bd.vqs[0], seg, 3);
    if (head >= 0 && head < 1024)
        slot_of[head] = s;
    return head;
}

static bool blk_setup(struct pci_dev *p, bool *msix, char *why, size_t whysz)
{
    if (!vdev_init(&bd, p, "vioblk0", 0, why, whysz))
        return false;
    *msix = msix_arm(p, 2);
    if (*msix) {
        vr_write16(&bd.common, CC_MSIX_CONFIG, 0);
    } else {
        msix_disarm(p);
    }
    if (!vdev_setup_queue(&bd, 0, BLK_QUEUE, why, whysz))
        return false;
    if (*msix && !vector_for_queue(&bd, 0, 1)) {
        snprintf(why, whysz, "vioblk0: queue vector refused");
        return false;
    }
    vdev_driver_ok(&bd);
    capacity = (u64)vr_read32(&bd.device, 0) | ((u64)vr_read32(&bd.device, 4) << 32);
    for (int i = 0; i < IB_QD_MAX; i++) {
        if (!hdrs[i]) {
            u8 *meta = dma_alloc(64);
            bufs[i] = dma_alloc(4096);
            if (!meta || !bufs[i]) {
                snprintf(why, whysz, "out of DMA memory");
                return false;
            }
            hdrs[i] = (struct ib_req *)meta;
            stats[i] = meta + 32;
        }
    }
    return true;
}

/* QD1, `total` reads; by interrupt (w) or polling (w NULL). */
static bool blk_qd1(struct waiter *w, u32 total, u64 *iops, char *why, size_t whysz)
{
    struct vq *q = &bd.vqs[0];
    vq_no_interrupts(q, w == NULL);
    u64 start = rdtsc();
    for (u32 i = 0; i < total; i++) {
        int head = blk_submit(0);
        u64 t0 = rdtsc();
        vq_kick(q);
        if (w)
            waiter_wait(w);
        int id;
        while ((id = vq_get_used(q, NULL)) < 0) {
            if (rdtsc() - t0 > us_to_tsc(5000000) && (id = vq_get_used(q, NULL)) < 0) {
                snprintf(why, whysz, "read %u: no completion in 5 s", i);
                return false;
            }
            cpu_relax();
        }
        u64 ns = tsc_to_ns(rdtsc() - t0);
        if (i < LAT_MAX)
            lat[i] = ns > 0xFFFFFFFFull ? 0xFFFFFFFFu : (u32)ns;
        if (id != head || *stats[0] != 0) {
            snprintf(why, whysz, "read %u: id %d status %u", i, id, *stats[0]);
            return false;
        }
    }
    u64 cycles = rdtsc() - start;
    *iops = cycles ? (u64)total * tsc_hz / cycles : 0;
    return true;
}

static void print_lat(const char *name, u64 iops, u32 total, const char *via)
{
    u32 n = total < LAT_MAX ? total : LAT_MAX;
    heapsort32(lat, n);
    u32 med = lat[n / 2], p99 = lat[(u64)n * 99 / 100];
    printf("vmtest bench: %s iops=%lu median_us=%u.%u p99_us=%u.%u n=%u%s%s\n", name, iops,
           med / 1000, med % 1000 / 100, p99 / 1000, p99 % 1000 / 100, total, via ? " via=" : "", via ? via : "");
}

static bool blk_qd32(struct waiter *w, int depth, u32 total, u64 *iops, char *why, size_t whysz)
{
    struct vq *q = &bd.vqs[0];
    vq_no_interrupts(q, false);
    u32 submitted = 0, completed = 0;
    u64 start = rdtsc(), last = start;
    for (int s = 0; s < depth && submitted < total; s++, submitted++)
        if (blk_submit(s) < 0) {
            snprintf(why, whysz, "queue too small for depth %d", depth);
            return false;
        }
    vq_kick(q);
    while (completed < total) {
        waiter_wait(w);
        bool resubmitted = false;
        int id;
        while ((id = vq_get_used(q, NULL)) >= 0) {
            int s = id < 1024 ? slot_of[id] : 0;
            if (*stats[s] != 0) {
                snprintf(why, whysz, "read failed with status %u", *stats[s]);
                return false;
            }
            completed++;
            last = rdtsc();
            if (submitted < total) {
                blk_submit(s);
                submitted++;
                resubmitted = true;
            }
        }
        if (resubmitted)
            vq_kick(q);
        if (rdtsc() - last > us_to_tsc(5000000)) {
            snprintf(why, whysz, "no completion for 5 s (%u of %u)", completed, total);
            return false;
        }
    }
    u64 cycles = rdtsc() - start;
    *iops = cycles ? (u64)total * tsc_hz / cycles : 0;
    return true;
}

static void blk_irq_bench(struct pci_dev *p)
{
    char why[200];
    bool msix;
    if (!blk_setup(p, &msix, why, sizeof(why))) {
        printf("vmtest bench: blk_qd1_irq FAIL %s\n", why);
        return;
    }
    const char *via = msix ? "msix" : "intx";
    if (!msix && bd.irq < 0) {
        printf("vmtest bench: blk_qd1_irq skip no MSI-X and no INTx line\n");
        return;
    }
    u32 n1 = ops(4000);
    u64 iops;
    if (blk_qd1(NULL, n1, &iops, why, sizeof(why)))
        print_lat("blk_qd1_poll", iops, n1, NULL);
    else
        printf("vmtest bench: blk_qd1_poll FAIL %s\n", why);

    struct waiter w;
    waiter_init(&w, &bd, msix, 1);
    if (!blk_qd1(&w, n1, &iops, why, sizeof(why)))
        printf("vmtest bench: blk_qd1_irq FAIL %s\n", why);
    else if (w.missed)
        printf("vmtest bench: blk_qd1_irq FAIL %u of %u completions came without an interrupt (via %s)\n",
               w.missed, n1, via);
    else
        print_lat("blk_qd1_irq", iops, n1, via);

    int depth = bd.vqs[0].size / 3 < IB_QD_MAX ? bd.vqs[0].size / 3 : IB_QD_MAX;
    u32 n32 = ops(16000);
    waiter_init(&w, &bd, msix, 1);
    if (!blk_qd32(&w, depth, n32, &iops, why, sizeof(why)))
        printf("vmtest bench: blk_qd32_irq FAIL %s\n", why);
    else if (w.missed)
        printf("vmtest bench: blk_qd32_irq FAIL %u waits for an interrupt timed out (via %s)\n", w.missed, via);
    else
        printf("vmtest bench: blk_qd32_irq iops=%lu n=%u qd=%d via=%s\n", iops, n32, depth, via);
    vr_write8(&bd.common, CC_STATUS, 0);
    if (msix)
        msix_disarm(p);
}

/* ---- network: transmit, reclaiming on the transmit queue's interrupt ---- */

static void net_irq_bench(struct pci_dev *p)
{
    char why[200];
    bool msix;
    if (!vdev_init(&nd, p, "vionet0", 1ULL << 5, why, sizeof(why))) {
        printf("vmtest bench: net_tx_irq FAIL %s\n", why);
        return;
    }
    msix = msix_arm(p, 3);
    if (msix)
        vr_write16(&nd.common, CC_MSIX_CONFIG, 0);
    else
        msix_disarm(p);
    if (!vdev_setup_queue(&nd, 0, NET_QUEUE, why, sizeof(why)) || !vdev_setup_queue(&nd, 1, NET_QUEUE, why, sizeof(why)) ||
        (msix && (!vector_for_queue(&nd, 0, 1) || !vector_for_queue(&nd, 1, 2)))) {
        printf("vmtest bench: net_tx_irq FAIL %s\n", msix ? why : why);
        return;
    }
    if (!msix && nd.irq < 0) {
        printf("vmtest bench: net_tx_irq skip no MSI-X and no INTx line\n");
        return;
    }
    vq_no_interrupts(&nd.vqs[0], true);
    vdev_driver_ok(&nd);
    u8 mac[6];
    for (int i = 0; i < 6; i++)
        mac[i] = vr_read8(&nd.device, (u32)i);
    struct vq *q = &nd.vqs[1];
    enum { TXB = 128 };
    static u8 *tx[TXB];
    for (int i = 0; i < TXB; i++)
        if (!tx[i] && !(tx[i] = dma_alloc(12 + 1514))) {
            printf("vmtest bench: net_tx_irq FAIL out of DMA memory\n");
            return;
        }
    for (int i = 0; i < TXB; i++) {
        u8 *f = tx[i] + 12;
        memset(tx[i], 0, 12);
        static const u8 dst[6] = { 0x02, 0x00, 0x00, 0x76, 0x6d, 0x01 };   /* nobody: the host drops it */
        memcpy(f, dst, 6);
        memcpy(f + 6, mac, 6);
        f[12] = 0x88;
        f[13] = 0xB5;
        for (u32 b = 14; b < 1500; b++)
            f[b] = (u8)b;
    }
    struct waiter w;
    waiter_init(&w, &nd, msix, 2);
    u32 total = ops(20000), sent = 0, done = 0, inflight = 0;
    int next = 0;
    u64 start = rdtsc(), last = start;
    while (done < total) {
        while (sent < total && inflight < TXB && q->num_free > 0) {
            struct vseg seg = { tx[next], 12 + 1500, false };
            if (vq_add(q, &seg, 1) < 0)
                break;
            next = (next + 1) % TXB;
            sent++;
            inflight++;
            if (sent % 32 == 0)
                vq_kick(q);
        }
        vq_kick(q);
        waiter_wait(&w);
        while (vq_get_used(q, NULL) >= 0) {
            done++;
            inflight--;
            last = rdtsc();
        }
        if (rdtsc() - last > us_to_tsc(5000000)) {
            printf("vmtest bench: net_tx_irq FAIL no transmit completion for 5 s (%u of %u)\n", done, total);
            goto out;
        }
    }
    u64 cycles = rdtsc() - start;
    if (w.missed)
        printf("vmtest bench: net_tx_irq FAIL %u waits for an interrupt timed out (via %s)\n", w.missed, msix ? "msix" : "intx");
    else
        printf("vmtest bench: net_tx_irq fps=%lu frames=%u via=%s\n", cycles ? (u64)total * tsc_hz / cycles : 0, total,
               msix ? "msix" : "intx");
out:
    vr_write8(&nd.common, CC_STATUS, 0);
    if (msix)
        msix_disarm(p);
}

void irq_bench(struct pci_dev *blk, struct pci_dev *net)
{
    if (blk)
        blk_irq_bench(blk);
    else
        printf("vmtest bench: blk_qd1_irq skip no device\n");
    if (net)
        net_irq_bench(net);
    else
        printf("vmtest bench: net_tx_irq skip no device\n");
}
