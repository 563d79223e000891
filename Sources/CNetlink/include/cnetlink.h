/* rtnetlink for vmd: priv (links, bridges, VRFs, addresses) through libmnl.
 * Every function returns 0 or a negative errno. */
#ifndef CNETLINK_H
#define CNETLINK_H
#include <stddef.h>
#include <stdint.h>

/* Opens the NETLINK_ROUTE socket (once; before the sandbox). */
int vmdnl_open(void);
void vmdnl_close(void);

/* The interface's index, or a negative errno. */
int vmdnl_ifindex(const char *name);

/* RTM_NEWLINK with NLM_F_CREATE|NLM_F_EXCL: kind "bridge" or "vrf"
 * (vrf_table used for "vrf" only); alias (IFLA_IFALIAS) may be NULL. */
int vmdnl_link_create(const char *name, const char *kind, uint32_t vrf_table, const char *alias);

int vmdnl_link_delete(const char *name);

/* Changes what is asked of an existing link: up (-1 keep, 0 down, 1 up),
 * group (-1 keep), master (-1 keep, 0 no master, else an ifindex), alias
 * (NULL keep), lladdr (NULL keep, else 6 bytes). */
int vmdnl_link_set(const char *name, int up, int64_t group, int master,
                   const char *alias, const uint8_t *lladdr);

/* RTM_NEWADDR: family AF_INET (4 bytes) or AF_INET6 (16 bytes). IPv6
 * addresses are added with IFA_F_NODAD (the link has one peer). */
int vmdnl_addr_add(const char *name, int family, const uint8_t *addr, int prefixlen);

/* RTM_NEWROUTE (replacing): dst/prefixlen straight out of the link, in
 * routing table `table` (RT_TABLE_MAIN = 254, or a VRF's). */
int vmdnl_route_add(const char *name, int family, const uint8_t *dst, int prefixlen, uint32_t table);

/* Dumps every link whose IFLA_IFALIAS starts with prefix into out as
 * "name\talias\n" lines (truncated to outlen - 1 bytes, NUL-terminated).
 * Returns the number of links found or a negative errno. */
int vmdnl_links_with_alias(const char *prefix, char *out, size_t outlen);

/* The link's kind (IFLA_INFO_KIND) into kind ("" when none), its master
 * ifindex, group and flags. */
int vmdnl_link_info(const char *name, char *kind, size_t kindlen, int *master,
                    uint32_t *group, uint32_t *flags);

#endif
