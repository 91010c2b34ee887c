"""Evidence bundles over literal evidence signed like an agent signs it:
a bundle verifies offline and recomputes the VM's records; a changed
frame, record or certificate, or a foreign key, is named."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import msgpack
import pytest

from unit.test_ledger_book import (
    WAL,
    Evidence,
    M,
    S,
    inventory,
    ns,
    sample,
    start,
)
from vmagent.collector.store import HostRow, StoredFrame
from vmagent.keys import HostKey
from vmagent.ledger import book, close, evidence
from vmagent.ledger.periods import period_of
from vmagent.wal import format as fmt

T0 = ns("2026-11-30T10:00:00+00:00")
UUID = "6f1c2a52-5f0e-4c4a-9d55-2f7d3c1f0a01"
AGENT = "agent-id"


class SignedEvidence(Evidence):
    """Evidence whose frames carry a real hash chain and signatures."""

    def __init__(self, tmp_path, host="hv1", store=None, url="http://x"):
        super().__init__(tmp_path, host, store)
        self.key = HostKey.generate()
        self.store.put_host(HostRow(host, url, "default", "t",
                                    self.key.public))
        self.prev = b"\0" * 32

    def batch(self, *records):
        recs = []
        for r in records:
            self.seq += 1
            recs.append({**r, "seq": self.seq, "host": AGENT})
        body = b"".join(msgpack.packb(r, use_bin_type=True) for r in recs)
        first, last = recs[0]["seq"], recs[-1]["seq"]
        digest = fmt.chain_hash(self.prev, body)
        sig = self.key.sign(fmt.signed_bytes(AGENT, WAL, first, last,
                                             digest))
        frame = StoredFrame(first, last, digest, self.prev, sig,
                            self.key.key_id.hex(), body, recs)
        self.prev = digest
        self.store.save_batch(self.host, WAL, [frame], [], self.seq, digest)
        book.update(self.store, self.host, WAL)
        return self


@pytest.fixture
def ev(tmp_path):
    e = SignedEvidence(tmp_path)
    e.batch({"kind": "agent_start", "t": T0 - S}, start(T0),
            sample(T0 + 20 * M, cpu=20 * S, rx=1000))
    e.batch(sample(T0 + 50 * M, cpu=50 * S, rx=5000))
    e.batch(inventory(T0 + 65 * M, "g1"))
    yield e
    e.close()


def bundle(ev, tmp_path, closed=True):
    if closed:
        key = HostKey.generate()
        ev.store.put_instance_key("c1", key.public, key.key_id.hex())
        close.close(ev.store, period_of(T0, "hour"), key, "c1",
                    T0 + 70 * M)
    out = tmp_path / "vm.evidence.tar.gz"
    evidence.write(ev.store, out, UUID, T0, T0 + 2 * 3600 * S, "hour")
    return out


def rewrite(path, change):
    """The bundle with ``change(members)`` applied."""
    with tarfile.open(path) as tar:
        members = {m.name: tar.extractfile(m).read()
                   for m in tar.getmembers()}
    change(members)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_bundle_verifies_offline_and_recomputes_the_records(ev,
                                                              tmp_path):
    path = bundle(ev, tmp_path)
    ev.close()
    (tmp_path / "collector.db").unlink()  # nothing but the file is needed
    text = evidence.verify(path)
    assert text.startswith("OK: 3 frames of 1 host(s)")
    assert "1 certificate(s) verified" in text
    with tarfile.open(path) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    cpu = [r for r in manifest["records"] if r["meter"] == "cpu_ns"]
    assert sum(int(r["quantity"]) for r in cpu) == 50 * S
    assert {r["status"] for r in manifest["billed"]} == {"final",
                                                         "provisional"}
    assert manifest["verify"] == "vmcollector evidence --verify FILE"


def _frames_member(members):
    return next(n for n in members if n.startswith("frames/"))


def test_a_changed_record_breaks_its_frame(ev, tmp_path):
    path = bundle(ev, tmp_path, closed=False)

    def change(members):
        name = _frames_member(members)
        frames = msgpack.unpackb(members[name], raw=False)
        frames[1]["records"] = frames[1]["records"].replace(
            msgpack.packb(50 * S), msgpack.packb(51 * S))
        members[name] = msgpack.packb(frames, use_bin_type=True)
    rewrite(path, change)
    with pytest.raises(evidence.EvidenceError,
                       match="frame 4-4: hash does not match"):
        evidence.verify(path)


def test_a_dropped_frame_breaks_the_chain(ev, tmp_path):
    path = bundle(ev, tmp_path, closed=False)

    def change(members):
        name = _frames_member(members)
        frames = msgpack.unpackb(members[name], raw=False)
        del frames[1]
        members[name] = msgpack.packb(frames, use_bin_type=True)
    rewrite(path, change)
    with pytest.raises(evidence.EvidenceError, match="seqs 4-4 are neither "
                       "in the bundle nor recorded missing"):
        evidence.verify(path)


def test_records_that_differ_from_the_frames_are_named(ev, tmp_path):
    path = bundle(ev, tmp_path, closed=False)

    def change(members):
        m = json.loads(members["manifest.json"])
        rec = next(r for r in m["records"] if r["meter"] == "cpu_ns")
        rec["quantity"] = "1"
        members["manifest.json"] = json.dumps(m).encode()
    rewrite(path, change)
    with pytest.raises(evidence.EvidenceError,
                       match=r"quantity is \"1\" in the bundle, the frames "
                       r"give \"[0-9]+\""):
        evidence.verify(path)


def test_a_tampered_certificate_in_a_bundle_is_named(ev, tmp_path):
    path = bundle(ev, tmp_path)

    def change(members):
        m = json.loads(members["manifest.json"])
        m["certificates"][0]["certificate"]["records"] += 1
        members["manifest.json"] = json.dumps(m).encode()
    rewrite(path, change)
    with pytest.raises(evidence.EvidenceError, match="bad signature"):
        evidence.verify(path)


def test_a_frame_signed_by_a_foreign_key_is_named(ev, tmp_path):
    path = bundle(ev, tmp_path, closed=False)

    def change(members):
        m = json.loads(members["manifest.json"])
        m["hosts"][0]["pubkeys"] = [HostKey.generate().public.hex()]
        members["manifest.json"] = json.dumps(m).encode()
    rewrite(path, change)
    with pytest.raises(evidence.EvidenceError, match="not one of the "
                       "host's keys"):
        evidence.verify(path)


def test_a_file_that_is_not_a_bundle_is_one_clear_error(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(hashlib.sha256(b"x").digest())
    with pytest.raises(evidence.EvidenceError, match="cannot read"):
        evidence.verify(junk)
    with pytest.raises(evidence.EvidenceError, match="cannot read"):
        evidence.verify(tmp_path / "missing.tar.gz")


def test_a_vm_without_evidence_is_one_clear_error(ev, tmp_path):
    with pytest.raises(evidence.EvidenceError, match="no evidence of VM"):
        evidence.write(ev.store, tmp_path / "x.tar.gz", "nope", T0,
                       T0 + 3600 * S)
