/* libevent is reached through CVMDSys's cvmd_event_* wrappers: importing
 * <event2/event.h> straight into Swift clashes with Glibc's fd_set. This
 * module exists to link libevent_core and to name its apt provider. */
#include <event2/visibility.h>
