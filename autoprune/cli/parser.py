"""The command line's grammar: every verb's arguments, defaults and help (argparse).

One function per verb adds that verb's subparser; ``build_parser`` strings them together.
``docs/cli.md`` is generated from this grammar (:mod:`autoprune.cli.docs`), so the help
strings here are the reference: each says what the flag does and its default.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

QUIET_HELP = "no progress: neither the bar (on a terminal) nor one line per trial (otherwise)"
STORAGE_HELP = "SQLAlchemy URL of the study database (default sqlite:///studies/autoprune.db)"
EXECUTOR_HELP = "ray (Ray Tune tasks) or local (Optuna's own loop) (default: the study's, else ray)"
NAME_HELP = "the study's name (see `autoprune studies`)"

if TYPE_CHECKING:
    Sub = argparse._SubParsersAction[argparse.ArgumentParser]


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", help="folder holding the dataset, where it needs one")
    p.add_argument(
        "--download",
        action="store_true",
        help="let torchvision download the dataset into --data-root (cifar10/cifar100)",
    )
    _add_image_size_arg(p)


def _add_image_size_arg(p: argparse.ArgumentParser, reused: str = "") -> None:
    p.add_argument(
        "--image-size",
        type=int,
        metavar="N",
        help="imagefolder: resize images to N x N (default: their own size; they must share it)"
        + reused,
    )


def _add_data_path_args(p: argparse.ArgumentParser, search: bool = False) -> None:
    """--precision and --loader-workers; a search leaves them unset so a resume keeps its own."""
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default=None if search else "auto",
        help="fine-tune autocast (default auto: bf16 on CUDA, fp16 + GradScaler on pre-Ampere "
        "GPUs, fp32 on CPU; fp16 needs CUDA); evaluation is always float32",
    )
    p.add_argument(
        "--loader-workers",
        type=int,
        metavar="N",
        default=None if search else 0,
        help="DataLoader worker processes for datasets read from image files (default "
        + ("--cpus-per-trial - 1, at most 8)" if search else "0)"),
    )


def _add_policies_dir_arg(
    p: argparse.ArgumentParser,
    text: str = "write the front's policies to DIR/STUDY/ (default: policies/STUDY/ in the current directory)",
) -> None:
    p.add_argument("--policies-dir", metavar="DIR", help=text)


def _add_format_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        choices=("table", "json", "yaml"),
        default="table",
        help="table (default), or json / yaml for scripts: the same data, on stdout only",
    )


def _add_storage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", metavar="URL", help=STORAGE_HELP)


def _registries(sub: Sub) -> None:
    sub.add_parser("models", help="list the model registry")
    sub.add_parser("datasets", help="list the dataset registry")
    sub.add_parser("spaces", help="list the bundled search spaces and where they are")


def _train(sub: Sub) -> None:
    p = sub.add_parser("train", help="train a base model and write a base checkpoint")
    p.add_argument(
        "--model", default="resnet20", help="model name (see `autoprune models`; default resnet20)"
    )
    p.add_argument(
        "--dataset",
        default="mnist5k",
        help="dataset name (see `autoprune datasets`; default mnist5k)",
    )
    p.add_argument("--epochs", type=float, default=4.0, help="training epochs (default 4)")
    p.add_argument(
        "--lr", type=float, default=0.1,
        help="peak SGD learning rate, linear warm-up then cosine (default 0.1)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and data order (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    _add_data_path_args(p)
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's)")
    p.add_argument("--out", help="checkpoint path (default: studies/base/MODEL-DATASET.pt)")
    _add_data_args(p)


def _inspect(sub: Sub) -> None:
    p = sub.add_parser(
        "inspect", help="list a model's prunable DepGraph groups (or residual block scores)"
    )
    p.add_argument("--model", default="resnet20", help="model name (default resnet20)")
    p.add_argument(
        "--dataset", help="take input shape and classes from a dataset (needed for --blocks)"
    )
    p.add_argument(
        "--base-checkpoint", help="inspect a trained base checkpoint instead of a fresh model"
    )
    p.add_argument(
        "--num-classes", type=int, default=10, help="classes, without --dataset (default 10)"
    )
    p.add_argument(
        "--in-channels", type=int, default=3, help="input channels, without --dataset (default 3)"
    )
    p.add_argument(
        "--input-size", type=int, default=32, help="input side, without --dataset (default 32)"
    )
    p.add_argument(
        "--blocks",
        action="store_true",
        help="score residual blocks by PLS-VIP (discriminative layer pruning)",
    )
    p.add_argument(
        "--calibration-images", type=int, default=256,
        help="--blocks: training images the blocks are scored on (default 256)",
    )  # fmt: skip
    _add_format_arg(p)
    # --json: what --format json was called before; kept for scripts, hidden from --help
    p.add_argument(
        "--json", dest="format", action="store_const", const="json", help=argparse.SUPPRESS
    )
    _add_data_args(p)


def _search(sub: Sub) -> None:
    """Unset flags stay None: a new study takes SearchConfig's defaults, a resume its own."""
    p = sub.add_parser("search", help="search pruning policies under a MACs budget (resumable)")
    p.add_argument(
        "--budget-flops",
        type=float,
        default=0.5,
        metavar="B",
        help="max pruned/base MACs ratio, in (0, 1] (default 0.5)",
    )
    p.add_argument(
        "--objective",
        choices=("macs", "latency", "both"),
        help="what val accuracy is traded against: the MACs ratio (default), the measured "
        "latency ratio on the trial's device, or both (three objectives)",
    )
    p.add_argument(
        "--budget-latency",
        type=float,
        metavar="R",
        help="max pruned/base median latency ratio, in (0, 1] (--objective latency: the "
        "budget, default 0.5; both: an optional second constraint)",
    )
    p.add_argument(
        "--latency-batch-size", type=int, metavar="N", help="images per timed pass (default 1)"
    )
    p.add_argument(
        "--latency-repeats",
        type=int,
        metavar="N",
        help="timed passes, the median is the latency (default 30)",
    )
    p.add_argument("--latency-warmup", type=int, metavar="N", help="untimed passes (default 5)")
    p.add_argument(
        "--latency-runtime",
        choices=("torch", "onnxruntime"),
        help="time PyTorch eager (default) or ONNX Runtime (needs the onnx extra)",
    )
    p.add_argument(
        "--channel-multiple",
        type=int,
        metavar="N",
        help="every pruned group keeps a multiple of N channels, e.g. 8 for GPU/NPU kernels "
        "(default 1: any count)",
    )
    p.add_argument("--model", help="model of the base checkpoint (default resnet20)")
    p.add_argument("--dataset", help="dataset (default mnist5k)")
    p.add_argument(
        "--base-checkpoint",
        help="base checkpoint (default: embedded ResNet-20/MNIST-5k, trained once)",
    )
    p.add_argument(
        "--space",
        help="a bundled search space (see `autoprune spaces`) or a YAML path (default: default)",
    )
    p.add_argument(
        "--trials",
        type=int,
        metavar="N",
        help="the study's total of fine-tuned trials, baselines included (default 20)",
    )
    p.add_argument(
        "--sampler",
        help="tpe, tpe-spread (random start-up spent on searched candidates, not baselines), "
        "tpe-univariate (a density per parameter), nsga2, gp or random (default tpe)",
    )
    p.add_argument(
        "--seed", type=int,
        help="sampler and policy seed (default 0); with trials at once, the order they finish in "
        "also steers the sampler: --max-concurrent 1 repeats a search exactly",
    )  # fmt: skip
    p.add_argument("--executor", help=EXECUTOR_HELP)
    p.add_argument("--max-concurrent", type=int, metavar="N", help="trials at once (default 2)")
    p.add_argument(
        "--cpus-per-trial", type=float, metavar="N",
        help="Ray CPUs per trial, also its torch threads (default 1)",
    )  # fmt: skip
    p.add_argument(
        "--gpus-per-trial", type=float, metavar="N",
        help="Ray GPUs per trial, fractions allowed, e.g. 0.5 (default 0)",
    )  # fmt: skip
    p.add_argument(
        "--ray-address",
        help="join an existing Ray cluster ('auto' or host:port; default: start one)",
    )
    p.add_argument(
        "--resources-per-trial",
        metavar="JSON",
        help="""Ray: custom resources each trial also asks for, as JSON, e.g. '{"worker_node": 1}'""",
    )
    _add_storage_arg(p)
    p.add_argument("--study", help="study name (default: MODEL-DATASET-SPACE-bBUDGET)")
    p.add_argument("--device", help="device inside trials: auto, cpu or cuda (default auto)")
    _add_data_path_args(p, search=True)
    p.add_argument(
        "--calibration-images", type=int, metavar="N",
        help="images the data-driven criteria score channels on (default 256)",
    )  # fmt: skip
    p.add_argument(
        "--screen",
        type=int,
        metavar="K",
        help="candidates scored by the adaptive-BN proxy per fine-tuned trial (default 4; 1: off)",
    )
    p.add_argument(
        "--screen-floor",
        type=float,
        metavar="RHO",
        help="screening pauses while the proxy's Spearman with fine-tuned val accuracy on this "
        "study's trials at the budget is below RHO, measured once 6 are done (default 0.3; "
        "-1: always screen)",
    )
    p.add_argument(
        "--rungs",
        type=int,
        metavar="R",
        help="successive halving once the study is full: the best 1/eta of the trials at the "
        "budget are fine-tuned eta times longer, up to this many rungs; the winner comes from "
        "the highest (default 1: no ladder)",
    )
    p.add_argument(
        "--eta",
        type=int,
        metavar="E",
        help="the ladder's rate: 1/eta promoted, eta x the epochs (default 3)",
    )
    p.add_argument(
        "--baselines",
        choices=("default", "all", "none"),
        help="baseline trials run first (default: uniform l1 + data-driven criteria, global, "
        "sensitivity; all: every allocation x every criterion)",
    )
    p.add_argument(
        "--max-failures",
        type=int,
        metavar="N",
        help="Ray: re-run a trial whose worker process died up to N times (default 0; -1: no limit)",
    )
    p.add_argument("--data-root", help="folder holding the dataset, where it needs one")
    _add_image_size_arg(p, "; a base checkpoint's own size is used when not given")
    _add_policies_dir_arg(p)
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)


def _baselines(sub: Sub) -> None:
    p = sub.add_parser(
        "baselines", help="add the baseline trials an existing study lacks, and run them"
    )
    p.add_argument("name", help=NAME_HELP)
    p.add_argument(
        "--which", choices=("default", "all"), default="default",
        help="default: uniform l1, each data-driven criterion, global, sensitivity; all: every "
        "allocation x every criterion (default default)",
    )  # fmt: skip
    _add_storage_arg(p)
    p.add_argument("--executor", help=EXECUTOR_HELP)
    _add_policies_dir_arg(p)
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)


def _resume(sub: Sub) -> None:
    p = sub.add_parser("resume", help="continue a study with the config stored in it")
    p.add_argument("name", help=NAME_HELP)
    _add_storage_arg(p)
    p.add_argument(
        "--trials", type=int, metavar="N", help="new total of fine-tuned trials (default: stored)"
    )
    p.add_argument("--executor", help=EXECUTOR_HELP)
    p.add_argument(
        "--max-concurrent", type=int, metavar="N", help="trials at once (default: stored)"
    )
    p.add_argument(
        "--max-failures", type=int, metavar="N", help="override the stored --max-failures"
    )
    _add_policies_dir_arg(p)
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)


def _studies(sub: Sub) -> None:
    p = sub.add_parser("studies", help="list studies with trial counts")
    _add_storage_arg(p)
    _add_format_arg(p)


def _show(sub: Sub) -> None:
    p = sub.add_parser(
        "show",
        help="print a study's front, its baselines, the winner at the budget and the proxy's Spearman",
    )
    p.add_argument("name", help=NAME_HELP)
    _add_storage_arg(p)
    p.add_argument(
        "--timing", action="store_true", help="median seconds per phase and framework overhead"
    )
    _add_format_arg(p)
    _add_policies_dir_arg(
        p,
        "where the front's policies are exported (DIR/NAME/; default policies): "
        "--format json/yaml name each point's file there and say whether it exists",
    )


def _plot(sub: Sub) -> None:
    p = sub.add_parser(
        "plot",
        help="plot a study's trials, front, budget, baselines and base model (PNG + offline HTML)",
    )
    p.add_argument("name", help=NAME_HELP)
    _add_storage_arg(p)
    p.add_argument(
        "--out", metavar="DIR", help="folder for front.png and front.html (default policies/NAME)"
    )


def _dashboard(sub: Sub) -> None:
    p = sub.add_parser(
        "dashboard", help="browse the studies with optuna-dashboard (needs the dashboard extra)"
    )
    _add_storage_arg(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")


def _export(sub: Sub) -> None:
    p = sub.add_parser("export", help="write a study's Pareto-front policies as YAML files")
    p.add_argument("name", help=NAME_HELP)
    _add_storage_arg(p)
    p.add_argument("--out", metavar="DIR", help="folder (default policies/NAME)")
    p.add_argument(
        "--format",
        choices=("yaml", "nni", "torch-pruning", "channels"),
        default="yaml",
        help="also write each policy's view for another tool next to its YAML: nni (NNI 3.0 "
        "config_list), torch-pruning (MetaPruner pruning_ratio_dict), channels (timm pruned-model "
        "layer shapes); default yaml: the policies only",
    )


def _replay(sub: Sub) -> None:
    p = sub.add_parser("replay", help="policy -> pruned, fine-tuned checkpoint with test accuracy")
    p.add_argument("policy", nargs="?", help="policy YAML file")
    p.add_argument("--study", help="replay the winning policy of this study instead of a file")
    _add_storage_arg(p)
    p.add_argument("--base-checkpoint", help="override the policy's base checkpoint path")
    p.add_argument(
        "--epochs", type=float, help="fine-tune epochs (default: the policy's retrain epochs x 10)"
    )
    p.add_argument(
        "--out", help="checkpoint path, a .pt2 program beside it (default: next to the base)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    _add_data_path_args(p)
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's)")
    p.add_argument("--data-root", help="folder holding the dataset, where it needs one")
    _add_image_size_arg(p, "; a base checkpoint's own size is used when not given")


def _sensitivity(sub: Sub) -> None:
    p = sub.add_parser(
        "sensitivity",
        help="per-group sensitivity curves (the sensitivity prior's) as a table and a PNG",
    )
    p.add_argument("--model", default="resnet20", help="model name (default resnet20)")
    p.add_argument(
        "--dataset",
        help="default: the base checkpoint's dataset (mnist5k without --base-checkpoint)",
    )
    p.add_argument("--base-checkpoint", help="the trained base (default: the cached one)")
    p.add_argument(
        "--space", default="default", help="its max_rate caps the measured rates (default default)"
    )
    p.add_argument("--data-root", help="folder holding the dataset, where it needs one")
    p.add_argument("--out", help="PNG file (default: sensitivity-MODEL-DATASET.png)")
    _add_format_arg(p)


def _onnx(sub: Sub) -> None:
    p = sub.add_parser(
        "onnx",
        help="export a checkpoint to ONNX and check it under ONNX Runtime (needs the onnx extra)",
    )
    p.add_argument("checkpoint", help="a pruned checkpoint (replay --out) or a base checkpoint")
    p.add_argument("--out", help="ONNX file (default: the checkpoint's path with .onnx)")
    p.add_argument("--batch", type=int, default=8, help="images compared with PyTorch (default 8)")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per runtime (default 30)")
    p.add_argument(
        "--threads", type=int, metavar="N", help="CPU threads for both runtimes (default: theirs)"
    )
    p.add_argument(
        "--int8", action="store_true",
        help="also quantize to INT8 (ONNX Runtime static, QDQ) and print fp32 and INT8 test "
        "accuracy and latency at batch 1 and 32 (writes FILE.int8.onnx)",
    )  # fmt: skip
    p.add_argument(
        "--dataset", help="--int8's calibration and test data (default: the base's dataset)"
    )
    p.add_argument("--data-root", help="folder holding the dataset, where it needs one")
    p.add_argument(
        "--calibration-images", type=int, default=512,
        help="training images INT8 activation ranges are calibrated on (default 512)",
    )  # fmt: skip


# In the order `autoprune --help` lists them: the registries, the base, the search and its
# study, then what ships.
VERBS: tuple[Callable[[Sub], None], ...] = (
    _registries, _train, _inspect, _search, _baselines, _resume, _studies, _show, _plot,
    _dashboard, _export, _replay, _sensitivity, _onnx,
)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoprune",
        description="AutoML search over structured pruning policies for CNNs.",
        epilog="Start with: autoprune search --budget-flops 0.5   (ResNet-20 on the bundled MNIST-5k)",
    )
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    for add in VERBS:
        add(sub)
    return parser
