// See cvmd_aio.h. The io_uring is created disabled, told which operations
// it may carry (IORING_REGISTER_RESTRICTIONS: READV, WRITEV, FSYNC, no SQE
// flags, no further registration), then enabled: a compromised process
// cannot use it to open, connect or read anything it has no descriptor for.
#define _GNU_SOURCE
#include "cvmd_aio.h"
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

enum { OP_READ = 1, OP_WRITE = 2, OP_SYNC = 3 };
enum { POOL_THREADS = 4 };

struct slot {
	int op, fd, iovcnt, next;
	uint64_t offset, tag;
	int64_t result;
	struct iovec iov[CVMD_AIO_MAX_IOV];
};

struct cvmd_aio {
	int kind, efd;
	unsigned depth, inflight;
	struct slot *slots;
	int free_head;
	// io_uring: slots queued since the last submission, and slots done here
	// (a submission the kernel refused is carried out synchronously)
	struct io_uring ring;
	unsigned queued;
	int *unsubmitted;
	int local_done;
	// thread pool: slots waiting (FIFO) and done (LIFO), under `lock`
	pthread_mutex_t lock;
	pthread_cond_t work;
	int wait_head, wait_tail, done_head;
	int to_hand;          // queued since the last submit (thread mode)
	int staged_head, staged_tail;
	int stopping, threads;
	pthread_t tid[POOL_THREADS];
};

int cvmd_aio_submit(cvmd_aio *a);

static int take_slot(cvmd_aio *a) {
	int i = a->free_head;
	if (i < 0) return -1;
	a->free_head = a->slots[i].next;
	a->slots[i].next = -1;
	return i;
}

static void put_slot(cvmd_aio *a, int i) {
	a->slots[i].next = a->free_head;
	a->free_head = i;
}

static int64_t perform(struct slot *s) {
	ssize_t n;
	for (;;) {
		switch (s->op) {
		case OP_READ: n = preadv(s->fd, s->iov, s->iovcnt, (off_t)s->offset); break;
		case OP_WRITE: n = pwritev(s->fd, s->iov, s->iovcnt, (off_t)s->offset); break;
		default: n = fdatasync(s->fd); break;
		}
		if (n >= 0) return n;
		if (errno != EINTR) return -errno;
	}
}

static void *worker(void *arg) {
	cvmd_aio *a = arg;
	pthread_mutex_lock(&a->lock);
	for (;;) {
		while (a->wait_head < 0 && !a->stopping) pthread_cond_wait(&a->work, &a->lock);
		if (a->stopping) break;
		int i = a->wait_head;
		a->wait_head = a->slots[i].next;
		if (a->wait_head < 0) a->wait_tail = -1;
		pthread_mutex_unlock(&a->lock);
		int64_t r = perform(&a->slots[i]);
		pthread_mutex_lock(&a->lock);
		a->slots[i].result = r;
		a->slots[i].next = a->done_head;
		a->done_head = i;
		uint64_t one = 1;
		(void)!write(a->efd, &one, sizeof one);
	}
	pthread_mutex_unlock(&a->lock);
	return NULL;
}

// Debian's liburing 2.3 does not export these two: the system call itself.
static int ring_register(struct io_uring *ring, unsigned op, const void *arg, unsigned n) {
	long r = syscall(__NR_io_uring_register, ring->ring_fd, op, arg, n);
	return r < 0 ? -errno : (int)r;
}

static int open_uring(cvmd_aio *a, char *why, size_t whylen) {
	struct io_uring_params p;
	memset(&p, 0, sizeof p);
	p.flags = IORING_SETUP_R_DISABLED;
	unsigned entries = 1;
	while (entries < a->depth) entries <<= 1;
	int r = io_uring_queue_init_params(entries, &a->ring, &p);
	if (r < 0) {
		snprintf(why, whylen, "io_uring_setup: %s", strerror(-r));
		return r;
	}
	struct io_uring_restriction res[3];
	memset(res, 0, sizeof res);
	res[0].opcode = IORING_RESTRICTION_SQE_OP; res[0].sqe_op = IORING_OP_READV;
	res[1].opcode = IORING_RESTRICTION_SQE_OP; res[1].sqe_op = IORING_OP_WRITEV;
	res[2].opcode = IORING_RESTRICTION_SQE_OP; res[2].sqe_op = IORING_OP_FSYNC;
	const char *step = "IORING_REGISTER_EVENTFD";
	r = io_uring_register_eventfd(&a->ring, a->efd);
	if (r >= 0) { step = "IORING_REGISTER_RESTRICTIONS"; r = ring_register(&a->ring, IORING_REGISTER_RESTRICTIONS, res, 3); }
	if (r >= 0) { step = "IORING_REGISTER_ENABLE_RINGS"; r = ring_register(&a->ring, IORING_REGISTER_ENABLE_RINGS, NULL, 0); }
	if (r < 0) {
		snprintf(why, whylen, "%s: %s", step, strerror(-r));
		io_uring_queue_exit(&a->ring);
		return r;
	}
	a->kind = CVMD_AIO_URING;
	return 0;
}

static int open_threads(cvmd_aio *a, char *why, size_t whylen) {
	pthread_mutex_init(&a->lock, NULL);
	pthread_cond_init(&a->work, NULL);
	a->wait_head = a->wait_tail = a->done_head = -1;
	a->staged_head = a->staged_tail = -1;
	for (int t = 0; t < POOL_THREADS; t++) {
		int r = pthread_create(&a->tid[t], NULL, worker, a);
		if (r != 0) {
			snprintf(why, whylen, "pthread_create: %s", strerror(r));
			break;
		}
		a->threads++;
	}
	if (a->threads == 0) return -EAGAIN;
	a->kind = CVMD_AIO_THREADS;
	return 0;
}

cvmd_aio *cvmd_aio_open(unsigned depth, int mode, char *why, size_t whylen) {
	if (whylen) why[0] = 0;
	if (depth == 0 || depth > 4096) { snprintf(why, whylen, "depth %u", depth); return NULL; }
	cvmd_aio *a = calloc(1, sizeof *a);
	if (!a) { snprintf(why, whylen, "out of memory"); return NULL; }
	a->depth = depth;
	a->slots = calloc(depth, sizeof *a->slots);
	a->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (!a->slots || a->efd < 0) {
		snprintf(why, whylen, "%s", a->slots ? "eventfd failed" : "out of memory");
		if (a->efd >= 0) close(a->efd);
		free(a->slots); free(a);
		return NULL;
	}
	a->free_head = -1;
	a->local_done = -1;
	a->unsubmitted = calloc(depth, sizeof *a->unsubmitted);
	if (!a->unsubmitted) { close(a->efd); free(a->slots); free(a); snprintf(why, whylen, "out of memory"); return NULL; }
	for (int i = (int)depth - 1; i >= 0; i--) put_slot(a, i);
	int r = -ENOSYS;
	if (mode != CVMD_AIO_THREADS) r = open_uring(a, why, whylen);
	if (r < 0 && mode != CVMD_AIO_URING) {
		char threadwhy[128] = "";
		r = open_threads(a, threadwhy, sizeof threadwhy);
		if (r < 0) snprintf(why, whylen, "%s", threadwhy);
	}
	if (r < 0) {
		close(a->efd);
		free(a->unsubmitted); free(a->slots); free(a);
		return NULL;
	}
	return a;
}

void cvmd_aio_close(cvmd_aio *a) {
	if (!a) return;
	if (a->kind == CVMD_AIO_URING) {
		io_uring_queue_exit(&a->ring);
	} else {
		pthread_mutex_lock(&a->lock);
		a->stopping = 1;
		pthread_cond_broadcast(&a->work);
		pthread_mutex_unlock(&a->lock);
		for (int t = 0; t < a->threads; t++) pthread_join(a->tid[t], NULL);
	}
	close(a->efd);
	free(a->unsubmitted);
	free(a->slots);
	free(a);
}

int cvmd_aio_ring_fd(const cvmd_aio *a) { return a->kind == CVMD_AIO_URING ? a->ring.ring_fd : -1; }

int cvmd_aio_kind(const cvmd_aio *a) { return a->kind; }
int cvmd_aio_eventfd(const cvmd_aio *a) { return a->efd; }
unsigned cvmd_aio_inflight(const cvmd_aio *a) { return a->inflight; }
unsigned cvmd_aio_depth(const cvmd_aio *a) { return a->depth; }

static int queue_op(cvmd_aio *a, int op, int fd, const struct iovec *iov, int iovcnt, uint64_t offset, uint64_t tag) {
	if (fd < 0 || iovcnt < 0 || iovcnt > CVMD_AIO_MAX_IOV || (op != OP_SYNC && iovcnt == 0)) return -EINVAL;
	if (offset > (uint64_t)INT64_MAX) return -EINVAL;
	int i = take_slot(a);
	if (i < 0) return -EAGAIN;
	struct slot *s = &a->slots[i];
	s->op = op; s->fd = fd; s->iovcnt = iovcnt; s->offset = offset; s->tag = tag; s->result = 0;
	if (iovcnt) memcpy(s->iov, iov, (size_t)iovcnt * sizeof *iov);
	if (a->kind == CVMD_AIO_URING) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&a->ring);
		if (!sqe) {
			cvmd_aio_submit(a);
			sqe = io_uring_get_sqe(&a->ring);
		}
		if (!sqe) { put_slot(a, i); return -EAGAIN; }
		if (op == OP_READ) io_uring_prep_readv(sqe, fd, s->iov, (unsigned)iovcnt, offset);
		else if (op == OP_WRITE) io_uring_prep_writev(sqe, fd, s->iov, (unsigned)iovcnt, offset);
		else io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
		io_uring_sqe_set_data64(sqe, (uint64_t)i);
		a->unsubmitted[a->queued++] = i;
	} else {
		s->next = -1;
		if (a->staged_tail >= 0) a->slots[a->staged_tail].next = i; else a->staged_head = i;
		a->staged_tail = i;
	}
	a->inflight++;
	return 0;
}

int cvmd_aio_readv(cvmd_aio *a, int fd, const struct iovec *iov, int iovcnt, uint64_t offset, uint64_t tag) {
	return queue_op(a, OP_READ, fd, iov, iovcnt, offset, tag);
}
int cvmd_aio_writev(cvmd_aio *a, int fd, const struct iovec *iov, int iovcnt, uint64_t offset, uint64_t tag) {
	return queue_op(a, OP_WRITE, fd, iov, iovcnt, offset, tag);
}
int cvmd_aio_fdatasync(cvmd_aio *a, int fd, uint64_t tag) {
	return queue_op(a, OP_SYNC, fd, NULL, 0, 0, tag);
}

int cvmd_aio_submit(cvmd_aio *a) {
	if (a->kind == CVMD_AIO_URING) {
		if (a->queued == 0) return 0;
		int r;
		do { r = io_uring_submit(&a->ring); } while (r == -EINTR);
		if (r < 0) {
			// The kernel took none of them: take them back from the
			// submission queue and do them here, so none is lost.
			a->ring.sq.sqe_tail = a->ring.sq.sqe_head;
			for (unsigned k = 0; k < a->queued; k++) {
				struct slot *s = &a->slots[a->unsubmitted[k]];
				s->result = perform(s);
				s->next = a->local_done;
				a->local_done = a->unsubmitted[k];
			}
			uint64_t one = 1;
			(void)!write(a->efd, &one, sizeof one);
		}
		a->queued = 0;
		return r < 0 ? r : 0;
	}
	if (a->staged_head < 0) return 0;
	pthread_mutex_lock(&a->lock);
	if (a->wait_tail >= 0) a->slots[a->wait_tail].next = a->staged_head; else a->wait_head = a->staged_head;
	a->wait_tail = a->staged_tail;
	a->staged_head = a->staged_tail = -1;
	pthread_cond_broadcast(&a->work);
	pthread_mutex_unlock(&a->lock);
	return 0;
}

int cvmd_aio_reap(cvmd_aio *a, cvmd_aio_completion *out, int max, int wait) {
	uint64_t counter;
	(void)!read(a->efd, &counter, sizeof counter);   // clear it before looking
	int n = 0;
	if (a->kind == CVMD_AIO_URING) {
		while (n < max && a->local_done >= 0) {
			int i = a->local_done;
			a->local_done = a->slots[i].next;
			out[n].tag = a->slots[i].tag;
			out[n].result = a->slots[i].result;
			n++;
			a->inflight--;
			put_slot(a, i);
		}
		while (n < max) {
			struct io_uring_cqe *cqe = NULL;
			int r = io_uring_peek_cqe(&a->ring, &cqe);
			if (r == -EAGAIN && wait && n == 0 && a->inflight > 0) {
				if (a->queued) {
					cvmd_aio_submit(a);
					if (a->local_done >= 0) return cvmd_aio_reap(a, out, max, 0);
				}
				r = io_uring_wait_cqe(&a->ring, &cqe);
				if (r == -EINTR) continue;
			}
			if (r < 0 || !cqe) break;
			uint64_t i = io_uring_cqe_get_data64(cqe);
			int64_t res = cqe->res;
			io_uring_cqe_seen(&a->ring, cqe);
			if (i >= a->depth) continue;
			out[n].tag = a->slots[i].tag;
			out[n].result = res;
			n++;
			a->inflight--;
			put_slot(a, (int)i);
		}
		return n;
	}
	if (wait && a->staged_head >= 0) cvmd_aio_submit(a);
	for (;;) {
		pthread_mutex_lock(&a->lock);
		while (n < max && a->done_head >= 0) {
			int i = a->done_head;
			a->done_head = a->slots[i].next;
			out[n].tag = a->slots[i].tag;
			out[n].result = a->slots[i].result;
			n++;
			a->inflight--;
			put_slot(a, i);
		}
		pthread_mutex_unlock(&a->lock);
		if (n > 0 || !wait || a->inflight == 0) return n;
		// Block on the eventfd the workers write (it is non-blocking: poll).
		struct timespec ts = { 0, 200000 };
		nanosleep(&ts, NULL);
	}
}

int64_t cvmd_aio_write_nowait(int fd, const struct iovec *iov, int iovcnt, uint64_t offset) {
	if (offset > (uint64_t)INT64_MAX) return -EINVAL;
	ssize_t n;
	do { n = pwritev2(fd, iov, iovcnt, (off_t)offset, RWF_NOWAIT); } while (n < 0 && errno == EINTR);
	return n < 0 ? -errno : n;
}
