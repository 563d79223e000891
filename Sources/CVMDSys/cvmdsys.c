#define _GNU_SOURCE
#include "cvmdsys.h"

#include <bsd/unistd.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/landlock.h>
#include <pty.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/random.h>
#include <sys/eventfd.h>
#include <spawn.h>
#include <signal.h>
#include <sys/un.h>
#include <event2/event.h>
#include <unistd.h>
#include <termios.h>
#include <signal.h>

extern char **environ;

void cvmd_setproctitle_init(int argc, char **argv)
{
	setproctitle_init(argc, argv, environ);
}

void cvmd_setproctitle(const char *title)
{
	/* "-" prefix: replace the whole title, not "progname: title". */
	setproctitle("-%s", title);
}

ssize_t cvmd_send_with_fd(int sock, const void *buf, size_t len, int fd)
{
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	union {
		struct cmsghdr hdr;
		char buf[CMSG_SPACE(sizeof(int))];
	} cmsgbuf;
	struct msghdr msg;
	memset(&msg, 0, sizeof(msg));
	memset(&cmsgbuf, 0, sizeof(cmsgbuf));
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	if (fd >= 0) {
		msg.msg_control = &cmsgbuf.buf;
		msg.msg_controllen = sizeof(cmsgbuf.buf);
		struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
		cmsg->cmsg_len = CMSG_LEN(sizeof(int));
		cmsg->cmsg_level = SOL_SOCKET;
		cmsg->cmsg_type = SCM_RIGHTS;
		memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
	}
	return sendmsg(sock, &msg, MSG_NOSIGNAL);
}

ssize_t cvmd_recv_with_fd(int sock, void *buf, size_t len, int *fd_out, int *truncated)
{
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	/* Room for several fds so a misbehaving peer's extras arrive and get closed
	 * here instead of silently truncating. */
	union {
		struct cmsghdr hdr;
		char buf[CMSG_SPACE(sizeof(int) * 8)];
	} cmsgbuf;
	struct msghdr msg;
	memset(&msg, 0, sizeof(msg));
	msg.msg_iov = &iov;
	msg.msg_iovlen = 1;
	msg.msg_control = &cmsgbuf.buf;
	msg.msg_controllen = sizeof(cmsgbuf.buf);
	*fd_out = -1;
	*truncated = 0;
	ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
	if (n < 0)
		return n;
	if (msg.msg_flags & MSG_CTRUNC)
		*truncated = 1;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		size_t nfds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		int fds[8];
		if (nfds > 8)
			nfds = 8;
		memcpy(fds, CMSG_DATA(c), nfds * sizeof(int));
		for (size_t i = 0; i < nfds; i++) {
			if (*fd_out == -1)
				*fd_out = fds[i];
			else {
				close(fds[i]);
				*truncated = 1;
			}
		}
	}
	return n;
}

int cvmd_set_no_new_privs(void) { return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); }
int cvmd_get_no_new_privs(void) { return prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0); }
int cvmd_set_parent_death_signal(int sig) { return prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0); }
int cvmd_set_dumpable(int on) { return prctl(PR_SET_DUMPABLE, on, 0, 0, 0); }
int cvmd_set_child_subreaper(void) { return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); }


int cvmd_landlock_abi(void)
{
	return (int)syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
}

int cvmd_landlock_deny_all_fs(void)
{
	int abi = cvmd_landlock_abi();
	if (abi < 1)
		return -1;
	struct landlock_ruleset_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.handled_access_fs =
	    LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_WRITE_FILE |
	    LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR |
	    LANDLOCK_ACCESS_FS_REMOVE_DIR | LANDLOCK_ACCESS_FS_REMOVE_FILE |
	    LANDLOCK_ACCESS_FS_MAKE_CHAR | LANDLOCK_ACCESS_FS_MAKE_DIR |
	    LANDLOCK_ACCESS_FS_MAKE_REG | LANDLOCK_ACCESS_FS_MAKE_SOCK |
	    LANDLOCK_ACCESS_FS_MAKE_FIFO | LANDLOCK_ACCESS_FS_MAKE_BLOCK |
	    LANDLOCK_ACCESS_FS_MAKE_SYM;
#ifdef LANDLOCK_ACCESS_FS_REFER
	if (abi >= 2)
		attr.handled_access_fs |= LANDLOCK_ACCESS_FS_REFER;
#endif
#ifdef LANDLOCK_ACCESS_FS_TRUNCATE
	if (abi >= 3)
		attr.handled_access_fs |= LANDLOCK_ACCESS_FS_TRUNCATE;
#endif
	size_t attrsize = sizeof(attr.handled_access_fs);
	int rfd = (int)syscall(SYS_landlock_create_ruleset, &attr, attrsize, 0);
	if (rfd < 0)
		return -1;
	int r = (int)syscall(SYS_landlock_restrict_self, rfd, 0);
	int saved = errno;
	close(rfd);
	errno = saved;
	return r;
}

uint32_t cvmd_scmp_act_errno(uint16_t err) { return SCMP_ACT_ERRNO(err); }

int cvmd_wexitstatus(int s) { return WEXITSTATUS(s); }
int cvmd_wifsignaled(int s) { return WIFSIGNALED(s); }
int cvmd_wtermsig(int s) { return WTERMSIG(s); }

int cvmd_peer_credentials(int sock, uid_t *uid, gid_t *gid, pid_t *pid)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1)
		return -1;
	*uid = cred.uid;
	*gid = cred.gid;
	*pid = cred.pid;
	return 0;
}

int cvmd_memfd_create(const char *name)
{
	return memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
}

int cvmd_seal_shrink(int fd)
{
	return fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
}

int cvmd_openpty(int *master, int *slave, char *name, size_t namelen)
{
	/* A console: raw mode (no echo, no line discipline), close-on-exec,
	 * and a master that never blocks the VM's event loop. */
	int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
	if (m < 0)
		return -1;
	int s = -1;
	struct termios tio;
	int e;
	if (grantpt(m) != 0 || unlockpt(m) != 0)
		goto fail;
	if ((e = ptsname_r(m, name, namelen)) != 0) {
		errno = e;
		goto fail;
	}
	s = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (s < 0)
		goto fail;
	if (tcgetattr(s, &tio) != 0)
		goto fail;
	cfmakeraw(&tio);
	if (tcsetattr(s, TCSANOW, &tio) != 0)
		goto fail;
	*master = m;
	*slave = s;
	return 0;
fail:
	e = errno;
	if (s >= 0)
		close(s);
	close(m);
	errno = e;
	return -1;
}

int cvmd_wake_signal(void) { return SIGRTMIN; }

static void wake_handler(int signo) { (void)signo; }

int cvmd_install_wake_handler(void)
{
	struct sigaction action;
	memset(&action, 0, sizeof action);
	action.sa_handler = wake_handler;
	sigemptyset(&action.sa_mask);
	action.sa_flags = 0; /* no SA_RESTART: a blocking call (KVM_RUN) returns EINTR */
	return sigaction(SIGRTMIN, &action, NULL);
}

int cvmd_tap_open(char *name, size_t namelen, int vnet_hdr)
{
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
	if (fd == -1)
		return -1;
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (vnet_hdr ? IFF_VNET_HDR : 0);
	if (name != NULL && name[0] != '\0')
		strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
	if (ioctl(fd, TUNSETIFF, &ifr) == -1) {
		int saved = errno;
		close(fd);
		errno = saved;
		return -1;
	}
	if (vnet_hdr) {
		int sz = 12; /* struct virtio_net_hdr_v1: VERSION_1 layout */
		if (ioctl(fd, TUNSETVNETHDRSZ, &sz) == -1) {
			int saved = errno;
			close(fd);
			errno = saved;
			return -1;
		}
	}
	if (name != NULL && namelen > 0) {
		strncpy(name, ifr.ifr_name, namelen - 1);
		name[namelen - 1] = '\0';
	}
	return fd;
}

int cvmd_errno(void) { return errno; }

void cvmd_close_fds_from(int lowfd, const int *keep, int nkeep)
{
	DIR *d = opendir("/proc/self/fd");
	if (d == NULL) {
		for (int fd = lowfd; fd < 1024; fd++) {
			int k = 0;
			for (int i = 0; i < nkeep; i++)
				if (keep[i] == fd)
					k = 1;
			if (!k)
				close(fd);
		}
		return;
	}
	int dfd = dirfd(d);
	int fds[4096];
	int n = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL && n < 4096) {
		if (e->d_name[0] < '0' || e->d_name[0] > '9')
			continue;
		int fd = atoi(e->d_name);
		if (fd < lowfd || fd == dfd)
			continue;
		int k = 0;
		for (int i = 0; i < nkeep; i++)
			if (keep[i] == fd)
				k = 1;
		if (!k)
			fds[n++] = fd;
	}
	closedir(d);
	for (int i = 0; i < n; i++)
		close(fds[i]);
}

/*
 * syslog without glibc's syslog(3): that one formats a local timestamp
 * (localtime_r, which opens /etc/localtime on first use) and reconnects with
 * socket()+connect() when a send fails, both of which a sandboxed process may
 * not do. Ours connects once, before the sandbox, and only ever send()s.
 */
int cvmd_syslog_connect(const char *path, int *stream)
{
	struct sockaddr_un a;
	int types[2] = { SOCK_DGRAM, SOCK_STREAM };

	if (strlen(path) >= sizeof(a.sun_path)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memset(&a, 0, sizeof(a));
	a.sun_family = AF_UNIX;
	strcpy(a.sun_path, path);
	for (int i = 0; i < 2; i++) {
		int fd = socket(AF_UNIX, types[i] | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return -1;
		if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0) {
			*stream = types[i] == SOCK_STREAM;
			return fd;
		}
		int e = errno;
		close(fd);
		errno = e;
		if (e != EPROTOTYPE)
			return -1;
	}
	return -1;
}

const char *cvmd_strerror(int e)
{
	/* Untranslated: no message catalogs, no locale, no file access. */
	return strerrordesc_np(e);
}

const char *cvmd_strerrorname(int e)
{
	return strerrorname_np(e);
}


int cvmd_spawn(const char *path, char *const argv[], const int *fds, int nfds, pid_t *pid)
{
	posix_spawn_file_actions_t fa;
	int tmp[64];
	int r;

	if (nfds < 0 || nfds > 64)
		return EINVAL;
	/* Copy the sources above every target first, so a source that happens to
	 * sit on a target number cannot be clobbered by an earlier dup2. */
	for (int i = 0; i < nfds; i++) {
		tmp[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3 + nfds + 64);
		if (tmp[i] == -1) {
			r = errno;
			for (int j = 0; j < i; j++)
				close(tmp[j]);
			return r;
		}
	}
	if ((r = posix_spawn_file_actions_init(&fa)) != 0)
		goto out;
	for (int i = 0; i < nfds && r == 0; i++)
		r = posix_spawn_file_actions_adddup2(&fa, tmp[i], 3 + i);
	if (r == 0)
		r = posix_spawn_file_actions_addclosefrom_np(&fa, 3 + nfds);
	if (r == 0)
		r = posix_spawn(pid, path, &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
out:
	for (int i = 0; i < nfds; i++)
		close(tmp[i]);
	return r;
}

int cvmd_setresuid(uid_t u) { return setresuid(u, u, u); }
int cvmd_setresgid(gid_t g) { return setresgid(g, g, g); }

void *cvmd_event_base_new(void) { return event_base_new(); }
void cvmd_event_base_free(void *base) { event_base_free(base); }
int cvmd_event_base_dispatch(void *base) { return event_base_dispatch(base); }
int cvmd_event_base_loopbreak(void *base) { return event_base_loopbreak(base); }
int cvmd_event_base_loop_once(void *base, int block)
{
	return event_base_loop(base, block ? EVLOOP_ONCE : EVLOOP_NONBLOCK);
}
void *cvmd_event_new(void *base, int fd, short what, cvmd_event_cb cb, void *arg)
{
	return event_new(base, fd, what, cb, arg);
}
int cvmd_event_add(void *ev, double timeout)
{
	if (timeout < 0)
		return event_add(ev, NULL);
	struct timeval tv;
	tv.tv_sec = (time_t)timeout;
	tv.tv_usec = (suseconds_t)((timeout - (double)tv.tv_sec) * 1e6);
	return event_add(ev, &tv);
}
void cvmd_event_free(void *ev)
{
	event_del(ev);
	event_free(ev);
}

int cvmd_accept(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK); }
ssize_t cvmd_getrandom(void *buf, size_t len) { return getrandom(buf, len, 0); }

int cvmd_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

int cvmd_fallocate(int fd, int mode, int64_t offset, int64_t length)
{
	return fallocate(fd, mode, (off_t)offset, (off_t)length);
}

int cvmd_fallocate_punch_hole(void) { return FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE; }
int cvmd_fallocate_zero_range(void) { return FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE; }

int cvmd_tap_set_vnet_header_size(int fd, int size)
{
	return ioctl(fd, TUNSETVNETHDRSZ, &size);
}

int cvmd_tap_set_offload(int fd, unsigned int flags)
{
	return ioctl(fd, TUNSETOFFLOAD, (unsigned long)flags);
}

unsigned long cvmd_tunsetoffload_request(void)
{
	return TUNSETOFFLOAD;
}
