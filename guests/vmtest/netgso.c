/*
 * netgso.c: bench net_tx_gso64k (issue 15): bytes/s of 64 KiB TCPv4 frames from
 * the guest with checksum offload and TSO (VIRTIO_NET_F_CSUM + HOST_TSO4, asked
 * for by net.c in bench mode). Each frame carries a virtio_net_hdr with
 * NEEDS_CSUM, GSO_TCPV4, gso_size 1448 (45 segments of 1448 bytes: 65,214-byte
 * Ethernet frames), a valid IPv4 header and the TCP pseudo-header sum in the
 * checksum field, as Linux sends them. The destination MAC is a locally
 * administered one that is nobody's: the host's tap takes the whole frame in
 * (and checks its GSO header), then the host stack drops it at once as
 * PACKET_OTHERHOST; nothing comes back to the guest. Polled, interrupts
 * suppressed, up to 16 frames in flight, a kick per refill.
 */
#include "vmtest.h"

#define HDR_LEN 12
#define GSO_INFLIGHT 16
#define GSO_MSS 1448
#define GSO_SEGS 45
#define GSO_L4 (20 + GSO_MSS * GSO_SEGS)        /* TCP header + payload */
#define GSO_IP (20 + GSO_L4)                    /* 65,200: an IPv4 total length */
#define GSO_FRAME (14 + GSO_IP)                 /* 65,214 */
#define F_CSUM (1ULL << 0)
#define F_HOST_TSO4 (1ULL << 11)

static void put16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static void put32(u8 *p, u32 v) { p[0] = (u8)(v >> 24); p[1] = (u8)(v >> 16); p[2] = (u8)(v >> 8); p[3] = (u8)v; }

static u32 sum16(const u8 *p, u32 len, u32 sum)
{
    for (u32 i = 0; i + 1 < len; i += 2)
        sum += (u32)((p[i] << 8) | p[i + 1]);
    if (len & 1)
        sum += (u32)p[len - 1] << 8;
    return sum;
}

static u16 fold(u32 sum)
{
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    return (u16)sum;
}

static void build(u8 *b, const u8 *src_mac)
{
    static const u8 nobody[6] = { 0x02, 0x00, 0x5e, 0x76, 0x6d, 0x74 };
    memset(b, 0, HDR_LEN);
    b[0] = 1;                               /* VIRTIO_NET_HDR_F_NEEDS_CSUM */
    b[1] = 1;                               /* VIRTIO_NET_HDR_GSO_TCPV4 */
    b[2] = 14 + 20 + 20;                    /* hdr_len (le16) */
    b[4] = GSO_MSS & 0xFF;                  /* gso_size (le16) */
    b[5] = GSO_MSS >> 8;
    b[6] = 14 + 20;                         /* csum_start (le16) */
    b[8] = 16;                              /* csum_offset: tcphdr.check */
    u8 *f = b + HDR_LEN;
    memcpy(f, nobody, 6);
    memcpy(f + 6, src_mac, 6);
    put16(f + 12, 0x0800);
    u8 *ip = f + 14, *tcp = ip + 20;
    ip[0] = 0x45;
    put16(ip + 2, GSO_IP);
    put16(ip + 4, 0x6d74);
    put16(ip + 6, 0x4000);                  /* DF */
    ip[8] = 64;
    ip[9] = 6;
    put32(ip + 12, opt.ip);
    put32(ip + 16, opt.gw);
    put16(ip + 10, (u16)~fold(sum16(ip, 20, 0)));
    put16(tcp, 40000);
    put16(tcp + 2, 9);                      /* discard */
    put32(tcp + 4, 1);
    put32(tcp + 8, 1);
    tcp[12] = 5 << 4;
    tcp[13] = 0x18;                         /* PSH ACK */
    put16(tcp + 14, 65535);
    for (u32 i = 20; i < GSO_L4; i++)
        tcp[i] = (u8)(i * 7);
    /* NEEDS_CSUM: the field holds the pseudo-header sum; the host finishes it per segment. */
    u32 pseudo = sum16(ip + 12, 8, 0) + 6 + GSO_L4;
    put16(tcp + 16, fold(pseudo));
}

void net_gso_bench(void)
{
    u8 mac[6];
    struct vdev *d = net_tx_idle_device(mac);
    if (!d) {
        printf("vmtest bench: net_tx_gso64k skip no usable device or gateway\n");
        return;
    }
    if ((d->features & (F_CSUM | F_HOST_TSO4)) != (F_CSUM | F_HOST_TSO4)) {
        printf("vmtest bench: net_tx_gso64k skip CSUM and HOST_TSO4 not offered (features 0x%lx)\n", d->features);
        return;
    }
    static u8 *bufs[GSO_INFLIGHT];
    for (int i = 0; i < GSO_INFLIGHT; i++) {
        if (!bufs[i] && !(bufs[i] = dma_alloc(HDR_LEN + GSO_FRAME))) {
            printf("vmtest bench: net_tx_gso64k skip out of DMA memory\n");
            return;
        }
        build(bufs[i], mac);
    }
    struct vq *q = &d->vqs[1];
    u32 total = (u32)((u64)2000 * opt.bench_scale / 100);
    if (total == 0)
        total = 1;
    u32 sent = 0, done = 0, inflight = 0, next = 0;
    u64 start = rdtsc(), progress = start;
    while (done < total) {
        bool added = false;
        while (inflight < GSO_INFLIGHT && sent < total && q->num_free > 0) {
            struct vseg seg = { bufs[next], HDR_LEN + GSO_FRAME, false };
            if (vq_add(q, &seg, 1) < 0)
                break;
            next = (next + 1) % GSO_INFLIGHT;
            inflight++;
            sent++;
            added = true;
        }
        if (added)
            vq_kick(q);
        while (vq_get_used(q, NULL) >= 0) {
            inflight--;
            done++;
            progress = rdtsc();
        }
        if (rdtsc() - progress > us_to_tsc(5000000)) {
            printf("vmtest bench: net_tx_gso64k FAIL transmit ring stuck after %u frames (%u in flight)\n", done, inflight);
            return;
        }
    }
    u64 cycles = rdtsc() - start;
    u64 bps = cycles ? (u64)done * GSO_FRAME * tsc_hz / cycles : 0;
    printf("vmtest bench: net_tx_gso64k mb_per_s=%lu.%lu bytes_per_s=%lu frames=%u frame_bytes=%u\n",
           bps / 1000000, bps / 100000 % 10, bps, done, GSO_FRAME);
}
