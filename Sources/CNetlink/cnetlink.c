// rtnetlink requests for vmd: priv, packed and parsed by libmnl.
#define _GNU_SOURCE
#include "cnetlink.h"

#include <errno.h>
#include <string.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <net/if.h>
#include <sys/socket.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <linux/if_addr.h>
#include <libmnl/libmnl.h>

static struct mnl_socket *nl;
int vmdnl_link_set(const char *name, int up, int64_t group, int master,
                   const char *alias, const uint8_t *lladdr);
static unsigned int portid;
static unsigned int seq;

int vmdnl_open(void)
{
	if (nl != NULL)
		return 0;
	nl = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC);
	if (nl == NULL)
		return -errno;
	if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
		int e = errno;
		mnl_socket_close(nl);
		nl = NULL;
		return -e;
	}
	portid = mnl_socket_get_portid(nl);
	seq = (unsigned int)time(NULL);
	return 0;
}

void vmdnl_close(void)
{
	if (nl != NULL)
		mnl_socket_close(nl);
	nl = NULL;
}

/* Sends one request and reads until its ACK (or the end of a dump). */
static int talk(struct nlmsghdr *h, mnl_cb_t cb, void *data)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	if (nl == NULL) {
		int r = vmdnl_open();
		if (r < 0)
			return r;
	}
	h->nlmsg_seq = ++seq;
	if (mnl_socket_sendto(nl, h, h->nlmsg_len) < 0)
		return -errno;
	for (;;) {
		ssize_t n = mnl_socket_recvfrom(nl, buf, sizeof(buf));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		int r = mnl_cb_run(buf, (size_t)n, h->nlmsg_seq, portid, cb, data);
		if (r < 0)
			return -errno;
		if (r == MNL_CB_STOP)
			return 0;
	}
}

int vmdnl_ifindex(const char *name)
{
	unsigned int i = if_nametoindex(name);
	return i == 0 ? -errno : (int)i;
}

static struct nlmsghdr *link_request(char *buf, uint16_t type, uint16_t flags, int index)
{
	struct nlmsghdr *h = mnl_nlmsg_put_header(buf);
	h->nlmsg_type = type;
	h->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | flags;
	struct ifinfomsg *ifi = mnl_nlmsg_put_extra_header(h, sizeof(*ifi));
	ifi->ifi_family = AF_UNSPEC;
	ifi->ifi_index = index;
	return h;
}

int vmdnl_link_create(const char *name, const char *kind, uint32_t vrf_table, const char *alias)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	if (strlen(name) >= IFNAMSIZ)
		return -ENAMETOOLONG;
	struct nlmsghdr *h = link_request(buf, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, 0);
	mnl_attr_put_strz(h, IFLA_IFNAME, name);
	struct nlattr *info = mnl_attr_nest_start(h, IFLA_LINKINFO);
	mnl_attr_put_strz(h, IFLA_INFO_KIND, kind);
	if (strcmp(kind, "vrf") == 0) {
		struct nlattr *data = mnl_attr_nest_start(h, IFLA_INFO_DATA);
		mnl_attr_put_u32(h, IFLA_VRF_TABLE, vrf_table);
		mnl_attr_nest_end(h, data);
	}
	mnl_attr_nest_end(h, info);
	int r = talk(h, NULL, NULL);
	/* The kernel ignores IFLA_IFALIAS when it creates a link: set it after. */
	if (r == 0 && alias != NULL)
		r = vmdnl_link_set(name, -1, -1, -1, alias, NULL);
	return r;
}

int vmdnl_link_delete(const char *name)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	int index = vmdnl_ifindex(name);
	if (index < 0)
		return index;
	struct nlmsghdr *h = link_request(buf, RTM_DELLINK, 0, index);
	return talk(h, NULL, NULL);
}

int vmdnl_link_set(const char *name, int up, int64_t group, int master,
                   const char *alias, const uint8_t *lladdr)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	int index = vmdnl_ifindex(name);
	if (index < 0)
		return index;
	struct nlmsghdr *h = link_request(buf, RTM_NEWLINK, 0, index);
	struct ifinfomsg *ifi = mnl_nlmsg_get_payload(h);
	if (up >= 0) {
		ifi->ifi_change = IFF_UP;
		ifi->ifi_flags = up ? IFF_UP : 0;
	}
	if (group >= 0)
		mnl_attr_put_u32(h, IFLA_GROUP, (uint32_t)group);
	if (master >= 0)
		mnl_attr_put_u32(h, IFLA_MASTER, (uint32_t)master);
	if (alias != NULL)
		mnl_attr_put_strz(h, IFLA_IFALIAS, alias);
	if (lladdr != NULL)
		mnl_attr_put(h, IFLA_ADDRESS, 6, lladdr);
	return talk(h, NULL, NULL);
}

/* The start of an RTM_NEW* request about link `name` for an IPv4 or IPv6
 * address: its index in *index, or a negative errno. */
static struct nlmsghdr *new_address_request(char *buf, const char *name, int family, uint16_t type,
					    int *index)
{
	*index = vmdnl_ifindex(name);
	if (*index < 0)
		return NULL;
	if (family != AF_INET && family != AF_INET6) {
		*index = -EAFNOSUPPORT;
		return NULL;
	}
	struct nlmsghdr *h = mnl_nlmsg_put_header(buf);
	h->nlmsg_type = type;
	h->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
	return h;
}

int vmdnl_addr_add(const char *name, int family, const uint8_t *addr, int prefixlen)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	int index;
	struct nlmsghdr *h = new_address_request(buf, name, family, RTM_NEWADDR, &index);
	if (h == NULL)
		return index;
	struct ifaddrmsg *ifa = mnl_nlmsg_put_extra_header(h, sizeof(*ifa));
	ifa->ifa_family = (unsigned char)family;
	ifa->ifa_prefixlen = (unsigned char)prefixlen;
	ifa->ifa_scope = RT_SCOPE_UNIVERSE;
	ifa->ifa_index = (unsigned int)index;
	size_t len = family == AF_INET ? 4 : 16;
	mnl_attr_put(h, IFA_LOCAL, len, addr);
	mnl_attr_put(h, IFA_ADDRESS, len, addr);
	if (family == AF_INET6) {
		ifa->ifa_flags = IFA_F_NODAD;
		mnl_attr_put_u32(h, IFA_FLAGS, IFA_F_NODAD);
	}
	return talk(h, NULL, NULL);
}

int vmdnl_route_add(const char *name, int family, const uint8_t *dst, int prefixlen, uint32_t table)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	int index;
	struct nlmsghdr *h = new_address_request(buf, name, family, RTM_NEWROUTE, &index);
	if (h == NULL)
		return index;
	struct rtmsg *rt = mnl_nlmsg_put_extra_header(h, sizeof(*rt));
	rt->rtm_family = (unsigned char)family;
	rt->rtm_dst_len = (unsigned char)prefixlen;
	rt->rtm_table = table < 256 ? (unsigned char)table : RT_TABLE_UNSPEC;
	rt->rtm_protocol = RTPROT_STATIC;
	rt->rtm_scope = RT_SCOPE_LINK;
	rt->rtm_type = RTN_UNICAST;
	mnl_attr_put(h, RTA_DST, family == AF_INET ? 4 : 16, dst);
	mnl_attr_put_u32(h, RTA_OIF, (uint32_t)index);
	mnl_attr_put_u32(h, RTA_TABLE, table);
	return talk(h, NULL, NULL);
}

struct link_attrs {
	const char *name;
	const char *alias;
	const char *kind;
	uint32_t master;
	uint32_t group;
};

static int info_cb(const struct nlattr *a, void *data)
{
	struct link_attrs *l = data;
	if (mnl_attr_get_type(a) == IFLA_INFO_KIND && mnl_attr_validate(a, MNL_TYPE_STRING) >= 0)
		l->kind = mnl_attr_get_str(a);
	return MNL_CB_OK;
}

static int attr_cb(const struct nlattr *a, void *data)
{
	struct link_attrs *l = data;
	switch (mnl_attr_get_type(a)) {
	case IFLA_IFNAME:
		if (mnl_attr_validate(a, MNL_TYPE_STRING) >= 0)
			l->name = mnl_attr_get_str(a);
		break;
	case IFLA_IFALIAS:
		if (mnl_attr_validate(a, MNL_TYPE_STRING) >= 0)
			l->alias = mnl_attr_get_str(a);
		break;
	case IFLA_MASTER:
		if (mnl_attr_validate(a, MNL_TYPE_U32) >= 0)
			l->master = mnl_attr_get_u32(a);
		break;
	case IFLA_GROUP:
		if (mnl_attr_validate(a, MNL_TYPE_U32) >= 0)
			l->group = mnl_attr_get_u32(a);
		break;
	case IFLA_LINKINFO:
		if (mnl_attr_validate(a, MNL_TYPE_NESTED) >= 0)
			mnl_attr_parse_nested(a, info_cb, l);
		break;
	}
	return MNL_CB_OK;
}

struct dump {
	const char *prefix;
	char *out;
	size_t outlen, used;
	int count;
};

static int dump_cb(const struct nlmsghdr *h, void *data)
{
	struct dump *d = data;
	struct link_attrs l = { 0 };
	mnl_attr_parse(h, sizeof(struct ifinfomsg), attr_cb, &l);
	if (l.name == NULL || l.alias == NULL || strncmp(l.alias, d->prefix, strlen(d->prefix)) != 0)
		return MNL_CB_OK;
	d->count++;
	if (d->outlen > d->used) {
		int n = snprintf(d->out + d->used, d->outlen - d->used, "%s\t%s\n", l.name, l.alias);
		if (n > 0)
			d->used += (size_t)n < d->outlen - d->used ? (size_t)n : d->outlen - d->used - 1;
	}
	return MNL_CB_OK;
}

int vmdnl_links_with_alias(const char *prefix, char *out, size_t outlen)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	if (outlen == 0)
		return -EINVAL;
	out[0] = '\0';
	struct nlmsghdr *h = mnl_nlmsg_put_header(buf);
	h->nlmsg_type = RTM_GETLINK;
	h->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	struct rtgenmsg *g = mnl_nlmsg_put_extra_header(h, sizeof(*g));
	g->rtgen_family = AF_UNSPEC;
	struct dump d = { prefix, out, outlen, 0, 0 };
	int r = talk(h, dump_cb, &d);
	return r < 0 ? r : d.count;
}

struct one {
	struct link_attrs l;
	uint32_t flags;
	char kind[32];
};

static int one_cb(const struct nlmsghdr *h, void *data)
{
	struct one *o = data;
	struct ifinfomsg *ifi = mnl_nlmsg_get_payload(h);
	o->flags = ifi->ifi_flags;
	mnl_attr_parse(h, sizeof(*ifi), attr_cb, &o->l);
	if (o->l.kind != NULL)
		snprintf(o->kind, sizeof(o->kind), "%s", o->l.kind);
	return MNL_CB_OK;
}

int vmdnl_link_info(const char *name, char *kind, size_t kindlen, int *master,
                    uint32_t *group, uint32_t *flags)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	int index = vmdnl_ifindex(name);
	if (index < 0)
		return index;
	struct nlmsghdr *h = link_request(buf, RTM_GETLINK, 0, index);
	struct one o;
	memset(&o, 0, sizeof(o));
	int r = talk(h, one_cb, &o);
	if (r < 0)
		return r;
	if (kindlen > 0)
		snprintf(kind, kindlen, "%s", o.kind);
	*master = (int)o.l.master;
	*group = o.l.group;
	*flags = o.flags;
	return 0;
}
