/*
 * CVMDSys: the few libc/kernel interfaces Swift cannot import directly
 * (variadic functions, function-like macros, GNU-only structs). Every symbol
 * is prefixed cvmd_. Callers are in Sources/VMDSystem only.
 */
#ifndef CVMDSYS_H
#define CVMDSYS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cvmd_crash.h"
#include "cvmd_atomic.h"

/* setproctitle(3) from libbsd (variadic in libbsd). */
void cvmd_setproctitle_init(int argc, char **argv);
void cvmd_setproctitle(const char *title);

/* sendmsg/recvmsg carrying at most one fd with SCM_RIGHTS. Return bytes or -1/errno. */
ssize_t cvmd_send_with_fd(int sock, const void *buf, size_t len, int fd);
/* *fd_out is -1 when no fd came. *truncated is set when the kernel cut control data
 * (MSG_CTRUNC): extra fds the peer sent are closed by the kernel on our side. */
ssize_t cvmd_recv_with_fd(int sock, void *buf, size_t len, int *fd_out, int *truncated);

/* prctl (variadic). */
int cvmd_set_no_new_privs(void);
int cvmd_get_no_new_privs(void);
int cvmd_set_parent_death_signal(int sig);
int cvmd_set_child_subreaper(void);
int cvmd_set_dumpable(int on);

/* Landlock: forbid every file system access this kernel's ABI knows about. */
int cvmd_landlock_abi(void);
int cvmd_landlock_deny_all_fs(void);

/* seccomp action with an errno (SCMP_ACT_ERRNO is a macro). */
uint32_t cvmd_scmp_act_errno(uint16_t err);

/* wait(2) status macros. */
int cvmd_wexitstatus(int status);
int cvmd_wifsignaled(int status);
int cvmd_wtermsig(int status);

/* SO_PEERCRED on a connected unix socket. */
int cvmd_peer_credentials(int sock, uid_t *uid, gid_t *gid, pid_t *pid);

/* memfd_create with MFD_CLOEXEC|MFD_ALLOW_SEALING, sealed against shrinking after sizing. */
int cvmd_memfd_create(const char *name);
int cvmd_seal_shrink(int fd);

/* A pty for a console: raw mode, both fds close-on-exec, the master
 * non-blocking; the slave's path in name. -1/errno on failure. */
int cvmd_openpty(int *master, int *slave, char *name, size_t namelen);

/* tap device: open /dev/net/tun with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR; name in/out. */
int cvmd_tap_open(char *name, size_t namelen, int vnet_hdr);

/* errno as a thread-local lvalue is a macro in glibc. */
int cvmd_errno(void);

/* A connected syslog socket (datagram, else stream) at path; *stream says which. */
int cvmd_syslog_connect(const char *path, int *stream);

/* strerrordesc_np/strerrorname_np (GNU): untranslated, no locale or file access; NULL if unknown. */
const char *cvmd_strerror(int e);
const char *cvmd_strerrorname(int e);


/* Close every fd >= lowfd except those listed. */
void cvmd_close_fds_from(int lowfd, const int *keep, int nkeep);

/*
 * Spawn `path` with `argv`, mapping fds[i] to descriptor 3+i in the child and
 * closing every other descriptor above 2 there (posix_spawn with dup2 file
 * actions + closefrom). Returns 0 and sets *pid, or an errno value.
 */
int cvmd_spawn(const char *path, char *const argv[], const int *fds, int nfds, pid_t *pid);
/* The same, but the child is the caller's sibling (CLONE_PARENT): sibling.c. */
int cvmd_spawn_sibling(const char *path, char *const argv[], const int *fds, int nfds, pid_t *pid);

/* accept4(SOCK_CLOEXEC|SOCK_NONBLOCK) and getrandom(2) need _GNU_SOURCE. */
int cvmd_accept(int fd);
ssize_t cvmd_getrandom(void *buf, size_t len);

/* A close-on-exec, non-blocking eventfd (a queue notify from KVM_IOEVENTFD). */
int cvmd_eventfd(void);

/* setresuid/setresgid need _GNU_SOURCE, which Swift's Glibc lacks. */
int cvmd_setresuid(uid_t u);
int cvmd_setresgid(gid_t g);

/*
 * libevent, behind opaque pointers (see CLibevent/shim.h for why).
 * what: CVMD_EV_READ/WRITE/SIGNAL/PERSIST; timeout < 0 means none.
 */
#define CVMD_EV_TIMEOUT 0x01
#define CVMD_EV_READ    0x02
#define CVMD_EV_WRITE   0x04
#define CVMD_EV_SIGNAL  0x08
#define CVMD_EV_PERSIST 0x10
typedef void (*cvmd_event_cb)(int fd, short what, void *arg);
void *cvmd_event_base_new(void);
void cvmd_event_base_free(void *base);
int cvmd_event_base_dispatch(void *base);
int cvmd_event_base_loopbreak(void *base);
/* One pass of the loop (event_base_loop with EVLOOP_ONCE, or EVLOOP_NONBLOCK
 * when !block): 1 when no events are left, -1 on error, else 0. */
int cvmd_event_base_loop_once(void *base, int block);
void *cvmd_event_new(void *base, int fd, short what, cvmd_event_cb cb, void *arg);
int cvmd_event_add(void *ev, double timeout);
void cvmd_event_free(void *ev);

/* The signal that wakes a thread out of a blocking call (SIGRTMIN), and a
 * handler for it that does nothing and does not restart the call. */
int cvmd_wake_signal(void);
int cvmd_install_wake_handler(void);

/* fallocate(2) (GNU-only in glibc) and its mode bits, KEEP_SIZE included. */
int cvmd_fallocate(int fd, int mode, int64_t offset, int64_t length);
int cvmd_fallocate_punch_hole(void);
int cvmd_fallocate_zero_range(void);

/* TUNSETVNETHDRSZ on a tap opened with IFF_VNET_HDR. */
int cvmd_tap_set_vnet_header_size(int fd, int size);
/* TUNSETOFFLOAD (TUN_F_CSUM 1, TUN_F_TSO4 2, TUN_F_TSO6 4, TUN_F_TSO_ECN 8), and its request number for seccomp. */
int cvmd_tap_set_offload(int fd, unsigned int flags);
unsigned long cvmd_tunsetoffload_request(void);

#endif
