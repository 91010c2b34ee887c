/*
 * A tap's or vmnet's counters: struct if_data from the interface MIB
 * (sysctl net.link.generic.ifdata.<index>.general, net/if_mib.h), one
 * syscall per interface instead of getifaddrs(3)'s dump of every address.
 */
#ifdef __FreeBSD__
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/sysctl.h>
#include <net/if.h>
#include <net/if_mib.h>

#include <errno.h>
#include <stddef.h>
#include <string.h>

#include "vmprobe.h"

/* The decoder's offsets (common/bhyve.c) are this kernel's. */
_Static_assert(sizeof(struct if_data) == VMPROBE_IF_DATA_SIZE, "if_data");
_Static_assert(offsetof(struct if_data, ifi_datalen) == 6, "ifi_datalen");
_Static_assert(offsetof(struct if_data, ifi_mtu) == 8, "ifi_mtu");
_Static_assert(offsetof(struct if_data, ifi_ipackets) == 24, "ipackets");
_Static_assert(offsetof(struct if_data, ifi_opackets) == 40, "opackets");
_Static_assert(offsetof(struct if_data, ifi_ibytes) == 64, "ibytes");
_Static_assert(offsetof(struct if_data, ifi_obytes) == 72, "obytes");
_Static_assert(offsetof(struct if_data, ifi_iqdrops) == 96, "iqdrops");
_Static_assert(offsetof(struct if_data, ifi_oqdrops) == 104, "oqdrops");

int vmprobe_fbsd_if_data(const char *ifname, unsigned char *buf, size_t len)
{
    int mib[6] = {CTL_NET, PF_LINK, NETLINK_GENERIC, IFMIB_IFDATA, 0,
                  IFDATA_GENERAL};
    struct ifmibdata md;
    size_t mdlen = sizeof(md);

    if (len < sizeof(md.ifmd_data)) {
        errno = EINVAL;
        return -1;
    }
    if ((mib[4] = (int)if_nametoindex(ifname)) == 0) {
        errno = ENXIO;
        return -1;
    }
    if (sysctl(mib, 6, &md, &mdlen, NULL, 0) < 0) {
        if (errno == ENOENT)  /* gone since if_nametoindex (if_mib.c) */
            errno = ENXIO;
        return -1;
    }
    if (strcmp(md.ifmd_name, ifname) != 0) {  /* index reused meanwhile */
        errno = ENXIO;
        return -1;
    }
    memcpy(buf, &md.ifmd_data, sizeof(md.ifmd_data));
    return 0;
}
#endif /* __FreeBSD__ */
