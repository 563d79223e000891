#ifndef CVHOSTUSER_H
#define CVHOSTUSER_H
#include <stddef.h>
#include <sys/types.h>

/* recvmsg of up to `len` bytes with up to `maxfds` SCM_RIGHTS descriptors
 * (close-on-exec). Returns the byte count (0 at end of file) or -1 with
 * errno. *nfds receives how many descriptors arrived; *truncated is set
 * when the kernel dropped descriptors (MSG_CTRUNC), which were closed. */
ssize_t cvhost_recv(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int *truncated);

/* sendmsg of `len` bytes with at most one descriptor (fd < 0: none). */
ssize_t cvhost_send(int sock, const void *buf, size_t len, int fd);

/* memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING). */
int cvhost_memfd(const char *name);

/* fcntl(F_GET_SEALS); -1 when the file cannot be sealed. */
int cvhost_seals(int fd);
/* eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK). */
int cvhost_eventfd(void);
#endif
