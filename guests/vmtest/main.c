/*
 * main.c: the CPL3 part of vmtest starts here (boot.S iretq's to vmtest_main).
 * Reads the Multiboot information, runs each check once, prints the summary,
 * then powers off, or with `stay` waits for a vmmci request.
 */
#include "vmtest.h"

extern u8 __bss_start[], __bss_end[], __image_end[];
extern u32 boot_magic, boot_info;
extern u64 boot_tsc;

struct options opt;
u32 passed, failed;               /* cpu_fault reports them too */
static char cmdline[1024];

/* ---- results ---- */
static void result(const char *check, const char *verdict, const char *fmt, va_list ap)
{
    char detail[384];
    vsnprintf(detail, sizeof(detail), fmt, ap);
    printf("vmtest: %s %s%s%s\n", check, verdict, detail[0] ? " " : "", detail);
}
void check_ok(const char *check, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    result(check, "ok", fmt, ap);
    va_end(ap);
    passed++;
}
void check_fail(const char *check, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    result(check, "FAIL", fmt, ap);
    va_end(ap);
    failed++;
}
void check_skip(const char *check, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    result(check, "skip", fmt, ap);
    va_end(ap);
}

/* ---- power: PM1a control (QEMU -M pc and our VMM), then the Bochs/old QEMU port ---- */
void power_off(void)
{
    outw(0x604, 0x2000);
    outw(0xB004, 0x2000);
    for (;;)
        cpu_relax();
}
void reboot(void)
{
    outb(0x64, 0xFE);          /* i8042: pulse the reset line */
    for (;;)
        cpu_relax();
}

/*
 * ---- command line: "ip=A.B.C.D/len gw=E.F.G.H stay reboot bench bench_scale=N"
 *      plus two switches that exercise fallback paths under QEMU:
 *      "cpus_from=mptable" and "pci_reassign" ----
 */
static bool parse_ipv4(const char *s, const char **end, u32 *out)
{
    u32 v = 0;
    for (int part = 0; part < 4; part++) {
        if (*s < '0' || *s > '9')
            return false;
        u32 n = 0;
        for (int digits = 0; *s >= '0' && *s <= '9'; s++, digits++) {
            if (digits == 3)
                return false;
            n = n * 10 + (u32)(*s - '0');
        }
        if (n > 255)
            return false;
        v = v << 8 | n;
        if (part < 3 && *s++ != '.')
            return false;
    }
    *out = v;
    *end = s;
    return true;
}

static bool word_is(const char *w, size_t len, const char *name)
{
    return strlen(name) == len && memcmp(w, name, len) == 0;
}

static void parse_options(const char *s)
{
    opt.bench_scale = 100;
    while (*s) {
        while (*s == ' ')
            s++;
        const char *w = s;
        while (*s && *s != ' ')
            s++;
        size_t len = (size_t)(s - w);
        const char *end;
        if (len > 3 && memcmp(w, "ip=", 3) == 0 && parse_ipv4(w + 3, &end, &opt.ip)) {
            u32 prefix = 24;
            if (*end == '/') {
                prefix = 0;
                for (end++; *end >= '0' && *end <= '9' && prefix <= 32; end++)
                    prefix = prefix * 10 + (u32)(*end - '0');
            }
            if (prefix >= 1 && prefix <= 30) {
                opt.netmask = ~0u << (32 - prefix);
                opt.have_ip = true;
            }
        } else if (len > 3 && memcmp(w, "gw=", 3) == 0 && parse_ipv4(w + 3, &end, &opt.gw)) {
            opt.have_gw = true;
        } else if (word_is(w, len, "stay")) {
            opt.stay = true;
        } else if (word_is(w, len, "no_cpu_tables")) {
            opt.no_cpu_tables = true;
        } else if (word_is(w, len, "reboot")) {
            opt.reboot = true;
        } else if (word_is(w, len, "bench")) {
            opt.bench = true;
        } else if (word_is(w, len, "cpus_from=mptable")) {
            opt.cpus_mptable_only = true;
        } else if (word_is(w, len, "hostile")) {
            opt.hostile = true;
        } else if (word_is(w, len, "pci_reassign")) {
            opt.pci_reassign = true;
        } else if (len > 8 && memcmp(w, "devloop=", 8) == 0) {
            u32 v = 0;
            for (const char *p = w + 8; p < s && *p >= '0' && *p <= '9' && v < 100000; p++)
                v = v * 10 + (u32)(*p - '0');
            opt.devloop = v <= 3600 ? v : 3600;
        } else if (len > 12 && memcmp(w, "scsi_verify=", 12) == 0) {
            u32 v = 0;
            for (const char *p = w + 12; p < s && *p >= '0' && *p <= '9' && v < 100000; p++)
                v = v * 10 + (u32)(*p - '0');
            opt.scsi_verify = v <= 3600 ? v : 3600;
        } else if (len > 11 && memcmp(w, "blk_verify=", 11) == 0) {
            u32 v = 0;
            for (const char *p = w + 11; p < s && *p >= '0' && *p <= '9' && v < 100000; p++)
                v = v * 10 + (u32)(*p - '0');
            opt.blk_verify = v <= 3600 ? v : 3600;
        } else if (len > 12 && memcmp(w, "kick_stress=", 12) == 0) {
            u32 v = 0;
            for (const char *p = w + 12; p < s && *p >= '0' && *p <= '9' && v < 100000; p++)
                v = v * 10 + (u32)(*p - '0');
            opt.kick_stress = v <= 10000 ? v : 10000;
        } else if (word_is(w, len, "dhcp")) {
            opt.dhcp = true;
        } else if (word_is(w, len, "slaac")) {
            opt.slaac = true;
        } else if (word_is(w, len, "bench_rx")) {
            opt.bench_rx = 1;
        } else if (len == 10 && memcmp(w, "bench_rx=", 9) == 0 && w[9] >= '1' && w[9] <= '9') {
            opt.bench_rx = (u32)(w[9] - '0');
        } else if (len == 11 && memcmp(w, "blk_index=", 10) == 0 && w[10] >= '0' && w[10] <= '9') {
            opt.blk_index = (u32)(w[10] - '0');
        } else if (word_is(w, len, "reboot=acpi")) {
            opt.reboot = opt.reboot_acpi = true;
        } else if (word_is(w, len, "novmmci")) {
            opt.novmmci = true;
        } else if (word_is(w, len, "regloop")) {
            opt.regloop = true;
        } else if (word_is(w, len, "blkread")) {
            opt.blkread = true;
        } else if (word_is(w, len, "blkfill")) {
            opt.blkfill = true;
        } else if (len > 12 && memcmp(w, "bench_scale=", 12) == 0) {
            u32 v = 0;
            for (const char *p = w + 12; p < s && *p >= '0' && *p <= '9' && v < 100000; p++)
                v = v * 10 + (u32)(*p - '0');
            if (v >= 1 && v <= 10000)
                opt.bench_scale = v;
        }
    }
}

/* ---- Multiboot information: memory and command line ---- */
static u64 read_multiboot(void)
{
    if (boot_magic != 0x2BADB002 || boot_info == 0)
        return 0;
    const u8 *mbi = (const u8 *)(uintptr_t)boot_info;
    u32 flags = *(const u32 *)mbi;
    u64 mem_kib = 0;
    if (flags & (1u << 2)) {
        u32 at = *(const u32 *)(mbi + 16);
        const char *c = at && at < 0xFFFF0000u ? (const char *)(uintptr_t)at : NULL;
        size_t i = 0;
        for (; c && i + 1 < sizeof(cmdline) && c[i]; i++)
            cmdline[i] = (c[i] >= 0x20 && c[i] < 0x7f) ? c[i] : ' ';
        cmdline[i] = 0;
    }
    if (flags & (1u << 6)) {
        u32 len = *(const u32 *)(mbi + 44), addr = *(const u32 *)(mbi + 48);
        for (u32 off = 0; len <= 65536 && addr < 0xFFFE0000u && off + 24 <= len;) {
            const u8 *e = (const u8 *)(uintptr_t)addr + off;
            u32 size = *(const u32 *)e;
            u64 elen = *(const u64 *)(e + 12);
            if (*(const u32 *)(e + 20) == 1 && elen < (1ull << 50))
                mem_kib += elen / 1024;
            if (size < 20)
                break;
            off += size + 4;
        }
    }
    if (mem_kib == 0 && (flags & 1))
        mem_kib = *(const u32 *)(mbi + 4) + (u64)*(const u32 *)(mbi + 8);
    return mem_kib;
}

#define MAX_PCI 32

void vmtest_main(void)
{
    idt_fill();
    memset(__bss_start, 0, (size_t)(__bss_end - __bss_start));
    uart_init();
    printf("vmtest: serial ok com1\n");
    u64 console_tsc = rdtsc();         /* the first console line is out */
    passed++;

    u64 mem_kib = boot_magic == PVH_START_MAGIC ? read_pvh(cmdline, sizeof(cmdline)) : read_multiboot();
    parse_options(cmdline);
    bool calibrated = tsc_calibrate();
    if (mem_kib == 0)
        check_fail("boot", "no Multiboot memory information (magic 0x%x)", boot_magic);
    else
        check_ok("boot", "mem=%luK entry_to_console_us=%lu tsc_mhz=%lu%s tsc_cal_err_ppm=%lu image_end=0x%lx",
                 mem_kib, tsc_to_us(console_tsc - boot_tsc), tsc_hz / 1000000,
                 calibrated ? "" : "(uncalibrated: no PIT)", tsc_cal_err_ppm, (u64)(uintptr_t)__image_end);
    printf("vmtest: cmdline \"%s\"\n", cmdline);
    pic_init();

    static struct pci_dev devs[MAX_PCI];
    int n = pci_scan(devs, MAX_PCI);
    if (opt.pci_reassign)
        for (int i = 0; i < n; i++)
            if (devs[i].vendor == 0x1af4 || devs[i].vendor == 0x0b5d)
                pci_clear_bars(&devs[i]);
    pci_pool_init(devs, n);
    int n_pci = n;
    n += mmio_scan(cmdline, devs + n, MAX_PCI - n);
    struct pci_dev *blk = NULL, *rng = NULL, *net = NULL, *vmmci = NULL, *scsi = NULL;
    u32 blk_seen = 0;
    for (int i = 0; i < n; i++) {
        struct pci_dev *d = &devs[i];
        if (d->vendor == 0x0b5d && d->device == 0x0777) {
            if (!vmmci) vmmci = d;
            continue;
        }
        if (d->vendor != 0x1af4)
            continue;
        /* 0x1040 + id (virtio 1.x) or 0x1000..0x103f transitional (id in the subsystem) */
        u16 id = d->device >= 0x1040 ? (u16)(d->device - 0x1040) : d->subsys_device;
        if (id == 2 && !blk && blk_seen++ == opt.blk_index) blk = d;
        else if (id == 4 && !rng) rng = d;
        else if (id == 1 && !net) net = d;
        else if (id == 8 && !scsi) scsi = d;
    }
    printf("vmtest: pci devices=%d mmio devices=%d blk=%s rng=%s net=%s vmmci=%s\n", n_pci, n - n_pci,
           blk ? "yes" : "no", rng ? "yes" : "no", net ? "yes" : "no", vmmci ? "yes" : "no");

    cpus_check();
    rtc_check();
    acpi_check();
    if (vmmci && !opt.novmmci) vmmci_check(vmmci); else check_skip("vmmci", vmmci ? "left alone (novmmci)" : "no device");
    if (rng) rng_check(rng); else check_skip("rng", "no device");
    if (blk) blk_check(blk); else check_skip("blk", "no device");
    if (net) net_check(net); else check_skip("net", "no device");
    if (scsi) scsi_check(scsi); else check_skip("scsi", "no device");

    if (opt.bench) {
        blk_bench();
        net_bench();
    }
    for (u32 r = 0; r < opt.kick_stress; r++) {
        blk_qd1_bench();
        net_bench();
    }
    if (opt.kick_stress)
        printf("vmtest stress: rounds=%u\n", opt.kick_stress);
    if (opt.blkread)
        blk_read_bench();
    if (opt.bench)
        irq_bench(blk, net);
    /* The restart modes (blk_verify, devloop, regloop, blkfill) run while a
       test kills device processes and use vioblk0 as the checks left it; the
       MSI-X check resets vioblk0 and times its interrupts, so it is left
       out of them. */
    if (opt.blk_verify)
        blk_verify_run(opt.blk_verify);
    if (opt.devloop)
        devloop_run(opt.devloop);
    if (opt.scsi_verify)
        scsi_verify_run(opt.scsi_verify);
    if (!opt.regloop && !opt.blk_verify && !opt.blkfill && !opt.devloop && !opt.scsi_verify && !(blk && blk->mmio_base))
        msix_check(blk);
    if (opt.hostile && blk && blk->mmio_base)
        hostile_mmio_run(blk);
    else if (opt.hostile)
        hostile_run(blk, devs, n_pci);
    printf("vmtest: checks took %lu ms since entry\n", tsc_to_us(rdtsc() - boot_tsc) / 1000);
    printf("vmtest summary: passed=%u failed=%u\n", passed, failed);
    if (opt.regloop)
        regloop(blk);
    if (opt.blkfill)
        blk_fill_forever();
    if (opt.reboot_acpi && !acpi_reset())
        printf("vmtest: reboot=acpi: no ACPI reset register\n");
    if (opt.reboot) {
        printf("vmtest: reboot: resetting through the i8042\n");
        reboot();
    }
    if (opt.stay) {
        /* A guest with a vmmci driver takes its requests; the power button is for the others. */
        printf("vmtest: stay: waiting for a vmmci request or the ACPI power button\n");
        if (vmmci_present())
            vmmci_wait();
        for (;;) {
            acpi_poll();
            udelay(1000);
        }
    }
    power_off();
}
