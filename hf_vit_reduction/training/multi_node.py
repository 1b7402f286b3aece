"""What a run on more than one process or machine needs (the network, the backend its launch asks for), checked
before the process group is created."""

import importlib.util
import ipaddress
import socket

from accelerate.utils import str_to_bool

# The backends `accelerate launch` turns on by environment variable from a config's distributed_type.
LAUNCHED_BACKENDS = {"ACCELERATE_USE_DEEPSPEED": "DeepSpeed", "ACCELERATE_USE_FSDP": "FSDP"}


def check_launched_backend(environ, *, cpu: bool) -> str | None:
    """Raise when the launch asks for DeepSpeed and it is not installed (Accelerate would fail with a traceback);
    return a warning when it asks for DeepSpeed or FSDP on a machine without a GPU, where Accelerate runs neither
    and the run is DDP across its processes (gloo) instead; None otherwise."""
    asked = [name for variable, name in LAUNCHED_BACKENDS.items() if str_to_bool(environ.get(variable, "false"))]
    if "DeepSpeed" in asked and importlib.util.find_spec("deepspeed") is None:
        raise ValueError(
            "the launch configuration asks for DeepSpeed (distributed_type: DEEPSPEED), which is not installed; "
            "allowed: pip install deepspeed, or a configuration without it (e.g. accelerate_configs/ddp_2gpu.yaml)"
        )
    if asked and cpu:
        return (
            f"the launch configuration asks for {asked[0]}, which Accelerate does not run without a GPU: this run "
            "is DDP across its processes (gloo), and its checkpoints are Accelerate's own format"
        )
    return None


def check_gloo_address(environ) -> None:
    """Raise when gloo would give the other machines a loopback address for this one.

    Without GLOO_SOCKET_IFNAME, gloo binds to the address this machine's hostname resolves to, or to 127.0.0.1 when
    it resolves to none; many containers map their hostname to 127.0.0.1. The other machines then cannot reach this
    one: the main machine fails with a long traceback and the others wait for it. torchrun sets the sizes read here.
    """
    world_size = int(environ.get("WORLD_SIZE", 1))
    local_world_size = int(environ.get("LOCAL_WORLD_SIZE", world_size))
    if world_size <= local_world_size or environ.get("GLOO_SOCKET_IFNAME"):
        return
    hostname = socket.gethostname()
    try:
        address = socket.getaddrinfo(hostname, None)[0][4][0]
    except OSError:
        address = None
    if address is not None and not ipaddress.ip_address(address).is_loopback:
        return
    interfaces = ", ".join(name for _, name in socket.if_nameindex())
    raise ValueError(
        f"GLOO_SOCKET_IFNAME is not set on a run of more than one machine ({world_size} processes, {local_world_size} "
        f"here), and this machine's hostname {hostname!r} resolves to {address or 'no address'}, so gloo would give "
        "the other machines a loopback address for it; allowed: GLOO_SOCKET_IFNAME set to the network interface that "
        f"reaches the other machines (this one has {interfaces})"
    )


def missed_rendezvous(error: Exception, *, timeout: int, environ) -> str:
    """The line for a process group whose processes did not all arrive within --ddp_timeout (torch's store timed
    out): the address and port this process waited on, and what the user does."""
    address = f"{environ.get('MASTER_ADDR', '?')}:{environ.get('MASTER_PORT', '?')}"
    return (
        f"the run's other processes did not arrive at {address} within --ddp_timeout {timeout} s ({error}); start "
        "the same command on every machine, check that this address and port are reachable from each (the "
        "configuration's main_process_ip and main_process_port), or pass a longer --ddp_timeout"
    )
