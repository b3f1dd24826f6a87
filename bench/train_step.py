"""Throughput of `model.step.train_step` against a bare training loop of the same model, same run.

    python -m bench.train_step                  # CPU: tiny AST, 128 frames x 64 mels, batch 16 (~20 s)
                                                # CUDA: AST-base, 1024 x 128, stride 10, batch 128
    python -m bench.train_step --compile        # both loops (and the reference) torch.compiled
    python -m bench.train_step --help

Prints one JSON object. Rows in examples/s (from the median step time; the two loops'
steps are interleaved so machine noise hits both alike), same device, same process:
- train_step: the project's step (MixUp + SpecAugment on device, normalise, forward, BCE,
  backward, Adam step, loss read back), with achieved TFLOP/s and MFU on CUDA;
- bare_loop: forward + backward + Adam of the same model on the same batch, nothing else
  (the ceiling for this model); `ratio_vs_bare` = train_step / bare_loop;
- reference: on CUDA, the performance-anchor loop of ../shared/bench/reference/
  gpu_ast_throughput.py at the same geometry and batch (imported from that path, not
  copied); elsewhere "not measured".
FLOPs per example (forward + backward) are counted with torch's FlopCounterMode at batch 1
(about 810 GFLOP for AST-base at stride 10); MFU = FLOPs x examples/s / --peak-tflops.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from model.ast import create_ast
from model.config import ModelConfig
from model.augment import AugmentConfig
from model.step import OptimConfig, make_optimizer, train_step

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "bench" / "reference" / "gpu_ast_throughput.py"
DEFAULTS = {"cuda": dict(size="base", frames=1024, mels=128, batch=128, steps=20, threads=None),
            "cpu": dict(size="tiny", frames=128, mels=64, batch=16, steps=6, threads=1)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["tiny", "small", "base"], help="AST size (CUDA: base, CPU: tiny)")
    p.add_argument("--frames", type=int, help="input frames (CUDA: 1024, CPU: 128)")
    p.add_argument("--mels", type=int, help="mel bins (CUDA: 128, CPU: 64)")
    p.add_argument("--stride", type=int, default=10, help="patch stride in both axes (default 10)")
    p.add_argument("--classes", type=int, default=527, help="output classes (default 527)")
    p.add_argument("--batch", type=int, help="examples per step (CUDA: 128, CPU: 16)")
    p.add_argument("--micro-batch", type=int, help="gradient-accumulation micro-batch (default: none)")
    p.add_argument("--steps", type=int, help="timed steps per row (CUDA: 20, CPU: 6)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each row (default 2)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (CUDA: torch's default; CPU: 1, "
                                              "stable on a shared machine)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model in both loops")
    p.add_argument("--no-augment", action="store_true", help="train_step without MixUp/SpecAugment")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak for MFU (H100 SXM: 989)")
    p.add_argument("--reference", type=Path, default=REFERENCE, help="reference loop script (CUDA only)")
    args = p.parse_args()
    for k, v in DEFAULTS["cuda" if torch.cuda.is_available() else "cpu"].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_pair(fns: dict, steps: int, warmup: int, device: torch.device) -> dict:
    """Median seconds per call of each fn(step) in `fns`, the calls interleaved (a, b, a, b, ...)
    so that a busy or throttling machine slows every row alike; `warmup` untimed rounds first."""
    times = {name: [] for name in fns}
    for s in range(warmup + steps):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn(s)
            _sync(device)
            if s >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def flops_per_example(model: torch.nn.Module, frames: int, mels: int, device: torch.device) -> float:
    """Forward + backward FLOPs of one example (matmuls and convolutions)."""
    x = torch.randn(1, frames, mels, device=device)
    with FlopCounterMode(display=False) as counter, autocast(device):
        model(x).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def build(args, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(size=args.size, frames=args.frames, mels=args.mels, fstride=args.stride,
                      tstride=args.stride, n_classes=args.classes)
    return create_ast(cfg).to(device).train()


def row(name: str, batch: int, seconds: float, flops: float, peak_tflops: float, device: torch.device) -> dict:
    rate = batch / seconds
    r = {"name": name, "examples_per_s": round(rate, 1), "ms_per_step": round(1e3 * seconds, 1)}
    if device.type == "cuda":
        r.update(achieved_TFLOPs=round(flops * rate / 1e12, 1), mfu=round(flops * rate / (peak_tflops * 1e12), 3))
    return r


def reference_row(args, device: torch.device) -> dict | str:
    """The anchor loop at the same geometry, or why it was not measured."""
    if device.type != "cuda":
        return "not measured: no CUDA device"
    if not args.reference.is_file():
        return f"not measured: {args.reference} not found"
    if args.mels != 128 or args.classes != 527:
        return "not measured: the reference loop is fixed at 128 mels and 527 classes"
    spec = importlib.util.spec_from_file_location("gpu_ast_throughput", args.reference)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    dim, depth, heads = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12)}[args.size]
    with contextlib.redirect_stdout(io.StringIO()):       # it prints its own JSON line
        r = ref.bench(f"reference-{args.size}-s{args.stride}", dim, depth, heads, args.batch,
                      stride=args.stride, frames=args.frames, compile_=args.compile, steps=args.steps)
    return {"name": "reference", **r}


def main() -> None:
    args = parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = build(args, device)
    params = sum(p.numel() for p in model.parameters())
    flops = flops_per_example(model, args.frames, args.mels, device)
    g = torch.Generator(device=device).manual_seed(0)
    x = (torch.randn(args.batch, args.frames, args.mels, generator=g, device=device) * 4.5 - 4.3).half()
    y = (torch.rand(args.batch, args.classes, generator=g, device=device) < 0.02).float()

    ocfg = OptimConfig(lr=1e-5, micro_batch=args.micro_batch, compile=args.compile)
    aug = AugmentConfig(specaugment=not args.no_augment, mixup=not args.no_augment)
    opt = make_optimizer(model, ocfg)
    bare = build(args, device)
    bare_opt = make_optimizer(bare, ocfg)
    fwd = torch.compile(bare) if args.compile else bare
    xf = x.float()

    def bare_step(_):
        with autocast(device):
            loss = F.binary_cross_entropy_with_logits(fwd(xf).float(), y)
        loss.backward()
        bare_opt.step()
        bare_opt.zero_grad(set_to_none=True)

    secs = timed_pair({"train_step": lambda s: train_step(model, opt, x, y, s, ocfg, aug, g),
                       "bare_loop": bare_step}, args.steps, args.warmup, device)
    rows = [row(name, args.batch, t, flops, args.peak_tflops, device) for name, t in secs.items()]
    rows[0]["ratio_vs_bare"] = round(secs["bare_loop"] / secs["train_step"], 3)
    peak_mem = round(torch.cuda.max_memory_allocated() / 2**30, 1) if device.type == "cuda" else None
    model = opt = bare = bare_opt = fwd = None  # free the GPU for the reference loop
    if device.type == "cuda":
        torch.cuda.empty_cache()
    ref = reference_row(args, device)
    if isinstance(ref, dict):
        rows[0]["ratio_vs_reference"] = round(rows[0]["examples_per_s"] / ref["train_samples_per_s"], 3)
        rows.append(ref)
    else:
        rows.append({"name": f"reference (AST-{args.size} {args.frames}x{args.mels} s{args.stride} "
                             f"batch {args.batch}, CUDA)", "status": ref})

    print(json.dumps({
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "model": {"size": args.size, "frames": args.frames, "mels": args.mels, "stride": args.stride,
                  "classes": args.classes, "params_M": round(params / 1e6, 3)},
        "batch": args.batch, "micro_batch": args.micro_batch, "steps": args.steps, "compile": args.compile,
        "augment": not args.no_augment,
        "train_flops_per_example_G": round(flops / 1e9, 2),
        "peak_mem_GiB_both_loops": peak_mem,
        "rows": rows,
    }, indent=1))


if __name__ == "__main__":
    main()
