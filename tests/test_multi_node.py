"""Two machines, as two network namespaces joined by a veth pair (as root): the shipped multi-node configuration with
one CPU process on each, against the same run as two processes on one machine."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from script_runs import ROOT, SCRIPT, TWO_PROCESSES, environment, import_script, run_script

from hf_vit_reduction.training.checkpointing import CHECKPOINTS
from hf_vit_reduction.training.multi_node import check_gloo_address

# Each machine's address: a /30 of the test's own, only inside the namespaces it creates.
ADDRESSES = ("10.231.31.1", "10.231.31.2")
PORT = "29500"  # free in a namespace of the test's own
# 128 images at 2 x 16 per update (8 updates an epoch), Mixup/CutMix, EMA and repeated augmentation: 12 updates.
RUN = (
    *("--strategy", "grouped", "--max_train_samples", "128", "--max_eval_samples", "37", "--batch_size", "16"),
    *("--max_train_steps", "12", "--checkpointing_steps", "3", "--workers", "0", "--report_to", "none"),
    *("--mixup", "0.8", "--cutmix", "1.0", "--model_ema", "--model_ema_decay", "0.9"),
)
SAFETY_NET = 300  # seconds: only for a run that hangs; every wait below is on a state


@dataclass
class Machines:
    """The two namespaces; `launch` runs the script on one of them under `multi_node_2x8.yaml`."""

    namespaces: tuple[str, str]
    interfaces: tuple[str, str]
    started: list = field(default_factory=list)

    def launch(self, rank: int, args, *, interface: bool = True) -> subprocess.Popen:
        command = [
            *("ip", "netns", "exec", self.namespaces[rank], sys.executable, "-m", "accelerate.commands.launch"),
            *("--config_file", str(ROOT / "accelerate_configs" / "multi_node_2x8.yaml"), "--mixed_precision", "no"),
            *("--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank)),
            *("--main_process_ip", ADDRESSES[0], "--main_process_port", PORT, SCRIPT, *args),
        ]
        env = environment(**({"GLOO_SOCKET_IFNAME": self.interfaces[rank]} if interface else {}))
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.started.append(process)
        return process

    def power_off(self, rank: int) -> None:
        """SIGKILL to every process of the machine: torchrun starts its workers in sessions of their own."""
        pids = subprocess.run(
            ["ip", "netns", "pids", self.namespaces[rank]], capture_output=True, text=True, check=False
        ).stdout
        for pid in pids.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)

    def run(self, args, **kwargs) -> list[tuple[int, str]]:
        """The same command on both machines, to the end: each machine's exit status and stderr."""
        launches = [self.launch(rank, args, **kwargs) for rank in (0, 1)]
        return [(launch.communicate(timeout=SAFETY_NET)[1], launch.returncode)[::-1] for launch in launches]


def ip(*args) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def machines():
    """Two namespaces, 10.231.31.1 and .2 on a veth pair, each with an /etc/hosts that maps this host's name to
    127.0.0.1 (as many containers do); removed, with every process started in them, whatever happens."""
    tag = f"hfv{os.getpid() % 100000}"
    namespaces, interfaces = (f"{tag}m0", f"{tag}m1"), (f"{tag}v0", f"{tag}v1")
    try:
        ip("netns", "add", namespaces[0])
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"network namespaces cannot be created here (`ip netns add` needs root): {error}")
    netns_etc = Path("/etc/netns")  # `ip netns exec NAME` mounts the files of /etc/netns/NAME over /etc
    created_netns_etc = not netns_etc.exists()
    hosts = [netns_etc / name for name in namespaces]
    running = Machines(namespaces, interfaces)
    try:
        ip("netns", "add", namespaces[1])
        ip(
            "link",
            "add",
            interfaces[0],
            "netns",
            namespaces[0],
            "type",
            "veth",
            "peer",
            interfaces[1],
            "netns",
            namespaces[1],
        )
        for name, interface, address, folder in zip(namespaces, interfaces, ADDRESSES, hosts):
            ip("-n", name, "addr", "add", f"{address}/30", "dev", interface)
            ip("-n", name, "link", "set", interface, "up")
            ip("-n", name, "link", "set", "lo", "up")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hosts").write_text(f"127.0.0.1 localhost\n127.0.0.1 {socket.gethostname()}\n")
        yield running
    finally:
        for rank in (0, 1):
            running.power_off(rank)
        for process in running.started:
            process.wait()
        for name, folder in zip(namespaces, hosts):
            subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)
            (folder / "hosts").unlink(missing_ok=True)
            if folder.is_dir():
                folder.rmdir()
        if created_netns_etc and netns_etc.is_dir():
            netns_etc.rmdir()


@pytest.fixture(scope="module")
def one_machine(tmp_path_factory):
    """The run as two processes on one machine (`cpu_2proc.yaml`), which the two machines must end as."""
    out = tmp_path_factory.mktemp("one_machine") / "run"
    result = run_script([*RUN, "--output_dir", str(out)], TWO_PROCESSES, timeout=SAFETY_NET)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def assert_same_run(reference: Path, run: Path) -> None:
    weights, again = load_file(reference / "model.safetensors"), load_file(run / "model.safetensors")
    assert weights.keys() == again.keys()
    for key in weights:
        assert weights[key].equal(again[key]), key  # bit for bit
    assert (reference / "history.jsonl").read_text() == (run / "history.jsonl").read_text()
    assert json.loads((run / "results.json").read_text())["num_processes"] == 2


@pytest.mark.slow
def test_two_machines_end_as_two_processes_on_one(tmp_path, machines, one_machine):
    out = tmp_path / "run"  # one folder both machines write to, as a cluster's shared storage
    for status, stderr in machines.run([*RUN, "--output_dir", str(out)]):
        assert status == 0, stderr[-3000:]
    assert_same_run(one_machine, out)


@pytest.mark.slow
def test_a_lost_machine_ends_the_other_in_one_line_and_both_resume_exactly(tmp_path, machines, one_machine):
    out = tmp_path / "run"
    launches = [machines.launch(rank, [*RUN, "--output_dir", str(out)]) for rank in (0, 1)]
    deadline = time.monotonic() + SAFETY_NET
    while not (out / CHECKPOINTS / "step_00000003").is_dir():
        for launch in launches:
            assert launch.poll() is None, launch.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    machines.power_off(1)
    lost = time.monotonic()
    stderr = launches[0].communicate(timeout=SAFETY_NET)[1]
    seconds = time.monotonic() - lost
    assert launches[0].returncode != 0 and seconds < 60, (seconds, stderr[-3000:])
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr.split(errors[0])[0], stderr[-3000:]
    assert errors[0].startswith("error: another process of the run was lost after update ")
    assert ADDRESSES[1] in errors[0]  # the lost machine, by its address
    print(errors[0], f"({seconds:.1f} s after the machine was lost)")
    assert not (out / "results.json").exists()
    resumed = machines.run([*RUN, "--output_dir", str(out), "--resume_from_checkpoint", "latest"])
    for status, stderr in resumed:
        assert status == 0, stderr[-3000:]
    assert "resumed from" in resumed[0][1]  # the main process logs
    assert_same_run(one_machine, out)


@pytest.mark.slow
def test_without_gloo_socket_ifname_a_loopback_hostname_is_one_line_on_each_machine(tmp_path, machines):
    started = time.monotonic()
    ended = machines.run([*RUN, "--output_dir", str(tmp_path / "run")], interface=False)
    assert time.monotonic() - started < 120
    for status, stderr in ended:
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert status != 0 and len(errors) == 1, stderr[-3000:]
        assert errors[0].startswith(
            f"error: GLOO_SOCKET_IFNAME is not set on a run of more than one machine (2 processes, 1 here), and this "
            f"machine's hostname {socket.gethostname()!r} resolves to 127.0.0.1, so gloo would give the other "
            "machines a loopback address for it; allowed: GLOO_SOCKET_IFNAME set to the network interface that "
            "reaches the other machines (this one has lo, "
        )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "environ, address, refused",
    [
        ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1"}, "127.0.1.1", True),  # Debian's hostname line
        ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1"}, None, True),  # no address: gloo falls back to 127.0.0.1
        ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1"}, "10.0.0.5", False),
        ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "GLOO_SOCKET_IFNAME": "eth0"}, "127.0.0.1", False),
        ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, "127.0.0.1", False),  # one machine: loopback is right
        ({}, "127.0.0.1", False),
    ],
)
def test_a_loopback_hostname_on_several_machines_is_refused_before_gloo_starts(monkeypatch, environ, address, refused):
    def resolve(host, port):
        assert host == "node-7"
        if address is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 0))]

    monkeypatch.setattr(socket, "gethostname", lambda: "node-7")
    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setattr(socket, "if_nameindex", lambda: [(1, "lo"), (2, "eth0")])
    if not refused:
        check_gloo_address(environ)
        return
    with pytest.raises(ValueError) as error:
        check_gloo_address(environ)
    assert str(error.value) == (
        "GLOO_SOCKET_IFNAME is not set on a run of more than one machine (2 processes, 1 here), and this machine's "
        f"hostname 'node-7' resolves to {address or 'no address'}, so gloo would give the other machines a loopback "
        "address for it; allowed: GLOO_SOCKET_IFNAME set to the network interface that reaches the other machines "
        "(this one has lo, eth0)"
    )


def test_the_script_stops_before_the_process_group(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # gloo, as on a machine without a GPU
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port: [(socket.AF_INET, 1, 6, "", ("127.0.0.1", 0))])
    with pytest.raises(SystemExit) as ended:
        import_script().main(["--output_dir", str(tmp_path / "run"), "--max_train_steps", "1"])
    assert str(ended.value).startswith("error: GLOO_SOCKET_IFNAME is not set on a run of more than one machine")
    assert not (tmp_path / "run").exists()
