#include "ckvm_ioeventfd.h"

#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

int ckvm_port_ioeventfd(int vmfd, uint16_t port, uint32_t length, int eventfd,
                        int match, uint64_t value, int assign)
{
	struct kvm_ioeventfd io;
	memset(&io, 0, sizeof(io));
	io.addr = port;
	io.len = length;
	io.fd = eventfd;
	io.datamatch = value;
	io.flags = KVM_IOEVENTFD_FLAG_PIO | (match ? KVM_IOEVENTFD_FLAG_DATAMATCH : 0) |
	    (assign ? 0 : KVM_IOEVENTFD_FLAG_DEASSIGN);
	if (ioctl(vmfd, KVM_IOEVENTFD, &io) == -1)
		return errno;
	return 0;
}

unsigned long ckvm_ioeventfd_request(void) { return KVM_IOEVENTFD; }
