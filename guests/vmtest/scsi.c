/*
 * scsi.c: virtio-scsi (spec 5.6), just enough to talk to one CD-ROM at
 * target 0, LUN 0 through the request queue (queue 2; the control and
 * event queues are not set up). The check sends TEST UNIT READY, INQUIRY,
 * READ CAPACITY(10), READ(10) of the first and last block, and a READ(10)
 * past the end that must fail with ILLEGAL REQUEST. Completions are
 * polled with interrupts suppressed (the device still goes in the ISR
 * list: it may share a line).
 *
 * scsi_verify=N (scsi_verify_run): for N seconds, READ(10) the disc block
 * by block, SCSI_DEPTH requests in flight, and compare each block with
 * the pattern the host wrote (DeviceRestartTests), while the host kills
 * the device process. Every request must come back once, good, with the
 * right data: `vmtest: scsi_verify ok seconds=N reads=R ...`.
 *
 * Pattern of block b (2048 bytes): bytes 0..3 are b (little endian), then
 * x = b * 2654435761 ^ 0x5c5c5c5c and for each further byte
 * x = x * 1103515245 + 12345, byte = x >> 16 (32-bit arithmetic).
 */
#include "vmtest.h"

#define SCSI_QUEUE 2
#define SCSI_BLOCK 2048u
#define SCSI_DEPTH 4
#define CDB_SIZE 32
#define SENSE_SIZE 96

#define OP_TEST_UNIT_READY 0x00
#define OP_INQUIRY 0x12
#define OP_READ_CAPACITY10 0x25
#define OP_READ10 0x28

#define S_OK 0                         /* virtio_scsi_cmd_resp.response */
#define STATUS_GOOD 0
#define STATUS_CHECK_CONDITION 2

struct scsi_req {                      /* struct virtio_scsi_cmd_req */
    u8 lun[8];
    u64 tag;
    u8 task_attr, prio, crn;
    u8 cdb[CDB_SIZE];
} __attribute__((packed));

struct scsi_resp {                     /* struct virtio_scsi_cmd_resp */
    u32 sense_len, resid;
    u16 status_qualifier;
    u8 status, response;
    u8 sense[SENSE_SIZE];
} __attribute__((packed));

struct scsi_slot {
    struct scsi_req *req;
    struct scsi_resp *resp;
    u8 *data;                          /* SCSI_BLOCK bytes */
    int head;                          /* -1: free */
    u32 lba;
};

static struct vdev scsi;
static bool scsi_ready;
static u32 scsi_blocks;                /* READ CAPACITY: last LBA + 1 */
static struct scsi_slot sslots[SCSI_DEPTH];
static u64 next_tag = 1;

static bool alloc_sslots(void)
{
    for (int i = 0; i < SCSI_DEPTH; i++) {
        u8 *meta = dma_alloc(256);
        sslots[i].data = dma_alloc(SCSI_BLOCK);
        if (!meta || !sslots[i].data)
            return false;
        sslots[i].req = (struct scsi_req *)meta;
        sslots[i].resp = (struct scsi_resp *)(meta + 128);
        sslots[i].head = -1;
    }
    return true;
}

static void put_be16(u8 *p, u32 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static void put_be32(u8 *p, u32 v) { p[0] = (u8)(v >> 24); p[1] = (u8)(v >> 16); p[2] = (u8)(v >> 8); p[3] = (u8)v; }
static u32 get_be32(const u8 *p) { return (u32)p[0] << 24 | (u32)p[1] << 16 | (u32)p[2] << 8 | p[3]; }

/* Queues slot s's command (its cdb already filled) with `len` bytes of data-in; the head or -1. */
static int scsi_submit(int s, u32 len)
{
    struct scsi_slot *sl = &sslots[s];
    struct scsi_req *r = sl->req;
    memset(r->lun, 0, sizeof(r->lun));
    r->lun[0] = 1;                     /* the single-level LUN format: target lun[1], LUN in [2..3] */
    r->lun[1] = 0;
    r->lun[2] = 0x40;                  /* flat addressing, LUN 0 (as Linux writes it) */
    r->tag = next_tag++;
    r->task_attr = 0;                  /* SIMPLE */
    r->prio = r->crn = 0;
    memset(sl->resp, 0xEE, sizeof(*sl->resp));
    struct vseg seg[3];
    int n = 0;
    seg[n++] = (struct vseg){ r, sizeof(*r), false };
    seg[n++] = (struct vseg){ sl->resp, sizeof(*sl->resp), true };
    if (len)
        seg[n++] = (struct vseg){ sl->data, len, true };
    sl->head = vq_add(&scsi.vqs[SCSI_QUEUE], seg, n);
    return sl->head;
}

static void fill_cdb(int s, u8 op, u32 lba, u32 count)
{
    u8 *c = sslots[s].req->cdb;
    memset(c, 0, CDB_SIZE);
    c[0] = op;
    if (op == OP_INQUIRY) {
        put_be16(c + 3, 36);
    } else if (op == OP_READ10) {
        put_be32(c + 2, lba);
        put_be16(c + 7, count);
    }
}

/* Waits (polling, at most `timeout_us` of this vCPU's time) for one completion; its slot or -1. */
static int scsi_wait(u64 timeout_us, u32 *len, char *why, size_t whysz)
{
    struct vq *q = &scsi.vqs[SCSI_QUEUE];
    struct poll_clock clock;
    poll_clock_start(&clock);
    for (;;) {
        int id = vq_get_used(q, len);
        if (id >= 0) {
            for (int s = 0; s < SCSI_DEPTH; s++)
                if (sslots[s].head == id) {
                    sslots[s].head = -1;
                    return s;
                }
            snprintf(why, whysz, "vioscsi0: used ring returned id %d, not a request in flight "
                     "(completed twice?)", id);
            return -1;
        }
        poll_clock_tick(&clock);
        if (clock.waited > us_to_tsc(timeout_us)) {
            if (*(volatile u16 *)(q->used + 2) != q->last_used)
                continue;              /* it came while this vCPU was away */
            snprintf(why, whysz, "vioscsi0: no completion within %lu ms (avail_idx=%u last_used=%u; %s)",
                     timeout_us / 1000, q->avail_idx, q->last_used, vq_kick_again_verdict(q));
            return -1;
        }
        cpu_relax();
    }
}

/* One command at a time through slot 0; false with why on a transport error. */
static bool scsi_cmd(u8 op, u32 lba, u32 count, u32 len, char *why, size_t whysz)
{
    fill_cdb(0, op, lba, count);
    if (scsi_submit(0, len) < 0) {
        snprintf(why, whysz, "vioscsi0: no free descriptors");
        return false;
    }
    vq_kick(&scsi.vqs[SCSI_QUEUE]);
    u32 used = 0;
    if (scsi_wait(5000000, &used, why, whysz) != 0)
        return false;
    struct scsi_resp *r = sslots[0].resp;
    if (used < sizeof(struct scsi_resp) || used > sizeof(struct scsi_resp) + len) {
        snprintf(why, whysz, "vioscsi0: op 0x%02x: used length %u for %u bytes of room", op, used,
                 (u32)sizeof(struct scsi_resp) + len);
        return false;
    }
    if (r->response != S_OK) {
        snprintf(why, whysz, "vioscsi0: op 0x%02x: virtio response %u", op, r->response);
        return false;
    }
    return true;
}

static u8 sense_key(const struct scsi_resp *r)
{
    if (r->sense_len < 3 || r->sense_len > SENSE_SIZE)
        return 0xFF;
    return (r->sense[0] & 0x7f) >= 0x72 ? r->sense[1] & 0x0f : r->sense[2] & 0x0f;
}

static void block_pattern(u8 *out, u32 lba)
{
    out[0] = (u8)lba;
    out[1] = (u8)(lba >> 8);
    out[2] = (u8)(lba >> 16);
    out[3] = (u8)(lba >> 24);
    u32 x = lba * 2654435761u ^ 0x5c5c5c5cu;
    for (u32 i = 4; i < SCSI_BLOCK; i++) {
        x = x * 1103515245u + 12345u;
        out[i] = (u8)(x >> 16);
    }
}

void scsi_check(struct pci_dev *p)
{
    char why[200];
    if (!vdev_init(&scsi, p, "vioscsi0", 0, why, sizeof(why)) ||
        !vdev_setup_queue(&scsi, SCSI_QUEUE, 64, why, sizeof(why))) {
        check_fail("scsi", "%s", why);
        return;
    }
    if (!alloc_sslots()) {
        check_fail("scsi", "vioscsi0: out of DMA memory");
        return;
    }
    vq_no_interrupts(&scsi.vqs[SCSI_QUEUE], true);
    irq_register(&scsi);
    vdev_driver_ok(&scsi);
    struct scsi_resp *r = sslots[0].resp;
    u8 *data = sslots[0].data;

    /* TEST UNIT READY: a fresh unit may first report a unit attention (QEMU does). */
    int tries = 0;
    for (;; tries++) {
        if (!scsi_cmd(OP_TEST_UNIT_READY, 0, 0, 0, why, sizeof(why))) {
            check_fail("scsi", "%s", why);
            return;
        }
        if (r->status == STATUS_GOOD)
            break;
        if (tries == 3 || r->status != STATUS_CHECK_CONDITION || sense_key(r) != 0x06) {
            check_fail("scsi", "vioscsi0: TEST UNIT READY: status 0x%02x sense key 0x%x", r->status, sense_key(r));
            return;
        }
    }
    if (!scsi_cmd(OP_INQUIRY, 0, 0, 36, why, sizeof(why))) {
        check_fail("scsi", "%s", why);
        return;
    }
    if (r->status != STATUS_GOOD || (data[0] & 0x1f) != 0x05) {
        check_fail("scsi", "vioscsi0: INQUIRY: status 0x%02x peripheral type 0x%02x (want 5, CD-ROM)",
                   r->status, data[0]);
        return;
    }
    char vendor[8 + 16 + 1];
    format_printable(vendor, sizeof(vendor), data + 8, 24);
    if (!scsi_cmd(OP_READ_CAPACITY10, 0, 0, 8, why, sizeof(why))) {
        check_fail("scsi", "%s", why);
        return;
    }
    u32 last = get_be32(data), bsize = get_be32(data + 4);
    if (r->status != STATUS_GOOD || bsize != SCSI_BLOCK || last == 0xFFFFFFFFu) {
        check_fail("scsi", "vioscsi0: READ CAPACITY(10): status 0x%02x last_lba=%u block=%u", r->status, last, bsize);
        return;
    }
    scsi_blocks = last + 1;
    u8 first[4];
    for (int k = 0; k < 2; k++) {
        u32 lba = k == 0 ? 0 : last;
        if (!scsi_cmd(OP_READ10, lba, 1, SCSI_BLOCK, why, sizeof(why))) {
            check_fail("scsi", "%s", why);
            return;
        }
        if (r->status != STATUS_GOOD || r->resid != 0) {
            check_fail("scsi", "vioscsi0: READ(10) of block %u: status 0x%02x resid %u sense key 0x%x", lba,
                       r->status, r->resid, sense_key(r));
            return;
        }
        if (k == 0)
            memcpy(first, data, 4);
    }
    /* Past the end: CHECK CONDITION, ILLEGAL REQUEST. */
    if (!scsi_cmd(OP_READ10, scsi_blocks, 1, SCSI_BLOCK, why, sizeof(why))) {
        check_fail("scsi", "%s", why);
        return;
    }
    if (r->status != STATUS_CHECK_CONDITION || sense_key(r) != 0x05) {
        check_fail("scsi", "vioscsi0: READ(10) past the end: status 0x%02x sense key 0x%x (want 2, 5)",
                   r->status, sense_key(r));
        return;
    }
    scsi_ready = true;
    check_ok("scsi", "inquiry=\"%s\" blocks=%u block_size=%u block0=%02x%02x%02x%02x tur_retries=%d",
             vendor, scsi_blocks, bsize, first[0], first[1], first[2], first[3], tries);
}

void scsi_verify_run(u32 seconds)
{
    char why[200];
    if (!scsi_ready || scsi_blocks == 0) {
        check_fail("scsi_verify", "vioscsi0: no usable CD-ROM (the scsi check did not pass)");
        return;
    }
    static u8 want[SCSI_BLOCK];
    struct vq *q = &scsi.vqs[SCSI_QUEUE];
    u64 start = rdtsc(), limit = us_to_tsc((u64)seconds * 1000000);
    u64 reads = 0, submitted = 0;
    u32 next = 0, inflight = 0, passes = 0;
    for (;;) {
        bool more = rdtsc() - start < limit;
        bool kicked = false;
        for (int s = 0; more && s < SCSI_DEPTH; s++) {
            if (sslots[s].head >= 0)
                continue;
            fill_cdb(s, OP_READ10, next, 1);
            sslots[s].lba = next;
            if (scsi_submit(s, SCSI_BLOCK) < 0) {
                check_fail("scsi_verify", "vioscsi0: no free descriptors");
                return;
            }
            submitted++;
            inflight++;
            kicked = true;
            if (++next == scsi_blocks) {
                next = 0;
                passes++;
            }
        }
        if (kicked)
            vq_kick(q);
        if (inflight == 0)
            break;
        u32 used = 0;
        int s = scsi_wait(10000000, &used, why, sizeof(why));
        if (s < 0) {
            check_fail("scsi_verify", "after %lu reads: %s", reads, why);
            return;
        }
        inflight--;
        struct scsi_resp *r = sslots[s].resp;
        u32 lba = sslots[s].lba;
        if (r->response != S_OK || r->status != STATUS_GOOD || r->resid != 0 ||
            used != sizeof(struct scsi_resp) + SCSI_BLOCK) {
            check_fail("scsi_verify", "vioscsi0: READ(10) of block %u: response %u status 0x%02x resid %u "
                       "used %u sense key 0x%x", lba, r->response, r->status, r->resid, used, sense_key(r));
            return;
        }
        block_pattern(want, lba);
        if (memcmp(sslots[s].data, want, SCSI_BLOCK) != 0) {
            u32 at = 0;
            while (at < SCSI_BLOCK && sslots[s].data[at] == want[at])
                at++;
            check_fail("scsi_verify", "vioscsi0: block %u reads back wrong from byte %u", lba, at);
            return;
        }
        reads++;
    }
    check_ok("scsi_verify", "seconds=%u reads=%lu passes=%u blocks=%u depth=%d", seconds, reads, passes,
             scsi_blocks, SCSI_DEPTH);
}
