#ifndef CKVM_IOEVENTFD_H
#define CKVM_IOEVENTFD_H
#include <stdint.h>
/*
 * KVM_IOEVENTFD on a port: a guest write of `length` bytes to `port` (with
 * `value`, when match is non-zero) signals `eventfd` inside the kernel, with
 * no exit to user space. `assign` 0 removes it. Returns 0 or an errno.
 */
int ckvm_port_ioeventfd(int vmfd, uint16_t port, uint32_t length, int eventfd,
                        int match, uint64_t value, int assign);
unsigned long ckvm_ioeventfd_request(void);
#endif
