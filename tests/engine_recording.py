"""What the engine's updates handle, recorded from outside the engine (`train_one_epoch` runs unchanged): for each
micro-batch the images and labels before augmentation, the augmented images and targets, the model's input and
output, and the logits the criterion saw; the loss handed to backward, and the gradient at each optimizer step."""

import contextlib


@contextlib.contextmanager
def recorded_updates(run):
    """Wrap `run`'s augmentation, criterion and backward, and hook its model, while the block runs; yields `seen`:
    {"batches": [dict per micro-batch], "losses": [the loss each backward got], "criterion": [the criterion's
    value], "grads": {name: gradient} at the last optimizer step}. Logits and outputs are the engine's own objects."""
    seen = {"batches": [], "losses": [], "criterion": []}
    augment, criterion, backward = run.augment, run.criterion, run.accelerator.backward

    def recorded_augment(images, labels):
        batch = {"images": images.clone(), "labels": labels.clone()}  # before timm's Mixup mixes in place
        mixed, targets = augment(images, labels)
        seen["batches"].append(batch | {"mixed": mixed.clone(), "targets": targets.clone()})
        return mixed, targets

    def recorded_criterion(logits, targets):
        loss = criterion(logits, targets)
        seen["criterion"].append(loss.detach().clone())
        seen["batches"][-1]["logits"] = logits
        return loss

    def recorded_backward(loss, **kwargs):
        seen["losses"].append(loss.detach().clone())
        backward(loss, **kwargs)
        if run.accelerator.sync_gradients:  # the gradient the optimizer is about to step with
            seen["grads"] = {n: p.grad.clone() for n, p in run.unwrapped_model.named_parameters()}

    def record_forward(module, args, kwargs, output):
        if module.training:  # the updates' forwards, not an evaluation's
            seen["batches"][-1] |= {"pixel_values": kwargs["pixel_values"].detach(), "output": output}

    run.augment, run.criterion, run.accelerator.backward = recorded_augment, recorded_criterion, recorded_backward
    hook = run.model.register_forward_hook(record_forward, with_kwargs=True)
    try:
        yield seen
    finally:
        hook.remove()
        run.augment, run.criterion, run.accelerator.backward = augment, criterion, backward
