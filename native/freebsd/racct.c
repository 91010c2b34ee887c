/* A process's resource usage from RACCT: rctl_get_racct(2), sys/sys/rctl.h. */
#ifdef __FreeBSD__
#include <sys/types.h>
#include <sys/rctl.h>

#include <stdio.h>
#include <string.h>

#include "vmprobe.h"

int vmprobe_fbsd_racct(int pid, char *buf, size_t len)
{
    char filter[32];

    snprintf(filter, sizeof(filter), "process:%d", pid);
    return rctl_get_racct(filter, strlen(filter) + 1, buf, len);
}
#endif /* __FreeBSD__ */
