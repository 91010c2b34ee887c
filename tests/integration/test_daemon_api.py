"""A real ``vmagent run`` process: the pull API, acks, auth, bad requests,
status exit codes, reload and bad configs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import msgpack
import pytest

from integration.conftest import wait_until
from vmagent.collector import ChainState, PullError, verify_batch


def pull_all(agent, consumer="default", after=0):
    client = agent.client(consumer)
    state = ChainState(last_seq=after)
    recs = []
    while True:
        batch = client.batch(after, wait=0)
        new = list(verify_batch(batch, state, agent.public_key()))
        if not new:
            return recs, state, batch
        recs += new
        after = state.last_seq


def test_agent_start_record_and_verified_batches(agent):
    a = agent()
    recs, state, batch = pull_all(a)
    assert recs[0]["kind"] == "agent_start"
    assert recs[0]["schema"] == 1 and recs[0]["wal"] == state.wal
    assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
    assert any(r["kind"] == "inventory" for r in recs)
    assert batch["frames"] == [] and batch["first_seq"] is None


def test_sigterm_makes_a_final_durable_sweep_and_exits_0(agent):
    a = agent()
    assert a.stop(signal.SIGTERM) == 0
    kinds = [json.loads(line)["kind"] for line in
             a.cli("wal", "dump", str(a.state / "wal"), "--json")
             .stdout.splitlines()]
    assert kinds[0] == "agent_start" and kinds[-1] == "agent_stop"
    assert a.cli("wal", "verify", str(a.state / "wal")).returncode == 0


def test_long_poll_returns_when_a_commit_lands(agent):
    a = agent(interval=2, fake_vms=1)
    _, state, _ = pull_all(a)
    batch = a.client().batch(state.last_seq, wait=30)
    assert batch["frames"]  # woken by the next sweep's commit, not timed out
    assert batch["frames"][0]["last_seq"] > state.last_seq


def test_acks_are_durable_and_two_consumers_both_get_everything(agent):
    a = agent()
    a.stop()
    with open(a.state / "tokens", "a") as f:
        f.write("audit:" + "a" * 32 + "\n")
    a.start()
    wait_until(lambda: a.client().batch(0)["frames"])
    recs_d, st_d, _ = pull_all(a, "default")
    recs_a, st_a, _ = pull_all(a, "audit")
    common = min(st_d.last_seq, st_a.last_seq)
    assert [r["seq"] for r in recs_d if r["seq"] <= common] == \
        [r["seq"] for r in recs_a if r["seq"] <= common]
    assert a.client("default").ack(st_d.wal, st_d.last_seq) == st_d.last_seq
    a.stop(signal.SIGKILL)
    a.start()
    batch = a.client("default").batch(None)  # from its durable ack
    assert all(f["last_seq"] > st_d.last_seq for f in batch["frames"])
    assert a.client("audit").batch(None)["frames"][0]["first_seq"] == 1


def test_acked_segments_are_deleted_unacked_survive_restarts(agent):
    a = agent('[wal]\nsegment_bytes = "4KiB"\n', interval=0.2, fake_vms=3)
    wait_until(lambda: len(list((a.state / "wal").glob("*.seg"))) >= 3,
               timeout=60)
    recs, state, _ = pull_all(a)
    a.stop(signal.SIGKILL)
    a.start()  # unacked: everything still there
    assert a.client().batch(0)["frames"][0]["first_seq"] == 1
    a.client().ack(state.wal, state.last_seq)
    segs = sorted((a.state / "wal").glob("*.seg"))
    assert int(segs[0].name[:20]) > 1  # wholly acked segments are gone
    status, body = a.request("/v1/batches?consumer=default&after=0")
    assert status == 410
    assert body["missing_from"] == 1 and body["missing_to"] >= 1


def test_lost_state_dir_is_a_new_wal_and_old_cursors_get_409(agent):
    import shutil

    a = agent()
    _, state, _ = pull_all(a)
    old_wal = state.wal
    a.stop(signal.SIGKILL)
    shutil.rmtree(a.state)
    a.start()
    with pytest.raises(PullError) as e:
        a.client().batch(state.last_seq, wal=old_wal)
    assert e.value.status == 409
    assert e.value.body["wal"] != old_wal.hex()
    recs, new_state, _ = pull_all(a)
    assert new_state.wal != old_wal and recs[0]["seq"] == 1


def test_missing_wrong_and_foreign_tokens(agent):
    a = agent()
    status, body = a.request("/v1/batches?consumer=default", token=None)
    assert status == 401 and "bearer token" in body["error"]
    status, body = a.request("/v1/batches?consumer=default",
                             token="x" * 40)
    assert status == 401
    a.stop()
    with open(a.state / "tokens", "a") as f:
        f.write("other:" + "b" * 32 + "\n")
    a.start()
    status, body = a.request("/v1/batches?consumer=default", token="b" * 32)
    assert status == 403
    for path in ("/v1/status", "/metrics"):
        assert a.request(path, token=None)[0] == 401


@pytest.fixture(scope="module")
def shared_agent(tmp_path_factory):
    from integration.agent_process import AgentProcess

    a = AgentProcess(tmp_path_factory.mktemp("shared"), fake_vms=1).start()
    yield a
    a.kill()


@pytest.mark.parametrize(("method", "path", "body", "ctype", "code"), [
    ("GET", "/v1/batches?consumer=default&after=-1", None, "", 400),
    ("GET", "/v1/batches?consumer=default&after=abc", None, "", 400),
    ("GET", "/v1/batches?consumer=default&max=0", None, "", 400),
    ("GET", "/v1/batches?consumer=default&max=10001", None, "", 400),
    ("GET", "/v1/batches?consumer=default&max=99999999999999999999", None,
     "", 400),
    ("GET", "/v1/batches?consumer=default&wait=61", None, "", 400),
    ("GET", "/v1/batches?consumer=default&wait=nan", None, "", 400),
    ("GET", "/v1/batches?consumer=default&after=999999999", None, "", 409),
    ("GET", "/v1/batches?consumer=default&wal=00", None, "", 409),
    ("GET", "/v1/batches", None, "", 400),
    ("POST", "/v1/batches?consumer=default", b"", "", 405),
    ("DELETE", "/v1/ack", None, "", 405),
    ("GET", "/v2/anything", None, "", 404),
    ("POST", "/v1/ack", b"\xc1\xc1garbage", "application/msgpack", 400),
    ("POST", "/v1/ack", b"{not json", "application/json", 400),
    ("POST", "/v1/ack", b"[1, 2]", "application/json", 400),
    ("POST", "/v1/ack", b'{"consumer": "default", "wal": "zz", "seq": 1}',
     "application/json", 400),
    ("POST", "/v1/ack", b'{"consumer": "default", "wal": "00", "seq": -1}',
     "application/json", 400),
    ("POST", "/v1/ack", b'{"consumer": "nobody", "wal": "00", "seq": 1}',
     "application/json", 403),
    ("POST", "/v1/ack", b"x" * 70000, "application/json", 413),
])
def test_malformed_requests_get_json_4xx_and_the_agent_goes_on(
        shared_agent, method, path, body, ctype, code):
    a = shared_agent
    sweeps = a.request("/v1/status")[1]["sweeps"]
    status, reply = a.request(path, method=method, body=body, ctype=ctype)
    assert status == code
    assert isinstance(reply, dict) and reply["error"]
    wait_until(lambda: a.request("/v1/status")[1]["sweeps"] > sweeps)
    assert a.client().batch(0)["frames"][0]["first_seq"] == 1
    assert a.proc is not None and a.proc.poll() is None


def test_ack_beyond_durable_and_of_another_wal_get_409(agent):
    a = agent()
    _, state, _ = pull_all(a)
    body = msgpack.packb({"consumer": "default", "wal": state.wal,
                          "seq": 10**9})
    status, reply = a.request("/v1/ack", "POST", body=body,
                              ctype="application/msgpack")
    assert status == 409 and "beyond" in reply["error"]
    body = json.dumps({"consumer": "default", "wal": "00" * 16, "seq": 1})
    status, reply = a.request("/v1/ack", "POST", body=body.encode(),
                              ctype="application/json")
    assert status == 409 and reply["wal"] == state.wal.hex()


def test_status_running_degraded_and_stopped(agent, tmp_path):
    a = agent()
    r = a.cli("status", "-c", str(a.config))
    assert r.returncode == 0 and ": healthy" in r.stdout
    doc = json.loads(a.cli("status", "-c", str(a.config), "--json").stdout)
    assert doc["health"]["state"] == "healthy"
    assert set(doc) >= {"version", "uptime_s", "interval_s", "last_sweep",
                        "vms", "probes", "wal", "consumers", "errors"}
    a.stop()
    r = a.cli("status", "-c", str(a.config))
    assert r.returncode == 3 and "not running" in r.stderr
    small = agent('[wal]\nmax_bytes = "8KiB"\nsegment_bytes = "4KiB"\n',
                  interval=0.2, fake_vms=3)  # soon full: coalescing
    r = wait_until(lambda: (x := small.cli("status", "-c", str(small.config)))
                   .returncode == 1 and x)
    assert "degraded" in r.stdout and "coalescing" in r.stdout.lower()


def test_metrics_are_prometheus_text(agent):
    a = agent()
    status, body = a.request("/metrics")
    text = body.decode()
    assert status == 200
    assert "vmagent_up 1" in text
    assert 'vmagent_consumer_lag_records{consumer="default"}' in text
    for line in text.splitlines():
        assert line.startswith("#") or len(line.split(" ")) == 2


def test_sighup_reloads_tokens_and_keeps_the_old_if_invalid(agent):
    a = agent()
    with open(a.state / "tokens", "a") as f:
        f.write("late:" + "c" * 32 + "\n")
    a.hup()
    wait_until(lambda: a.request("/v1/batches?consumer=late&after=0",
                                 token="c" * 32)[0] == 200)
    (a.state / "tokens").write_text("broken line without colon\n")
    a.hup()
    wait_until(lambda: "reload_failed" in a.log_text())
    assert a.request("/v1/batches?consumer=late&after=0",
                     token="c" * 32)[0] == 200


@pytest.mark.parametrize(("config", "key"), [
    ('[agent]\ninterval = "sometimes"\n', "agent.interval"),
    ("[agent]\nstate_dir = 5\n", "agent.state_dir"),
    ('[api]\nlisten = "nowhere"\n', "api.listen"),
    ('[api]\nlisten = "0.0.0.0:9740"\n', "api.listen"),
    ('[wal]\nmax_bytes = "lots"\n', "wal.max_bytes"),
    ("[wal]\nsegment_bytes = 10\n", "wal.segment_bytes"),
    ('[probes]\nprocfs = "relative"\n', "probes.procfs"),
    ('[agnet]\nx = 1\n', "agnet"),
    ("not toml at all [[[\n", "-"),
])
def test_each_kind_of_config_mistake_exits_78_with_one_line(tmp_path, config,
                                                            key):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'[agent]\nstate_dir = "{tmp_path / "s"}"\n'
                   if "[agent]" not in config and "state_dir" not in config
                   else "")
    with open(cfg, "a") as f:
        f.write(config)
    for command in ("run", "check-config"):
        r = subprocess.run([sys.executable, "-m", "vmagent.cli", command,
                            "-c", str(cfg)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 78, (command, r.stderr)
        assert r.stderr.count("\n") == 1
        assert f"{cfg}: {key}: " in r.stderr


def test_systemd_notify_ready_status_and_watchdog(tmp_path):
    import socket

    from integration.agent_process import AgentProcess

    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        s.settimeout(30)
        a = AgentProcess(tmp_path / "a", interval=5)
        try:
            a.start(env={"NOTIFY_SOCKET": str(path),
                         "WATCHDOG_USEC": "400000"})
            got = set()
            while not {"READY=1", "WATCHDOG=1"} <= got:
                got |= set(s.recv(4096).decode().splitlines())
            assert any(m.startswith("STATUS=") for m in got)
            assert a.stop(signal.SIGINT) == 0
            while "STOPPING=1" not in got:
                got |= set(s.recv(4096).decode().splitlines())
        finally:
            a.kill()


def test_stalled_clients_never_delay_sweeps(shared_agent):
    import socket

    a = shared_agent
    stalled = []
    for payload in (b"", b"GET /v1/batches?consumer=default HTTP/1.1\r\n"):
        s = socket.create_connection(("127.0.0.1", a.port))
        s.sendall(payload)  # and then nothing more
        stalled.append(s)
    polling = threading.Thread(target=lambda: a.client().batch(None, wait=20),
                               daemon=True)
    polling.start()  # a long-poll parked on the server
    try:
        sweeps = a.request("/v1/status")[1]["sweeps"]
        wait_until(lambda: a.request("/v1/status")[1]["sweeps"] >= sweeps + 3)
        assert a.client().batch(0)["frames"]
    finally:
        for s in stalled:
            s.close()


def test_pull_command_prints_verified_records_then_acks(shared_agent,
                                                        tmp_path):
    a = shared_agent
    token = tmp_path / "token"
    token.write_text(a.token() + "\n")
    pub = a.state / "host.pub"
    r = a.cli("pull", a.url, "--consumer", "default", "--token-file",
              str(token), "--pubkey", str(pub), "--after", "0", "--ack",
              "--json")
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert recs[0]["seq"] == 1 and recs[0]["kind"] == "agent_start"
    assert [x["seq"] for x in recs] == list(range(1, len(recs) + 1))
    acked = a.request("/v1/status")[1]["consumers"]["default"]["acked_seq"]
    assert acked >= recs[-1]["seq"]


def test_pull_command_refuses_frames_signed_by_another_key(shared_agent,
                                                           tmp_path):
    from vmagent.keys import HostKey

    a = shared_agent
    token = tmp_path / "token"
    token.write_text(a.token())
    other = tmp_path / "other.pub"
    other.write_text(HostKey.generate().public.hex())
    r = a.cli("pull", a.url, "--consumer", "default", "--token-file",
              str(token), "--pubkey", str(other), "--after", "0", "--ack")
    assert r.returncode == 1
    assert "verification failed" in r.stderr and "another key" in r.stderr
    assert r.stdout == ""  # nothing unverified is printed


def test_a_port_in_use_is_a_clear_error(shared_agent, tmp_path):
    from integration.agent_process import AgentProcess

    other = AgentProcess(tmp_path)
    other.config.write_text(other.config.read_text().replace(
        f"127.0.0.1:{other.port}", f"127.0.0.1:{shared_agent.port}"))
    r = other.cli("run", "-c", str(other.config))
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{shared_agent.port}: Address " \
        "already in use" in r.stderr
    assert "Traceback" not in r.stderr
