/*
 * blk.c: virtio-blk. The check reads the harness pattern from the first 1 MiB
 * (sector n begins with "vmdisk <n>\n"), writes 128 sectors at 2048 ("vmtest
 * sector <n>\n", zero padded), flushes if offered, and reads them back. Completions
 * are awaited through the interrupt where the device has a line; the bench mode
 * polls the used ring with interrupts suppressed.
 */
#include "vmtest.h"

#define BLK_F_SIZE_MAX (1ULL << 1)
#define BLK_F_SEG_MAX (1ULL << 2)
#define BLK_F_BLK_SIZE (1ULL << 6)
#define BLK_F_FLUSH (1ULL << 9)
#define BLK_F_MQ (1ULL << 12)

#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4

#define SECTOR 512u
#define PATTERN_SECTORS 2048u          /* the first 1 MiB */
#define WRITE_FIRST 2048u
#define WRITE_COUNT 128u
#define CHUNK_BYTES (16u * 1024)
#define QD_MAX 32

struct blk_req {
    u32 type, reserved;
    u64 sector;
} __attribute__((packed));

struct slot {                          /* one in-flight request's own memory */
    struct blk_req *hdr;
    u8 *status;
    u8 *data;
};

static struct vdev blk;
static bool blk_ready;
static u64 capacity;                   /* in 512-byte sectors */
static u32 size_max = CHUNK_BYTES;
static struct slot slots[QD_MAX];
static int slot_of_head[1024];
static u32 irq_completions, polled_completions, irq_misses;
static u16 blk_queues = 1;             /* request queues set up (VIRTIO_BLK_F_MQ) */

static void blk_mq_check(void);

static bool alloc_slots(void)
{
    for (int i = 0; i < QD_MAX; i++) {
        u8 *meta = dma_alloc(64);
        slots[i].data = dma_alloc(CHUNK_BYTES);
        if (!meta || !slots[i].data)
            return false;
        slots[i].hdr = (struct blk_req *)meta;
        slots[i].status = meta + 32;
    }
    return true;
}

/* Queues one request of slot s; data may be NULL (flush). Returns the head or -1. */
static int submit(int s, u32 type, u64 sector, void *data, u32 len)
{
    struct slot *sl = &slots[s];
    sl->hdr->type = type;
    sl->hdr->reserved = 0;
    sl->hdr->sector = sector;
    *sl->status = 0xFF;
    struct vseg seg[3];
    int n = 0;
    seg[n++] = (struct vseg){ sl->hdr, sizeof(struct blk_req), false };
    if (data)
        seg[n++] = (struct vseg){ data, len, type == T_IN };
    seg[n++] = (struct vseg){ sl->status, 1, true };
    int head = vq_add(&blk.vqs[0], seg, n);
    if (head >= 0 && head < 1024)
        slot_of_head[head] = s;
    return head;
}

/*
 * Waits for the one outstanding request: first for its interrupt (up to 1 s),
 * then for the used ring. Counts whether the interrupt or polling noticed it.
 */
static bool wait_one(int head, bool use_irq, char *why, size_t whysz)
{
    struct vq *q = &blk.vqs[0];
    u64 start = rdtsc();
    bool by_irq = false;
    /* After three interrupts that never came, stop waiting: poll, and fail at the end. */
    if (use_irq && blk.irq >= 0 && irq_misses < 3) {
        while (rdtsc() - start < us_to_tsc(1000000)) {
            irq_service();
            if (blk.isr_pending & 1) {
                blk.isr_pending &= (u8)~1;
                by_irq = true;
                break;
            }
            cpu_relax();
        }
        if (!by_irq)
            irq_misses++;
    }
    for (;;) {
        int id = vq_get_used(q, NULL);
        if (id == head)
            break;
        if (id >= 0) {
            snprintf(why, whysz, "vioblk0: used ring returned id %d, expected %d", id, head);
            return false;
        }
        if (rdtsc() - start > us_to_tsc(5000000)) {
            if ((id = vq_get_used(q, NULL)) == head)   /* once more: the vCPU may have been away */
                break;
            snprintf(why, whysz, id >= 0 ? "vioblk0: used ring returned id %d, expected %d"
                                         : "vioblk0: request timed out after 5 s", id, head);
            return false;
        }
        cpu_relax();
    }
    if (by_irq)
        irq_completions++;
    else
        polled_completions++;
    return true;
}

static bool do_io(u32 type, u64 sector, void *buf, u32 len, char *why, size_t whysz)
{
    if (type == T_OUT)
        memcpy(slots[0].data, buf, len);
    int head = submit(0, type, sector, type == T_FLUSH ? NULL : slots[0].data, len);
    if (head < 0) {
        snprintf(why, whysz, "vioblk0: no free descriptors");
        return false;
    }
    vq_kick(&blk.vqs[0]);
    if (!wait_one(head, true, why, whysz))
        return false;
    if (*slots[0].status != 0) {
        snprintf(why, whysz, "vioblk0: request type %u sector %lu failed with status %u", type, sector, *slots[0].status);
        return false;
    }
    if (type == T_IN)
        memcpy(buf, slots[0].data, len);
    return true;
}

/* Reads or writes [sector, sector+count) in chunks through the bounce buffer. */
static bool transfer(u32 type, u64 sector, u8 *buf, u32 count, char *why, size_t whysz)
{
    u32 chunk_sectors = (size_max < CHUNK_BYTES ? size_max : CHUNK_BYTES) / SECTOR;
    if (chunk_sectors == 0)
        chunk_sectors = 1;
    for (u32 done = 0; done < count;) {
        u32 n = count - done < chunk_sectors ? count - done : chunk_sectors;
        if (!do_io(type, sector + done, buf + (u64)done * SECTOR, n * SECTOR, why, whysz))
            return false;
        done += n;
    }
    return true;
}

static bool check_prefix(const u8 *sector_data, const char *expected, u64 n, char *why, size_t whysz)
{
    size_t len = strlen(expected);
    if (memcmp(sector_data, expected, len) == 0)
        return true;
    char got[64];
    format_printable(got, sizeof(got), sector_data, len);
    snprintf(why, whysz, "sector %lu begins with \"%s\", expected \"%s\"", n, got, expected);
    return false;
}

void blk_check(struct pci_dev *p)
{
    char why[160];
    if (!vdev_init(&blk, p, "vioblk0", BLK_F_SIZE_MAX | BLK_F_SEG_MAX | BLK_F_BLK_SIZE | BLK_F_FLUSH | BLK_F_MQ,
                   why, sizeof(why)) ||
        !vdev_setup_queue(&blk, 0, 128, why, sizeof(why))) {
        check_fail("blk", "%s", why);
        return;
    }
    if (blk.features & BLK_F_MQ) {
        /* num_queues (config offset 34): the second one is used by blk_mq_check. */
        u16 nq = vr_read16(&blk.device, 34);
        if (nq >= 2) {
            if (!vdev_setup_queue(&blk, 1, 128, why, sizeof(why))) {
                check_fail("blk", "queue 1 of %u: %s", nq, why);
                return;
            }
            blk_queues = 2;
        }
    }
    if (!alloc_slots()) {
        check_fail("blk", "vioblk0: out of DMA memory");
        return;
    }
    capacity = (u64)vr_read32(&blk.device, 0) | ((u64)vr_read32(&blk.device, 4) << 32);
    if (blk.features & BLK_F_SIZE_MAX) {
        u32 sm = vr_read32(&blk.device, 8);
        if (sm >= SECTOR && sm < size_max)
            size_max = sm;
    }
    irq_register(&blk);
    vdev_driver_ok(&blk);
    blk_ready = true;
    if (blk.irq < 0) {
        check_fail("blk", "vioblk0: no interrupt line (line register %u, pin %u)", p->irq_line, p->irq_pin);
        return;
    }
    if (capacity < WRITE_FIRST + WRITE_COUNT) {
        check_fail("blk", "vioblk0: disk has %lu sectors, the check needs %u", capacity, WRITE_FIRST + WRITE_COUNT);
        return;
    }

    u8 *buf = dma_alloc(PATTERN_SECTORS * SECTOR);
    if (!buf) {
        check_fail("blk", "vioblk0: out of memory for the pattern buffer");
        return;
    }
    if (!transfer(T_IN, 0, buf, PATTERN_SECTORS, why, sizeof(why))) {
        check_fail("blk", "%s", why);
        return;
    }
    for (u32 n = 0; n < PATTERN_SECTORS; n++) {
        char expected[32];
        snprintf(expected, sizeof(expected), "vmdisk %u\n", n);
        if (!check_prefix(buf + (u64)n * SECTOR, expected, n, why, sizeof(why))) {
            check_fail("blk", "read pattern: %s", why);
            return;
        }
    }

    u8 *wbuf = buf;                    /* reuse: the pattern has been verified */
    memset(wbuf, 0, WRITE_COUNT * SECTOR);
    for (u32 i = 0; i < WRITE_COUNT; i++)
        snprintf((char *)wbuf + i * SECTOR, SECTOR, "vmtest sector %u\n", WRITE_FIRST + i);
    if (!transfer(T_OUT, WRITE_FIRST, wbuf, WRITE_COUNT, why, sizeof(why))) {
        check_fail("blk", "write: %s", why);
        return;
    }
    bool flushed = false;
    if (blk.features & BLK_F_FLUSH) {
        if (!do_io(T_FLUSH, 0, NULL, 0, why, sizeof(why))) {
            check_fail("blk", "flush: %s", why);
            return;
        }
        flushed = true;
    }
    u8 *rbuf = buf + WRITE_COUNT * SECTOR;
    if (!transfer(T_IN, WRITE_FIRST, rbuf, WRITE_COUNT, why, sizeof(why))) {
        check_fail("blk", "read back: %s", why);
        return;
    }
    for (u32 off = 0; off < WRITE_COUNT * SECTOR; off++) {
        if (rbuf[off] != wbuf[off]) {
            check_fail("blk", "read back: sector %u byte %u is 0x%02x, wrote 0x%02x",
                       WRITE_FIRST + off / SECTOR, off % SECTOR, rbuf[off], wbuf[off]);
            return;
        }
    }
    if (irq_completions == 0) {
        check_fail("blk", "no completion was signalled by an interrupt (line %d, %u polled)", blk.irq, polled_completions);
        return;
    }
    check_ok("blk", "capacity=%lu read=%u wrote=%u flush=%s irq=%d irqs=%u polled=%u",
             capacity, PATTERN_SECTORS, WRITE_COUNT, flushed ? "yes" : "not-offered",
             blk.irq, irq_completions, polled_completions);
    if (blk_queues > 1)
        blk_mq_check();
}

/*
 * VIRTIO_BLK_F_MQ: 16 pattern reads at once on queue 1 (its own notify),
 * completions polled there; queue 0 must stay untouched.
 */
static void blk_mq_check(void)
{
    struct vq *q = &blk.vqs[1];
    u16 used0 = *(volatile u16 *)(blk.vqs[0].used + 2);
    int heads[16];
    for (int i = 0; i < 16; i++) {
        struct slot *sl = &slots[i];
        sl->hdr->type = T_IN;
        sl->hdr->reserved = 0;
        sl->hdr->sector = (u64)(100 + i * 7);
        *sl->status = 0xFF;
        memset(sl->data, 0, SECTOR);
        struct vseg seg[3] = {
            { sl->hdr, sizeof(struct blk_req), false }, { sl->data, SECTOR, true }, { sl->status, 1, true } };
        heads[i] = vq_add(q, seg, 3);
        if (heads[i] < 0) {
            check_fail("blk_mq", "vioblk0: queue 1: no free descriptors");
            return;
        }
    }
    vq_kick(q);
    int done = 0;
    u64 start = rdtsc();
    while (done < 16) {
        if (vq_get_used(q, NULL) >= 0) {
            done++;
            continue;
        }
        if (rdtsc() - start > us_to_tsc(5000000)) {
            check_fail("blk_mq", "vioblk0: queue 1: %d of 16 requests came back in 5 s", done);
            return;
        }
        cpu_relax();
    }
    for (int i = 0; i < 16; i++) {
        char expected[32], why[160];
        snprintf(expected, sizeof(expected), "vmdisk %u\n", 100 + i * 7);
        if (*slots[i].status != 0) {
            check_fail("blk_mq", "vioblk0: queue 1: request %d status %u", i, *slots[i].status);
            return;
        }
        if (!check_prefix(slots[i].data, expected, (u64)(100 + i * 7), why, sizeof(why))) {
            check_fail("blk_mq", "vioblk0: queue 1: %s", why);
            return;
        }
    }
    if (*(volatile u16 *)(blk.vqs[0].used + 2) != used0) {
        check_fail("blk_mq", "vioblk0: queue 1's requests came back on queue 0");
        return;
    }
    check_ok("blk_mq", "queues=%u reads=16 on queue 1", blk_queues);
}

/* ---- bench: polled, interrupts suppressed ---- */

static u64 random_4k_sector(void)
{
    u64 blocks = capacity / 8;
    return blocks ? (rand64() % blocks) * 8 : 0;
}

/* Keeps `depth` 4 KiB random reads in flight until `total` completed; returns IOPS. */
static bool randread(int depth, u32 total, u64 *iops, char *why, size_t whysz)
{
    struct vq *q = &blk.vqs[0];
    u32 submitted = 0, completed = 0;
    u64 start = rdtsc();
    for (int s = 0; s < depth && submitted < total; s++, submitted++)
        if (submit(s, T_IN, random_4k_sector(), slots[s].data, 4096) < 0) {
            snprintf(why, whysz, "vioblk0: queue too small for depth %d", depth);
            return false;
        }
    vq_kick(q);
    /* The clock counts only time this vCPU spent polling: a gap between two polls
     * (the vCPU descheduled, or this whole machine paused, seconds at a time on
     * a nested host) counts as at most 50 ms, so the device gets as much running
     * time as the deadline says before a stall is declared. */
    struct poll_clock clock;
    poll_clock_start(&clock);
    while (completed < total) {
        bool resubmitted = false;
        int id;
        while ((id = vq_get_used(q, NULL)) >= 0) {
            int s = id < 1024 ? slot_of_head[id] : 0;
            if (*slots[s].status != 0) {
                snprintf(why, whysz, "vioblk0: read failed with status %u", *slots[s].status);
                return false;
            }
            completed++;
            clock.waited = 0;
            if (submitted < total) {
                submit(s, T_IN, random_4k_sector(), slots[s].data, 4096);
                submitted++;
                resubmitted = true;
            }
        }
        if (resubmitted)
            vq_kick(q);
        poll_clock_tick(&clock);
        if (clock.waited > us_to_tsc(5000000)) {
            /* A completion that is there was missed because this vCPU did not
             * run (the deadline passed between the ring check and the clock
             * check): not a stall. Else say what the rings hold, and whether a
             * second kick helps. */
            volatile u16 *used_idx = (volatile u16 *)(q->used + 2);
            u16 seen = *used_idx;
            if (seen != q->last_used) {
                printf("vmtest: note vioblk0: a completion was found only after the 5 s deadline "
                       "(this vCPU was away up to %lu us)\n", tsc_to_us(clock.longest_gap));
                clock.waited = 0;
                continue;
            }
            const char *verdict = vq_kick_again_verdict(q);
            snprintf(why, whysz, "vioblk0: no completion for 5 s (%u of %u done; avail_idx=%u used_idx=%u "
                     "last_used=%u status=0x%02x longest_gap_us=%lu; %s)", completed, total, q->avail_idx, seen,
                     q->last_used, vr_read8(&blk.common, 0x14), tsc_to_us(clock.longest_gap), verdict);
            return false;
        }
    }
    u64 cycles = rdtsc() - start;
    *iops = cycles ? (u64)total * tsc_hz / cycles : 0;
    return true;
}

static u32 bench_ops(u32 base, u32 scale_percent)
{
    u64 n = (u64)base * scale_percent / 100;
    return n ? (u32)n : 1;
}

static void sort_u64(u64 *v, u32 n)
{
    for (u32 i = 1; i < n; i++)
        for (u32 j = i; j > 0 && v[j - 1] > v[j]; j--) {
            u64 t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
}

/* blkread: only the random-read rows of blk_bench (bench/blk-cold.py: a big
 * image with the host's page cache dropped, so reads wait for the disk). */
void blk_read_bench(void)
{
    char why[320];
    u64 iops;
    if (!blk_ready) {
        printf("vmtest bench: blk skip no usable device\n");
        return;
    }
    struct vq *q = &blk.vqs[0];
    vq_no_interrupts(q, true);
    if (randread(1, bench_ops(4000, opt.bench_scale), &iops, why, sizeof(why)))
        printf("vmtest bench: blk_randread_qd1 iops=%lu\n", iops);
    else
        printf("vmtest bench: blk_randread_qd1 FAIL %s\n", why);
    int depth = q->size / 3 < QD_MAX ? q->size / 3 : QD_MAX;
    if (randread(depth, bench_ops(16000, opt.bench_scale), &iops, why, sizeof(why)))
        printf("vmtest bench: blk_randread_qd%d iops=%lu\n", depth, iops);
    else
        printf("vmtest bench: blk_randread_qd%d FAIL %s\n", depth, why);
    vq_no_interrupts(q, false);
}

/* One blk_randread_qd1 run (kick_stress=N repeats it). */
void blk_qd1_bench(void)
{
    char why[320];
    u64 iops;
    if (!blk_ready) {
        printf("vmtest bench: blk skip no usable device\n");
        return;
    }
    vq_no_interrupts(&blk.vqs[0], true);
    if (randread(1, bench_ops(4000, opt.bench_scale), &iops, why, sizeof(why)))
        printf("vmtest bench: blk_randread_qd1 iops=%lu\n", iops);
    else
        printf("vmtest bench: blk_randread_qd1 FAIL %s\n", why);
    vq_no_interrupts(&blk.vqs[0], false);
}

/*
 * Sequential 64 KiB writes from sector 4096 to the end of the disk (one
 * pass), `depth` in flight: on a fresh qcow2 overlay each one allocates.
 * Each request's data is four 16 KiB slot buffers (slots 4g..4g+3).
 */
static bool seqwrite64k(u32 depth, u64 *kib_per_s, u32 *writes, char *why, size_t whysz)
{
    struct vq *q = &blk.vqs[0];
    const u32 per = 65536 / SECTOR;
    u64 next = 4096, end = capacity - capacity % per;
    u32 inflight = 0, done = 0;
    static int group_of_head[1024];    /* group + 1 of a head in flight, 0: none */
    memset(group_of_head, 0, sizeof(group_of_head));
    bool busy[8] = { false };
    if (depth > 8)
        depth = 8;
    for (u32 s = 0; s < QD_MAX; s++)
        memset(slots[s].data, 0x5a + s, CHUNK_BYTES);
    u64 start = rdtsc();
    for (;;) {
        for (u32 g = 0; g < depth && inflight < depth && next + per <= end; g++) {
            if (busy[g])
                continue;                           /* in flight (its status may already be 0) */
            struct slot *h = &slots[4 * g];
            h->hdr->type = T_OUT;
            h->hdr->reserved = 0;
            h->hdr->sector = next;
            *h->status = 0xFF;
            struct vseg seg[6];
            seg[0] = (struct vseg){ h->hdr, sizeof(struct blk_req), false };
            for (int k = 0; k < 4; k++)
                seg[1 + k] = (struct vseg){ slots[4 * g + k].data, CHUNK_BYTES, false };
            seg[5] = (struct vseg){ h->status, 1, true };
            int head = vq_add(q, seg, 6);
            if (head < 0 || head >= 1024) {
                snprintf(why, whysz, "vioblk0: no descriptors for a 64 KiB write");
                return false;
            }
            group_of_head[head] = (int)g + 1;
            busy[g] = true;
            inflight++;
            next += per;
        }
        if (inflight == 0)
            break;
        vq_kick(q);
        int id;
        u64 t0 = rdtsc();
        while ((id = vq_get_used(q, NULL)) < 0) {
            if (rdtsc() - t0 > us_to_tsc(10000000)) {
                snprintf(why, whysz, "vioblk0: a 64 KiB write took over 10 s");
                return false;
            }
            cpu_relax();
        }
        if (id >= 1024 || group_of_head[id] == 0) {
            snprintf(why, whysz, "vioblk0: used ring returned id %d, not a write in flight", id);
            return false;
        }
        int g = group_of_head[id] - 1;
        group_of_head[id] = 0;
        if (*slots[4 * g].status != 0) {
            snprintf(why, whysz, "vioblk0: 64 KiB write (id %d) failed with status %u", id, *slots[4 * g].status);
            return false;
        }
        busy[g] = false;
        inflight--;
        done++;
    }
    u64 us = tsc_to_us(rdtsc() - start);
    *writes = done;
    *kib_per_s = us ? (u64)done * 64 * 1000000 / us : 0;
    return true;
}

void blk_bench(void)
{
    char why[320];
    if (!blk_ready) {
        printf("vmtest bench: blk skip no usable device\n");
        return;
    }
    struct vq *q = &blk.vqs[0];
    vq_no_interrupts(q, true);
    u32 scale = opt.bench_scale;
    u64 iops;
    if (randread(1, bench_ops(4000, scale), &iops, why, sizeof(why)))
        printf("vmtest bench: blk_randread_qd1 iops=%lu\n", iops);
    else
        printf("vmtest bench: blk_randread_qd1 FAIL %s\n", why);

    int depth = q->size / 3 < QD_MAX ? q->size / 3 : QD_MAX;
    if (randread(depth, bench_ops(16000, scale), &iops, why, sizeof(why)))
        printf("vmtest bench: blk_randread_qd%d iops=%lu\n", depth, iops);
    else
        printf("vmtest bench: blk_randread_qd%d FAIL %s\n", depth, why);

    if (!(blk.features & BLK_F_FLUSH)) {
        printf("vmtest bench: blk_flush_lat skip flush not offered\n");
    } else {
        enum { FLUSHES = 200 };
        static u64 lat[FLUSHES];
        for (int i = 0; i < FLUSHES; i++) {
            int head = submit(0, T_FLUSH, 0, NULL, 0);
            u64 t0 = rdtsc();
            vq_kick(q);
            int id;
            while ((id = vq_get_used(q, NULL)) < 0)
                if (rdtsc() - t0 > us_to_tsc(5000000)) {
                    id = vq_get_used(q, NULL);   /* once more: the vCPU may have been away */
                    break;
                }
            lat[i] = tsc_to_ns(rdtsc() - t0);
            if (id != head || *slots[0].status != 0) {
                printf("vmtest bench: blk_flush_lat FAIL flush %d did not complete\n", i);
                goto out;
            }
        }
        sort_u64(lat, FLUSHES);
        printf("vmtest bench: blk_flush_lat median_us=%lu.%lu p99_us=%lu.%lu n=%d\n",
               lat[FLUSHES / 2] / 1000, lat[FLUSHES / 2] % 1000 / 100,
               lat[FLUSHES * 99 / 100] / 1000, lat[FLUSHES * 99 / 100] % 1000 / 100, FLUSHES);
    }
    {
        u64 kibs;
        u32 writes;
        for (u32 s = 0; s < QD_MAX; s++)
            *slots[s].status = 0;
        if (seqwrite64k(4, &kibs, &writes, why, sizeof(why)))
            printf("vmtest bench: blk_seqwrite64k kib_per_s=%lu writes=%u qd=4\n", kibs, writes);
        else
            printf("vmtest bench: blk_seqwrite64k FAIL %s\n", why);
    }
out:
    vq_no_interrupts(q, false);
}

/* ---- for verify.c: I/O through the check's bounce buffer ---- */

bool blk_transfer(bool write, u64 sector, u8 *buf, u32 count, char *why, size_t whysz)
{
    if (!blk_ready) {
        snprintf(why, whysz, "vioblk0: not set up");
        return false;
    }
    return transfer(write ? T_OUT : T_IN, sector, buf, count, why, whysz);
}

u64 blk_capacity(void)
{
    return blk_ready ? capacity : 0;
}

/*
 * blkfill: sequential 16 KiB writes from sector 4096 to the end of the disk,
 * 8 in flight, then again from the start, forever (every sector begins
 * with "fill <pass> <sector>"), so a fresh qcow2 overlay allocates all the
 * time. The kill -9 tests kill the device process in the middle of it.
 */
void blk_fill_forever(void)
{
    if (!blk_ready) {
        printf("vmtest: blkfill: no vioblk\n");
        return;
    }
    struct vq *q = &blk.vqs[0];
    vq_no_interrupts(q, true);
    const u32 per = CHUNK_BYTES / SECTOR, depth = 8;
    u64 next = 4096;
    u32 pass = 0, inflight = 0;
    for (u32 i = 0; i < depth; i++)
        *slots[i].status = 0;          /* free */
    printf("vmtest: blkfill: writing from sector %lu to %lu, %u in flight\n", next, capacity, depth);
    for (;;) {
        while (inflight < depth) {
            if (next + per > capacity) {
                next = 4096;
                pass++;
            }
            int s = -1;
            for (u32 i = 0; i < depth; i++)
                if (*slots[i].status != 0xFF) { s = (int)i; break; }
            if (s < 0)
                break;
            for (u32 k = 0; k < per; k++)
                snprintf((char *)slots[s].data + k * SECTOR, SECTOR, "fill %u %lu\n", pass, next + k);
            if (submit(s, T_OUT, next, slots[s].data, CHUNK_BYTES) < 0)
                break;
            inflight++;
            next += per;
        }
        vq_kick(q);
        int id;
        while ((id = vq_get_used(q, NULL)) < 0)
            cpu_relax();
        if (id < 1024)
            *slots[slot_of_head[id]].status = 0;
        inflight--;
    }
}
