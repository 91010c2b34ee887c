/* Processes and threads: sysctl kern.proc.* (sys/sys/sysctl.h). */
#ifdef __FreeBSD__
#include <sys/param.h>
#include <sys/sysctl.h>
#include <sys/user.h>

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "vmprobe.h"

/* The decoders' kinfo_file layout (common/bhyve.c) is this kernel's. */
_Static_assert(offsetof(struct kinfo_file, kf_structsize) == 0, "kf");
_Static_assert(offsetof(struct kinfo_file, kf_type) == 4, "kf_type");
_Static_assert(offsetof(struct kinfo_file, kf_fd) == 8, "kf_fd");
_Static_assert(offsetof(struct kinfo_file, kf_flags) == 16, "kf_flags");
_Static_assert(offsetof(struct kinfo_file, kf_path) == VMPROBE_KF_PATH_OFFSET,
               "kf_path");

static int64_t usec(struct timeval tv)
{
    return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

/* sysctl(mib) into a malloc'd buffer, retrying while it grows. */
static void *sysctl_alloc(int *mib, u_int miblen, size_t *len)
{
    for (int tries = 0; tries < 8; tries++) {
        void *buf;

        *len = 0;
        if (sysctl(mib, miblen, NULL, len, NULL, 0) < 0)
            return NULL;
        *len += *len / 8 + 4096;
        if ((buf = malloc(*len)) == NULL)
            return NULL;
        if (sysctl(mib, miblen, buf, len, NULL, 0) == 0)
            return buf;
        free(buf);
        if (errno != ENOMEM)
            return NULL;
    }
    return NULL;
}

static void fill(struct vmprobe_fbsd_proc *o, const struct kinfo_proc *kp)
{
    memset(o, 0, sizeof(*o));
    o->pid = kp->ki_pid;
    o->tid = kp->ki_tid;
    o->uid = kp->ki_ruid;
    o->zombie = kp->ki_stat == SZOMB;
    strlcpy(o->comm, kp->ki_comm, sizeof(o->comm));
    strlcpy(o->tdname, kp->ki_tdname, sizeof(o->tdname));
    strlcat(o->tdname, kp->ki_moretdname, sizeof(o->tdname));
    o->start_us = usec(kp->ki_start);
    o->runtime_us = kp->ki_runtime;
    o->utime_us = usec(kp->ki_rusage.ru_utime);
    o->stime_us = usec(kp->ki_rusage.ru_stime);
    o->inblock = kp->ki_rusage.ru_inblock;
    o->oublock = kp->ki_rusage.ru_oublock;
    o->rss_pages = (uint64_t)kp->ki_rssize;
}

int vmprobe_fbsd_procs(int pid, int threads, const char *comm,
                       struct vmprobe_fbsd_proc *out, size_t *n)
{
    int mib[4] = {CTL_KERN, KERN_PROC, KERN_PROC_PROC, 0};
    u_int miblen = 3;
    struct kinfo_proc *kp;
    size_t len, count, kept = 0;

    if (pid >= 0) {
        mib[2] = KERN_PROC_PID | (threads ? KERN_PROC_INC_THREAD : 0);
        mib[3] = pid;
        miblen = 4;
    }
    if ((kp = sysctl_alloc(mib, miblen, &len)) == NULL)
        return -1;
    count = len / sizeof(*kp);
    if (count > 0 && kp[0].ki_structsize != (int)sizeof(*kp)) {
        free(kp);  /* a kernel of another version than the headers */
        errno = EPROTO;
        return -1;
    }
    if (pid >= 0 && count == 0) {
        free(kp);
        errno = ESRCH;
        return -1;
    }
    for (size_t i = 0; i < count; i++) {
        if (comm != NULL && strcmp(kp[i].ki_comm, comm) != 0)
            continue;
        if (kept < *n)
            fill(&out[kept], &kp[i]);
        kept++;
    }
    free(kp);
    if (kept > *n) {
        *n = kept;
        errno = ENOMEM;
        return -1;
    }
    *n = kept;
    return 0;
}

int vmprobe_fbsd_proc_sysctl(int what, int pid, unsigned char *buf,
                             size_t *len)
{
    int mib[4] = {CTL_KERN, KERN_PROC, 0, pid};

    if (what == VMPROBE_FBSD_ARGS)
        mib[2] = KERN_PROC_ARGS;
    else if (what == VMPROBE_FBSD_FILEDESC)
        mib[2] = KERN_PROC_FILEDESC;  /* packed records */
    else {
        errno = EINVAL;
        return -1;
    }
    return sysctl(mib, 4, buf, len, NULL, 0);
}

#endif /* __FreeBSD__ */
