/*
 * Copying another process's fd (pidfd_getfd(2), Linux 5.6+): how the agent
 * gets the KVM binary stats files a VMM keeps open.  It cannot make its
 * own: KVM_GET_STATS_FD on a VM or vCPU fd is refused with EIO to any
 * process but the VM's creator (kvm_vm_ioctl() and kvm_vcpu_ioctl() in
 * torvalds/linux:virt/kvm/kvm_main.c start with
 * `if (kvm->mm != current->mm || kvm->vm_dead) return -EIO;`), while
 * reading a stats file already made has no such check (kvm_stats_read()).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "vmprobe.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434 /* the same number on every architecture */
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

int vmprobe_pidfd_getfd(int pid, int fd)
{
    int pidfd, out, saved;

    if (pid <= 0 || fd < 0) {
        errno = EINVAL;
        return -1;
    }
    pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0)
        return -1;
    out = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0); /* sets O_CLOEXEC */
    saved = errno;
    close(pidfd);
    errno = saved;
    return out;
}
