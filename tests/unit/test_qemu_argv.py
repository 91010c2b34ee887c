"""QEMU and Firecracker command lines in their many spellings."""

import pytest

from vmagent.probes import argv as A  # noqa: N812

LIBVIRT_ARGV = [
    "/usr/bin/qemu-system-x86_64",
    "-name", "guest=web-01,debug-threads=on",
    "-S",
    "-machine", "pc-q35-7.2,usb=off,dump-guest-core=off,memory-backend=pc.ram",
    "-accel", "kvm",
    "-m", "size=2097152k",
    "-object", '{"qom-type":"memory-backend-ram","id":"pc.ram",'
               '"size":2147483648}',
    "-smp", "4,sockets=4,cores=1,threads=1",
    "-uuid", "8E0B6B1C-3A5D-4F7E-9C2B-1D2E3F4A5B6C",
    "-netdev", '{"type":"tap","fd":"34","vhost":true,"vhostfd":"36",'
               '"id":"hostnet0"}',
    "-device", '{"driver":"virtio-net-pci","netdev":"hostnet0","id":"net0",'
               '"mac":"52:54:00:AB:CD:EF","bus":"pci.1","addr":"0x0"}',
    "-netdev", "tap,fds=40:41,id=hostnet1,vhost=on",
    "-device", "virtio-net-pci,netdev=hostnet1,mac=52:54:00:00:00:02",
]


def test_libvirt_command_line():
    q = A.parse_qemu_argv(LIBVIRT_ARGV)
    assert q.name == "web-01"
    assert q.uuid == "8e0b6b1c-3a5d-4f7e-9c2b-1d2e3f4a5b6c"
    assert q.mem_bytes == 2 << 30
    assert q.vcpus == 4
    assert q.wants_kvm
    assert q.fd_macs == {34: "52:54:00:ab:cd:ef", 40: "52:54:00:00:00:02",
                         41: "52:54:00:00:00:02"}


@pytest.mark.parametrize(("value", "name"), [
    ("guest=a,debug-threads=on", "a"),
    ("plain", "plain"),
    ("plain,process=qemu-plain", "plain"),
    ("debug-threads=on,guest=late", "late"),
    ("guest=a,,b,debug-threads=on", "a,b"),
    ("with space", "with space"),
])
def test_name_spellings(value, name):
    assert A.parse_qemu_argv(["qemu", "-name", value]).name == name


def test_double_dash_options_are_accepted():
    q = A.parse_qemu_argv(["qemu", "--name", "x", "--m", "1G"])
    assert (q.name, q.mem_bytes) == ("x", 1 << 30)


@pytest.mark.parametrize(("value", "size"), [
    ("64", 64 << 20), ("64M", 64 << 20), ("64m", 64 << 20),
    ("2G", 2 << 30), ("1.5G", 3 << 29), ("1048576k", 1 << 30),
    ("size=512", 512 << 20), ("size=4G,slots=4,maxmem=16G", 4 << 30),
    ("1T", 1 << 40), ("4096b", 4096),
])
def test_memory_spellings(value, size):
    assert A.parse_qemu_argv(["qemu", "-m", value]).mem_bytes == size


@pytest.mark.parametrize("value", ["lots", "slots=4", "-1"])
def test_unparseable_memory_is_absent(value):
    assert A.parse_qemu_argv(["qemu", "-m", value]).mem_bytes is None


def test_no_memory_option_is_absent_not_guessed():
    assert A.parse_qemu_argv(["qemu", "-name", "x"]).mem_bytes is None


@pytest.mark.parametrize(("value", "vcpus"), [
    ("2", 2), ("cpus=3", 3), ("4,sockets=2,cores=2", 4),
    ("sockets=2,cores=3,threads=2", 12), ("maxcpus=8", 8),
    ("cpus=2,maxcpus=8", 2), ("sockets=2,dies=2,cores=2", 8),
])
def test_smp_spellings(value, vcpus):
    assert A.parse_qemu_argv(["qemu", "-smp", value]).vcpus == vcpus


def test_smp_garbage_is_absent():
    assert A.parse_qemu_argv(["qemu", "-smp", "cpus=many"]).vcpus is None


@pytest.mark.parametrize("uuid", [
    "11111111-2222-3333-4444-555555555555",
    "11111111222233334444555555555555",
])
def test_uuid_is_canonical_lowercase(uuid):
    q = A.parse_qemu_argv(["qemu", "-uuid", uuid.upper()])
    assert q.uuid == "11111111-2222-3333-4444-555555555555"


def test_invalid_uuid_is_absent():
    assert A.parse_qemu_argv(["qemu", "-uuid", "not-a-uuid"]).uuid is None


def test_tap_macs_by_ifname_from_netdev_and_device():
    q = A.parse_qemu_argv([
        "qemu", "-netdev", "tap,id=n0,ifname=vm0,script=no",
        "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56",
        "-netdev", "user,id=n1",
        "-device", "e1000,netdev=n1,mac=52:54:00:12:34:57",
    ])
    assert q.tap_macs == {"vm0": "52:54:00:12:34:56"}


def test_nic_shorthand():
    q = A.parse_qemu_argv(["qemu", "-nic",
                           "tap,ifname=t1,mac=02:00:00:00:00:01"])
    assert q.tap_macs == {"t1": "02:00:00:00:00:01"}


def test_device_without_mac_gives_no_mac():
    q = A.parse_qemu_argv(["qemu", "-netdev", "tap,id=n0,ifname=vm0",
                           "-device", "virtio-net-pci,netdev=n0"])
    assert q.tap_macs == {}


@pytest.mark.parametrize(("args", "kvm"), [
    (["-enable-kvm"], True), (["-accel", "kvm"], True),
    (["-accel", "tcg"], False), (["-machine", "q35,accel=kvm:tcg"], True),
    (["-M", "pc,accel=tcg"], False), ([], False),
])
def test_wants_kvm(args, kvm):
    assert A.parse_qemu_argv(["qemu", *args]).wants_kvm is kvm


def test_bad_json_option_is_ignored():
    q = A.parse_qemu_argv(["qemu", "-netdev", "{not json", "-name", "ok"])
    assert q.name == "ok"


def test_trailing_option_without_value_is_harmless():
    assert A.parse_qemu_argv(["qemu", "-name"]).name is None


@pytest.mark.parametrize(("argv", "vm_id"), [
    (["firecracker", "--api-sock", "/run/fc.sock", "--id", "vm7"], "vm7"),
    (["firecracker", "--id=vm8"], "vm8"),
    (["firecracker", "--api-sock", "/run/fc.sock"], None),
])
def test_firecracker_id(argv, vm_id):
    assert A.firecracker_id(argv) == vm_id


@pytest.mark.parametrize(("name", "index"), [
    ("CPU 0/KVM", 0), ("CPU 12/KVM", 12), ("CPU 3/TCG", 3),
    ("ALL CPUs/TCG", None), ("qemu-system-x86", None), ("CPU x/KVM", None),
    ("worker", None), ("fc_vcpu 1", 1), ("vcpu3", 3), ("vcpu", None),
])
def test_vcpu_index_from_thread_name(name, index):
    assert A.vcpu_index(name) == index


def test_split_opts_escaped_commas_and_bare_values():
    assert A.split_opts("a,,b,c=d,,e,f") == [
        (None, "a,b"), ("c", "d,e"), (None, "f")]
