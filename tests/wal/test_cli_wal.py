"""``vmagent key show``, ``vmagent wal verify`` and ``vmagent wal dump``."""

from __future__ import annotations

import json

from vmagent.cli import main
from vmagent.keys import HostKey
from vmagent.wal import Wal
from wal.helpers import flip_byte, sample, segment_files


def make_state(tmp_path, commits=3):
    state = tmp_path / "state"
    key = HostKey.load_or_create(state)
    w = Wal(state / "wal", host="h9", key=key)
    for i in range(commits):
        w.commit([sample(i)])
    w.close()
    return state, key


def test_key_show_prints_the_public_key_in_hex(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{tmp_path / "s"}"\n')
    assert main(["key", "show", "-c", str(cfg)]) == 0
    shown = capsys.readouterr().out.strip()
    assert bytes.fromhex(shown) == (tmp_path / "s/host.pub").read_bytes()
    assert (tmp_path / "s/host.key").stat().st_mode & 0o777 == 0o600
    assert main(["key", "show", "-c", str(cfg)]) == 0  # the same key again
    assert capsys.readouterr().out.strip() == shown


def test_verify_passes_with_the_state_dirs_key(tmp_path, capsys):
    state, _ = make_state(tmp_path)
    assert main(["wal", "verify", str(state / "wal")]) == 0
    assert capsys.readouterr().out.strip().endswith("3 frames, 3 records: OK")


def test_verify_accepts_a_hex_public_key_file(tmp_path, capsys):
    state, key = make_state(tmp_path)
    hexkey = tmp_path / "pub.hex"
    hexkey.write_text(key.public.hex() + "\n")
    assert main(["wal", "verify", str(state / "wal"), "--pubkey",
                 str(hexkey)]) == 0


def test_verify_fails_naming_segment_offset_and_seq(tmp_path, capsys):
    state, _ = make_state(tmp_path)
    [seg] = segment_files(state / "wal")
    flip_byte(seg, 80 + 40)  # inside the first frame's records
    assert main(["wal", "verify", str(state / "wal")]) == 1
    out = capsys.readouterr().out
    assert f"PROBLEM: {seg.name} offset 80 seq 1: seqs 1-1 missing" in out
    assert "1 unexplained problems" in out


def test_damage_covered_by_a_gap_record_is_reported_but_passes(tmp_path,
                                                               capsys):
    state, key = make_state(tmp_path)
    [seg] = segment_files(state / "wal")
    flip_byte(seg, 80 + 40)
    Wal(state / "wal", host="h9", key=key).close()  # recovery: a gap record
    assert main(["wal", "verify", str(state / "wal")]) == 0
    out = capsys.readouterr().out
    assert "explained:" in out and "covered by a gap record" in out


def test_verify_with_a_bad_key_file_is_a_clear_error(tmp_path, capsys):
    state, _ = make_state(tmp_path)
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    assert main(["wal", "verify", str(state / "wal"), "--pubkey",
                 str(bad)]) == 1
    assert "expected a 32-byte Ed25519 public key" in capsys.readouterr().err


def test_verify_of_a_missing_directory_is_a_clear_error(tmp_path, capsys):
    assert main(["wal", "verify", str(tmp_path / "nope")]) == 1
    assert "not a directory" in capsys.readouterr().err


def test_dump_prints_records_as_json_lines(tmp_path, capsys):
    state, _ = make_state(tmp_path, commits=2)
    assert main(["wal", "dump", str(state / "wal"), "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2]
    assert json.loads(lines[1])["cpu"]["total_ns"] == 1000


def test_dump_text_starts_with_seq_and_kind(tmp_path, capsys):
    state, _ = make_state(tmp_path, commits=1)
    assert main(["wal", "dump", str(state / "wal")]) == 0
    assert capsys.readouterr().out.startswith("1 sample {")
