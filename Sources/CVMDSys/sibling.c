/* Starting a device process again after its predecessor died: the VM
 * process is sandboxed by then (no execve, no file system), so a helper it
 * started before its sandbox (the device spawner) does the exec. The new
 * device must still be the VM process's child (it reaps it, logs why it
 * died, and the device's parent-death signal follows the VM process), so
 * the helper clones with CLONE_PARENT: the child's parent is the helper's
 * parent. The helper is single-threaded, so the child may call dup2 and
 * execve between the clone and the exec. */
#define _GNU_SOURCE
#include "cvmdsys.h"
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

extern char **environ;

int cvmd_spawn_sibling(const char *path, char *const argv[], const int *fds, int nfds, pid_t *pid)
{
	int tmp[64];
	sigset_t all, old;

	if (nfds < 0 || nfds > 64)
		return EINVAL;
	/* As cvmd_spawn: copies above every target first. */
	for (int i = 0; i < nfds; i++) {
		tmp[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3 + nfds + 64);
		if (tmp[i] == -1) {
			int r = errno;
			for (int j = 0; j < i; j++)
				close(tmp[j]);
			return r;
		}
	}
	sigfillset(&all);
	sigprocmask(SIG_SETMASK, &all, &old);
	long r = syscall(SYS_clone, (unsigned long)(CLONE_PARENT | SIGCHLD), 0, 0, 0, 0);
	if (r == 0) {
		/* Child: nothing but dup2, close_range, execve. */
		for (int i = 0; i < nfds; i++)
			if (dup2(tmp[i], 3 + i) == -1)
				_exit(127);
		syscall(SYS_close_range, 3 + nfds, ~0U, 0);
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		execve(path, argv, environ);
		_exit(127);
	}
	int e = errno;
	sigprocmask(SIG_SETMASK, &old, NULL);
	for (int i = 0; i < nfds; i++)
		close(tmp[i]);
	if (r < 0)
		return e;
	*pid = (pid_t)r;
	return 0;
}
