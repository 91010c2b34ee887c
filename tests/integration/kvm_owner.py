"""A minimal KVM VM owner that keeps its binary stats fds open, as VMMs that
cache them do (the agent copies them with pidfd_getfd; it cannot make its
own: docs/probes-linux.md).

Run as a child process: ``python kvm_owner.py``.  It creates a VM with one
vCPU whose real-mode guest loops on ``out 0x10, al``, opens the VM's and
the vCPU's stats fds (KVM_GET_STATS_FD), prints ``ready``, then for each
line ``run N`` on stdin enters the guest N times (exactly N I/O exits) and
prints ``done``.  The ioctl numbers are x86-64's (<linux/kvm.h>).
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import struct
import sys

KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46
KVM_RUN = 0xAE80
KVM_GET_REGS, KVM_SET_REGS = 0x8090AE81, 0x4090AE82  # struct kvm_regs, 144 B
KVM_GET_SREGS, KVM_SET_SREGS = 0x8138AE83, 0x4138AE84  # kvm_sregs, 312 B
KVM_GET_STATS_FD = 0xAECE
KVM_EXIT_IO = 2

MEM = 0x10000
CODE_AT = 0x1000
CODE = bytes([0xE6, 0x10,   # out 0x10, al
              0xEB, 0xFC])  # jmp back to the out


def main() -> int:
    kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
    mem = mmap.mmap(-1, MEM)
    mem[CODE_AT:CODE_AT + len(CODE)] = CODE
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    region = bytearray(struct.pack("<IIQQQ", 0, 0, 0, MEM, addr))
    fcntl.ioctl(vm, KVM_SET_USER_MEMORY_REGION, region)
    vcpu = fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
    run_size = fcntl.ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0)
    run = mmap.mmap(vcpu, run_size, mmap.MAP_SHARED,
                    mmap.PROT_READ | mmap.PROT_WRITE)
    sregs = bytearray(312)
    fcntl.ioctl(vcpu, KVM_GET_SREGS, sregs)
    struct.pack_into("<Q", sregs, 0, 0)   # cs.base
    struct.pack_into("<H", sregs, 12, 0)  # cs.selector
    fcntl.ioctl(vcpu, KVM_SET_SREGS, sregs)
    regs = bytearray(144)
    struct.pack_into("<QQ", regs, 16 * 8, CODE_AT, 2)  # rip, rflags
    fcntl.ioctl(vcpu, KVM_SET_REGS, regs)
    stats = [fcntl.ioctl(vm, KVM_GET_STATS_FD, 0),
             fcntl.ioctl(vcpu, KVM_GET_STATS_FD, 0)]
    print("ready", *stats, flush=True)
    for line in sys.stdin:
        n = int(line.split()[1])
        for _ in range(n):
            fcntl.ioctl(vcpu, KVM_RUN, 0)
            reason = struct.unpack_from("<I", run, 8)[0]
            if reason != KVM_EXIT_IO:
                print(f"exit {reason}", flush=True)
                return 1
        print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
