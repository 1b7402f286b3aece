"""Export a ViTReduced classifier: to ONNX, or to Transformers' or timm's own format.

    hf-vit-reduction export MODEL_FOLDER model.onnx
    hf-vit-reduction export MODEL_FOLDER vit-transformers --format transformers
    hf-vit-reduction export MODEL_FOLDER vit-timm --format timm

`onnx` (the default) writes `model.onnx` (input `pixel_values`, output `logits`, any batch size) and prints the
largest difference between onnxruntime's logits and PyTorch's on random images; it needs the `onnx` extra.
(`optimum`'s exporter does not install beside transformers 5; `torch.onnx` does the job.)

`transformers` and `timm` write a folder that loads without this package and without remote code: Transformers'
`ViTForImageClassification` with a `BitImageProcessor`, or timm's `VisionTransformer` in timm's Hub layout (which
Transformers' timm wrapper reads too), each with a card; they print the largest difference between the exported
model's logits and the ViTReduced model's on random images, and one line for what is not carried (a grouped model's
shared MLP is written into each of its blocks). They need the `train` extra (timm, and jinja2 for the card). A
model option a format cannot hold is refused in one line naming it.
"""

import argparse
from pathlib import Path

import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoImageProcessor

from ..cli import PROG, command_parser, require_extra
from ..configuration_vit_reduced import ViTReducedConfig
from ..hub.locating import locate_model
from ..hub.native_model_card import ARCHITECTURES, render_native_model_card
from ..image_processing_vit_reduced import Preprocessing, preprocessing_of
from ..modeling_vit_reduced import ViTReducedForImageClassification
from .native import (
    NATIVE_FORMATS,
    check_representable,
    save_timm,
    shared_mlp_note,
    to_timm,
    to_transformers,
    training_only_notes,
    transformers_image_processor,
)
from .writing import check_output_folder, max_logit_difference, write_folder


class _LogitsOnly(torch.nn.Module):
    """The classifier with one tensor output, which an ONNX graph names `logits`."""

    def __init__(self, model: ViTReducedForImageClassification):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values).logits


def export_onnx(model: ViTReducedForImageClassification, path, opset_version: int = 18) -> Path:
    """Write `model` (in eval mode) as an ONNX graph with a dynamic batch dimension; returns the path."""
    config = model.config
    example = torch.zeros(2, config.num_channels, config.image_size, config.image_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        _LogitsOnly(model).eval(),
        (example,),
        str(path),
        input_names=["pixel_values"],
        output_names=["logits"],
        dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}},
        opset_version=opset_version,
        dynamo=True,
        external_data=False,
    )
    return path


@torch.no_grad()
def max_onnx_logit_difference(model: ViTReducedForImageClassification, path, batch_size: int = 3) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's logits on `batch_size` random images."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def onnx_logits(pixels):
        (logits,) = session.run(["logits"], {"pixel_values": pixels.numpy()})
        return torch.from_numpy(logits)

    model.eval()
    return max_logit_difference(lambda pixels: model(pixels).logits, onnx_logits, model, batch_size=batch_size)


FORMATS = ("onnx", *NATIVE_FORMATS)
# The setup.py extra each format needs beyond the core.
FORMAT_EXTRAS = {"onnx": "onnx", "transformers": "train", "timm": "train"}


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="a saved ViTReducedForImageClassification folder or its Hub id")
    parser.add_argument("output", type=Path, help="onnx: the .onnx file to write; transformers, timm: the folder")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="what to write (default onnx)")
    parser.add_argument("--opset_version", type=int, help="onnx: the ONNX opset (default 18)")
    parser.add_argument(
        "--hub_model_id", help="transformers, timm: the Hub repository the card's snippets load (default: the folder)"
    )
    parser.add_argument("--overwrite_output_dir", action="store_true", help="transformers, timm: replace a folder")
    parser.add_argument("--revision", help="a Hub id's branch, tag or commit (default: main)")
    parser.add_argument(
        "--hub_token", help="a token to read a private or gated Hub id (default: HF_TOKEN or the login)"
    )
    return parser


def _check_arguments(args) -> None:
    """A ValueError naming the flag that does not fit the format; nothing is read or written before."""
    if args.format == "onnx":
        for flag in ("hub_model_id", "overwrite_output_dir"):
            if getattr(args, flag):
                raise ValueError(f"--{flag} applies to --format transformers and timm only")
        if args.opset_version is not None and args.opset_version < 18:
            raise ValueError(
                f"--opset_version {args.opset_version} is not valid; allowed: 18 or later (torch.onnx's exporter)"
            )
        return
    if args.opset_version is not None:
        raise ValueError("--opset_version applies to --format onnx only")
    if args.hub_model_id is not None:
        try:
            validate_repo_id(args.hub_model_id)
        except HFValidationError:
            raise ValueError(
                f"--hub_model_id {args.hub_model_id!r} is not valid; allowed: 'name' or 'namespace/name' of letters, "
                "digits, '-', '_' and '.'"
            ) from None
    check_output_folder(args.output, args.overwrite_output_dir, name="output")


def _saved_preprocessing(folder: str) -> Preprocessing | None:
    """The preprocessing of the image processor saved in `folder`; None where it has none."""
    if not Path(folder, "preprocessor_config.json").is_file():
        return None
    return preprocessing_of(AutoImageProcessor.from_pretrained(folder), f"the image processor in {folder}")


def export_native(
    model: ViTReducedForImageClassification,
    output: Path,
    format: str,
    *,
    source: str,
    preprocessing: Preprocessing | None,
    repo_id: str | None = None,
) -> tuple[float, list[str]]:
    """Write `model` in `format` ("transformers" or "timm") with its preprocessing and card into the folder
    `output`, nothing partial left; return the largest difference between the exported model's logits and the
    model's on 3 random images, and the lines to say about the export."""
    config = model.config
    notes = training_only_notes(config, format)  # the card says a grouped model's copies in a paragraph of its own
    if preprocessing is None:
        notes.append(
            f"{source} has no image processor: the export carries no preprocessing"
            + (" (timm's defaults apply)" if format == "timm" else " (pipeline needs one)")
        )
    # Transformers' folder saves it; the card of either describes the preprocessing with its values.
    processor = None if preprocessing is None else transformers_image_processor(preprocessing)
    if format == "transformers":
        native = to_transformers(model).eval()

        def logits(pixels):
            return native(pixels).logits

        def save(folder: Path):
            native.save_pretrained(folder)
            if processor is not None:
                processor.save_pretrained(folder)

    else:
        native = logits = to_timm(model, preprocessing)

        def save(folder: Path):
            save_timm(native, folder, config)

    difference = max_logit_difference(lambda pixels: model(pixels).logits, logits, model, batch_size=3)

    def write(folder: Path):
        save(folder)
        render_native_model_card(
            config,
            format,
            source=source,
            num_parameters=sum(parameter.numel() for parameter in native.parameters()),
            location=str(output),
            repo_id=repo_id,
            processor=None if processor is None else processor.to_dict(),
            notes=tuple(notes),
        ).save(folder / "README.md")

    write_folder(output, write)
    return difference, [note for note in (shared_mlp_note(config),) if note] + notes


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_arguments(args)
        require_extra(FORMAT_EXTRAS[args.format], command=f"{PROG} export --format {args.format}")
        folder = locate_model(args.model, revision=args.revision, token=args.hub_token, flag="model").folder
        if not Path(folder, "config.json").is_file():
            raise ValueError(f"model {args.model!r} is not a saved model folder (no config.json)")
        if args.format != "onnx":  # before the weights are read
            check_representable(ViTReducedConfig.from_pretrained(folder), args.format)
            preprocessing = _saved_preprocessing(folder)
        model = ViTReducedForImageClassification.from_pretrained(folder).eval()
    except ValueError as error:
        parser.error(str(error))
    if args.format == "onnx":
        export_onnx(model, args.output, opset_version=args.opset_version or 18)
        difference = max_onnx_logit_difference(model, args.output)
        print(
            f"Wrote {args.output}; onnxruntime's logits differ from PyTorch's by at most {difference:.2e} on 3 images."
        )
        return
    difference, notes = export_native(
        model,
        args.output,
        args.format,
        source=args.model,
        preprocessing=preprocessing,
        repo_id=args.hub_model_id,
    )
    print(
        f"Wrote {args.output}: {ARCHITECTURES[args.format]}, with its preprocessing and card; its logits differ from "
        f"the ViTReduced model's by at most {difference:.2e} on 3 random images."
    )
    for note in notes:
        print(f"Note: {note}.")
