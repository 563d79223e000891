// Asynchronous block I/O for vioblk and the vhost-user blk backend: an
// io_uring (liburing) restricted to READV/WRITEV/FSYNC, or, where io_uring
// is unavailable, a bounded pool of threads doing preadv/pwritev/fdatasync.
// Either way completions are collected on one eventfd the caller's event
// loop watches. Single-threaded use by the caller (its event loop thread).
#ifndef CVMD_AIO_H
#define CVMD_AIO_H
#include <stdint.h>
#include <stddef.h>
#include <sys/uio.h>

enum { CVMD_AIO_URING = 1, CVMD_AIO_THREADS = 2 };
enum { CVMD_AIO_MAX_IOV = 256 };

typedef struct cvmd_aio cvmd_aio;

typedef struct {
	uint64_t tag;
	int64_t result;   // bytes, or -errno
} cvmd_aio_completion;

// `depth`: operations in flight at most. `mode`: 0 any (io_uring first),
// CVMD_AIO_URING or CVMD_AIO_THREADS only. On failure returns NULL and
// describes why in `why`. When io_uring was refused, `why` says why too
// (the caller logs it) and the thread pool is returned.
cvmd_aio *cvmd_aio_open(unsigned depth, int mode, char *why, size_t whylen);
void cvmd_aio_close(cvmd_aio *aio);
int cvmd_aio_kind(const cvmd_aio *aio);
int cvmd_aio_eventfd(const cvmd_aio *aio);
unsigned cvmd_aio_inflight(const cvmd_aio *aio);
unsigned cvmd_aio_depth(const cvmd_aio *aio);
// The io_uring's own descriptor (-1 for the thread pool): it and the
// eventfd must survive a process's clean-up of inherited descriptors.
int cvmd_aio_ring_fd(const cvmd_aio *aio);

// Queue one operation (the iovec array is copied). Returns 0, -EAGAIN when
// `depth` operations are in flight, or -EINVAL.
int cvmd_aio_readv(cvmd_aio *aio, int fd, const struct iovec *iov, int iovcnt, uint64_t offset, uint64_t tag);
int cvmd_aio_writev(cvmd_aio *aio, int fd, const struct iovec *iov, int iovcnt, uint64_t offset, uint64_t tag);
int cvmd_aio_fdatasync(cvmd_aio *aio, int fd, uint64_t tag);
// A write done here and now if the kernel can do it without blocking
// (pwritev2 with RWF_NOWAIT: into the page cache, no dirty throttling).
// Returns the bytes written, or -errno (-EAGAIN: it would block; queue it).
int64_t cvmd_aio_write_nowait(int fd, const struct iovec *iov, int iovcnt, uint64_t offset);
// Hand queued operations to the kernel (io_uring) or the workers.
int cvmd_aio_submit(cvmd_aio *aio);
// Up to `max` completions; with `wait`, blocks until at least one (if any
// are in flight). Returns the count or -errno.
int cvmd_aio_reap(cvmd_aio *aio, cvmd_aio_completion *out, int max, int wait);

#endif
