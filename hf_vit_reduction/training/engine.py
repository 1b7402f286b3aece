"""The training engine: a run's parts (`Run`), `build`, the epoch loop, `validate` and `finish`.

`hf-vit-reduction train` and `run_image_classification.py` both run `main`: parse, build, train, finish.
"""

import datetime
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import transformers
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed
from timm.scheduler.scheduler import Scheduler
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import BaseImageProcessor

from .. import ViTReducedConfig, ViTReducedForImageClassification, summarize
from ..evaluation.scoring import evaluate_model, evaluate_model_and_ema
from ..hub.locating import LocatedModel
from ..hub.model_card import write_model_card
from ..hub.provenance import recovery_provenance, write_provenance
from ..hub.pushing import HubPusher, HubPushError
from ..image_processing_vit_reduced import PREPROCESSING_FIELDS, Preprocessing
from . import loaders, outputs
from .arguments import parse_args
from .builders import (
    BatchAugmentation,
    Normalize,
    SharedWeightsModelEma,
    build_batch_augmentation,
    build_ema,
    build_optimizer,
    build_scheduler,
    build_train_criterion,
    build_transforms,
    configure_torch_backends,
)
from .checkpointing import (
    AUTO,
    CheckpointSaver,
    check_output_dir,
    check_same_run,
    remove_partial_checkpoints,
    resolve,
    skip_batches,
)
from .compile import compile_model
from .config import (
    FITTED,
    RunConfig,
    batch_augmentation_kwargs,
    criterion_kwargs,
    ema_kwargs,
    fitted_to_dataset,
    scheduler_kwargs,
    train_loader_kwargs,
    transform_kwargs,
)
from .data import (
    LOADING_ARGUMENTS,
    ImageClassificationData,
    check_readable,
    list_dataset_folder,
    listed_by_main_process,
    load_image_classification_data,
    take,
)
from .distillation import Distiller, load_teacher, student_heads
from .labels import SAME, LabelMatch, match_labels
from .loop_benchmark import LoopBenchmark
from .multi_node import check_gloo_address, check_launched_backend, missed_rendezvous
from .outputs import DiskFullError
from .preemption import PreemptionWatch, is_lost_process, lost_process
from .starting_model import STARTING_MODEL, locate_starting_model, run_preprocessing
from .state import TrainState, Update, UpdateMeter, UpdatePlan

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """What a training run is made of, built once by `build`; `state` is what changes as it trains."""

    config: RunConfig
    accelerator: Accelerator
    data: ImageClassificationData
    columns: dict  # how the loaders read an example: image and label columns, what to do with a bad image
    eval_transform: Callable  # a PIL image to the evaluation tensor
    train_sampler: Sampler | None  # None for a stream, which shards itself
    train_loader: DataLoader
    eval_loader: DataLoader
    model: torch.nn.Module  # as prepared by Accelerate
    ema: SharedWeightsModelEma | None
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    criterion: torch.nn.Module
    distiller: Distiller | None  # --teacher_model_name_or_path: adds the teacher's term to the loss
    normalize: Normalize  # the loaders' uint8 images to the model's floats, on the device
    augment: BatchAugmentation  # (images, labels) -> (images, targets): Mixup/CutMix and erasing, or nothing
    plan: UpdatePlan
    saver: CheckpointSaver
    state: TrainState
    processor: BaseImageProcessor  # saved beside every model, for pipeline("image-classification")
    pusher: HubPusher | None  # --push_to_hub, on the main process: pushes saves in the background
    preemption: PreemptionWatch  # SIGTERM/SIGUSR1: a checkpoint at the next update, then exit status 75
    summary: dict
    run_config: dict
    start: LocatedModel | None  # --model_name_or_path: where it is (its Hub commit), for the provenance
    top1_before: float | None  # --model_name_or_path: the starting model's top-1, for the provenance
    labels: LabelMatch | None  # --model_name_or_path: how its labels were matched to the data's, for the provenance
    progress: tqdm  # one bar for the whole run, on the main process

    @property
    def unwrapped_model(self) -> ViTReducedForImageClassification:
        return self.accelerator.unwrap_model(self.model)

    def evaluation_due(self, epoch: int) -> bool:
        """Every --eval_every epochs, and after the last."""
        return (epoch + 1) % self.config.eval_every == 0 or epoch == self.plan.num_epochs - 1

    @property
    def reported_model(self) -> torch.nn.Module:
        """The EMA's weights when EMA is on, as timm reports them."""
        return self.ema.module if self.ema is not None else self.model


def main(argv: list[str] | None = None) -> None:
    """`hf-vit-reduction train`: parse, build, train, finish (the loop as `run_image_classification.py` shows it)."""
    config = parse_args(argv)
    with running(config) as run:
        if config.benchmark_loop:  # this loop on in-memory data against the bare step, then stop
            LoopBenchmark(run).measure()
            return
        train(run)
        finish(run)


@contextmanager
def running(config: RunConfig) -> Iterator[Run]:
    """The built run; every bad input ends in one `error:` line before any long work, and a full disk or a lost
    process during the run in one line that says how to resume."""
    configure_torch_backends(tf32=config.tf32, cudnn_benchmark=config.cudnn_benchmark)
    cpu = not torch.cuda.is_available()
    try:  # every bad path, source, split, column, size or checkpoint fails here, before any long work
        if cpu:  # gloo: the processes find each other by the addresses it gives them
            check_gloo_address(os.environ)
        backend_not_run = check_launched_backend(os.environ, cpu=cpu)
        # cpu: also lets a MULTI_GPU config run gloo
        process = PartialState(cpu=cpu, timeout=datetime.timedelta(seconds=config.ddp_timeout))
        configure_logging(is_main_process=process.is_main_process)
        if backend_not_run:
            logger.warning(backend_not_run)
        run = build(config, process)
    except (ValueError, FileNotFoundError, NotADirectoryError, HubPushError) as error:
        raise SystemExit(f"error: {error}") from None
    except (torch.distributed.DistStoreError, torch.distributed.DistNetworkError) as error:  # a machine never came
        raise SystemExit(
            f"error: {missed_rendezvous(error, timeout=config.ddp_timeout, environ=os.environ)}"
        ) from None
    try:
        yield run
    except DiskFullError as error:  # raised on every process together; the last complete checkpoint stays
        raise SystemExit(f"error: {error}. {run.saver.resume_hint('free space')}") from None
    except loaders.UnreadableImageError as error:  # --on_bad_image error, on an image the run drew
        hint = run.saver.resume_hint("replace or remove the file (or pass --on_bad_image skip)")
        raise SystemExit(f"error: {error.line()}. {hint}") from None
    except RuntimeError as error:
        if not is_lost_process(error):
            raise
        # Another process died: this one ends instead of waiting, and says so at once (a launcher stops it soon).
        hint = run.saver.resume_hint("find out why it ended (the launcher names it)")
        print(f"error: {lost_process(error, step=run.state.step)}. {hint}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        run.preemption.close()
        run.progress.close()


def train(run: Run, callbacks=()) -> None:
    """Epochs of updates, each followed by an evaluation (every --eval_every epochs, and the last) and a checkpoint.

    Each callback's `on_update(state)` is called after every optimizer update.
    """
    for epoch in run.plan.remaining_epochs(run.state.step):
        train_one_epoch(run, epoch, callbacks)
        if run.evaluation_due(epoch):
            validate(run, epoch)
        end_epoch(run)


def end_epoch(run: Run) -> None:
    """The epoch's checkpoint, then a requested stop (SIGTERM) takes effect."""
    run.state.end_epoch()
    save_checkpoint(run)
    run.preemption.stop_if_requested(run.saver, run.state)


def train_one_epoch(run: Run, epoch: int, callbacks=()) -> None:
    """The epoch's updates: augment on the device, forward, loss, backward, step, EMA, log, mid-epoch checkpoints.

    The host waits for the device once per --log_interval updates (`UpdateMeter.read`), and before a checkpoint
    and at the epoch's end; no batch and no update waits on its own.
    """
    config, accelerator, model, state = run.config, run.accelerator, run.model, run.state
    run.scheduler.step(epoch)
    (run.train_sampler or run.train_loader.dataset).set_epoch(epoch)
    run.train_loader.generator.manual_seed(config.seed + epoch)  # a stream's worker seeds: a function of the epoch
    epoch_end = run.plan.epoch_end(epoch)
    meter = UpdateMeter(accelerator)
    timing_compile = config.torch_compile and state.compile_seconds is None
    start = time.perf_counter()
    model.train()
    for batch in skip_batches(run.train_loader, run.plan.batches_to_skip(epoch, state.step)):
        if state.step >= epoch_end:
            break  # whole accumulation windows per epoch: updates never straddle epochs
        state.note_bad_images(batch["bad_images"])
        images = run.normalize(batch["pixel_values"].to(accelerator.device, non_blocking=True))
        labels = batch["labels"].to(accelerator.device, non_blocking=True)
        images, targets = run.augment(images, labels)  # drops the odd image out of a Mixup pair
        if len(targets) == 0:
            continue  # every image of the batch was unreadable
        if config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with accelerator.accumulate(model), accelerator.autocast():
            # A distilled student (DeiT) learns the targets with its class head and the teacher with its other head.
            logits, distillation_logits = student_heads(model(pixel_values=images), run.distiller)
            loss = run.criterion(logits, targets)
            if run.distiller is not None:
                loss = run.distiller(loss, distillation_logits, images)
            accelerator.backward(loss)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        meter.add_batch(loss, len(targets))
        if not accelerator.sync_gradients:
            continue
        state.step += 1
        meter.end_update(state.step, lr=run.optimizer.param_groups[0]["lr"], preempted=run.preemption.signalled)
        run.scheduler.step_update(num_updates=state.step)
        if run.ema is not None:
            run.ema.update(run.unwrapped_model, step=state.step)
        for callback in callbacks:
            callback.on_update(state)
        checkpoint_due = run.saver.due(state.step) and state.step < epoch_end
        if timing_compile or checkpoint_due or state.step % config.log_interval == 0 or state.step == epoch_end:
            read_updates(run, meter, stop_if_preempted=state.step < epoch_end)  # the epoch's end stops after it
        if timing_compile:
            timing_compile, state.compile_seconds = False, time.perf_counter() - start
            logger.info(
                "compiled in %.1f s (the first update's graphs; evaluation's at the first evaluation)",
                state.compile_seconds,
            )
        if checkpoint_due:
            save_checkpoint(run)
    read_updates(run, meter, stop_if_preempted=False)  # a loader that ran out early
    if state.step < epoch_end:
        logger.warning("the data ran out after %d of %d updates", state.step, epoch_end)


def read_updates(run: Run, meter: UpdateMeter, *, stop_if_preempted: bool) -> None:
    """The updates since the last read, copied to the host at once: counted, logged, and checked before the EMA's
    or the model's weights can be written; a signal to any process stops the run here, after a checkpoint."""
    updates = meter.read()
    for update in updates:
        if update.non_finite:
            raise SystemExit(
                f"error: non-finite loss ({update.loss}) at step {update.step}; last good checkpoint: "
                f"{run.saver.latest() or 'none'}. Nothing was written after it."
            )
        run.state.record_update(update)
        log_update(run, update)
    if stop_if_preempted and any(update.preempted for update in updates):
        run.preemption.stop(run.saver, run.state)


def validate(run: Run, epoch: int) -> dict:
    """The epoch's row (training loss, the model's and its EMA's top-1/top-5 and loss, the reported figures), added
    to the history; a new peak is saved as the best model."""
    row = {"epoch": epoch, "step": run.state.step, "train_loss": run.state.mean_train_loss()}
    row |= evaluate_model_and_ema(run.model, run.ema, run.eval_loader, run.accelerator, normalize=run.normalize)
    if run.accelerator.log_with:
        run.accelerator.log({f"eval/{k}": v for k, v in row.items() if k not in ("epoch", "step")}, step=row["step"])
    logger.info("epoch %d: top-1 %.2f%%, top-5 %.2f%%", epoch, row["top1"], row["top5"])
    if run.state.history.add(row):  # a new peak: keep it as the best model
        outputs.save_model(run.accelerator, run.reported_model, run.processor, f"{run.config.output_dir}/best_model")
    write_progress(run)
    return row


def write_progress(run: Run) -> None:
    """history.jsonl and the curves, rewritten after each evaluation so that a running job can be followed."""
    if run.accelerator.is_main_process:
        outputs.write_history(f"{run.config.output_dir}/history.jsonl", run.state.history)
        outputs.plot_history(f"{run.config.output_dir}/training_curves.png", run.state.history, run.config.experiment)


def save_checkpoint(run: Run) -> None:
    """A checkpoint, and with --push_to_hub the run folder pushed in the background (the loop does not wait)."""
    checkpoint = run.saver.save(run.state)
    if checkpoint is not None and run.pusher is not None:
        run.pusher.on_save(run.config.output_dir, checkpoint=checkpoint, message=f"step {run.state.step}")


def finish(run: Run) -> None:
    """The final model, results.json and the run's closing lines."""
    config, accelerator, state = run.config, run.accelerator, run.state
    outputs.save_model(accelerator, run.reported_model, run.processor, config.output_dir)
    state.gather(accelerator)
    results = outputs.results(
        history=state.history,
        summary=run.summary,
        state=state,
        model=run.unwrapped_model,
        seed=config.seed,
        source=run.data.source,
    )
    results |= {
        "reported": "ema" if run.ema is not None else "model",
        "num_processes": accelerator.num_processes,
        "replica_checksums": outputs.replica_checksums(run.unwrapped_model, accelerator),
        "config": run.run_config,
    }
    if state.bad_train_images:
        logger.warning(
            "skipped %d unreadable training images, e.g. %s", len(state.bad_train_images), state.bad_train_images[:10]
        )
    if config.model_name_or_path:
        results["provenance"] = recovery_provenance(
            start=run.start,
            distillation=run.distiller and run.distiller.describe(),
            epochs=results["epochs"],
            top1_before=run.top1_before,
            top1_after=results["final_top1"],
            labels=run.labels.describe(),
            preprocessing={key: config.sources.get(key) for key in PREPROCESSING_FIELDS},
        )
    if accelerator.is_main_process:
        outputs.write_json(f"{config.output_dir}/results.json", results)
        if config.model_name_or_path:
            write_provenance(config.output_dir, results["provenance"])
        write_model_card(config.output_dir, repo_id=config.hub_model_id)
        if os.path.isdir(f"{config.output_dir}/best_model"):
            write_model_card(f"{config.output_dir}/best_model", repo_id=config.hub_model_id, run_dir=config.output_dir)
    logger.info(
        "final top-1 %.2f%%, peak %.2f%% at epoch %d",
        results["final_top1"],
        results["peak_top1"],
        results["peak_epoch"],
    )
    accelerator.end_training()
    if run.pusher is not None:
        # The final push waits; its outcome is recorded locally (the pushed results.json predates it).
        results["hub"] = run.pusher.finish(config.output_dir)
        outputs.write_json(f"{config.output_dir}/results.json", results)
        if not results["hub"]["pushed"]:
            raise SystemExit(f"error: {results['hub']['error']}")
        logger.info("pushed to %s (commit %s)", results["hub"]["url"], results["hub"].get("commit"))


def build(config: RunConfig, process: PartialState) -> Run:
    """Every check first (paths, data, sizes, checkpoint, Hub repository), then the first writes; a resumed run's
    state. Raises on bad input, before any long work."""
    set_seed(config.seed)
    check_output_dir(config.output_dir, config.resume_from_checkpoint, config.overwrite_output_dir)
    resume = config.resume_from_checkpoint and resolve(config.output_dir, config.resume_from_checkpoint)
    data = load_data(config, process)
    # The sampler only counts and orders the split, so too little data for one update is known before the model.
    sampler = loaders.train_sampler(
        data.train,
        num_processes=process.num_processes,
        process_index=process.process_index,
        aug_repeats=config.aug_repeats,
        seed=config.seed,
    )
    config = fitted_to_dataset(config, None if sampler is None else len(sampler))
    plan = UpdatePlan.for_run(
        images_per_process=None if sampler is None else len(sampler),
        batch_size=config.batch_size,
        grad_accum_steps=config.grad_accum_steps,
        epochs=config.epochs,
        max_train_steps=config.max_train_steps,
        num_processes=process.num_processes,
    )
    accelerator = Accelerator(
        cpu=process.device.type == "cpu",
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accum_steps,
        log_with=None if config.report_to == "none" else config.report_to.split(","),
        project_dir=config.output_dir,
    )
    model, labels = load_model(config, data.label_names)
    preprocessing = run_preprocessing(config, model.config.image_size)
    distiller = build_distiller(
        config,
        label_names=data.label_names,
        preprocessing=preprocessing,
        device=accelerator.device,
        distillation_head=model.config.distillation_token,
    )
    train_loader, eval_loader, eval_transform, columns = build_loaders(
        config, data, sampler=sampler, image_size=preprocessing.image_size, accelerator=accelerator
    )
    optimizer = build_optimizer(model, lr=config.lr, weight_decay=config.weight_decay, fused=torch.cuda.is_available())
    scheduler = build_scheduler(
        optimizer,
        num_epochs=plan.schedule_epochs,
        updates_per_epoch=plan.updates_per_epoch,
        **scheduler_kwargs(config),
    )
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # The train loader stays unprepared: its sampler already shards (and repeats) per process.
    model, optimizer, eval_loader = accelerator.prepare(model, optimizer, eval_loader)
    ema = None
    if config.model_ema:
        ema = build_ema(accelerator.unwrap_model(model), **ema_kwargs(config), total_updates=plan.total_updates)
    if config.torch_compile:  # in place, Accelerate's wrapper included: weights and key names stay as they are
        compile_model(model, mode=config.torch_compile_mode)
        if ema is not None:
            compile_model(ema.module, mode=config.torch_compile_mode)
    pusher = start_pusher(config, accelerator)
    run_config = start_outputs(config, accelerator)
    run = Run(
        config=config,
        accelerator=accelerator,
        data=data,
        columns=columns,
        eval_transform=eval_transform,
        train_sampler=sampler,
        train_loader=train_loader,
        eval_loader=eval_loader,
        model=model,
        ema=ema,
        optimizer=optimizer,
        scheduler=scheduler,
        criterion=build_train_criterion(**criterion_kwargs(config)),
        distiller=distiller,
        normalize=Normalize(preprocessing.mean, preprocessing.std, device=accelerator.device),
        augment=build_batch_augmentation(
            **batch_augmentation_kwargs(config), num_classes=len(data.label_names), device=accelerator.device
        ),
        plan=plan,
        saver=CheckpointSaver(
            accelerator,
            config.output_dir,
            ema=ema,
            every=config.checkpointing_steps,
            keep=config.checkpoints_total_limit,
        ),
        state=TrainState(),
        processor=preprocessing.image_processor(),
        pusher=pusher,
        preemption=PreemptionWatch(accelerator),
        summary=summarize(accelerator.unwrap_model(model)),
        run_config=run_config,
        start=locate_starting_model(config) if config.model_name_or_path else None,
        top1_before=None,
        labels=labels,
        progress=None,
    )
    if config.model_name_or_path:  # what the recovery starts from; re-measured on resume, the RNG is reset below
        run.top1_before = evaluate_model(run.model, run.eval_loader, accelerator, normalize=run.normalize)["top1"]
    if resume:
        run.state = run.saver.load(resume)
        logger.info("resumed from %s at step %d", resume, run.state.step)
    else:
        set_seed(config.seed + accelerator.process_index)  # distinct mixup and drop-path draws per process
    log_header(run, resumed_from=resume)
    if labels is not None and labels.outcome != SAME:
        logger.info("%s: %s", config.model_name_or_path, labels.sentence())
    run.progress = tqdm(
        total=plan.total_updates,
        initial=run.state.step,
        desc="train",
        disable=None if accelerator.is_main_process else True,
    )
    return run


def log_header(run: Run, *, resumed_from: str | None) -> None:
    """The run's first three lines: what it trains on, what it trains and how long, where the whole recipe is."""
    config, plan, data = run.config, run.plan, run.data
    train_size = "a stream" if run.train_sampler is None else f"{len(data.train):,} training images"
    logger.info(
        "%s: %s, %s, %s validation images, %d classes",
        config.experiment,
        data.source,
        train_size,
        f"{len(data.validation):,}",
        len(data.label_names),
    )
    global_batch = config.global_batch * run.accelerator.num_processes
    logger.info(
        "model: %s %s, %s parameters; %s updates of %s images on %d process(es)%s%s",
        run.summary["strategy"],
        f"from {config.model_name_or_path}" if config.model_name_or_path else config.model_size,
        f"{run.summary['num_parameters']:,}",
        f"{plan.total_updates:,}",
        f"{global_batch:,}",
        run.accelerator.num_processes,
        f" ({FITTED})" if FITTED in (config.sources.get("batch_size"), config.sources.get("grad_accum_steps")) else "",
        f", resumed from {resumed_from} at update {run.state.step}" if resumed_from else "",
    )
    logger.info(
        "recipe: %s; every value and its source in %s", config.recipe, os.path.join(config.output_dir, "args.json")
    )


def build_distiller(
    config: RunConfig,
    *,
    label_names: list[str],
    preprocessing: Preprocessing,
    device: torch.device,
    distillation_head: bool,
) -> Distiller | None:
    """With --teacher_model_name_or_path: the teacher, checked against the data and the student before any long
    work (its labels put in the data's order), how the student's batch becomes its input, and how its predictions
    enter the loss (through the student's distillation head, if it has one)."""
    if not config.teacher_model_name_or_path:
        return None
    teacher, teacher_input, labels = load_teacher(
        config.teacher_model_name_or_path,
        label_names=label_names,
        preprocessing=preprocessing,
        device=device,
        revision=config.teacher_revision,
        token=config.hub_token,
    )
    return Distiller(
        teacher,
        mode=config.distillation,
        alpha=config.distillation_alpha,
        temperature=config.distillation_temperature,
        teacher_input=teacher_input,
        labels=labels,
        distillation_head=distillation_head,
    )


def build_loaders(
    config: RunConfig, data: ImageClassificationData, *, sampler, image_size: int, accelerator: Accelerator
) -> tuple[DataLoader, DataLoader, Callable, dict]:
    """The recipe's transforms applied as examples are read; the training and evaluation loaders, the evaluation
    transform and how an example's columns are read."""
    train_transform, eval_transform = build_transforms(image_size=image_size, **transform_kwargs(config))
    columns = {
        "image_column": data.image_column,
        "label_column": data.label_column,
        "on_bad_image": config.on_bad_image,
    }
    train_set = loaders.prepare_dataset(data.train, loaders.ExampleTransform(train_transform, **columns))
    eval_set = loaders.prepare_dataset(
        data.validation, loaders.ExampleTransform(eval_transform, **columns, placeholder_size=image_size)
    )
    train_loader = loaders.build_train_loader(
        train_set,
        **train_loader_kwargs(config),
        sampler=sampler,
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
    )
    eval_loader = loaders.eval_loader(
        eval_set, batch_size=config.eval_batch_size, workers=config.workers, pin_memory=config.pin_mem
    )
    return train_loader, eval_loader, eval_transform, columns


def start_pusher(config: RunConfig, accelerator: Accelerator) -> HubPusher | None:
    """With --push_to_hub, on the main process: creating the pusher creates the repository, so a refused token or
    namespace stops the run before training."""
    if not (config.push_to_hub and accelerator.is_main_process):
        return None
    return HubPusher(
        config.hub_model_id,
        token=config.hub_token,
        private=config.hub_private_repo,
        strategy=config.hub_strategy,
        revision=config.hub_revision,
        attempts=config.hub_push_attempts,
        max_wait=config.hub_push_max_wait,
    )


def start_outputs(config: RunConfig, accelerator: Accelerator) -> dict:
    """The run's first writes, once every check has passed: partial checkpoints of a killed run removed, args.json,
    the trackers. Returns the run's configuration as args.json records it."""
    run_config = config.run_record(num_processes=accelerator.num_processes)
    if config.resume_from_checkpoint == AUTO:
        check_same_run(config.output_dir, run_config)
    if accelerator.is_main_process:
        remove_partial_checkpoints(config.output_dir)
        outputs.write_json(f"{config.output_dir}/args.json", run_config)
    if accelerator.log_with:
        accelerator.init_trackers(config.experiment, {k: str(v) for k, v in run_config.items()})
    return run_config


def load_data(config: RunConfig, process: PartialState) -> ImageClassificationData:
    data = load_image_classification_data(
        **{key: getattr(config, key) for key in LOADING_ARGUMENTS},
        list_folder=listed_by_main_process(process),
        list_dataset_folder=listed_by_main_process(process, list_dataset_folder),
    )
    if config.max_train_samples:
        data.train = take(data.train, config.max_train_samples)
    if config.max_eval_samples:
        data.validation = take(data.validation, config.max_eval_samples)
    check_readable(data)
    return data


def load_model(
    config: RunConfig, label_names: list[str]
) -> tuple[ViTReducedForImageClassification, LabelMatch | None]:
    """A new model of --model_size; or the saved one at --model_name_or_path with its labels matched to the data's
    by name (its classifier rows reordered; other labels refused, or a new classifier with
    --ignore_mismatched_sizes), and how they were matched."""
    if not config.model_name_or_path:
        model_config = ViTReducedConfig.from_preset(
            config.model_size,
            **({"image_size": config.image_size} if config.image_size else {}),
            reduction_strategy=config.strategy,
            reduction_mlp_ratio=config.reduction_mlp_ratio,
            mlp_share_group_size=config.mlp_share_group_size,
            drop_path_rate=config.drop_path,
            id2label=dict(enumerate(label_names)),
            label2id={name: i for i, name in enumerate(label_names)},
        )
        return ViTReducedForImageClassification(model_config), None
    strategy = {"reduction_strategy": config.strategy} if config.strategy else {}
    flag = f"--model_name_or_path={config.model_name_or_path!r}"
    try:
        model = ViTReducedForImageClassification.from_pretrained(
            locate_starting_model(config).folder, **strategy, drop_path_rate=config.drop_path
        )
    except OSError as error:  # a folder without a model's config or weights
        raise ValueError(f"{flag} does not hold a saved model: {str(error).splitlines()[0]}") from None
    if config.image_size and config.image_size != model.config.image_size:
        if config.sources.get("image_size") == STARTING_MODEL:
            raise ValueError(
                f"{flag}'s image processor crops {config.image_size} px images, but the model takes "
                f"{model.config.image_size} px; pass --image_size to resize the model, or save a processor for its size"
            )
        model = model.at_image_size(config.image_size)
    labels = match_labels(model, label_names, flag=flag, new_head_allowed=config.ignore_mismatched_sizes)
    return model, labels


def log_update(run: Run, update: Update) -> None:
    run.progress.update(1)
    run.progress.set_postfix(loss=f"{update.loss:.3f}", lr=f"{update.lr:.2e}")
    if run.accelerator.log_with:
        run.accelerator.log({"train/loss": update.loss, "train/lr": update.lr}, step=update.step)


def configure_logging(*, is_main_process: bool) -> None:
    """One line per event for the whole run: ours from the main process only, none of Accelerate's INFO lines
    (five per checkpoint) or shared-tensor notes, nor Transformers' progress bar for every saved model."""
    level = logging.INFO if is_main_process else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=level)
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    # A grouped model's shared MLP is listed under each block of its group; saving it once is what we want.
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # "generated new fontManager" on a fresh machine
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # a line for every request to the Hub
    transformers.utils.logging.disable_progress_bar()
