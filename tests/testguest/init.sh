#!/bin/busybox sh
# The test guest's init: load the virtio drivers, bring eth0 up (IPv6 is off
# on the kernel command line, so nothing is sent on its own), then run the
# steps of vmtest.steps=STEP,STEP,... one by one.  Before each step it prints
# "VMTEST STEP n STEP" and waits for a line on the console, so the host can
# read its counters first; after it, "VMTEST DONE n".  Steps:
#   frames:K:S  send K raw frames of S bytes on eth0 (EtherType 0x88B5)
#   dd:M        write M MiB to /dev/vda with O_DIRECT
#   burn:T      keep the vCPU busy for T seconds
#   idle        nothing (a point for the host to read counters)
uptime_cs() {  # /proc/uptime in hundredths of a second
    read -r up _ < /proc/uptime
    echo "${up%.*}${up#*.}"
}
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev \
         virtio_pci failover net_failover virtio_net virtio_blk; do
    insmod "/lib/modules/$m.ko" || echo "VMTEST ERROR insmod $m"
done
n=0
while [ ! -e /sys/class/net/eth0 ] || [ ! -b /dev/vda ]; do
    n=$((n + 1))
    [ $n -gt 500 ] && { echo "VMTEST ERROR no eth0 or vda"; poweroff -f; }
    sleep 0.02
done
ip link set eth0 up
steps=$(sed -n 's/.*vmtest\.steps=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "VMTEST READY"
n=0
for step in $(echo "$steps" | tr ',' ' '); do
    n=$((n + 1))
    echo "VMTEST STEP $n $step"
    read -r _go
    case "$step" in
    frames:*)
        rest=${step#frames:}
        /bin/sendframes eth0 "${rest%%:*}" "${rest#*:}" \
            || echo "VMTEST ERROR frames"
        ;;
    dd:*)
        dd if=/dev/zero of=/dev/vda bs=1048576 count="${step#dd:}" \
           oflag=direct 2>/dev/null || echo "VMTEST ERROR dd"
        ;;
    burn:*)
        end=$(($(uptime_cs) + ${step#burn:} * 100))
        while [ "$(uptime_cs)" -lt "$end" ]; do :; done
        ;;
    idle) ;;
    *) echo "VMTEST ERROR unknown step $step" ;;
    esac
    echo "VMTEST DONE $n"
done
echo "VMTEST END"
poweroff -f
