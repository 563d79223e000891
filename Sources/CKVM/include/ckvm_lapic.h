#ifndef CKVM_LAPIC_H
#define CKVM_LAPIC_H
/*
 * The local APIC's legacy interrupt pins. Without a BIOS nobody programs
 * them, and KVM resets every LVT entry masked: the 8259's output (LINT0)
 * would never reach the CPU. Like Firecracker's set_lint(): LINT0 = ExtINT
 * (virtual wire mode for the PIC), LINT1 = NMI, and the APIC software-
 * enabled (SPIV 0x1FF). Returns 0 or an errno.
 */
int ckvm_set_virtual_wire(int vcpufd);
#endif
