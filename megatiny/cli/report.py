"""Summarize a finished training run: loss-curve PNG, final losses, and the unigram baseline.

    megatiny report --checkpoint runs/quickstart/checkpoints \
        --tensorboard-dir runs/quickstart/tensorboard --out-png runs/quickstart/loss_curve.png

Exits 1 when --require-below-baseline is given and the final validation loss is not below the
unigram baseline by at least that many nats.
"""
from __future__ import annotations

import argparse
import sys

from megatiny.eval.run_report import (
    plot_loss_curves,
    read_scalars,
    run_of_checkpoint,
    unigram_baseline_for_run,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint root or tag dir of the run")
    parser.add_argument("--tensorboard-dir", required=True)
    parser.add_argument("--out-png", required=True)
    parser.add_argument("--require-below-baseline", type=float, default=None, metavar="NATS",
                        help="fail unless final validation loss <= baseline - NATS")
    args = parser.parse_args(argv)

    run, metadata = run_of_checkpoint(args.checkpoint)  # megatiny.json only, no weights read
    scalars = read_scalars(args.tensorboard_dir)
    baseline = unigram_baseline_for_run(run, metadata["model"].vocab_size)
    png = plot_loss_curves(scalars, args.out_png, baseline=baseline,
                           title=f"megatiny run: {metadata['step']} steps")
    print(f"loss curve: {png}")
    print(f"unigram baseline (validation tokens under training unigram): {baseline:.3f} nats/token")
    for tag in ("train/loss", "valid/loss"):
        if tag in scalars:
            series = scalars[tag]
            print(f"{tag}: {series.values[0]:.3f} at step {series.steps[0]} -> "
                  f"{series.values[-1]:.3f} at step {series.steps[-1]}")
    if "valid/loss" not in scalars:
        print("no validation loss was logged (logging.eval_interval = 0?)", file=sys.stderr)
        return 1 if args.require_below_baseline is not None else 0
    final = float(scalars["valid/loss"].values[-1])
    print(f"final validation loss {final:.3f} is {baseline - final:.3f} nats below the unigram "
          f"baseline (perplexity {2.718281828 ** final:.1f} vs {2.718281828 ** baseline:.1f})")
    if args.require_below_baseline is not None and final > baseline - args.require_below_baseline:
        print(f"FAILED: expected at least {args.require_below_baseline} nats below the baseline",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
