/*
 * regloop.c: the `regloop` mode. After the checks, read one register of
 * the virtio block device forever (device_status in the common
 * configuration): every read is a round trip to the device process, so a
 * stopped device process leaves this vCPU waiting inside the VMM. The
 * tests stop the device process and check the VMM still stops the VM.
 * Our VMM's layout only: the common configuration at offset 0 of an I/O
 * BAR 0.
 */
#include "vmtest.h"

#define COMMON_DEVICE_STATUS 0x14

void regloop(const struct pci_dev *blk)
{
    if (!blk || !blk->bar[0].present || !blk->bar[0].io) {
        printf("vmtest: regloop skip: no virtio block device with an I/O BAR 0\n");
        return;
    }
    u16 port = (u16)(blk->bar[0].base + COMMON_DEVICE_STATUS);
    printf("vmtest: regloop: reading port 0x%x in a loop\n", port);
    for (u64 n = 1;; n++) {
        u8 status = inb(port);
        if ((n & 0x3fff) == 0)
            printf("vmtest: regloop: %lu reads, status 0x%x\n", n, status);
    }
}
