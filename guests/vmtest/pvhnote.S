/*
 * pvhnote.S: the PVH note (Xen's XEN_ELFNOTE_PHYS32_ENTRY = 18), linked into
 * build/vmtest-pvh.elf only. QEMU (-M microvm, -M pc) and our VMM enter at
 * pvh_start (boot.S) in 32-bit protected mode with EBX = hvm_start_info, which
 * pvh.c reads. vmtest-pvh.elf has no Multiboot header: QEMU tries Multiboot
 * before PVH. build/vmtest.elf stays Multiboot-only, so the tests that boot it
 * keep covering the Multiboot loader.
 */
    .section .note.pvh, "a", @note
    .align 4
    .long 4                         /* namesz: "Xen\0" */
    .long 4                         /* descsz: a 32-bit physical address */
    .long 18
    .asciz "Xen"
    .long pvh_start
    .section .note.GNU-stack, "", @progbits
