"""Train a parameter-reduced ViT with the paper's (timm's) recipe on Accelerate.

    accelerate launch run_image_classification.py --strategy shallow     # embedded digits
    accelerate launch --config_file accelerate_configs/ddp_2gpu.yaml \\
        run_image_classification.py --strategy grouped --dataset_name imagenet-1k --amp
"""

import logging
import math
import os
import time

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from hf_vit_reduction import (
    ViTReducedConfig,
    ViTReducedForImageClassification,
    summarize,
)
from hf_vit_reduction import checkpointing as C
from hf_vit_reduction import data as D
from hf_vit_reduction import training as T
from hf_vit_reduction.arguments import parse_args

logger = logging.getLogger(__name__)
MEAN = STD = (0.5, 0.5, 0.5)  # timm's ViT normalization
NAN_AT_STEP = int(os.environ.get("HF_VIT_REDUCTION_TEST_NAN_AT_STEP", "0"))  # test hook


def load_data_and_model(args):
    data = D.load_image_classification_data(**{k: getattr(args, k) for k in D.LOADING_ARGUMENTS})
    if args.max_train_samples:
        data.train = D.take(data.train, args.max_train_samples)
    if args.max_eval_samples:
        data.validation = D.take(data.validation, args.max_eval_samples)
    names = data.label_names
    labels = {
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }
    if args.model_name_or_path:
        strategy = {"reduction_strategy": args.strategy} if args.strategy else {}
        model = ViTReducedForImageClassification.from_pretrained(
            args.model_name_or_path,
            **strategy,
            **labels,
            drop_path_rate=args.drop_path,
            ignore_mismatched_sizes=True,
        )
        return data, model
    config = ViTReducedConfig.from_preset(
        args.model_size,
        **({"image_size": args.image_size} if args.image_size else {}),
        reduction_strategy=args.strategy,
        reduction_mlp_ratio=args.reduction_mlp_ratio,
        mlp_share_group_size=args.mlp_share_group_size,
        drop_path_rate=args.drop_path,
        **labels,
    )
    return data, ViTReducedForImageClassification(config)


def save_model(accelerator, model, processor, path) -> None:
    accelerator.unwrap_model(model).save_pretrained(
        path,
        state_dict=accelerator.get_state_dict(model),
        is_main_process=accelerator.is_main_process,
        save_function=accelerator.save,
    )
    if accelerator.is_main_process:
        processor.save_pretrained(path)


def main():
    args = parse_args()
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),  # also lets a MULTI_GPU config run gloo processes
        mixed_precision=T.mixed_precision(args.mixed_precision, args.amp),
        gradient_accumulation_steps=args.grad_accum_steps,
        log_with=None if args.report_to == "none" else args.report_to.split(","),
        project_dir=args.output_dir,
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    set_seed(args.seed)
    try:  # every bad path, split, column or folder fails here, before any long work
        C.check_output_dir(args.output_dir, args.resume_from_checkpoint, args.overwrite_output_dir)
        resume = args.resume_from_checkpoint and C.resolve(args.output_dir, args.resume_from_checkpoint)
        data, model = load_data_and_model(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        raise SystemExit(f"error: {error}") from None
    run_config = T.public_arguments(vars(args)) | {"num_processes": accelerator.num_processes}
    if accelerator.is_main_process:
        C.remove_partial_checkpoints(args.output_dir)
        T.write_json(f"{args.output_dir}/args.json", run_config)

    size = model.config.image_size
    train_tf, eval_tf = D.build_transforms(
        size, MEAN, STD, args.aa, args.reprob, args.scale, args.hflip, args.crop_pct
    )
    columns = (data.image_column, data.label_column, args.on_bad_image)
    train_set = D.prepare_dataset(data.train, D.ExampleTransform(train_tf, *columns))
    if args.benchmark_loop:  # decoded once, so the loop itself is what gets timed
        train_set = D.in_memory(D.prepare_dataset(data.train, D.ExampleTransform(eval_tf, *columns)))
    eval_set = D.prepare_dataset(data.validation, D.ExampleTransform(eval_tf, *columns, size))
    world, rank = accelerator.num_processes, accelerator.process_index
    if args.streaming:
        train_set = D.shard_stream(train_set, world, rank, args.seed)
    sampler = D.train_sampler(train_set, world, rank, args.aug_repeats, args.seed)
    train_loader = D.train_loader(train_set, args.batch_size, sampler, args.workers, args.pin_mem, args.seed)
    eval_loader = D.eval_loader(eval_set, args.eval_batch_size, args.workers, args.pin_mem)

    # A stream has no length: its one "epoch" is --max_train_steps updates.
    accum = args.grad_accum_steps
    batches = args.max_train_steps * accum if args.streaming else len(train_loader)
    updates_per_epoch = max(batches // accum, 1)
    total_updates = args.max_train_steps or args.epochs * updates_per_epoch
    epochs = math.ceil(total_updates / updates_per_epoch)
    optimizer = T.optimizer_for(model, args.lr, args.weight_decay, torch.cuda.is_available())
    scheduler = T.scheduler_for(
        optimizer,
        total_updates / updates_per_epoch,
        args.warmup_epochs,
        updates_per_epoch,
        args.min_lr,
        args.warmup_lr,
    )
    mixup = T.mixup_for(args.mixup, args.cutmix, args.smoothing, len(data.label_names))
    criterion = T.train_criterion(mixup, args.smoothing)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # The train loader stays unprepared: its sampler already shards (and repeats) per process.
    model, optimizer, eval_loader = accelerator.prepare(model, optimizer, eval_loader)
    unwrapped = accelerator.unwrap_model(model)
    ema = T.ema_for(unwrapped, args.model_ema_decay, args.model_ema_warmup) if args.model_ema else None
    reported_model = ema.module if ema is not None else model
    processor = D.image_processor_for(size, MEAN, STD)
    summary = summarize(unwrapped)
    if accelerator.log_with:
        accelerator.init_trackers(args.experiment, {k: str(v) for k, v in run_config.items()})

    if args.benchmark_loop:
        bare_step_parts = (
            model,
            optimizer,
            criterion,
            mixup,
            train_loader,
            accelerator,
        )
        bare_before = T.bare_step_speed(*bare_step_parts, args)

    history, state = T.RunHistory(), T.new_train_state()
    if resume:
        state = C.load(accelerator, resume, ema)
        history.load_state_dict(state["history"])
        logger.info("resumed from %s at step %d", resume, state["step"])
    else:
        set_seed(args.seed + rank)  # distinct mixup and drop-path draws per process
    step, started, elapsed_before = state["step"], time.time(), state["elapsed"]
    marks = []
    every = int(args.checkpointing_steps) if args.checkpointing_steps.isdigit() else 0

    def checkpoint():
        if args.checkpointing_steps == "no":
            return
        state.update(step=step, history=history.state_dict(), elapsed=elapsed())
        best = history.peak["step"] if history.rows else None
        C.save(
            accelerator,
            args.output_dir,
            step,
            ema,
            state,
            args.checkpoints_total_limit,
            best,
        )

    def elapsed():  # wall time of this run and of the runs it resumed
        return elapsed_before + time.time() - started

    logger.info(
        "%s: %s, %s parameters, %d processes, %d updates of %d images",
        args.experiment,
        data.source,
        f"{summary['num_parameters']:,}",
        world,
        total_updates,
        args.batch_size * accum * world,
    )
    progress = tqdm(
        total=total_updates,
        initial=step,
        desc="train",
        disable=None if rank == 0 else True,
    )
    # A checkpoint taken at the last (possibly short) epoch's end leaves nothing to do.
    first_epoch = step // updates_per_epoch if step < total_updates else epochs
    for epoch in range(first_epoch, epochs):
        (sampler or train_set).set_epoch(epoch)
        train_loader.generator.manual_seed(args.seed + epoch)  # worker seeds: a function of the epoch
        epoch_end = min((epoch + 1) * updates_per_epoch, total_updates)
        model.train()
        for batch in C.skip_batches(train_loader, (step - epoch * updates_per_epoch) * accum):
            if step >= epoch_end:
                break  # whole accumulation windows per epoch: updates never straddle epochs
            T.count_bad_images(state, batch["bad_images"])
            images = batch["pixel_values"].to(accelerator.device, non_blocking=True)
            labels = batch["labels"].to(accelerator.device, non_blocking=True)
            if mixup is not None and len(labels) % 2:
                images, labels = (
                    images[:-1],
                    labels[:-1],
                )  # a skipped image left an odd batch
            if len(labels) == 0:
                continue
            if mixup is not None:
                images, labels = mixup(images, labels)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with accelerator.accumulate(model), accelerator.autocast():
                loss = criterion(model(pixel_values=images).logits, labels)
                if NAN_AT_STEP == step + 1:
                    loss = loss * math.nan
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            # The step's one host sync: every process's loss, for the check and the logs. A non-finite loss
            # stops the run before the EMA, a checkpoint or a log sees the step.
            losses = accelerator.gather(loss.detach().float().reshape(1)).tolist()
            loss_value = sum(losses) / len(losses)
            if not math.isfinite(loss_value):
                last = C.checkpoints(args.output_dir)
                raise SystemExit(
                    f"error: non-finite loss ({loss_value}) at step {step + 1}; last good "
                    f"checkpoint: {last[-1] if last else 'none'}. Nothing was written after it."
                )
            state["loss_sum"] += loss_value
            state["loss_count"] += 1
            state["seen"] += len(labels) * world  # every process trains on an equal batch
            if not accelerator.sync_gradients:
                continue
            step += 1
            # The loop benchmark's span: from the end of its warm-up to the last update.
            if step in (args.benchmark_warmup, total_updates):
                marks.append((time.perf_counter(), state["seen"]))
            scheduler.step_update(step)
            if ema is not None:
                ema.update(unwrapped, step=step)
            progress.update(1)
            lr = optimizer.param_groups[0]["lr"]
            progress.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}")
            if accelerator.log_with:
                accelerator.log({"train/loss": loss_value, "train/lr": lr}, step=step)
            if every and step % every == 0 and step < epoch_end:
                checkpoint()

        if step < epoch_end:
            logger.warning("the data ran out after %d of %d updates", step, epoch_end)
        if (epoch + 1) % args.eval_every == 0 or epoch == epochs - 1:
            row = {"epoch": epoch, "step": step}
            row["train_loss"] = state["loss_sum"] / max(state["loss_count"], 1)
            row |= T.evaluate_both(model, ema, eval_loader, accelerator)
            if history.add(row):
                save_model(
                    accelerator,
                    reported_model,
                    processor,
                    f"{args.output_dir}/best_model",
                )
            if accelerator.log_with:
                metrics = {f"eval/{k}": v for k, v in row.items() if k not in ("epoch", "step")}
                accelerator.log(metrics, step=step)
            logger.info("epoch %d: top-1 %.2f%%, top-5 %.2f%%", epoch, row["top1"], row["top5"])
            if accelerator.is_main_process:
                T.write_history(f"{args.output_dir}/history.jsonl", history)
                T.plot_history(f"{args.output_dir}/training_curves.png", history, args.experiment)
        state.update(loss_sum=0.0, loss_count=0)
        checkpoint()
    progress.close()
    if args.benchmark_loop:
        (start, seen_before), (end, seen_after) = marks
        loop = (seen_after - seen_before) / (end - start)
        bare_after = T.bare_step_speed(*bare_step_parts, args)
        report = T.loop_benchmark(loop, bare_before, bare_after, args, accelerator)
        if accelerator.is_main_process:
            T.write_json(f"{args.output_dir}/loop_benchmark.json", report)
            logger.info("loop benchmark: %s", report)
        return

    save_model(accelerator, reported_model, processor, args.output_dir)
    results = T.results(history, summary, state, elapsed(), args, unwrapped, data.source)
    results |= {
        "reported": "ema" if ema is not None else "model",
        "num_processes": world,
    }
    results["replica_checksums"] = T.replica_checksums(unwrapped, accelerator)
    results["config"] = run_config
    if state["bad_train_count"]:
        logger.warning(
            "skipped %d unreadable training images, e.g. %s",
            state["bad_train_count"],
            state["bad_train_examples"],
        )
    if accelerator.is_main_process:
        T.write_json(f"{args.output_dir}/results.json", results)
        logger.info(
            "final top-1 %.2f%%, peak %.2f%% at epoch %d",
            results["final_top1"],
            results["peak_top1"],
            results["peak_epoch"],
        )
    accelerator.end_training()


if __name__ == "__main__":
    main()
