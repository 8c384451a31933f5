"""One Custom Diffusion training step: langfree (through THE loop) vs the diffusers example.

    python benchmarks/custom_diffusion_vs_diffusers.py --official /tmp/ref/train_custom_diffusion.py

Both train the same random-weight SD-layout base (written here, preset ``--preset``) on the same
drawn instance images at the same resolution, batch, lr and augmentation, each in its own
process with ``--threads`` CPU threads (OMP_NUM_THREADS). The official script runs from a
temporary directory outside the repository; get it with e.g.
``git show HEAD:examples/custom_diffusion/train_custom_diffusion.py`` in a diffusers checkout.

Seconds per step are steady-state: langfree's median per-step tick time after ``--warmup``
steps (stats.jsonl); the official script's is the rate tqdm shows at its last step (an EMA of
recent steps). No modifier token: the official script crashes at token initialisation on
transformers 5 (``tokenizer.encode([word])`` returns a nested list), so both train K/V only.
Peak memory is each process's max RSS. Last line: ``ratio: X`` = official s/step ÷ langfree
s/step (>= 1: langfree is not slower).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def _child_env(threads: int) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    env.pop("PYTHONPATH", None)
    return env


_WRAP = ("import resource, runpy, sys\n"
         "sys.argv = sys.argv[1:]\n"
         "try:\n"
         "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
         "finally:\n"
         "    print('PEAK_RSS_KB=%d' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")


def _run_measured(cmd: list[str], cwd: Path, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    """Run the script ``cmd[0]`` with its arguments in a fresh interpreter; return (result,
    that process's own max RSS in MB, printed by the wrapper as it exits)."""
    res = subprocess.run([sys.executable, "-c", _WRAP, *cmd], cwd=cwd, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks = re.findall(r"PEAK_RSS_KB=(\d+)", res.stdout)
    return res, (int(peaks[-1]) / 1024 if peaks else float("nan"))


def official_step(args, work: Path) -> tuple[float, float]:
    cmd = [str(Path(args.official).resolve()),
           "--pretrained_model_name_or_path", str(work / "base"),
           "--instance_data_dir", str(work / "inst"), "--instance_prompt", "photo of a square",
           "--resolution", str(args.resolution), "--train_batch_size", str(args.batch),
           "--learning_rate", "1e-5", "--lr_warmup_steps", "0",
           "--max_train_steps", str(args.steps), "--output_dir", str(work / "official_out"),
           "--dataloader_num_workers", "0", "--checkpointing_steps", "1000000",
           "--seed", "0"]
    run_dir = work / "official_cwd"
    run_dir.mkdir()
    res, peak = _run_measured(cmd, run_dir, _child_env(args.threads))
    steps = re.findall(r"Steps:\s+100%.*?(\d+)/(\d+) \[[^,]*,\s*([\d.]+)(it/s|s/it)", res.stdout)
    if not steps:
        tail = "\n".join(res.stdout.splitlines()[-15:])
        raise SystemExit(f"the official script did not finish its steps:\n{tail}")
    value, unit = float(steps[-1][2]), steps[-1][3]
    return (1.0 / value if unit == "it/s" else value), peak


def ours_step(args, work: Path) -> tuple[float, float]:
    cmd = [str(Path(__file__).resolve()), "--_ours", str(work),
           "--resolution", str(args.resolution), "--batch", str(args.batch),
           "--steps", str(args.steps), "--threads", str(args.threads)]
    res, peak = _run_measured(cmd, work, _child_env(args.threads))
    runs = re.findall(r"^RUN_DIR=(.*)$", res.stdout, re.M)
    if res.returncode != 0 or not runs:
        raise SystemExit("langfree run failed:\n" + "\n".join(res.stdout.splitlines()[-20:]))
    run = Path(runs[-1])
    ticks = [json.loads(line)["Progress/sec_per_tick"]
             for line in (run / "stats.jsonl").read_text().splitlines()]
    return statistics.median(ticks[args.warmup:]), peak


def _ours_child(work: Path, args) -> None:
    """Runs in its own process: langfree's family through the loop, one step per tick."""
    import torch

    torch.set_num_threads(args.threads)
    from langfree.families.custom_diffusion.config import CustomDiffusionConfig
    from langfree.families.custom_diffusion.family import CustomDiffusionFamily, prepare
    from langfree.training.loop import train
    from langfree.training.options import TrainOptions

    cfg = CustomDiffusionConfig(
        pretrained_model_name_or_path=str(work / "base"), instance_data_dir=str(work / "inst"),
        instance_prompt="photo of a square", resolution=args.resolution,
        train_batch_size=args.batch, learning_rate=1e-5, lr_warmup_steps=0,
        max_train_steps=args.steps, seed=0)
    fam = CustomDiffusionFamily(cfg)
    prepare(fam)
    opts = TrainOptions(outdir=str(work / "ours_runs"), kimg=args.steps * args.batch / 1000,
                        batch=args.batch, tick_kimg=args.batch / 1000, snap=0, seed=0)
    print(f"RUN_DIR={train(fam, fam.dataset(), opts, {'family': 'custom-diffusion'})}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--official", help="path of diffusers' train_custom_diffusion.py")
    p.add_argument("--preset", default="tiny32", help="SD preset of the random base")
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--_ours", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._ours:
        return _ours_child(Path(args._ours), args)
    if not args.official or not Path(args.official).is_file():
        raise SystemExit("pass --official PATH/train_custom_diffusion.py (diffusers examples/)")
    from langfree.families.sd.config import PRESETS
    from langfree.families.sd.tiny import write_shape_images, write_tiny_base

    cfg = PRESETS[args.preset]
    args.resolution = args.resolution or cfg.resolution
    with tempfile.TemporaryDirectory(prefix="cd_bench_") as tmp:
        work = Path(tmp)
        write_tiny_base(work / "base", cfg)
        write_shape_images(work / "inst", n=5, size=2 * args.resolution)
        ours, ours_mb = ours_step(args, work)
        official, official_mb = official_step(args, work)
    print(f"config: preset {args.preset}, {args.resolution} px, batch {args.batch}, "
          f"{args.steps} steps, {args.threads} thread(s), K/V only, augmentation on")
    print(f"langfree: {ours:.4f} s/step  peak {ours_mb:.0f} MB")
    print(f"official: {official:.4f} s/step  peak {official_mb:.0f} MB")
    print(f"ratio: {official / ours:.2f}")


if __name__ == "__main__":
    main()
