/* zlib (Debian's zlib1g-dev), for reading qcow2 compressed clusters. */
#include <zlib.h>
