"""Train a parameter-reduced ViT with the paper's (timm's) recipe on Accelerate.

    accelerate launch run_image_classification.py --strategy shallow     # embedded digits
    accelerate launch --config_file accelerate_configs/ddp_2gpu.yaml \\
        run_image_classification.py --strategy grouped --dataset_name imagenet-1k --amp

The same as `hf-vit-reduction train ...`. The engine is `hf_vit_reduction.training.engine`; `main` below is its
whole shape: parse, build, the epoch loop, finish.
"""

from hf_vit_reduction.cli import require_extra

require_extra("train", command="run_image_classification.py")  # before the imports it guards: one line, not a trace

from hf_vit_reduction.training.arguments import parse_args
from hf_vit_reduction.training.engine import end_epoch, finish, running, train_one_epoch, validate
from hf_vit_reduction.training.loop_benchmark import LoopBenchmark


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)  # flags and the recipe, every value checked: a bad one ends in one `error:` line
    with running(args) as run:  # build: every check first (data, model, checkpoint, Hub), then the first writes
        if args.benchmark_loop:  # this loop on in-memory data against the bare step, then stop
            LoopBenchmark(run).measure()
            return
        for epoch in run.plan.remaining_epochs(run.state.step):
            train_one_epoch(run, epoch)  # augment, forward, loss, backward, step, EMA, log, mid-epoch checkpoints
            if run.evaluation_due(epoch):
                validate(run, epoch)  # model and EMA; a new peak is kept as best_model/
            end_epoch(run)  # the epoch's checkpoint; a SIGTERM stops here with status 75
        finish(run)  # the final model, results.json, the model card, the last push


if __name__ == "__main__":
    main()
