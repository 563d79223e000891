/*
 * slaac.c: IPv6 stateless autoconfiguration (RFC 4861/4862) on vionet0, for
 * vmd's `local inet6`. Sends a Router Solicitation from the guest's
 * link-local address, checks the Router Advertisement vionet answers with
 * (hop limit 255, link-local source, checksum, a /64 prefix with the A flag),
 * forms the SLAAC address (prefix + modified EUI-64 of the MAC), then pings
 * the advertised DNS server (the host side) over IPv6 through the router,
 * answering the host's neighbour solicitations for that address.
 * Replies are hostile input: every length is checked before it is used.
 */
#include "vmtest.h"

static const u8 *my_mac;
static u8 my_ll[16], my_addr[16], router_ll[16], router_mac[6], prefix[16], dns[16];
static bool have_ra, router_mac_known, echo_answered;
static u32 ra_count, ra_bad;
static u8 ra_flags, pi_flags, pi_len;
static u16 router_lifetime, echo_seq;

static u16 rd16(const u8 *p) { return (u16)((p[0] << 8) | p[1]); }
static void wr16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }

static const u8 all_routers[16] = { 0xff, 0x02, [15] = 2 };

/* The ICMPv6 checksum over the pseudo-header and the message (0: right). */
static u16 icmp6_csum(const u8 *src, const u8 *dst, const u8 *msg, u32 len)
{
    u32 sum = 0;
    for (int i = 0; i < 16; i += 2)
        sum += rd16(src + i) + rd16(dst + i);
    sum += (len >> 16) + (len & 0xFFFF) + 58;
    for (u32 i = 0; i + 1 < len; i += 2)
        sum += rd16(msg + i);
    if (len & 1)
        sum += (u32)msg[len - 1] << 8;
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    return (u16)~sum;
}

/* Sends an ICMPv6 message (msg[2..3] is filled in) with hop limit hl. */
static void send6(const u8 *dmac, const u8 *src, const u8 *dst, u8 hl, u8 *msg, u32 len)
{
    static u8 f[14 + 40 + 128];
    if (len > 128)
        return;
    memcpy(f, dmac, 6);
    memcpy(f + 6, my_mac, 6);
    wr16(f + 12, 0x86DD);
    u8 *ip = f + 14;
    memset(ip, 0, 8);
    ip[0] = 0x60;
    wr16(ip + 4, (u16)len);
    ip[6] = 58;
    ip[7] = hl;
    memcpy(ip + 8, src, 16);
    memcpy(ip + 24, dst, 16);
    msg[2] = msg[3] = 0;
    wr16(msg + 2, icmp6_csum(src, dst, msg, len));
    memcpy(ip + 40, msg, len);
    net_send_frame(f, 14 + 40 + len);
}

static void send_rs(void)
{
    static const u8 dmac[6] = { 0x33, 0x33, 0, 0, 0, 2 };
    u8 m[16] = { 133, 0 };
    m[8] = 1; m[9] = 1;
    memcpy(m + 10, my_mac, 6);
    send6(dmac, my_ll, all_routers, 255, m, sizeof(m));
}

static void send_echo(void)
{
    u8 m[8 + 32] = { 128, 0 };
    wr16(m + 4, 0x766d);
    wr16(m + 6, echo_seq);
    for (int i = 0; i < 32; i++)
        m[8 + i] = (u8)i;
    send6(router_mac, my_addr, dns, 64, m, sizeof(m));
}

/* A Neighbor Advertisement for `target` (one of ours) to `to`. */
static void send_na(const u8 *dmac, const u8 *to, const u8 *target)
{
    u8 m[32] = { 136, 0 };
    m[4] = 0x60;                                 /* solicited, override */
    memcpy(m + 8, target, 16);
    m[24] = 2; m[25] = 1;                        /* target link-layer address */
    memcpy(m + 26, my_mac, 6);
    send6(dmac, target, to, 255, m, sizeof(m));
}

static void parse_ra(const u8 *src, const u8 *m, u32 len)
{
    ra_count++;
    if (len < 16 || m[1] != 0 || (src[0] != 0xfe || (src[1] & 0xC0) != 0x80)) {
        ra_bad++;
        return;
    }
    ra_flags = m[5];
    router_lifetime = rd16(m + 6);
    bool got_prefix = false;
    for (u32 i = 16; i < len;) {
        if (i + 2 > len || m[i + 1] == 0 || (u32)m[i + 1] * 8 > len - i) {
            ra_bad++;
            return;
        }
        const u8 *o = m + i;
        u32 n = (u32)o[1] * 8;
        if (o[0] == 1 && n == 8) {
            memcpy(router_mac, o + 2, 6);
            router_mac_known = true;
        } else if (o[0] == 3 && n == 32 && !got_prefix) {
            pi_len = o[2];
            pi_flags = o[3];
            memcpy(prefix, o + 16, 16);
            got_prefix = true;
        } else if (o[0] == 25 && n >= 24) {
            memcpy(dns, o + 8, 16);
        }
        i += n;
    }
    if (!got_prefix) {
        ra_bad++;
        return;
    }
    memcpy(router_ll, src, 16);
    have_ra = true;
}

bool slaac_rx(const u8 *f, u32 len)
{
    if (len < 14 + 40 + 4 || rd16(f + 12) != 0x86DD)
        return false;
    const u8 *ip = f + 14;
    u32 plen = rd16(ip + 4);
    if ((ip[0] >> 4) != 6 || ip[6] != 58 || plen < 4 || plen > len - 14 - 40)
        return true;                 /* IPv6, not ICMPv6 (or cut): consumed */
    const u8 *src = ip + 8, *dst = ip + 24, *m = ip + 40;
    if (icmp6_csum(src, dst, m, plen) != 0)
        return true;
    if (m[0] == 134) {
        if (ip[7] == 255)
            parse_ra(src, m, plen);
        else
            ra_bad++;
    } else if (m[0] == 135 && plen >= 24 && ip[7] == 255) {
        /* A neighbour solicitation for one of our addresses. */
        const u8 *target = m + 8;
        bool unspecified = true;
        for (int i = 0; i < 16; i++)
            unspecified &= src[i] == 0;
        if (!unspecified && (memcmp(target, my_ll, 16) == 0 || (have_ra && memcmp(target, my_addr, 16) == 0)))
            send_na(f + 6, src, target);
    } else if (m[0] == 129 && plen >= 8 && rd16(m + 4) == 0x766d && rd16(m + 6) == echo_seq &&
               memcmp(src, dns, 16) == 0 && memcmp(dst, my_addr, 16) == 0) {
        echo_answered = true;
    }
    return true;
}

static void fmt6(char *out, const u8 *a)
{
    int n = 0;
    for (int i = 0; i < 16; i += 2)
        n += snprintf(out + n, 6, "%x%s", rd16(a + i), i < 14 ? ":" : "");
}

bool slaac_configure(const u8 *mac)
{
    my_mac = mac;
    u8 eui[8] = { (u8)(mac[0] ^ 2), mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5] };
    memset(my_ll, 0, 16);
    my_ll[0] = 0xfe; my_ll[1] = 0x80;
    memcpy(my_ll + 8, eui, 8);
    u64 start = rdtsc(), last = 0;
    bool first = true;
    while (!have_ra && rdtsc() - start < us_to_tsc(10000000)) {
        if (first || rdtsc() - last > us_to_tsc(1000000)) {
            send_rs();
            last = rdtsc();
            first = false;
        }
        net_poll();
    }
    if (!have_ra) {
        check_fail("slaac", "no router advertisement within 10 s (%u seen, %u bad)", ra_count, ra_bad);
        return false;
    }
    char p[40], r[40], d[40];
    fmt6(p, prefix);
    fmt6(r, router_ll);
    fmt6(d, dns);
    if (pi_len != 64 || !(pi_flags & 0x40) || router_lifetime == 0 || !router_mac_known) {
        check_fail("slaac", "unusable advertisement prefix=%s/%u flags=0x%x lifetime=%u", p, pi_len, pi_flags,
                   router_lifetime);
        return false;
    }
    memcpy(my_addr, prefix, 8);
    memcpy(my_addr + 8, eui, 8);
    char a[40];
    fmt6(a, my_addr);
    /* Ping the DNS server the RA names (the host side) through the router. */
    for (int attempt = 0; attempt < 5 && !echo_answered; attempt++) {
        echo_seq++;
        u64 t0 = rdtsc();
        send_echo();
        while (!echo_answered && rdtsc() - t0 < us_to_tsc(1000000))
            net_poll();
    }
    if (!echo_answered) {
        check_fail("slaac", "addr=%s/64 router=%s: no ICMPv6 echo reply from %s (5 tries)", a, r, d);
        return false;
    }
    check_ok("slaac", "addr=%s/64 prefix=%s/%u flags=0x%x router=%s lifetime=%u rdnss=%s ping6 ok",
             a, p, pi_len, pi_flags, r, router_lifetime, d);
    return true;
}
