/*
 * dhcp.c: a small DHCP client (RFC 2131 DISCOVER -> OFFER -> REQUEST -> ACK)
 * on vionet0, for vmd's local interfaces. It configures opt.ip/netmask/gw
 * from the ACK so net_check then ARPs and pings the router. Replies are
 * checked like any hostile input: every length before it is used.
 */
#include "vmtest.h"

#define XID 0x766d7464u            /* "vmtd" */

enum { WAIT_OFFER, WAIT_ACK, DONE, NAKED };

static const u8 *my_mac;
static int state;
static u32 offered, server_id, mask, router, lease;
static char hostname[64];
static u32 replies;

static u16 rd16(const u8 *p) { return (u16)((p[0] << 8) | p[1]); }
static u32 rd32(const u8 *p) { return ((u32)p[0] << 24) | ((u32)p[1] << 16) | ((u32)p[2] << 8) | p[3]; }
static void wr16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static void wr32(u8 *p, u32 v) { p[0] = (u8)(v >> 24); p[1] = (u8)(v >> 16); p[2] = (u8)(v >> 8); p[3] = (u8)v; }

static u16 csum(const u8 *p, u32 len)
{
    u32 sum = 0;
    for (u32 i = 0; i + 1 < len; i += 2)
        sum += rd16(p + i);
    if (len & 1)
        sum += (u32)p[len - 1] << 8;
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    return (u16)~sum;
}

/* Broadcasts a DISCOVER (type 1) or REQUEST (type 3) for the offered address. */
static void send_msg(u8 type)
{
    static u8 f[14 + 20 + 8 + 300];
    memset(f, 0, sizeof(f));
    memset(f, 0xFF, 6);
    memcpy(f + 6, my_mac, 6);
    wr16(f + 12, 0x0800);
    u8 *ip = f + 14, *udp = ip + 20, *b = udp + 8;
    b[0] = 1; b[1] = 1; b[2] = 6;
    wr32(b + 4, XID);
    memcpy(b + 28, my_mac, 6);
    u8 *o = b + 236;
    wr32(o, 0x63825363);
    u32 n = 4;
    o[n++] = 53; o[n++] = 1; o[n++] = type;
    if (type == 3) {
        o[n++] = 50; o[n++] = 4; wr32(o + n, offered); n += 4;
        o[n++] = 54; o[n++] = 4; wr32(o + n, server_id); n += 4;
    }
    o[n++] = 55; o[n++] = 3; o[n++] = 1; o[n++] = 3; o[n++] = 12;    /* mask, router, hostname */
    o[n++] = 255;
    wr16(udp, 68);
    wr16(udp + 2, 67);
    wr16(udp + 4, 8 + 300);
    ip[0] = 0x45;
    wr16(ip + 2, 20 + 8 + 300);
    ip[8] = 64;
    ip[9] = 17;
    wr32(ip + 16, 0xFFFFFFFFu);
    wr16(ip + 10, csum(ip, 20));
    net_send_frame(f, sizeof(f));
}

bool dhcp_rx(const u8 *f, u32 len)
{
    if (len < 14 + 20 + 8 + 240 || rd16(f + 12) != 0x0800)
        return false;
    const u8 *ip = f + 14;
    u32 ihl = (u32)(ip[0] & 0xF) * 4, total = rd16(ip + 2);
    if ((ip[0] >> 4) != 4 || ihl < 20 || ip[9] != 17 || total > len - 14 || total < ihl + 8 + 240)
        return false;
    const u8 *udp = ip + ihl;
    u32 ulen = rd16(udp + 4);
    if (rd16(udp) != 67 || rd16(udp + 2) != 68 || ulen < 8 + 240 || ulen > total - ihl)
        return false;
    const u8 *b = udp + 8, *end = udp + ulen;
    if (b[0] != 2 || rd32(b + 4) != XID || memcmp(b + 28, my_mac, 6) != 0 || rd32(b + 236) != 0x63825363)
        return true;                         /* DHCP, but not for us: consumed */
    replies++;
    u8 type = 0;
    u32 sid = 0, m = 0, r = 0, l = 0;
    char name[64] = "";
    for (const u8 *p = b + 240; p < end && *p != 255;) {
        if (*p == 0) { p++; continue; }
        if (p + 2 > end || p + 2 + p[1] > end)
            break;
        u8 code = p[0], n = p[1];
        const u8 *v = p + 2;
        if (code == 53 && n == 1) type = v[0];
        else if (code == 54 && n == 4) sid = rd32(v);
        else if (code == 1 && n == 4) m = rd32(v);
        else if (code == 3 && n >= 4) r = rd32(v);
        else if (code == 51 && n == 4) l = rd32(v);
        else if (code == 12 && n < sizeof(name)) { memcpy(name, v, n); name[n] = 0; }
        p += 2 + n;
    }
    if (state == WAIT_OFFER && type == 2) {
        offered = rd32(b + 16);
        server_id = sid;
        state = WAIT_ACK;
        send_msg(3);
    } else if (state == WAIT_ACK && type == 5 && rd32(b + 16) == offered) {
        mask = m; router = r; lease = l;
        memcpy(hostname, name, sizeof(hostname));
        state = DONE;
    } else if (state == WAIT_ACK && type == 6) {
        state = NAKED;
    }
    return true;
}

static void fmt_ip(char *out, u32 a)
{
    snprintf(out, 16, "%u.%u.%u.%u", a >> 24, (a >> 16) & 0xFF, (a >> 8) & 0xFF, a & 0xFF);
}

bool dhcp_configure(const u8 *mac)
{
    my_mac = mac;
    state = WAIT_OFFER;
    u64 start = rdtsc(), last = 0;
    bool first = true;
    while (state != DONE && state != NAKED && rdtsc() - start < us_to_tsc(10000000)) {
        if (first || rdtsc() - last > us_to_tsc(1000000)) {
            send_msg(state == WAIT_OFFER ? 1 : 3);
            last = rdtsc();
            first = false;
        }
        net_poll();
    }
    if (state != DONE) {
        check_fail("dhcp", "%s after %u replies", state == NAKED ? "NAK" : "no lease within 10 s", replies);
        return false;
    }
    u32 prefix = 0;
    while (prefix < 32 && (mask & (0x80000000u >> prefix)))
        prefix++;
    if (offered == 0 || router == 0 || (offered & mask) != (router & mask) || prefix == 0) {
        char a[16], g[16];
        fmt_ip(a, offered);
        fmt_ip(g, router);
        check_fail("dhcp", "unusable lease ip=%s/%u router=%s", a, prefix, g);
        return false;
    }
    opt.ip = offered;
    opt.netmask = mask;
    opt.gw = router;
    opt.have_ip = opt.have_gw = true;
    char a[16], g[16], s[16];
    fmt_ip(a, offered);
    fmt_ip(g, router);
    fmt_ip(s, server_id);
    check_ok("dhcp", "ip=%s/%u router=%s server=%s lease=%u hostname=%s", a, prefix, g, s, lease, hostname);
    return true;
}
