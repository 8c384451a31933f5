"""THE training loop: every family trains here (GAN phases, one-optimiser models, subsets).

A step draws one global batch (split across processes, then into micro-batches of
``batch_gpu``) and runs each phase whose interval divides the step: requires_grad on exactly
the phase's trainable parameters, loss over the micro-batches, backward, gradients averaged
across processes by one all-reduce of a flat buffer (no DDP wrappers, so phases can run any
module frozen), non-finite check, optimiser step. Then EMA. Progress is counted in kimg; every
``tick_kimg`` a status line, stats.jsonl and TensorBoard; every ``snap`` ticks a snapshot (+
preview grid, metrics) and the resumable state.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from langfree.checkpoint import save_snapshot, write_json
from langfree.families.base import Progress, optional, state_module_names
from langfree.training import state as st
from langfree.training.ema import ema_beta, update_ema
from langfree.training.options import (
    Processes,
    TrainingError,
    TrainingInterrupted,
    TrainOptions,
    check_resume_config,
    full_config,
    lr_scale,
    resolve_options,
    run_desc,
)
from langfree.training.sampler import make_loader, prepare_batch
from langfree.training.stats import Reporter, TickStats, memory_gb


def train(
    family: Any,
    dataset: Any,
    options: TrainOptions,
    run_config: dict,
    preview: Callable | None = None,
    metrics: Callable | None = None,
) -> Path:
    """Train ``family`` on ``dataset`` (keys contract: see sampler.py). Returns the run dir."""
    procs = Processes(options)
    resolved = resolve_options(family, options, procs)
    # default=str: Paths and other plain values in run_config are recorded as text
    config = json.loads(json.dumps(full_config(family, run_config, resolved), default=str))
    if options.dry_run:
        if procs.rank == 0:
            print(json.dumps(config, indent=2))
        return st.new_run_dir(options.outdir, run_desc(family, options))
    if dataset is None or len(dataset) == 0:
        raise TrainingError(
            "no training data: pass a non-empty dataset (only --dry-run runs without)"
        )
    if options.resume and options.init_from:
        raise TrainingError("--resume and --init-from both given: --resume continues a run "
                            "(its weights, optimisers and data position); --init-from starts a "
                            "new run from a snapshot's weights. Pass one.")
    run_dir, state_dir, error = None, None, None
    if procs.rank == 0:
        try:
            if options.resume:
                run_dir, state_dir = st.resolve_resume(options.resume, options.outdir)
                # Refuse before anything is written: the run's config.json stays as it was.
                check_resume_config(run_dir / "config.json", config)
            else:
                run_dir = st.new_run_dir(options.outdir, run_desc(family, options))
        except (st.StateError, TrainingError) as exc:
            error = exc
    run_dir, state_dir, error = procs.broadcast_object((run_dir, state_dir, error))
    if error is not None:
        raise error
    loop = _Loop(family, dataset, resolved, procs, Path(run_dir), preview, metrics)
    loop.setup(state_dir, config)
    return loop.run()


class _Loop:
    def __init__(
        self,
        family: Any,
        dataset: Any,
        opts: dict,
        procs: Processes,
        run_dir: Path,
        preview: Callable | None,
        metrics: Callable | None,
    ):
        self.family, self.dataset, self.opts, self.procs = family, dataset, opts, procs
        self.run_dir, self.preview, self.metrics = run_dir, preview, metrics
        self.total_nimg = round(opts["kimg"] * 1000)
        self.step = self.nimg = self.tick = 0
        self.elapsed = 0.0

    # ------------------------------------------------------------ setup

    def setup(self, state_dir: Path | None, config: dict) -> None:
        opts, procs = self.opts, self.procs
        if opts["deterministic"]:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            # warn_only: a GPU op without a deterministic kernel warns instead of ending the run
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        else:
            torch.backends.cudnn.benchmark = True
        st.seed_everything(opts["seed"] * procs.world + procs.rank)
        self.modules: dict[str, nn.Module] = self.family.modules()
        for module in self.modules.values():
            module.to(procs.device)
        self.saved = state_module_names(self.family)  # references are recorded, not saved
        self.optimizers = self.family.optimizers()
        # The family's learning rates, before any schedule or restored state touches them.
        self.base_lrs = {name: [g["lr"] for g in opt.param_groups]
                         for name, opt in self.optimizers.items()}
        self.phases = self.family.phases()
        self.phase_params = {p.name: self._trainable(p) for p in self.phases}
        rng = self._restore(state_dir) if state_dir is not None else None
        init = None
        if state_dir is None and opts.get("init_from"):
            init = st.init_weights(opts["init_from"], self.family,
                                   {n: self.modules[n] for n in self.saved})
        if state_dir is None:
            self._broadcast_weights()
        if procs.rank == 0 and state_dir is None:  # written once the state has loaded
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_json(self.run_dir / "config.json", {**config, "run_dir": str(self.run_dir)})
        procs.barrier()
        self.reporter = Reporter(
            self.run_dir if procs.rank == 0 else None, self.total_nimg, self.nimg
        )
        self.stats = TickStats(procs.device)
        self.loader = make_loader(
            self.dataset,
            opts["batch_gpu"],
            opts["seed"],
            procs.rank,
            procs.world,
            self.nimg,
            opts["workers"],
        )
        self._log_start(state_dir)
        if init is not None:
            self.reporter.log(init)
        if rng is not None:
            st.set_rng_state(rng)  # last: nothing above may draw from the restored stream

    def _trainable(self, phase: Any) -> list[nn.Parameter]:
        """Parameters of the phase's modules that its optimiser updates (deduplicated)."""
        missing = [m for m in phase.modules if m not in self.modules]
        if missing or phase.optimizer not in self.optimizers or phase.interval < 1:
            raise TrainingError(
                f"phase {phase.name!r}: unknown modules {missing} or optimizer "
                f"{phase.optimizer!r} (family {self.family.name}), or interval < 1"
            )
        in_opt = {id(p) for g in self.optimizers[phase.optimizer].param_groups for p in g["params"]}
        params: dict[int, nn.Parameter] = {}
        for name in phase.modules:
            for p in self.modules[name].parameters():
                if id(p) in in_opt:
                    params.setdefault(id(p), p)
        if not params:
            raise TrainingError(
                f"phase {phase.name!r}: modules {phase.modules} have no "
                f"parameters in optimizer {phase.optimizer!r}"
            )
        return list(params.values())

    def _broadcast_weights(self) -> None:
        """Start every process from rank 0's weights (the family may be built per process)."""
        if self.procs.world == 1:
            return
        for name in sorted(self.modules):
            for tensor in self.modules[name].state_dict().values():
                torch.distributed.broadcast(tensor, src=0)

    def _restore(self, state_dir: Path) -> dict[str, Any] | None:
        progress = st.load_state(
            state_dir, {n: self.modules[n] for n in self.saved}, self.optimizers,
            self.procs.rank, self.procs.world,
        )
        self.step, self.nimg, self.tick = progress["step"], progress["nimg"], progress["tick"]
        self.elapsed = progress["elapsed"]
        if self.procs.rank == 0:  # drop records written after the state (a killed run's tail)
            for name, size in progress["log_bytes"].items():
                if (self.run_dir / name).exists():
                    os.truncate(self.run_dir / name, size)
        return progress["rng"]

    def _log_start(self, state_dir: Path | None) -> None:
        o, r = self.opts, self.reporter
        r.log(
            f"run dir {self.run_dir}  family {self.family.name}  processes {o['processes']}  "
            f"device {o['device']}  mixed precision {o['mixed_precision']}"
        )
        r.log(
            f"batch {o['batch']} (per process {o['batch'] // o['processes']}, micro-batch "
            f"{o['batch_gpu']} x {o['accumulation']})  ema "
            + (f"{o['ema_kimg']:.3g} kimg  " if o["ema_kimg"] is not None else
               f"decay {o['ema_decay']}  ")
            + (f"(ramp-up {o['ema_rampup']:g})  " if o["ema_rampup"] is not None else "")
            + f"lr {o['lr_schedule']} warm-up {o['lr_warmup_kimg']:g} kimg ramp-down "
            f"{o['lr_rampdown']:g}  "
            f"phases {', '.join(f'{p.name}/{p.interval}' for p in self.phases)}"
        )
        if state_dir is not None:
            r.log(f"resumed from {state_dir} at kimg {self.nimg / 1000:.3f} (step {self.step})")

    # ------------------------------------------------------------ the loop

    def run(self) -> Path:
        tick_start_time = time.time()
        run_start = tick_start_time - self.elapsed
        tick_start_nimg, maintenance = self.nimg, 0.0
        done = self.nimg >= self.total_nimg
        try:
            while not done:
                self._step()
                self.reporter.progress(self.nimg)
                done = self.nimg >= self.total_nimg
                if not done and self.nimg < tick_start_nimg + self.opts["tick_kimg"] * 1000:
                    continue
                self.tick += 1
                done = done or (
                    self.opts["max_ticks"] is not None and self.tick >= self.opts["max_ticks"]
                )
                now = time.time()
                self._report(
                    now - run_start, now - tick_start_time, self.nimg - tick_start_nimg, maintenance
                )
                if done or (self.opts["snap"] and self.tick % self.opts["snap"] == 0):
                    self._save(now - run_start)
                tick_start_nimg, tick_start_time = self.nimg, time.time()
                maintenance = tick_start_time - now
        except KeyboardInterrupt:
            message = self._interrupted()
            self.reporter.log(message)
            raise TrainingInterrupted(message) from None
        finally:
            self.reporter.close()
            self.loader = None  # shuts DataLoader workers down now, not at garbage collection
        return self.run_dir

    def _interrupted(self) -> str:
        """What a Ctrl-C leaves: the last complete state (what --resume continues from)."""
        states = st.list_states(self.run_dir)
        where = f"interrupted at kimg {self.nimg / 1000:.3f} (step {self.step})"
        if not states:
            when = f"every {self.opts['snap']} ticks" if self.opts["snap"] else "at the end"
            return (f"{where}; nothing saved yet in {self.run_dir} (snapshots and state are "
                    f"saved {when}); start the run again")
        kimg = json.loads((states[-1] / "progress.json").read_text())["nimg"] / 1000
        return (f"{where}; saved: the state {states[-1]} and snapshots up to kimg {kimg:.3f} in "
                f"{self.run_dir / 'snapshots'}; continue with `langfree train {self.family.name} "
                f"--resume {self.run_dir}`")

    def lr_scale(self) -> float:
        """The schedule's learning-rate multiplier at the current image count."""
        return lr_scale(self.opts, self.nimg, self.total_nimg)

    @property
    def _scheduled(self) -> bool:
        o = self.opts
        return o["lr_warmup_kimg"] > 0 or o["lr_schedule"] != "constant" or o["lr_rampdown"] > 0

    def _step(self) -> None:
        if self._scheduled:  # a function of nimg: resume stays exact
            scale = self.lr_scale()
            for name, opt in self.optimizers.items():
                for group, base in zip(opt.param_groups, self.base_lrs[name]):
                    group["lr"] = base * scale
        micro = [
            prepare_batch(next(self.loader), self.procs.device)
            for _ in range(self.opts["accumulation"])
        ]
        progress = Progress(self.step, self.nimg, self.total_nimg)
        for phase in self.phases:
            if self.step % phase.interval == 0:
                self._run_phase(phase, micro, progress)
        for src, ema in self.family.ema_pairs():
            beta = ema_beta(self.opts["batch"], self.opts["ema_kimg"], self.nimg,
                            self.opts["ema_rampup"], self.opts["ema_decay"])
            update_ema(self.modules[ema], self.modules[src], beta)
        self.nimg += self.opts["batch"]
        self.step += 1

    def _run_phase(self, phase: Any, micro: list[dict[str, Any]], progress: Progress) -> None:
        params = self.phase_params[phase.name]
        for module in self.modules.values():
            module.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        loss_sum = torch.zeros((), device=self.procs.device)
        for batch in micro:
            with self.procs.autocast():
                out = self.family.loss(phase, self.modules, batch, progress)
            if out.loss.ndim != 0:
                raise TrainingError(
                    f"phase {phase.name!r}: loss must be a scalar, got shape {tuple(out.loss.shape)}"
                )
            (out.loss.float() / len(micro)).backward()
            loss_sum = loss_sum + out.loss.detach().float()
            self.stats.add(f"{phase.name}/loss", out.loss)
            for name, value in out.stats.items():
                self.stats.add(f"{phase.name}/{name}", value)
        self._sync_and_check(phase, params, loss_sum / len(micro))
        optional(self.family, "after_backward", phase, self.modules)
        if phase.clip_grad_norm is not None:
            grads = [p for p in params if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(grads, phase.clip_grad_norm)
            self.stats.add(f"{phase.name}/grad_norm", norm)
        if any(p.grad is not None for p in params):
            self.optimizers[phase.optimizer].step()
        for p in params:
            p.requires_grad_(False)

    def _sync_and_check(self, phase: Any, params: list[nn.Parameter], loss: torch.Tensor) -> None:
        """Average gradients over processes (one flat all-reduce) and stop on non-finite values.
        Parameters without a gradient are skipped; every process runs the same code, so the set
        is the same on all of them. The ``.item()`` below is the one sync point of the phase."""
        grads = [p for p in params if p.grad is not None]
        if self.procs.world == 1:  # nothing to average: one foreach norm finds a nan / inf
            total = torch.nn.utils.get_total_norm([p.grad for p in grads]) if grads else 0.0
            if bool(torch.isfinite(loss + total).item()):
                return
        flat = torch.cat([p.grad.flatten() for p in grads] + [loss.reshape(1)])
        if self.procs.world > 1:
            torch.distributed.all_reduce(flat)
            flat /= self.procs.world
        if not bool(torch.isfinite(flat).all().item()):
            what = "loss" if not torch.isfinite(flat[-1]) else "gradients"
            self._stop(f"non-finite {what} in phase {phase.name!r} at kimg {self.nimg / 1000:.3f}")
        offset = 0
        for p in grads:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
            offset += p.numel()

    def _stop(self, message: str) -> None:
        snaps = self.run_dir / "snapshots"
        message += (
            f"; training stopped, the last good snapshot is in {snaps} and the state in "
            f"{self.run_dir / 'state'} (lower the learning rate or try --mixed-precision no)"
        )
        self.reporter.log(message)
        raise TrainingError(message)

    # ------------------------------------------------------------ ticks, snapshots, state

    def _sync_buffers(self) -> None:
        """Average floating-point buffers over processes once per tick. Buffers updated in a
        forward pass (StyleGAN's w_avg, path-length mean) see only their process's samples;
        averaging keeps every process's model identical and the saved one representative."""
        if self.procs.world == 1:
            return
        for name in sorted(self.modules):
            for buf in self.modules[name].buffers():
                if buf.is_floating_point():
                    torch.distributed.all_reduce(buf)
                    buf /= self.procs.world

    def _report(self, total: float, tick_time: float, tick_nimg: int, maintenance: float) -> None:
        self._sync_buffers()
        cpumem, gpumem = memory_gb()
        fields = {
            "tick": self.tick,
            "kimg": self.nimg / 1000,
            "time": total,
            "sec_per_tick": tick_time,
            "sec_per_kimg": tick_time / max(tick_nimg, 1) * 1000,
            "maintenance": maintenance,
            "lr_scale": self.lr_scale(),
            "cpumem": cpumem,
            "gpumem": gpumem,
        }
        losses = self.stats.means(self.procs.world)
        self.reporter.tick(fields, losses, self.nimg)

    def _check_weights(self) -> None:
        """Stop before writing anything when a saved module holds a non-finite value: a step
        with finite gradients can still overflow the weights (an enormous update), and the EMA
        copy takes it in the same step, so the next loss check would come one snapshot late.
        One pass over the saved tensors per snapshot; every process holds the same weights."""
        for name in self.saved:
            for key, tensor in self.modules[name].state_dict().items():
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    self._stop(f"non-finite weights in {name}.{key} at kimg "
                               f"{self.nimg / 1000:.3f} (nothing saved for this tick)")

    def _save(self, elapsed: float) -> None:
        self._check_weights()
        kimg = self.nimg / 1000
        name = (
            f"snapshot-{self.nimg // 1000:06d}"
            if self.nimg % 1000 == 0
            else f"snapshot-{kimg:010.3f}"
        )
        snapshot = self.run_dir / "snapshots" / name
        if self.procs.rank == 0:
            grid = st.no_rng(self.preview, self.family) if self.preview is not None else None
            save_snapshot(snapshot, self.family, kimg, extra={"step": self.step}, grid=grid)
            if self.metrics is not None:
                rows = st.no_rng(self.metrics, snapshot)
                self.reporter.metrics(rows, self.nimg)
        self._save_state(elapsed)
        self.reporter.log(f"saved {snapshot.name} and state at kimg {kimg:.3f}")

    def _save_state(self, elapsed: float) -> None:
        rngs = [st.rng_state()]
        if self.procs.world > 1:
            rngs = [None] * self.procs.world
            torch.distributed.all_gather_object(rngs, st.rng_state())
        if self.procs.rank == 0:
            logs = {
                n: (self.run_dir / n).stat().st_size
                for n in ("stats.jsonl", "metrics.jsonl")
                if (self.run_dir / n).exists()
            }
            progress = {
                "step": self.step,
                "nimg": self.nimg,
                "tick": self.tick,
                "elapsed": elapsed,
                "world": self.procs.world,
                "batch": self.opts["batch"],
                "log_bytes": logs,
            }
            modules = {n: self.modules[n] for n in self.saved}
            st.write_state(self.run_dir, progress, modules, self.optimizers, rngs)
        if self.procs.world > 1:
            torch.distributed.barrier()
