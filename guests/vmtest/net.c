/*
 * net.c: virtio-net with just enough Ethernet/ARP/IPv4/ICMP to resolve the gateway
 * and ping it. With VERSION_1 every frame is preceded by the 12-byte
 * virtio_net_hdr_v1 (all zero on transmit: no offloads are negotiated).
 * Queues: 0 = receive, 1 = transmit; both polled with interrupts suppressed.
 */
#include "vmtest.h"

#define NET_F_MAC (1ULL << 5)
/* Asked for in bench mode only (netgso.c: net_tx_gso64k); nothing else here sets a header flag. */
#define NET_F_CSUM (1ULL << 0)
#define NET_F_HOST_TSO4 (1ULL << 11)
#define HDR_LEN 12
#define RX_BUF 2048u
/* As Linux's virtio-net does, the whole receive ring is kept full (two
 * buffers to a page: dma_alloc hands out pages). */
#define RX_COUNT 256
#define TX_COUNT 128
#define ETH_ARP 0x0806
#define ETH_IP 0x0800
#define ETH_BENCH 0x88B5                /* IEEE local experimental: hosts ignore it */

static struct vdev net;
static bool net_ready, gw_known;
static u8 mac[6], gw_mac[6];
static u8 *rx_bufs[RX_COUNT];
static int rx_slot_of_head[1024];
static u8 *tx_bufs[TX_COUNT];
static int tx_next;
static u32 tx_inflight;
static u16 ping_id = 0x7674, ping_seq;
static bool ping_answered;
static u64 rx_frames;
static char tx_stall[200];            /* why tx_send gave up */
static bool rx_bench_on;              /* net_rx_1500: count UDP frames to us */
static u64 rx_bench_frames;

static u16 be16(const u8 *p) { return (u16)((p[0] << 8) | p[1]); }
static u32 be32(const u8 *p) { return ((u32)p[0] << 24) | ((u32)p[1] << 16) | ((u32)p[2] << 8) | p[3]; }
static void put16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static void put32(u8 *p, u32 v) { p[0] = (u8)(v >> 24); p[1] = (u8)(v >> 16); p[2] = (u8)(v >> 8); p[3] = (u8)v; }

static u16 checksum(const u8 *p, u32 len)
{
    u32 sum = 0;
    for (u32 i = 0; i + 1 < len; i += 2)
        sum += be16(p + i);
    if (len & 1)
        sum += (u32)p[len - 1] << 8;
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    return (u16)~sum;
}

static void rx_post(int slot)
{
    struct vseg seg = { rx_bufs[slot], RX_BUF, true };
    int head = vq_add(&net.vqs[0], &seg, 1);
    if (head >= 0 && head < 1024)
        rx_slot_of_head[head] = slot;
}

static void tx_reclaim(void)
{
    while (vq_get_used(&net.vqs[1], NULL) >= 0)
        if (tx_inflight)
            tx_inflight--;
}

/* Sends one frame (len bytes from frame, padded to 60); false if the ring stays full. */
static bool tx_send(const u8 *frame, u32 len, bool kick)
{
    struct vq *q = &net.vqs[1];
    /* As in blk.c: only time spent polling counts towards the deadline. */
    struct poll_clock clock;
    poll_clock_start(&clock);
    while (q->num_free == 0 || tx_inflight >= TX_COUNT) {
        if (kick)
            vq_kick(q);
        tx_reclaim();
        /* Room now? Then this is progress, however long the vCPU was away
         * (the deadline below must not fire after a reclaim that worked). */
        if (q->num_free != 0 && tx_inflight < TX_COUNT)
            break;
        poll_clock_tick(&clock);
        if (clock.waited > us_to_tsc(2000000)) {
            /* As in blk.c: a completion that is there is not a stall. */
            volatile u16 *used_idx = (volatile u16 *)(q->used + 2);
            u16 seen = *used_idx;
            if (seen != q->last_used) {
                printf("vmtest: note vionet0: a transmit completion was found only after the 2 s deadline "
                       "(this vCPU was away up to %lu us)\n", tsc_to_us(clock.longest_gap));
                clock.waited = 0;
                continue;
            }
            const char *verdict = vq_kick_again_verdict(q);
            snprintf(tx_stall, sizeof(tx_stall), "avail_idx=%u used_idx=%u last_used=%u inflight=%u status=0x%02x "
                     "longest_gap_us=%lu; %s", q->avail_idx, seen, q->last_used, tx_inflight,
                     vr_read8(&net.common, 0x14), tsc_to_us(clock.longest_gap), verdict);
            return false;
        }
    }
    u8 *buf = tx_bufs[tx_next];
    tx_next = (tx_next + 1) % TX_COUNT;
    memset(buf, 0, HDR_LEN);
    u32 flen = len < 60 ? 60 : len;
    memset(buf + HDR_LEN, 0, flen);
    memcpy(buf + HDR_LEN, frame, len);
    struct vseg seg = { buf, HDR_LEN + flen, false };
    if (vq_add(q, &seg, 1) < 0)
        return false;
    tx_inflight++;
    if (kick)
        vq_kick(q);
    return true;
}

static void eth_header(u8 *f, const u8 *dst, u16 type)
{
    memcpy(f, dst, 6);
    memcpy(f + 6, mac, 6);
    put16(f + 12, type);
}

static void send_arp(u16 op, const u8 *dst_mac, u32 target_ip)
{
    static const u8 bcast[6] = { 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF };
    u8 f[42];
    eth_header(f, op == 1 ? bcast : dst_mac, ETH_ARP);
    put16(f + 14, 1);
    put16(f + 16, ETH_IP);
    f[18] = 6;
    f[19] = 4;
    put16(f + 20, op);
    memcpy(f + 22, mac, 6);
    put32(f + 28, opt.ip);
    if (op == 1)
        memset(f + 32, 0, 6);
    else
        memcpy(f + 32, dst_mac, 6);
    put32(f + 38, target_ip);
    tx_send(f, sizeof(f), true);
}

static void send_ping(void)
{
    u8 f[14 + 20 + 8 + 56];
    eth_header(f, gw_mac, ETH_IP);
    u8 *ip = f + 14, *icmp = ip + 20;
    memset(ip, 0, 20);
    ip[0] = 0x45;
    put16(ip + 2, 20 + 8 + 56);
    put16(ip + 4, ping_seq);
    put16(ip + 6, 0x4000);
    ip[8] = 64;
    ip[9] = 1;
    put32(ip + 12, opt.ip);
    put32(ip + 16, opt.gw);
    put16(ip + 10, checksum(ip, 20));
    icmp[0] = 8;
    icmp[1] = 0;
    put16(icmp + 2, 0);
    put16(icmp + 4, ping_id);
    put16(icmp + 6, ping_seq);
    for (int i = 0; i < 56; i++)
        icmp[8 + i] = (u8)i;
    put16(icmp + 2, checksum(icmp, 8 + 56));
    tx_send(f, sizeof(f), true);
}

/* Handles one received frame (hostile: every length is checked). */
static void rx_frame(const u8 *f, u32 len)
{
    rx_frames++;
    if (len < 14)
        return;
    if (opt.dhcp && dhcp_rx(f, len))
        return;
    if (opt.slaac && slaac_rx(f, len))
        return;
    if (rx_bench_on && len >= 14 + 20 + 8 && be16(f + 12) == ETH_IP && f[14 + 9] == 17) {
        rx_bench_frames++;
        return;
    }
    u16 type = be16(f + 12);
    if (type == ETH_ARP && len >= 42 && be16(f + 14) == 1 && be16(f + 16) == ETH_IP && f[18] == 6 && f[19] == 4) {
        u16 op = be16(f + 20);
        u32 sender_ip = be32(f + 28), target_ip = be32(f + 38);
        if (sender_ip == opt.gw && (op == 1 || op == 2) && !gw_known) {
            memcpy(gw_mac, f + 22, 6);
            gw_known = true;
        }
        if (op == 1 && target_ip == opt.ip)
            send_arp(2, f + 22, sender_ip);
    } else if (type == ETH_IP && len >= 14 + 20 + 8) {
        const u8 *ip = f + 14;
        u32 ihl = (u32)(ip[0] & 0xF) * 4;
        u32 total = be16(ip + 2);
        if ((ip[0] >> 4) != 4 || ihl < 20 || total < ihl + 8 || total > len - 14)
            return;
        const u8 *icmp = ip + ihl;
        if (ip[9] == 1 && be32(ip + 12) == opt.gw && be32(ip + 16) == opt.ip && icmp[0] == 0 &&
            be16(icmp + 4) == ping_id && be16(icmp + 6) == ping_seq)
            ping_answered = true;
    }
}

static void rx_poll(void)
{
    struct vq *q = &net.vqs[0];
    bool reposted = false;
    int id;
    u32 len;
    while ((id = vq_get_used(q, &len)) >= 0) {
        int slot = id < 1024 ? rx_slot_of_head[id] : 0;
        if (len > HDR_LEN && len <= RX_BUF)
            rx_frame(rx_bufs[slot] + HDR_LEN, len - HDR_LEN);
        rx_post(slot);
        reposted = true;
    }
    if (reposted)
        vq_kick(q);
    tx_reclaim();
}

bool net_send_frame(const u8 *frame, u32 len) { return tx_send(frame, len, true); }
void net_poll(void) { rx_poll(); irq_service(); }

static void fmt_mac(char *out, const u8 *m)
{
    snprintf(out, 18, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}

void net_check(struct pci_dev *p)
{
    char why[160];
    if (!opt.dhcp && (!opt.have_ip || !opt.have_gw)) {
        check_skip("net", "no ip=A.B.C.D/len gw=E.F.G.H on the command line");
        return;
    }
    if (!opt.dhcp && (opt.ip & opt.netmask) != (opt.gw & opt.netmask)) {
        check_fail("net", "gateway is not inside ip/len");
        return;
    }
    /* EVENT_IDX in the bench (as Linux's driver asks for it) and under
     * kick_stress, where a device that sets avail_event wrong loses a kick. */
    u64 wanted = NET_F_MAC | (opt.bench ? NET_F_CSUM | NET_F_HOST_TSO4 : 0)
                 | (opt.bench || opt.kick_stress ? VIRTIO_F_EVENT_IDX : 0);
    if (!vdev_init(&net, p, "vionet0", wanted, why, sizeof(why)) ||
        !vdev_setup_queue(&net, 0, 256, why, sizeof(why)) || !vdev_setup_queue(&net, 1, 256, why, sizeof(why))) {
        check_fail("net", "%s", why);
        return;
    }
    if (net.features & NET_F_MAC) {
        for (int i = 0; i < 6; i++)
            mac[i] = vr_read8(&net.device, (u32)i);
    } else {
        static const u8 fallback[6] = { 0x52, 0x54, 0x00, 0x76, 0x6d, 0x74 };
        memcpy(mac, fallback, 6);
    }
    vq_no_interrupts(&net.vqs[0], true);
    vq_no_interrupts(&net.vqs[1], true);
    irq_register(&net);
    for (int i = 0; i < RX_COUNT && i < net.vqs[0].size; i++) {
        rx_bufs[i] = i % 2 ? rx_bufs[i - 1] + RX_BUF : dma_alloc(2 * RX_BUF);
        if (!rx_bufs[i]) {
            check_fail("net", "vionet0: out of DMA memory");
            return;
        }
        rx_post(i);
    }
    for (int i = 0; i < TX_COUNT; i++)
        if (!(tx_bufs[i] = dma_alloc(HDR_LEN + 1514))) {
            check_fail("net", "vionet0: out of DMA memory");
            return;
        }
    vdev_driver_ok(&net);
    vq_kick(&net.vqs[0]);
    net_ready = true;
    if (opt.dhcp && !dhcp_configure(mac)) {
        check_skip("net", "no address from DHCP");
        return;
    }
    if (opt.slaac)
        slaac_configure(mac);

    /* ARP for the gateway, once a second, for up to 10 s (the host may be late). */
    u64 start = rdtsc(), last_req = 0;
    bool first = true;
    while (!gw_known && rdtsc() - start < us_to_tsc(10000000)) {
        if (first || rdtsc() - last_req > us_to_tsc(1000000)) {
            send_arp(1, NULL, opt.gw);
            last_req = rdtsc();
            first = false;
        }
        rx_poll();
        irq_service();
    }
    char m[18], g[18];
    fmt_mac(m, mac);
    if (!gw_known) {
        check_fail("net", "mac=%s no ARP reply from the gateway within 10 s (%lu frames received)", m, rx_frames);
        return;
    }
    fmt_mac(g, gw_mac);
    u64 arp_us = tsc_to_us(rdtsc() - start);

    for (int attempt = 0; attempt < 3; attempt++) {
        ping_seq++;
        ping_answered = false;
        u64 t0 = rdtsc();
        send_ping();
        while (!ping_answered && rdtsc() - t0 < us_to_tsc(1000000)) {
            rx_poll();
            irq_service();
        }
        if (ping_answered) {
            u64 rtt_ns = tsc_to_ns(rdtsc() - t0);
            check_ok("net", "mac=%s gw_mac=%s arp_us=%lu rtt_us=%lu.%lu", m, g, arp_us, rtt_ns / 1000, rtt_ns % 1000 / 100);
            return;
        }
    }
    check_fail("net", "mac=%s gw_mac=%s no ICMP echo reply from the gateway (3 tries, 1 s each)", m, g);
}

/* Transmits 1500-byte frames (a local ethertype, to the gateway's MAC) as fast as the ring allows. */
void net_bench(void)
{
    if (!net_ready || !gw_known) {
        printf("vmtest bench: net_tx_1500 skip no usable device or gateway\n");
        return;
    }
    static u8 frame[1500];
    eth_header(frame, gw_mac, ETH_BENCH);
    for (u32 i = 14; i < sizeof(frame); i++)
        frame[i] = (u8)i;
    u32 total = (u32)((u64)20000 * opt.bench_scale / 100);
    if (total == 0)
        total = 1;
    struct vq *q = &net.vqs[1];
    u64 start = rdtsc();
    for (u32 i = 0; i < total; i++) {
        /* Kick once per 32 frames or when the ring is full: fewer exits, as a real driver batches. */
        if (q->num_free == 0 || tx_inflight >= TX_COUNT) {
            vq_kick(q);
            tx_reclaim();
        }
        if (!tx_send(frame, sizeof(frame), (i % 32) == 31)) {
            printf("vmtest bench: net_tx_1500 FAIL transmit ring stuck after %u frames (%s)\n", i, tx_stall);
            return;
        }
        rx_poll();
    }
    vq_kick(q);
    u64 wait = rdtsc();
    while (tx_inflight && rdtsc() - wait < us_to_tsc(5000000))
        tx_reclaim();
    u64 cycles = rdtsc() - start;
    printf("vmtest bench: net_tx_1500 fps=%lu frames=%u\n", cycles ? (u64)total * tsc_hz / cycles : 0, total);
    net_gso_bench();
    for (u32 round = 1; round <= opt.bench_rx; round++)
        net_rx_bench(round);
}

/* Receive: says it is ready, the host floods 1500-byte UDP frames at our
 * address (bench/vmbench.py), and we count what arrives for a second. Each
 * round says its number; the host may change where its threads run between
 * rounds (the lines of round 1 carry no suffix, round N's "_rN"). */
void net_rx_bench(u32 round)
{
    char name[24];
    if (round <= 1)
        snprintf(name, sizeof(name), "net_rx_1500");
    else
        snprintf(name, sizeof(name), "net_rx_1500_r%u", round);
    rx_bench_frames = 0;
    rx_bench_on = true;
    printf("vmtest bench: net_rx_ready round=%u\n", round);
    u64 start = rdtsc();
    while (rx_bench_frames == 0 && rdtsc() - start < us_to_tsc(10000000))
        rx_poll();
    if (rx_bench_frames == 0) {
        rx_bench_on = false;
        printf("vmtest bench: %s skip nothing received within 10 s\n", name);
        return;
    }
    /* Past the start-up (ARP, the sender's first burst). */
    u64 warm = rdtsc();
    while (rdtsc() - warm < us_to_tsc(200000))
        rx_poll();
    u64 t0 = rdtsc(), f0 = rx_bench_frames;
    u64 window = us_to_tsc(1000000);
    while (rdtsc() - t0 < window)
        rx_poll();
    u64 cycles = rdtsc() - t0, frames = rx_bench_frames - f0;
    rx_bench_on = false;
    printf("vmtest bench: %s fps=%lu frames=%lu\n", name, cycles ? frames * tsc_hz / cycles : 0, frames);
}

/* For devloop.c: one ping of the gateway; true when answered within
 * `timeout_us`. Only after net_check found the gateway. */
bool net_ping_once(u64 timeout_us)
{
    if (!net_ready || !gw_known)
        return false;
    ping_seq++;
    ping_answered = false;
    u64 t0 = rdtsc();
    send_ping();
    while (!ping_answered && rdtsc() - t0 < us_to_tsc(timeout_us)) {
        rx_poll();
        irq_service();
    }
    return ping_answered;
}

/* For netgso.c: the device once every transmitted frame is reclaimed (the
 * transmit ring is then netgso.c's alone until it returns), our MAC; NULL
 * when there is no usable device or the ring does not drain. */
struct vdev *net_tx_idle_device(u8 *our_mac)
{
    if (!net_ready || !gw_known)
        return NULL;
    u64 t = rdtsc();
    while (tx_inflight && rdtsc() - t < us_to_tsc(2000000))
        tx_reclaim();
    if (tx_inflight)
        return NULL;
    memcpy(our_mac, mac, 6);
    return &net;
}
