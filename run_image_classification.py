"""Train a parameter-reduced ViT with the paper's (timm's) recipe on Accelerate.

    accelerate launch run_image_classification.py --strategy shallow                 # embedded digits
    accelerate launch --config_file accelerate_configs/ddp_2gpu.yaml run_image_classification.py \
        --strategy grouped --dataset_name imagenet-1k --amp --channels_last
"""

import logging
import math
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
from hf_vit_reduction import data as D
from hf_vit_reduction import training as T
from hf_vit_reduction.arguments import parse_args

logger = logging.getLogger(__name__)
MEAN = STD = (0.5, 0.5, 0.5)  # timm's ViT normalization


def build_model(args, label_names: list[str]) -> ViTReducedForImageClassification:
    labels = {
        "id2label": dict(enumerate(label_names)),
        "label2id": {n: i for i, n in enumerate(label_names)},
    }
    if args.model_name_or_path:
        overrides = {"reduction_strategy": args.strategy} if args.strategy else {}
        return ViTReducedForImageClassification.from_pretrained(
            args.model_name_or_path,
            **overrides,
            **labels,
            drop_path_rate=args.drop_path,
            ignore_mismatched_sizes=True,
        )
    size = {"image_size": args.image_size} if args.image_size else {}
    config = ViTReducedConfig.from_preset(
        args.model_size,
        **size,
        reduction_strategy=args.strategy,
        reduction_mlp_ratio=args.reduction_mlp_ratio,
        mlp_share_group_size=args.mlp_share_group_size,
        drop_path_rate=args.drop_path,
        **labels,
    )
    return ViTReducedForImageClassification(config)


def load_data_and_model(args):
    data = D.load_image_classification_data(
        args.dataset_name,
        args.dataset_config_name,
        args.train_dir,
        args.validation_dir,
        args.train_split,
        args.validation_split,
        args.image_column,
        args.label_column,
        args.streaming,
        args.cache_dir,
        args.train_val_split,
        args.seed,
    )
    if args.max_train_samples and not args.streaming:
        data.train = data.train.select(
            range(min(args.max_train_samples, len(data.train)))
        )
    if args.max_eval_samples:
        data.validation = data.validation.select(
            range(min(args.max_eval_samples, len(data.validation)))
        )
    return data, build_model(args, data.label_names)


def save_model(accelerator, model, processor, path) -> None:
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.save_pretrained(
        path,
        state_dict=accelerator.get_state_dict(model),
        is_main_process=accelerator.is_main_process,
        save_function=accelerator.save,
    )
    if accelerator.is_main_process:
        processor.save_pretrained(path)


def main():
    args = parse_args()
    mixed_precision = args.mixed_precision or (
        "no" if not args.amp or not torch.cuda.is_available() else None
    )
    if mixed_precision is None:
        mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    trackers = None if args.report_to == "none" else args.report_to.split(",")
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=args.grad_accum_steps,
        log_with=trackers,
        project_dir=args.output_dir,
    )
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO
    )
    set_seed(args.seed)

    # Data first: every bad path, split or column fails here, before a model exists.
    try:
        data, model = load_data_and_model(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        raise SystemExit(f"error: {error}") from None
    image_size = model.config.image_size
    train_transform, eval_transform = D.build_transforms(
        image_size,
        MEAN,
        STD,
        args.aa,
        args.reprob,
        args.scale,
        args.hflip,
        args.crop_pct,
    )
    train_set = D.prepare_dataset(
        data.train,
        D.ExampleTransform(
            train_transform, data.image_column, data.label_column, args.on_bad_image
        ),
    )
    eval_set = D.prepare_dataset(
        data.validation,
        D.ExampleTransform(
            eval_transform,
            data.image_column,
            data.label_column,
            args.on_bad_image,
            image_size,
        ),
    )
    sampler = D.train_sampler(
        train_set,
        accelerator.num_processes,
        accelerator.process_index,
        args.aug_repeats,
        args.seed,
    )
    train_loader = D.train_loader(
        train_set, args.batch_size, sampler, args.workers, args.pin_mem, args.seed
    )
    eval_loader = D.eval_loader(
        eval_set, args.eval_batch_size, args.workers, args.pin_mem
    )

    updates_per_epoch = max(len(train_loader) // args.grad_accum_steps, 1)
    total_updates = args.max_train_steps or args.epochs * updates_per_epoch
    epochs = math.ceil(total_updates / updates_per_epoch)
    optimizer = T.optimizer_for(
        model, args.lr, args.weight_decay, fused=torch.cuda.is_available()
    )
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
    # The train loader is left unprepared: its sampler already shards (and repeats) across processes.
    model, optimizer, eval_loader = accelerator.prepare(model, optimizer, eval_loader)
    unwrapped = accelerator.unwrap_model(model)
    ema = (
        T.ema_for(unwrapped, args.model_ema_decay, args.model_ema_warmup)
        if args.model_ema
        else None
    )
    set_seed(
        args.seed + accelerator.process_index
    )  # distinct mixup and drop-path draws per process

    summary = summarize(unwrapped)
    run_config = T.public_arguments(vars(args)) | {
        "num_processes": accelerator.num_processes
    }
    if trackers:
        accelerator.init_trackers(
            args.experiment, config={k: str(v) for k, v in run_config.items()}
        )
    logger.info(
        "%s: %s, %s params, %d train / %d validation images, %d processes, %d updates",
        args.experiment,
        data.source,
        f"{summary['num_parameters']:,}",
        len(data.train),
        len(data.validation),
        accelerator.num_processes,
        total_updates,
    )

    history, step, bad_train, seen, start = T.RunHistory(), 0, [], 0, time.time()
    processor = D.image_processor_for(image_size, MEAN, STD)
    progress = tqdm(
        total=total_updates,
        disable=None if accelerator.is_local_main_process else True,
        desc="train",
    )
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        model.train()
        loss_sum, loss_count = 0.0, 0
        for index, batch in enumerate(train_loader):
            if (
                index >= updates_per_epoch * args.grad_accum_steps
                or step >= total_updates
            ):
                break  # whole accumulation windows per epoch, so updates never straddle epochs
            bad_train += batch["bad_images"]
            pixel_values = batch["pixel_values"].to(
                accelerator.device, non_blocking=True
            )
            labels = batch["labels"].to(accelerator.device, non_blocking=True)
            if mixup is not None and len(labels) % 2:
                pixel_values, labels = (
                    pixel_values[:-1],
                    labels[:-1],
                )  # a skipped image left an odd batch
            if len(labels) == 0:
                continue
            if mixup is not None:
                pixel_values, labels = mixup(pixel_values, labels)
            if args.channels_last:
                pixel_values = pixel_values.contiguous(
                    memory_format=torch.channels_last
                )
            with accelerator.accumulate(model), accelerator.autocast():
                loss = criterion(model(pixel_values=pixel_values).logits, labels)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum, loss_count, seen = (
                loss_sum + loss.item(),
                loss_count + 1,
                seen + len(labels),
            )
            if accelerator.sync_gradients:
                step += 1
                scheduler.step_update(step)
                if ema is not None:
                    ema.update(unwrapped, step=step)
                progress.update(1)
                progress.set_postfix(
                    loss=f"{loss.item():.3f}",
                    lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                )
                if trackers:
                    accelerator.log(
                        {
                            "train/loss": loss.item(),
                            "train/lr": optimizer.param_groups[0]["lr"],
                        },
                        step,
                    )

        is_last = epoch == epochs - 1
        if (epoch + 1) % args.eval_every and not is_last:
            continue
        model_metrics = T.evaluate_model(model, eval_loader, accelerator)
        row = {
            "epoch": epoch,
            "step": step,
            "train_loss": loss_sum / max(loss_count, 1),
        }
        row |= {f"model_{k}": v for k, v in model_metrics.items()}
        reported = model_metrics
        if (
            ema is not None
        ):  # like timm, the EMA's metric is the one reported when EMA is on
            reported = T.evaluate_model(ema.module, eval_loader, accelerator)
            row |= {f"ema_{k}": v for k, v in reported.items()}
        row |= {k: reported[k] for k in ("top1", "top5", "loss")}
        is_peak = history.add(row)
        if trackers:
            accelerator.log(
                {f"eval/{k}": v for k, v in row.items() if k not in ("epoch", "step")},
                step,
            )
        logger.info(
            "epoch %d: top-1 %.2f%%, top-5 %.2f%% (%s)",
            epoch,
            row["top1"],
            row["top5"],
            "EMA" if ema else "model",
        )
        reported_model = ema.module if ema is not None else model
        if is_peak:
            save_model(
                accelerator, reported_model, processor, f"{args.output_dir}/best_model"
            )
        if accelerator.is_main_process:
            T.write_history(f"{args.output_dir}/history.jsonl", history)
            T.plot_history(
                f"{args.output_dir}/training_curves.png", history, args.experiment
            )
    progress.close()

    wall_time = time.time() - start
    save_model(
        accelerator,
        ema.module if ema is not None else model,
        processor,
        args.output_dir,
    )
    checksums = T.replica_checksums(unwrapped, accelerator)
    if bad_train:
        logger.warning(
            "skipped %d unreadable training images, e.g. %s",
            len(bad_train),
            bad_train[:5],
        )
    results = {
        **history.summary(),
        "strategy": unwrapped.config.reduction_strategy,
        "seed": args.seed,
        "reported": "ema" if ema is not None else "model",
        "parameters": summary["num_parameters"],
        "mlp_parameters": summary["mlp_parameters"],
        "gmacs": summary["gmacs"],
        "epochs": epochs,
        "steps": step,
        "wall_time_s": wall_time,
        "train_images_per_s": seen * accelerator.num_processes / wall_time,
        "eval_samples": history.rows[-1]["model_count"] if history.rows else 0,
        "bad_train_images": len(bad_train),
        "num_processes": accelerator.num_processes,
        "replica_checksums": checksums,
        "data": data.source,
        "config": run_config,
    }
    if accelerator.is_main_process:
        T.write_json(f"{args.output_dir}/results.json", results)
        logger.info(
            "results: %s",
            {
                k: results[k]
                for k in ("final_top1", "peak_top1", "peak_epoch")
                if k in results
            },
        )
    accelerator.end_training()


if __name__ == "__main__":
    main()
