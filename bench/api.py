"""Pull API benchmark: draining a backlog, and the agent's own cost.

1. Drain a 1M-record backlog (VM-sample records, 1000 per commit) over
   loopback with the reference client: records/s with and without
   verification in the client, over plain HTTP and TLS.
2. The agent's CPU (% of one core) and RSS at ``interval = 1`` with 50 paused
   KVM guests (``--guests 0`` skips it; needs root, KVM and qemu).

    sudo .venv/bin/python bench/api.py [--records 1000000] [--guests 50]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from integration.agent_process import AgentProcess  # noqa: E402
from integration.certs import CA  # noqa: E402
from vmagent.api.tls import client_context  # noqa: E402
from vmagent.collector import ChainState, Client, verify_batch  # noqa: E402
from vmagent.keys import HostKey  # noqa: E402
from vmagent.wal import Wal  # noqa: E402
from wal import NoSync, vm_sample  # noqa: E402

HOST = "bench-host"


def build_backlog(state: Path, records: int) -> None:
    key = HostKey.load_or_create(state)
    w = Wal(state / "wal", host=HOST, key=key, max_bytes=4 << 30,
            ops=NoSync())
    for i in range(records // 1000):
        w.commit([vm_sample(i, v) for v in range(1000)])
    w.close()
    os.sync()


def drain(client: Client, public: bytes, verify: bool) -> float:
    state, after, n = ChainState(), 0, 0
    t0 = time.perf_counter()
    while True:
        batch = client.batch(after, max_records=10_000)
        frames = batch["frames"]
        if not frames:
            break
        if verify:
            n += sum(1 for _ in verify_batch(batch, state, public))
        else:
            n += frames[-1]["last_seq"] - max(after, frames[0]["first_seq"]
                                              - 1)
        after = frames[-1]["last_seq"]
    return n / (time.perf_counter() - t0)


def drain_table(records: int, work: Path) -> None:
    pki = work / "pki"
    pki.mkdir()
    ca = CA("bench CA")
    ca_file = ca.write(pki / "ca.crt")
    cert, key = ca.issue("127.0.0.1", pki, server=True)
    print("| transport | records/s, no verification | records/s, verified |")
    print("|---|---|---|")
    for name, extra in (("plain HTTP", ""),
                        ("TLS", f'tls_cert = "{cert}"\ntls_key = "{key}"\n')):
        a = AgentProcess(work / name.split()[0], extra_config=extra,
                         interval=3600)
        a.config.write_text(a.config.read_text().replace(
            "[agent]\n", f'[agent]\nhost_id = "{HOST}"\n')
            + '[wal]\nmax_bytes = "4GiB"\n')
        build_backlog(a.state, records)
        a.start()
        try:
            ctx = client_context(ca_file, None, None) if extra else None
            url = a.url.replace("http:", "https:") if extra else a.url
            c = Client(url, "default", a.token(), ssl_context=ctx)
            fast = drain(c, a.public_key(), verify=False)
            checked = drain(c, a.public_key(), verify=True)
            print(f"| {name} | {fast:,.0f} | {checked:,.0f} |", flush=True)
        finally:
            a.kill()


def agent_cost(guests: int, work: Path, seconds: float = 60.0) -> None:
    from sweep import start_guests

    from integration.guests import delete_tap

    running, taps = start_guests(guests, work)
    a = AgentProcess(work / "agent", interval=1)
    try:
        a.start()
        time.sleep(10)  # every guest discovered, steady state
        pid = a.pid()
        tick = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / tick

        c0, t0 = cpu(), time.monotonic()
        time.sleep(seconds)
        share = (cpu() - c0) / (time.monotonic() - t0) * 100
        rss = next(int(line.split()[1]) for line in
                   Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS:"))
        vms = a.request("/v1/status")[1]["vms"]
        print(f"\nagent at interval = 1 with {vms} paused KVM guests, over "
              f"{seconds:.0f} s: CPU {share:.2f} % of one core, RSS "
              f"{rss / 1024:.1f} MiB")
    finally:
        a.kill()
        for g in running:
            g.kill()
        for t in taps:
            delete_tap(t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--guests", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        drain_table(args.records, Path(tmp))
        if args.guests:
            agent_cost(args.guests, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
