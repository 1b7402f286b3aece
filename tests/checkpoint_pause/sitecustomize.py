"""Pauses each training process right after checkpoint PAUSE_AFTER_CHECKPOINT is complete, until the test lets it go
on: a kill or a signal then lands at that very point, whatever the machine's load.

Python imports `sitecustomize` at start-up from the path, so with this folder on PYTHONPATH the patch reaches the
processes that `accelerate launch` starts too; it acts only where PAUSE_AFTER_CHECKPOINT is set (see
`script_runs.PausedRun`). Each process writes `paused-<rank>` into PAUSE_DIR, then waits for `go-on` there.
"""

import os

if os.environ.get("PAUSE_AFTER_CHECKPOINT"):
    import time
    from pathlib import Path

    from hf_vit_reduction.training import checkpointing

    pause_step, pause_dir = int(os.environ["PAUSE_AFTER_CHECKPOINT"]), Path(os.environ["PAUSE_DIR"])
    save = checkpointing.CheckpointSaver.save

    def save_then_pause(self, state, **kwargs):
        checkpoint = save(self, state, **kwargs)
        if checkpoint is not None and state.step == pause_step:
            (pause_dir / f"paused-{self.accelerator.process_index}").touch()
            while not (pause_dir / "go-on").exists():
                time.sleep(0.01)  # signal handlers run meanwhile, as they would in training
        return checkpoint

    checkpointing.CheckpointSaver.save = save_then_pause
