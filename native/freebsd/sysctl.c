/*
 * sysctls by name: the host facts the probes need (kern.boottime,
 * machdep.tsc_freq) and whole tables (kern.devstat.all, kern.geom.confxml).
 */
#ifdef __FreeBSD__
#include <sys/types.h>
#include <sys/sysctl.h>
#include <sys/time.h>

#include "vmprobe.h"

int vmprobe_fbsd_sysctl_name(const char *name, unsigned char *buf,
                             size_t *len)
{
    return sysctlbyname(name, buf, len, NULL, 0);
}

int vmprobe_fbsd_boottime_us(int64_t *out)
{
    struct timeval tv;
    size_t len = sizeof(tv);

    if (sysctlbyname("kern.boottime", &tv, &len, NULL, 0) < 0)
        return -1;
    *out = (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
    return 0;
}

int vmprobe_fbsd_tsc_freq(uint64_t *out)
{
    size_t len = sizeof(*out);

    return sysctlbyname("machdep.tsc_freq", out, &len, NULL, 0);
}
#endif /* __FreeBSD__ */
