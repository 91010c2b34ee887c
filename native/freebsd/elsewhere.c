/*
 * The FreeBSD selection built on another system (the tests build it on
 * Linux to check the cdef and the Python glue): every syscall fails with
 * ENOSYS.
 */
#ifndef __FreeBSD__
#include <errno.h>

#include "vmprobe.h"

#define UNSUPPORTED                                                          \
    do {                                                                     \
        errno = ENOSYS;                                                      \
        return -1;                                                           \
    } while (0)

int vmprobe_fbsd_procs(int pid, int threads, const char *comm,
                       struct vmprobe_fbsd_proc *out, size_t *n)
{
    (void)pid, (void)threads, (void)comm, (void)out, (void)n;
    UNSUPPORTED;
}

int vmprobe_fbsd_proc_sysctl(int what, int pid, unsigned char *buf,
                             size_t *len)
{
    (void)what, (void)pid, (void)buf, (void)len;
    UNSUPPORTED;
}

int vmprobe_fbsd_sysctl_name(const char *name, unsigned char *buf,
                             size_t *len)
{
    (void)name, (void)buf, (void)len;
    UNSUPPORTED;
}

int vmprobe_fbsd_boottime_us(int64_t *out) { (void)out; UNSUPPORTED; }
int vmprobe_fbsd_tsc_freq(uint64_t *out) { (void)out; UNSUPPORTED; }

int vmprobe_fbsd_vm_stats(int fd, int layout, int cpu, int index,
                          unsigned char *buf, size_t len)
{
    (void)fd, (void)layout, (void)cpu, (void)index, (void)buf, (void)len;
    UNSUPPORTED;
}

int vmprobe_fbsd_vm_stat_desc(int fd, int index, unsigned char *buf,
                              size_t len)
{
    (void)fd, (void)index, (void)buf, (void)len;
    UNSUPPORTED;
}

int vmprobe_fbsd_vm_sysmem(int fd, uint64_t *bytes)
{
    (void)fd, (void)bytes;
    UNSUPPORTED;
}

int vmprobe_fbsd_if_data(const char *ifname, unsigned char *buf, size_t len)
{
    (void)ifname, (void)buf, (void)len;
    UNSUPPORTED;
}

int vmprobe_fbsd_racct(int pid, char *buf, size_t len)
{
    (void)pid, (void)buf, (void)len;
    UNSUPPORTED;
}

int vmprobe_fbsd_media_size(const char *path, uint64_t *bytes)
{
    (void)path, (void)bytes;
    UNSUPPORTED;
}
#endif /* !__FreeBSD__ */
