"""ONNX export of a ViTReduced classifier, checked against onnxruntime.

    hf-vit-reduction export MODEL_FOLDER model.onnx

writes `model.onnx` (input `pixel_values`, output `logits`, any batch size) and prints the largest difference between
onnxruntime's logits and PyTorch's on random images. Needs the `onnx` extra: `pip install "hf-vit-reduction[onnx]"`.
(`optimum`'s exporter does not install beside transformers 5; `torch.onnx` does the job.)
"""

import argparse
from pathlib import Path

import torch

from ..cli import command_parser
from ..hub.locating import locate_model
from ..modeling_vit_reduced import ViTReducedForImageClassification


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

    config = model.config
    pixels = torch.randn(
        batch_size,
        config.num_channels,
        config.image_size,
        config.image_size,
        generator=torch.Generator().manual_seed(0),
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(["logits"], {"pixel_values": pixels.numpy()})
    return (torch.from_numpy(onnx_logits) - model.eval()(pixels).logits).abs().max().item()


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(
        "export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="a saved ViTReducedForImageClassification folder or its Hub id")
    parser.add_argument("output", type=Path, help="the .onnx file to write")
    parser.add_argument("--opset_version", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument("--revision", help="a Hub id's branch, tag or commit (default: main)")
    parser.add_argument(
        "--hub_token", help="a token to read a private or gated Hub id (default: HF_TOKEN or the login)"
    )
    args = parser.parse_args(argv)
    try:
        folder = locate_model(args.model, revision=args.revision, token=args.hub_token, flag="model").folder
    except ValueError as error:
        parser.error(str(error))
    if not Path(folder, "config.json").is_file():
        parser.error(f"model {args.model!r} is not a saved model folder (no config.json)")
    if args.opset_version < 18:
        parser.error(
            f"--opset_version {args.opset_version} is not valid; allowed: 18 or later (torch.onnx's exporter)"
        )
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        parser.error('onnxruntime is not installed; allowed: install the extra, pip install "hf-vit-reduction[onnx]"')
    model = ViTReducedForImageClassification.from_pretrained(folder)
    export_onnx(model, args.output, opset_version=args.opset_version)
    difference = max_onnx_logit_difference(model, args.output)
    print(f"Wrote {args.output}; onnxruntime's logits differ from PyTorch's by at most {difference:.2e} on 3 images.")
