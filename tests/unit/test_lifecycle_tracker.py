"""The lifecycle tracker and the record builders: one vm_start per gen,
ends while down reported once, an exit's status and last counters kept for
its vm_stop, ended gens matchable by accounting for a day."""

from __future__ import annotations

from vmagent import records
from vmagent.lifecycle import (
    ENDED_KEPT_S,
    Lifecycle,
    Previous,
    load_vms,
    save_vms,
)
from vmagent.probes.types import VM, VMRef


def vm(name: str, pid: int) -> VM:
    return VM(ref=VMRef(f"u-{name}", name, f"g-{name}", "kvm"), pid=pid,
              start_mark=100, start_ns=10**18, comm="qemu-system-x86",
              uid=0, vcpus=2, alloc_bytes=1 << 30)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_gen_running_across_a_restart_gets_no_second_vm_start():
    a, b = vm("a", 1), vm("b", 2)
    life = Lifecycle({a.ref.gen: Previous(a, 5)})
    assert life.found(a) is False  # its vm_start went out before
    assert life.found(b) is True
    assert life.stopped_while_down() == []


def test_gens_gone_while_down_are_reported_once():
    a, b = vm("a", 1), vm("b", 2)
    life = Lifecycle({a.ref.gen: Previous(a, 5), b.ref.gen: Previous(b, 7)})
    life.found(a)
    assert life.stopped_while_down() == [Previous(b, 7)]
    assert life.stopped_while_down() == []
    assert b in life.matchable()


def test_a_noticed_exit_carries_its_status_and_last_sample():
    a = vm("a", 7)
    life = Lifecycle({})
    life.found(a)
    life.sampled(a, {"vm": a.record(), "cpu": {"total_ns": 5}}, 1000)
    life.exit_reported(7, 256, 1500)
    ended = life.gone(a)
    assert ended.noticed and ended.status == 256
    assert (ended.at_ns, ended.seen_ns) == (1500, 1000)
    assert ended.last["cpu"] == {"total_ns": 5}
    assert life.running == {}
    assert life.gone(a).noticed is False  # nothing left for a second time


def test_ended_gens_stay_matchable_by_accounting_for_a_day():
    clock = Clock()
    a = vm("a", 7)
    life = Lifecycle({}, clock=clock)
    life.found(a)
    life.gone(a)
    clock.now += ENDED_KEPT_S - 1
    assert life.matchable() == [a]
    clock.now += 2
    assert life.matchable() == []


def test_a_gen_found_gone_knows_when_it_was_last_seen():
    a = vm("a", 7)
    life = Lifecycle({})
    life.found(a)
    life.sampled(a, {}, 2000)
    ended = life.gone(a)
    assert not ended.noticed and ended.at_ns is None
    assert ended.seen_ns == 2000


def test_running_vms_survive_a_restart_through_the_state_file(tmp_path):
    a = vm("a", 7)
    save_vms(tmp_path, [a], {a.ref.gen: 1234})
    [(gen, back)] = load_vms(tmp_path).items()
    assert gen == a.ref.gen and back.vm.pid == 7 and back.vm.ref == a.ref
    assert back.seen_ns == 1234
    (tmp_path / "vms.json").write_text("{not json")
    assert load_vms(tmp_path) == {}


def test_vm_stop_carries_the_last_counters_but_not_the_samples_identity():
    a = vm("a", 7).record()
    assert a["started_ns"] == 10**18
    last = {"vm": {"uuid": "other"}, "cpu": {"total_ns": 9},
            "nics": [{"name": "tap0", "rx_bytes": 1}]}
    stop = records.vm_stop(5, a, {"source": "pidfd"}, last)
    assert stop == {"kind": "vm_stop", "t": 5, "vm": a,
                    "exit": {"source": "pidfd"}, "cpu": {"total_ns": 9},
                    "nics": [{"name": "tap0", "rx_bytes": 1}]}
    assert records.vm_stop(5, a, {"source": "restart"}) == {
        "kind": "vm_stop", "t": 5, "vm": a, "exit": {"source": "restart"}}
