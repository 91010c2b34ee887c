"""The KVM binary stats layout (api.rst 4.133) parsed from literal bytes
built like the kernel's (virt/kvm/binary_stats.c), and the read plan."""

from __future__ import annotations

import struct

import pytest

from vmagent.probes import kvmstats

NAME_SIZE = 48
CUMULATIVE, INSTANT, PEAK, LOG_HIST = 0, 1, 2, 4


def stats_file(stats: list[tuple[str, int, int]]) -> bytes:
    """A stats file: (name, type, size in u64s) each; data all zero."""
    desc_size = 16 + NAME_SIZE
    desc_off = 24 + NAME_SIZE  # header, then the id string
    data_off = desc_off + desc_size * len(stats)
    out = struct.pack("<6I", 0, NAME_SIZE, len(stats), 24, desc_off,
                      data_off) + b"kvm-1234/vcpu-0".ljust(NAME_SIZE, b"\0")
    offset = 0
    for name, kind, size in stats:
        out += struct.pack("<IhHII", kind, 0, size, offset, 0)
        out += name.encode().ljust(NAME_SIZE, b"\0")
        offset += 8 * size
    return out + b"\0" * offset


VCPU = [("halt_poll_fail_hist", LOG_HIST, 32), ("exits", CUMULATIVE, 1),
        ("io_exits", CUMULATIVE, 1), ("max_mmu_page_hash", PEAK, 1)]


def test_plain_stats_are_found_at_their_data_offsets():
    raw = stats_file(VCPU)
    header = kvmstats.parse_header(raw)
    assert header.data_offset == 24 + NAME_SIZE + 4 * (16 + NAME_SIZE)
    offsets = kvmstats.parse_descriptors(raw[header.desc_offset:], header)
    # histograms and peaks are left out; exits follows the 32-bucket hist
    assert offsets == {"exits": 256, "io_exits": 264}


@pytest.mark.parametrize(("raw", "problem"), [
    (b"\0" * 10, "header is 10 bytes"),
    (struct.pack("<6I", 0, 0, 1, 24, 24, 88), "name_size 0"),
    (struct.pack("<6I", 0, 48, 10**6, 24, 24, 88), "num_desc 1000000"),
])
def test_a_bad_header_is_refused_naming_the_problem(raw, problem):
    with pytest.raises(ValueError, match=problem):
        kvmstats.parse_header(raw)


def test_truncated_descriptors_are_refused():
    raw = stats_file(VCPU)
    header = kvmstats.parse_header(raw)
    with pytest.raises(ValueError, match="descriptors are 20 bytes"):
        kvmstats.parse_descriptors(raw[header.desc_offset:][:20], header)


def file_of(offsets: dict[str, int], vcpu: bool,
            data_offset: int = 1000) -> kvmstats.StatsFile:
    return kvmstats.StatsFile(-1, data_offset, offsets, vcpu)


def test_vcpu_counters_are_summed_over_every_vcpu_and_vm_ones_taken_once():
    files = [file_of({"pages_4k": 0, "exits": 40}, vcpu=False),
             file_of({"exits": 8, "io_exits": 16}, vcpu=True),
             file_of({"exits": 8}, vcpu=True)]
    got = kvmstats.sources(files, ["exits", "io_exits", "pages_4k", "x"])
    # io_exits is missing from one vCPU: no partial sum, and the VM's
    # file does not have it either
    assert got == {"exits": [1, 2], "pages_4k": [0]}


def test_each_file_is_read_once_from_its_first_to_its_last_wanted_stat():
    files = [file_of({"a": 16, "b": 64}, vcpu=True, data_offset=500),
             file_of({"a": 8}, vcpu=True, data_offset=700)]
    plan = kvmstats.plan(files, {"debugfs_only": [], "a": [0, 1], "b": [0]})
    assert plan.ranges == [(516, 56), (708, 8)]
    assert sorted(plan.sources) == [(0, 0, 1), (0, 48, 2), (1, 0, 1)]


def test_vcpu_stats_fds_are_copied_only_when_every_vcpu_has_one():
    links = {4: "anon_inode:kvm-vm", 5: "anon_inode:kvm-vcpu:0",
             6: "anon_inode:kvm-vcpu:1", 9: "anon_inode:kvm-vm-stats",
             10: "anon_inode:kvm-vcpu-stats:0"}
    assert kvmstats.fds_to_copy(links) == (9,)
    links[11] = "anon_inode:kvm-vcpu-stats:1"
    links[12] = "anon_inode:kvm-vcpu-stats:1"  # a dup: one is enough
    assert kvmstats.fds_to_copy(links) == (9, 10, 11)
    assert kvmstats.fds_to_copy({4: "anon_inode:kvm-vm"}) == ()
