"""FreeBSD decoders (native/common/bhyve.c) against byte-exact buffers made
here by an independent encoder (Python ``struct``, layouts from the FreeBSD
headers), including short and malformed ones: clear errors, no crash."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmagent.probes import bhyve

VM_STATS_14 = struct.Struct("<iii4xqq64Q")  # 544 bytes
VM_STATS_13 = struct.Struct("<iiqq64Q")  # 536 bytes
VM_STAT_DESC = struct.Struct("<i128s")  # 132 bytes
IF_DATA = struct.Struct("<6BH2I15Q16s")  # 152 bytes
KF_PATH = 368  # kf_path in struct kinfo_file (KINFO_FILE_SIZE 1392, amd64)
#: struct devstat, LP64: sequence0, allocated, start/end_count, busy_from,
#: dev_links, device_number, device_name[16], unit_number, bytes[4],
#: operations[4], duration[4], busy_time, creation_time, block_size,
#: tag_types[3], flags, device_type, priority, id, sequence1 (288 bytes)
DEVSTAT = struct.Struct("<IiII16s8sI16si4Q4Q64s16s16sI4x3QiiI4xQI4x")


def stats14(cpu=0, index=0, values=(), tv=(1_795_000_000, 123)):
    padded = list(values) + [0] * (64 - len(values))
    return VM_STATS_14.pack(cpu, index, len(values), *tv, *padded)


def stats13(cpu=0, values=(), tv=(1_795_000_000, 5)):
    padded = list(values) + [0] * (64 - len(values))
    return VM_STATS_13.pack(cpu, len(values), *tv, *padded)


def devstat(id_=0, name=b"", unit=-1, rd=(0, 0), wr=(0, 0), seq=(7, 7),
            allocated=1):
    """One record: rd/wr = (bytes, operations) at DEVSTAT_READ/WRITE."""
    return DEVSTAT.pack(seq[0], allocated, 0, 0, b"", b"", 0, name, unit,
                        0, rd[0], wr[0], 999, 0, rd[1], wr[1], 99, b"", b"",
                        b"", 512, 0, 0, 0, 0, 0, 0, id_, seq[1])


def devstat_pages(*records, page=4096):
    """/dev/devstat: page // 288 records a page, free slots zero-filled."""
    per = page // DEVSTAT.size
    out = b""
    for i in range(0, max(len(records), 1), per):
        chunk = b"".join(records[i:i + per])
        out += chunk + bytes(page - len(chunk))
    return out


def kinfo_file(fd, path, ftype=1, flags=0):
    """A packed record: cut to roundup(offsetof(kf_path)+len+1, 8)."""
    raw = path.encode()
    size = (KF_PATH + len(raw) + 1 + 7) // 8 * 8
    head = struct.pack("<iiiiiiq", size, ftype, fd, 1, flags, 0, 0)
    return head + bytes(KF_PATH - len(head)) + raw + bytes(size - KF_PATH
                                                           - len(raw))


def if_data(ipk=1, ierr=2, opk=3, oerr=4, ibytes=5, obytes=6, iqd=7, oqd=8):
    return IF_DATA.pack(6, 0, 6, 14, 2, 0, 152, 1500, 0, 10**9, ipk, ierr,
                        opk, oerr, 0, ibytes, obytes, 0, 0, iqd, oqd, 0, 0,
                        1_795_000_000, bytes(16))


def test_vm_stats_14_layout():
    s = bhyve.decode_vm_stats(stats14(cpu=2, index=64, values=(10, 20, 30)),
                              bhyve.LAYOUT_14)
    assert (s.cpuid, s.index, s.values) == (2, 64, (10, 20, 30))
    assert s.time_us == 1_795_000_000_000_123 and s.last_chunk


def test_vm_stats_13_layout():
    s = bhyve.decode_vm_stats(stats13(cpu=1, values=tuple(range(64))),
                              bhyve.LAYOUT_13)
    assert (s.cpuid, s.index, len(s.values)) == (1, 0, 64)
    assert not s.last_chunk  # a full chunk: ask again from index 64


@pytest.mark.parametrize(("data", "layout"), [
    (stats14()[:543], bhyve.LAYOUT_14), (stats13()[:100], bhyve.LAYOUT_13),
    (VM_STATS_14.pack(0, 0, 65, 0, 0, *[0] * 64), bhyve.LAYOUT_14),
    (VM_STATS_14.pack(0, 0, -1, 0, 0, *[0] * 64), bhyve.LAYOUT_14),
    (stats14(), 99)])
def test_bad_vm_stats_buffers_are_refused(data, layout):
    with pytest.raises(bhyve.DecodeError, match="VM_STATS"):
        bhyve.decode_vm_stats(data, layout)


def test_stats_are_matched_by_description_never_by_index():
    descs = {i: d for i, d in enumerate([
        "vcpu migration across host cpus", "vcpu total runtime",
        "total number of vm exits", "number of times hlt was intercepted",
        "Resident memory"])}
    wire = [bhyve.decode_stat_desc(VM_STAT_DESC.pack(i, d.encode()))
            for i, d in descs.items()]
    assert dict(wire) == descs
    named = bhyve.named_stats(descs, (3, 2_400_000_000, 77, 5, 1 << 20))
    assert bhyve.vcpu_run_ns(named, tsc_freq=2_400_000_000) == 10**9
    assert bhyve.exit_counters(named) == {"exits": 77, "halt_exits": 5}
    assert named[bhyve.RESIDENT] == 1 << 20
    assert bhyve.vcpu_run_ns({}, 1) is None


@pytest.mark.parametrize("data", [b"", VM_STAT_DESC.pack(0, b"x" * 128),
                                  VM_STAT_DESC.pack(0, b"ok")[:100]])
def test_bad_stat_descs_are_refused(data):
    with pytest.raises(bhyve.DecodeError):
        bhyve.decode_stat_desc(data)


def test_if_data_and_the_guest_view():
    host = bhyve.decode_if_data(if_data())
    assert host == {"ipackets": 1, "ierrors": 2, "opackets": 3, "oerrors": 4,
                    "ibytes": 5, "obytes": 6, "iqdrops": 7, "oqdrops": 8}
    nic = bhyve.guest_view("tap0", host)
    assert (nic["rx_packets"], nic["rx_bytes"], nic["rx_drops"]) == (3, 6, 8)
    assert (nic["tx_packets"], nic["tx_bytes"], nic["tx_drops"]) == (1, 5, 7)


@pytest.mark.parametrize("data", [if_data()[:151],
                                  if_data()[:6] + b"\x00\x01" + if_data()[8:]])
def test_bad_if_data_is_refused(data):
    with pytest.raises(bhyve.DecodeError, match="if_data"):
        bhyve.decode_if_data(data)


def test_kinfo_files_of_a_bhyve_process_are_classified():
    data = b"".join([
        kinfo_file(-1, "/usr/home/vm"),  # cwd
        kinfo_file(0, "/dev/null", ftype=1),
        kinfo_file(3, "/dev/vmm/web01", ftype=1),
        kinfo_file(4, "/dev/tap3", ftype=1),
        kinfo_file(5, "/dev/vmnet7", ftype=1),
        kinfo_file(6, "/vm/web01/disk0.img"),
        kinfo_file(7, "/dev/zvol/zroot/vm/web01-data"),
        kinfo_file(8, "", ftype=2),  # a socket
        kinfo_file(9, "/dev/nmdm0A"),
    ])
    files = list(bhyve.iter_kinfo_files(data))
    assert [f.fd for f in files] == [-1, 0, 3, 4, 5, 6, 7, 8, 9]
    got = bhyve.classify(files)
    assert got.vm == "web01"
    assert got.nics == ("tap3", "vmnet7")
    assert got.disks == ("/vm/web01/disk0.img",
                         "/dev/zvol/zroot/vm/web01-data")


@pytest.mark.parametrize("data", [
    kinfo_file(3, "/dev/vmm/x")[:-8],  # cut short
    struct.pack("<i", 7) + bytes(20),  # size not a multiple of 8
    kinfo_file(3, "/x")[:KF_PATH] + b"y" * 8,  # no NUL in the path
    bytes(10)])
def test_malformed_kinfo_files_are_refused(data):
    with pytest.raises(bhyve.DecodeError, match="kinfo_file"):
        list(bhyve.iter_kinfo_files(data))


def test_racct_strings():
    text = ("cputime=12,datasize=1024,memoryuse=2147483648,vmemoryuse=4096,"
            "readbps=10,writebps=20,readiops=1,writeiops=2,wallclock=99,"
            "pcpu=150\0")
    assert bhyve.parse_racct(text) == {
        "cputime": 12, "memoryuse": 2147483648, "vmemoryuse": 4096,
        "readbps": 10, "writebps": 20, "readiops": 1, "writeiops": 2,
        "wallclock": 99, "pcpu": 150}
    assert bhyve.parse_racct("") == {}


@pytest.mark.parametrize("text", ["cputime", "cputime=", "=5", "cputime=1x",
                                  "memoryuse=99999999999999999999999"])
def test_bad_racct_strings_are_refused(text):
    with pytest.raises(bhyve.DecodeError, match="rctl_get_racct"):
        bhyve.parse_racct(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1200))
def test_random_bytes_never_crash_the_decoders(blob):
    for call in (lambda: bhyve.decode_vm_stats(blob, bhyve.LAYOUT_14),
                 lambda: bhyve.decode_stat_desc(blob),
                 lambda: bhyve.decode_if_data(blob),
                 lambda: list(bhyve.iter_kinfo_files(blob)),
                 lambda: bhyve.decode_devstat(blob, 288),
                 lambda: bhyve.parse_racct(blob.decode("latin-1"))):
        with contextlib.suppress(bhyve.DecodeError):
            call()


@pytest.mark.parametrize(("title", "name"), [
    ("bhyve: web01", "web01"), ("bhyve: db with space", "db with space"),
    ("bhyve", None), ("bhyvectl: x", None)])
def test_process_titles(title, name):
    assert bhyve.title_name(title) == name


def test_block_ops_per_disk_sorts_slots_numerically_and_sums_threads():
    from vmagent.probes.freebsd_kernel import Thread

    threads = [Thread(1, "blk-10:0-0", 0, 5, 6),
               Thread(2, "blk-9:0-0", 0, 1, 2),
               Thread(3, "blk-9:0-1", 0, 10, 20),
               Thread(4, "vcpu 0", 0, 99, 99),
               Thread(5, "blk-4:0:1-0", 0, 7, 8)]  # AHCI: slot:func:port
    assert bhyve.block_ops_per_disk(threads, 3) == [(7, 8), (11, 22), (5, 6)]
    assert bhyve.block_ops_per_disk(threads, 2) is None
    assert bhyve.block_ops_per_disk([Thread(1, "blk-x-0", 0, 1, 1)], 1) is None


def test_devstat_records_by_geom_id():
    data = devstat_pages(devstat(0xFFFFF80003A1B200, rd=(4096, 1),
                                 wr=(1 << 40, 3)),
                         devstat(0, b"pass", 0, rd=(5, 5)),  # not GEOM
                         devstat(0x30, rd=(9, 9), allocated=0),  # free slot
                         devstat(0xFFFFF80003A1C000, rd=(512, 2)))
    stats, torn = bhyve.decode_devstat(data, 4096)
    assert torn == 0
    assert stats == {
        0xFFFFF80003A1B200: bhyve.DevStat(4096, 1 << 40, 1, 3),
        0xFFFFF80003A1C000: bhyve.DevStat(512, 0, 2, 0)}


def test_devstat_records_on_later_pages_after_the_padding():
    records = [devstat(0x1000 + i, rd=(i, i)) for i in range(30)]  # 3 pages
    data = devstat_pages(*records)
    assert len(data) == 3 * 4096
    stats, _ = bhyve.decode_devstat(data, 4096)
    assert stats[0x1000 + 29] == bhyve.DevStat(29, 0, 29, 0)
    assert len(stats) == 30
    big, _ = bhyve.decode_devstat(devstat_pages(*records, page=16384), 16384)
    assert big == stats  # 16 KiB pages (arm64): 56 records a page


def test_a_devstat_record_being_updated_is_left_out_and_counted():
    data = devstat_pages(devstat(0x10, rd=(1, 1), seq=(8, 7)),
                         devstat(0x20, rd=(2, 2)))
    stats, torn = bhyve.decode_devstat(data, 4096)
    assert (set(stats), torn) == ({0x20}, 1)


@pytest.mark.parametrize(("data", "page"), [
    (b"\0" * 4095, 4096), (devstat_pages(devstat(1)) + b"\0", 4096),
    (b"\0" * 4096, 100)])
def test_devstat_not_in_whole_pages_is_refused(data, page):
    with pytest.raises(bhyve.DecodeError):
        bhyve.decode_devstat(data, page)


def test_devstat_with_no_devices():
    assert bhyve.decode_devstat(devstat_pages(), 4096) == ({}, 0)


CONFXML = """<mesh>
  <class id="0xffffffff81c4e0e8"><name>ZFS::ZVOL</name>
    <geom id="0xfffff80003a1a500"><class ref="0xffffffff81c4e0e8"/>
      <name>zvol/tank/web01-disk1</name><rank>1</rank>
      <provider id="0xfffff80003a1b200"><geom ref="0xfffff80003a1a500"/>
        <mode>r1w1e0</mode><name>zvol/tank/web01-disk1</name>
        <mediasize>53687091200</mediasize></provider>
    </geom>
  </class>
  <class id="0xffffffff81c4f000"><name>DEV</name>
    <geom id="0xfffff80003a1d000"><class ref="0xffffffff81c4f000"/>
      <name>ada1</name>
      <consumer id="0xfffff80003a1e000"><geom ref="0xfffff80003a1d000"/>
        <provider ref="0xfffff80003a1c000"/><mode>r1w1e1</mode></consumer>
    </geom>
  </class>
  <class id="0xffffffff81c50000"><name>DISK</name>
    <geom id="0xfffff80003a1f000"><name>ada1</name>
      <provider id="0xfffff80003a1c000"><name>ada1</name></provider>
    </geom>
  </class>
</mesh>"""


def test_geom_provider_names_and_ids_from_confxml():
    assert bhyve.geom_provider_ids(CONFXML) == {
        "zvol/tank/web01-disk1": 0xFFFFF80003A1B200,
        "ada1": 0xFFFFF80003A1C000}
    with pytest.raises(bhyve.DecodeError):
        bhyve.geom_provider_ids("<mesh><class>")


@pytest.mark.parametrize(("path", "name"), [
    ("/dev/zvol/tank/web01-disk1", "zvol/tank/web01-disk1"),
    ("/dev/ada1", "ada1"), ("/vm/web01/disk0.img", None)])
def test_geom_names_of_disk_paths(path, name):
    assert bhyve.geom_name(path) == name
