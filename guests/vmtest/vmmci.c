/*
 * vmmci.c: OpenBSD's VMM control interface (PCI 0x0b5d:0x0777), a legacy virtio 0.9
 * device in an I/O BAR: host features 0x00, guest features 0x04, status 0x12,
 * ISR 0x13, device config from 0x14 (command u32 at +0, host time sec u64 at +4,
 * usec u64 at +12). The host writes a command and raises a config-change interrupt
 * (ISR bit 1); the guest acknowledges by writing the command back (feature ACK).
 */
#include "vmtest.h"

#define L_HOST_FEATURES 0x00
#define L_GUEST_FEATURES 0x04
#define L_STATUS 0x12
#define L_ISR 0x13
#define L_CONFIG 0x14

#define VMMCI_F_TIMESYNC 1u
#define VMMCI_F_ACK 2u
#define VMMCI_F_SYNCRTC 4u

#define CMD_NONE 0
#define CMD_SHUTDOWN 1
#define CMD_REBOOT 2
#define CMD_SYNCRTC 3

static struct vdev vmmci;
static bool present;
static u32 last_cmd;

bool vmmci_present(void) { return present; }

static u16 port(u16 off) { return (u16)(vmmci.legacy_port + off); }

void vmmci_check(struct pci_dev *p)
{
    vmmci.name = "vmmci0";
    vmmci.pci = p;
    vmmci.legacy = true;
    vmmci.irq = (p->irq_line > 0 && p->irq_line < 16 && p->irq_line != 2) ? p->irq_line : -1;
    pci_setup_bars(p);
    pci_enable(p);
    if (!p->bar[0].present || !p->bar[0].io || p->bar[0].size < L_CONFIG + 12) {
        check_fail("vmmci", "vmmci0: BAR0 is not an I/O window of at least %u ports", L_CONFIG + 12);
        return;
    }
    vmmci.legacy_port = (u16)p->bar[0].base;
    outb(port(L_STATUS), 0);
    outb(port(L_STATUS), 1 | 2);               /* ACK, DRIVER */
    u32 host = inl(port(L_HOST_FEATURES));
    u32 guest = host & (VMMCI_F_TIMESYNC | VMMCI_F_ACK | VMMCI_F_SYNCRTC);
    outl(port(L_GUEST_FEATURES), guest);
    outb(port(L_STATUS), 1 | 2 | 4);           /* DRIVER_OK (0.9 has no FEATURES_OK) */
    vmmci.features = guest;
    last_cmd = inl(port(L_CONFIG));
    u64 sec = inl(port(L_CONFIG + 4)) | ((u64)inl(port(L_CONFIG + 8)) << 32);
    irq_register(&vmmci);
    present = true;
    check_ok("vmmci", "features=0x%x irq=%d host_time=%lu command=%u", guest, vmmci.irq, sec, last_cmd);
}

/* With `stay`: acts on commands until SHUTDOWN or REBOOT arrives. */
void vmmci_wait(void)
{
    for (;;) {
        irq_service();
        u8 isr = vmmci.isr_pending;
        vmmci.isr_pending = 0;
        if (vmmci.irq < 0 || !isr)
            isr |= inb(port(L_ISR));           /* no line: poll (reading also clears) */
        u32 cmd = inl(port(L_CONFIG));
        if (!(isr & 2) && cmd == last_cmd) {
            udelay(1000);
            continue;
        }
        last_cmd = cmd;
        if (cmd != CMD_NONE && (vmmci.features & VMMCI_F_ACK))
            outl(port(L_CONFIG), cmd);
        switch (cmd) {
        case CMD_SHUTDOWN:
            printf("vmtest: vmmci shutdown requested, powering off\n");
            power_off();
        case CMD_REBOOT:
            printf("vmtest: vmmci reboot requested, resetting\n");
            reboot();
        case CMD_SYNCRTC:
            printf("vmtest: vmmci syncrtc requested\n");
            break;
        case CMD_NONE:
            break;
        default:
            printf("vmtest: vmmci unknown command %u ignored\n", cmd);
        }
    }
}
