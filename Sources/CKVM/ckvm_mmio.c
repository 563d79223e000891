#include "ckvm_mmio.h"

#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

int ckvm_mmio_ioeventfd(int vmfd, uint64_t address, uint32_t length, int eventfd,
                        int match, uint64_t value, int assign)
{
	struct kvm_ioeventfd io;
	memset(&io, 0, sizeof(io));
	io.addr = address;
	io.len = length;
	io.fd = eventfd;
	io.datamatch = value;
	io.flags = (match ? KVM_IOEVENTFD_FLAG_DATAMATCH : 0) | (assign ? 0 : KVM_IOEVENTFD_FLAG_DEASSIGN);
	if (ioctl(vmfd, KVM_IOEVENTFD, &io) == -1)
		return errno;
	return 0;
}
