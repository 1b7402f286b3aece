import json
import math

import pytest
import torch
from accelerate import Accelerator

from hf_vit_reduction.training.state import TrainState, Update, UpdateMeter, UpdatePlan


def plan(images=None, batch_size=32, grad_accum_steps=1, epochs=3, max_train_steps=None, num_processes=1):
    return UpdatePlan.for_run(
        images_per_process=images,
        batch_size=batch_size,
        grad_accum_steps=grad_accum_steps,
        epochs=epochs,
        max_train_steps=max_train_steps,
        num_processes=num_processes,
    )


def test_an_epoch_holds_whole_accumulation_windows_of_full_batches():
    # 1,000 images: 31 full batches of 32, 7 windows of 4; the 3 batches of a partial window are not drawn.
    run = plan(1000, grad_accum_steps=4, epochs=3)
    assert (run.updates_per_epoch, run.total_updates, run.num_epochs) == (7, 21, 3)
    assert [run.epoch_end(epoch) for epoch in range(3)] == [7, 14, 21]
    assert run.schedule_epochs == 3


def test_max_train_steps_ends_mid_epoch():
    run = plan(1000, grad_accum_steps=4, max_train_steps=10)
    assert (run.total_updates, run.num_epochs, run.epoch_end(1)) == (10, 2, 10)
    assert run.schedule_epochs == pytest.approx(10 / 7)


def test_where_a_resume_starts():
    run = plan(1000, grad_accum_steps=4, epochs=3)
    assert (run.remaining_epochs(0)[0], run.batches_to_skip(0, 0)) == (0, 0)
    assert (run.remaining_epochs(9)[0], run.batches_to_skip(1, 9)) == (1, 8)  # 2 updates of 4 batches into epoch 1
    assert (run.remaining_epochs(7)[0], run.batches_to_skip(1, 7)) == (1, 0)  # a checkpoint at an epoch's end
    assert len(run.remaining_epochs(21)) == 0  # finished: nothing left to do
    assert run.batches_to_skip(2, 9) == 0  # never negative


def test_a_stream_is_one_epoch_of_max_train_steps():
    run = plan(None, max_train_steps=5)
    assert (run.updates_per_epoch, run.total_updates, run.num_epochs) == (5, 5, 1)


@pytest.mark.parametrize("images, batch_size, accum", [(20, 128, 4), (300, 128, 4), (31, 32, 1)])
def test_too_little_data_for_one_update_names_the_flags_to_lower(images, batch_size, accum):
    with pytest.raises(ValueError) as error:
        plan(images, batch_size=batch_size, grad_accum_steps=accum)
    message = str(error.value)
    assert f"one update takes {batch_size * accum} training images per process" in message
    assert f"gets {images} per epoch" in message and "lower --batch_size or --grad_accum_steps" in message


def test_train_state_counts_each_unreadable_file_once_and_round_trips():
    state = TrainState()
    state.note_bad_images(["a.jpg", "b.jpg"])
    state.record_update(update(loss_sum=2.0, batches=1, images=8))
    state.note_bad_images(["a.jpg"])  # drawn again in the next epoch
    state.record_update(update(loss_sum=1.0, batches=1, images=6))
    assert state.bad_train_images == ["a.jpg", "b.jpg"]
    assert (state.seen, state.mean_train_loss()) == (14, 1.5)
    state.step = 3
    saved = json.loads(json.dumps(state.state_dict()))
    assert saved["bad_train_count"] == 2 and saved["bad_train_examples"] == ["a.jpg", "b.jpg"]
    assert set(saved) >= {"step", "elapsed", "seen", "loss_sum", "loss_count", "history"}
    restored = TrainState.from_state_dict(saved)
    assert (restored.step, restored.seen, restored.bad_train_images) == (3, 14, ["a.jpg", "b.jpg"])
    assert restored.wall_time() >= saved["elapsed"]
    state.end_epoch()
    assert (state.loss_sum, state.loss_count) == (0.0, 0)


def update(**fields) -> Update:
    return Update(**{"step": 1, "lr": 0.1, "non_finite": False, "preempted": False, **fields})


def test_the_meter_reads_every_update_since_the_last_read_at_once():
    meter = UpdateMeter(Accelerator(cpu=True))
    # Update 1: two accumulated batches (losses 0.5 and 1.5, 8 and 7 images); update 2: one batch, a signal noted.
    meter.add_batch(torch.tensor(0.5, requires_grad=True), 8)
    meter.add_batch(torch.tensor(1.5), 7)
    meter.end_update(1, lr=0.01, preempted=False)
    meter.add_batch(torch.tensor(3.0), 8)
    meter.end_update(2, lr=0.02, preempted=True)
    first, second = meter.read()
    assert first == update(step=1, lr=0.01, loss_sum=2.0, batches=2, images=15)
    assert (first.loss, second.loss) == (1.0, 3.0)
    assert second == update(step=2, lr=0.02, loss_sum=3.0, batches=1, images=8, preempted=True)
    assert meter.read() == []  # each update is read once
    meter.add_batch(torch.tensor(math.inf), 8)
    meter.add_batch(torch.tensor(2.0), 8)
    meter.end_update(3, lr=0.03, preempted=False)
    (third,) = meter.read()
    assert third.non_finite and third.batches == 2 and not third.preempted
    state = TrainState()
    for each in (first, second):
        state.record_update(each)
    assert (state.seen, state.loss_count, state.mean_train_loss()) == (23, 3, 5.0 / 3)


def test_gathering_bad_images_in_one_process():
    accelerator = Accelerator(cpu=True)
    state = TrainState(bad_train_images=["x.png"])
    state.gather(accelerator)
    assert state.bad_train_images == ["x.png"]
