/* setproctitle(3) and setproctitle_init(3) from libbsd; only what we use. */
void setproctitle_init(int argc, char *argv[], char *envp[]);
void setproctitle(const char *fmt, ...);
