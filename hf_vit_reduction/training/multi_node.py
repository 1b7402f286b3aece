"""What a run on more than one machine needs of the network, checked before the process group is created."""

import ipaddress
import socket


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
