"""Command line: `study train | evaluate | run | report`.

The only place that reads argv, starts Ray or prints for people. Bad input raises StudyError
anywhere below; it is printed here as one line and the exit status is 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from study.errors import StudyError

RUN_FILES = ("config.json", "history.csv", "metrics.json", "model.pt")


def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one configuration without Ray (same code path as a trial)",
        description="Train one configuration, without Ray. Defaults are the homework lab's.",
    )
    p.add_argument("--config", help="YAML or JSON file of config keys (flags override it)")
    p.add_argument("--data", default="synthetic", help="data spec (default: synthetic)")
    p.add_argument("--loss", help="bce or ce (default ce)")
    p.add_argument("--batch-size", type=int, help="default 32")
    p.add_argument("--depth", type=int, help="hidden layers (default 3)")
    p.add_argument("--width", type=int, nargs="+", help="one width, or one per layer (default 64)")
    p.add_argument("--dropout", type=float, help="default 0.5")
    p.add_argument("--no-batchnorm", dest="batchnorm", action="store_const", const=False,
                   help="leave out BatchNorm1d")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-4)")
    p.add_argument("--weight-decay", type=float, help="default 0")
    p.add_argument("--optimizer", help="adam or sgd (default adam)")
    p.add_argument("--schedule", help="none or cosine (default cosine)")
    p.add_argument("--epochs", type=int, help="default 30")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--image-size", type=int, help="downsample to this side (never upsamples)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--out", help="folder for config.json, history.csv, metrics.json, model.pt")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a trained model on a data set's test split",
        description="Score a saved model (study train --out, or a study's best model) on the "
        "test split of --data, correctly for both losses.",
    )
    p.add_argument("--checkpoint", required=True, help="model.pt or the folder holding it")
    p.add_argument("--data", default="synthetic", help="data spec (default: synthetic)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")


def build_parser() -> argparse.ArgumentParser:
    """Return the `study` argument parser with all subcommands."""
    parser = argparse.ArgumentParser(
        prog="study",
        description="Hyperparameter studies of a PyTorch MLP on chest X-rays, with Ray Tune "
        "and Optuna.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from study import tuner_cli  # the run/report options live beside the tuner

    tuner_cli.add_run_parser(sub)
    _add_train_parser(sub)
    _add_evaluate_parser(sub)
    tuner_cli.add_report_parser(sub)
    return parser


def _train_config(args: argparse.Namespace) -> Any:
    from study.config import TrialConfig, read_config_file

    values: dict[str, Any] = read_config_file(args.config) if args.config else {}
    flags = {
        "loss": args.loss, "batch_size": args.batch_size, "depth": args.depth,
        "dropout": args.dropout, "batchnorm": args.batchnorm, "lr": args.lr,
        "weight_decay": args.weight_decay, "optimizer": args.optimizer,
        "schedule": args.schedule, "epochs": args.epochs, "seed": args.seed,
        "image_size": args.image_size,
    }
    if args.width is not None:
        flags["width"] = args.width[0] if len(args.width) == 1 else list(args.width)
    values.update({k: v for k, v in flags.items() if v is not None})
    where = f"--config {args.config}" if args.config else "flags"
    return TrialConfig.from_dict(values, where=where)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise StudyError(f"--out {out}: exists and is not a folder")
    present = [name for name in RUN_FILES if (out / name).exists()]
    if present and not overwrite:
        raise StudyError(
            f"--out {out}: already holds a run ({', '.join(present)}); "
            "choose another folder or pass --overwrite"
        )


def _make_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StudyError(f"--out {out}: cannot be created ({exc.strerror})") from None


def _print_test(metrics: dict[str, float]) -> None:
    print(f"Test accuracy is {metrics['test_accuracy']:.2f}%.")
    print(
        f"Test AUROC is {metrics['test_auroc']:.4f}, "
        f"sensitivity {metrics['test_sensitivity']:.4f}, "
        f"specificity {metrics['test_specificity']:.4f}."
    )


def cmd_train(args: argparse.Namespace) -> int:
    """`study train`: one configuration, no Ray."""
    import pandas as pd

    from study.checkpoint import MODEL_FILE, save_model
    from study.data import load_data, resolve_spec
    from study.io import write_json_atomic, write_text_atomic
    from study.train import fit, resolve_device, to_device

    config = _train_config(args)
    out = Path(args.out) if args.out else None
    if out is not None:
        _check_out(out, args.overwrite)
    device = resolve_device(args.device)
    spec = resolve_spec(args.data)
    data = to_device(load_data(spec), device, config.image_size)
    if out is not None:
        _make_out(out)  # only once the data loaded: bad input leaves no empty folder behind
    print(f"Training {config.to_dict()} on {args.data} at {data.image_size}x{data.image_size} "
          f"({len(data.train)} train, {len(data.val)} validation, {len(data.test)} test) "
          f"on {device}.")

    def show(m: dict[str, float], _state: object) -> None:
        print(
            f"Epoch {int(m['epoch'])}/{config.epochs}: train loss {m['train_loss']:.4f} "
            f"acc {m['train_accuracy']:.2f}% | val loss {m['val_loss']:.4f} "
            f"acc {m['val_accuracy']:.2f}% AUROC {m['val_auroc']:.4f}",
            flush=True,
        )

    state = fit(config, data, on_epoch=show)
    final = state.history[-1]
    if final.get("diverged"):
        print(f"Training diverged at epoch {state.epoch} (train loss {final['train_loss']}).")
    _print_test(final)
    if out is not None:
        best = state.best_model or state.model.state_dict()
        run_info = {"config": config.to_dict(), "data": spec, "image_size": data.image_size,
                    "device": str(device)}
        write_json_atomic(out / "config.json", run_info)
        write_text_atomic(out / "history.csv", pd.DataFrame(state.history).to_csv(index=False))
        test = {k: v for k, v in final.items() if k.startswith("test_")}
        best_epoch = min(state.history, key=lambda h: h["val_loss"])
        write_json_atomic(out / "metrics.json", {**test, "best_epoch": int(best_epoch["epoch"]),
                                                 "best_val_loss": best_epoch["val_loss"],
                                                 "best_val_accuracy": best_epoch["val_accuracy"]})
        save_model(out / MODEL_FILE, best, config, data.image_size)
        print(f"Wrote {out}/: {', '.join(RUN_FILES)}.")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """`study evaluate`: the homework's Task B, scored correctly for both losses."""
    import torch

    from study.checkpoint import load_model
    from study.data import load_data, resolve_spec
    from study.losses import get_loss
    from study.train import evaluate, resolve_device, to_device

    config, model, image_size = load_model(args.checkpoint)
    device = resolve_device(args.device)
    raw = load_data(resolve_spec(args.data))
    if raw.image_size < image_size:
        raise StudyError(
            f"--data {args.data}: images are {raw.image_size}x{raw.image_size} but the model "
            f"was trained at {image_size}x{image_size}; images are never upsampled"
        )
    data = to_device(raw, device, image_size)
    metrics = evaluate(model.to(device), get_loss(config.loss), data.test)
    values = dict(zip(metrics, torch.stack(list(metrics.values())).tolist(), strict=True))
    print(f"Evaluating {args.checkpoint} ({config.loss}, {image_size}x{image_size}) on "
          f"{len(data.test)} test images of {args.data}.")
    _print_test({f"test_{k}": v for k, v in values.items()})
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (2 for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from study import tuner_cli

    commands = {"train": cmd_train, "evaluate": cmd_evaluate, "run": tuner_cli.cmd_run,
                "report": tuner_cli.cmd_report}
    try:
        return commands[args.command](args)
    except StudyError as exc:
        print(f"study: error: {exc}", file=sys.stderr)
        return 2
