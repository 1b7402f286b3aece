"""Preemption: a scheduler's SIGTERM or SIGUSR1 becomes a checkpoint at the next update and a distinct exit status.

SLURM sends SIGTERM (or, with `--signal=USR1@SECONDS`, SIGUSR1 ahead of time) and kills the job a grace period
later. The signal may reach any one process of a run; the handler only notes it. Each update carries this
process's flag in the loop's one reduced tensor (`state.UpdateMeter`), so the processes agree, at the update where
the host next reads it (within --log_interval updates, and before any checkpoint), to write a checkpoint together
and exit with `PREEMPTED_EXIT_STATUS`; at an epoch's end, after its checkpoint, they agree in one all-reduce.
"""

import logging
import re
import signal

import torch

# sysexits.h's EX_TEMPFAIL: "a temporary failure; the user is invited to retry". A requeue script tells it from 0
# (finished) and from 1 (failed). torchrun (`accelerate launch` with several processes) exits 1 whenever a worker
# exits non-zero, so there the line below and the checkpoint tell a preemption from a failure.
PREEMPTED_EXIT_STATUS = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
logger = logging.getLogger(__name__)


def is_lost_process(error: Exception) -> bool:
    """Whether a failure is a collective's that lost its peer: torch raises DistError, or gloo's RuntimeError."""
    return isinstance(error, torch.distributed.DistError) or "/gloo/" in str(error)


def lost_process(error: Exception, *, step: int) -> str:
    """One line for a collective that failed because another process of the run is gone (killed, out of memory).

    gloo notices at once (the peer's socket closes); its message starts with the C++ source location."""
    reason = re.sub(r"^\[[^\]]*\]\s*", "", str(error).strip().splitlines()[0]).split(". This is typically")[0]
    return f"another process of the run was lost after update {step} ({type(error).__name__}: {reason})"


class Preempted(SystemExit):
    """The run stopped for a signal after writing a checkpoint; exits with `PREEMPTED_EXIT_STATUS`."""

    def __init__(self):
        super().__init__(PREEMPTED_EXIT_STATUS)


class PreemptionWatch:
    """Notes SIGTERM/SIGUSR1 on this process; `requested()` says, on every process alike, whether any got one."""

    def __init__(self, accelerator, signals=SIGNALS):
        self.accelerator = accelerator
        self.received: str | None = None
        self._previous = {number: signal.signal(number, self._note) for number in signals}

    def _note(self, number, frame) -> None:
        self.received = signal.Signals(number).name

    @property
    def signalled(self) -> bool:
        """Whether this process got a signal (what it adds to the loop's reduced tensor)."""
        return self.received is not None

    def requested(self) -> bool:
        """Call at the same point on every process: one all-reduce of the flags."""
        flag = torch.tensor([float(self.signalled)], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, "sum")
        return bool(flag.item())

    def stop_if_requested(self, saver, state) -> None:
        """When any process got a signal: `stop`."""
        if self.requested():
            self.stop(saver, state)

    def stop(self, saver, state) -> None:
        """Call on every process together: a checkpoint of this update (unless one exists), written whatever
        --checkpointing_steps says, then `Preempted`."""
        checkpoint = saver.saved(state.step) or saver.save(state, force=True)
        if self.accelerator.is_main_process:
            logger.warning(
                "preempted (%s) at step %d: checkpoint %s is complete; exiting with status %d. Run the same command "
                "with --resume_from_checkpoint auto (or latest) to go on exactly from it",
                self.received or "a signal on another process",
                state.step,
                checkpoint,
                PREEMPTED_EXIT_STATUS,
            )
        self.close()
        raise Preempted()

    def close(self) -> None:
        """Give the signals back to their previous handlers."""
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}
