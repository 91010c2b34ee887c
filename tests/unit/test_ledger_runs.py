"""A gen's samples inside one slice are added up at once (a run, in
ledger/facts.py): on random evidence -- several VMs and gens, slices
crossed, configuration and owner changes, outages, counters restarted,
NICs and disks that come and go, clocks that step back, stops, lost VMs,
batches cut anywhere -- the ledger is exactly what folding each sample by
itself gives."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vmagent.ledger.facts import RSS, Fold, GenState, HostState, SliceAcc

S = 10**9
T0 = 1_796_032_800 * S  # 2026-11-30T10:00:00Z
UUIDS = ("6f1c0b9e-0000-4000-8000-000000000001",
         "6f1c0b9e-0000-4000-8000-000000000002")

events = st.lists(st.tuples(
    st.sampled_from(["sample"] * 8 + ["config", "restart", "stop",
                                      "outage", "inventory", "step"]),
    st.integers(0, 1),  # which VM
    st.sampled_from([1, 10, 10, 10, 60, 7 * 60, 20 * 60, 0, -5]),  # step s
    st.integers(0, 7),  # the counters' shape
    st.integers(0, 10**6)), min_size=1, max_size=60)


def evidence(steps: list[tuple[str, int, int, int, int]]) \
        -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"kind": "agent_start", "t": T0 - 60 * S,
                                  "seq": 1}]
    t = T0
    gens = [0, 0]
    counters = [[0] * 6, [0] * 6]

    def vm(i: int) -> dict[str, Any]:
        return {"uuid": UUIDS[i], "gen": f"g{gens[i]}", "name": f"vm{i}",
                "started_ns": T0 - 30 * S}

    for kind, i, step, shape, amount in steps:
        t += step * S
        rec: dict[str, Any] = {"t": t, "seq": len(out) + 1}
        if kind == "sample":
            c = counters[i]
            for k in range(6):
                c[k] = amount % (c[k] + 1) if shape == 7 and k == 2 \
                    else c[k] + amount * (k + 1)
            rec |= {"kind": "sample", "vm": vm(i),
                    "cpu": {"total_ns": c[0], "vhost_ns": c[1],
                            "vcpus": [{"id": 0}] * (shape % 3)},
                    "mem": {"rss_bytes": amount, "alloc_bytes":
                            None if shape == 5 else 1 << 30}}
            if shape != 1:
                rec["nics"] = [{"name": "tap0", "mac": "52:54:00:00:00:01",
                                "rx_bytes": c[2], "tx_bytes": c[3]}]
            if shape in (2, 3, 7):
                rec["disks"] = [{"path": "/d", "rd_bytes": c[4],
                                 "wr_ops": c[5]}]
            if shape != 4:
                rec["io"] = {"rd_bytes": c[4], "wr_bytes": c[5]}
        elif kind == "config":
            rec |= {"kind": "vm_config", "vm": vm(i),
                    "changed": {"vcpus": [2, 1 + shape]}}
        elif kind == "restart":
            gens[i] += 1
            counters[i] = [0] * 6
            rec |= {"kind": "vm_start", "vm": vm(i) | {"started_ns": t},
                    "config": {"vcpus": 2, "alloc_bytes": 1 << 30}}
        elif kind == "stop":
            rec |= {"kind": "vm_stop", "vm": vm(i),
                    "exit": {"at_ns": t, "code": 0}}
        elif kind == "outage":
            rec |= {"kind": "agent_start" if shape % 2 else "gap"}
        elif kind == "inventory":
            rec |= {"kind": "inventory", "vms": [vm(i)]}
        else:
            rec |= {"kind": "clock_step", "step_ns": amount}
        out.append(rec)
    return out


def ledger(records: list[dict[str, Any]], cuts: list[int],
           owner_cuts: list[int], runs: bool) -> Any:
    """Folded in batches as the book folds them (state through JSON),
    slices merged as the book merges them."""
    host, stored = HostState(), {}
    slices: dict[Any, Any] = {}
    for a, b in zip([0, *cuts], [*cuts, len(records)]):
        fold = Fold(HostState(**json.loads(json.dumps(vars(host)))),
                    lambda u, g: GenState.from_json(stored[(u, g)])
                    if (u, g) in stored else None,
                    lambda u: owner_cuts if u == UUIDS[0] else [])
        fold.RUNS = runs
        fold.feed("00", [dict(r) for r in records[a:b]])
        host = fold.host
        for key, g in fold.gens.items():
            stored[key] = json.loads(json.dumps(g.to_json()))
        for sid, acc in fold.slices.items():
            slices[sid] = merged(slices.get(sid), acc)
    return vars(host), stored, slices


def merged(old: Any, acc: SliceAcc) -> Any:
    if old is None:
        old = {"end": acc.end_ns, "q": {}, "seqs": {}, "n": [0, 0, 0]}
    old["end"] = max(old["end"], acc.end_ns)
    old["config"] = (acc.vcpus, acc.mem)
    for k, v in acc.quantities.items():
        old["q"][k] = max(old["q"].get(k, v), v) if k == RSS \
            else old["q"].get(k, 0) + v
    for wal, (lo, hi) in acc.seqs.items():
        cur = old["seqs"].setdefault(wal, [lo, hi])
        cur[:] = [min(cur[0], lo), max(cur[1], hi)]
    old["n"] = [old["n"][0] + acc.samples,
                old["n"][1] + acc.interpolated_ns,
                old["n"][2] + acc.clock_step_ns]
    return old


@settings(max_examples=400, deadline=None)
@given(steps=events, cuts=st.lists(st.integers(1, 59), max_size=4),
       owner=st.lists(st.integers(0, 3 * 3600), max_size=3))
def test_runs_give_what_folding_each_sample_gives(steps, cuts, owner):
    records = evidence(steps)
    batches = sorted({c for c in cuts if c < len(records)})
    owner_cuts = sorted(T0 + o * S for o in owner)
    assert ledger(records, batches, owner_cuts, runs=True) == \
        ledger(records, batches, owner_cuts, runs=False)


def test_a_run_adds_each_counter_once_per_slice():
    records = evidence([("sample", 0, 10, 0, 100)] * 50)
    _, _, slices = ledger(records, [], [], runs=True)
    rx = sum(s["q"].get(("net_rx_bytes", "52:54:00:00:00:01"), 0)
             for s in slices.values())
    # rx grew by 300 a sample; the gen is fresh: counted from 0
    assert rx == 50 * 300
    assert sum(s["n"][0] for s in slices.values()) == 50
