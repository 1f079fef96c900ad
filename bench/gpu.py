"""GPU throughput of our ViT against torchvision's and timm's, model alone, in one run.

    python bench/gpu.py [--models vit_b_16 vit_ti_16] [--batch 128] [--compile]
    python bench/gpu.py --models vit_ti_16 --impls ours --image-size 64 --patch-size 8 --num-layers 6 --stem conv
    python bench/gpu.py --compile --models vit_b_16 --impls ours --batch 256 --profile 10   # where a step's time goes
    python bench/gpu.py --measure-peak ...     # MFU against this GPU's measured bf16 matrix-product rate

Random GPU-resident batches, bf16 autocast, fused AdamW, 224 px unless --image-size. Prints one markdown table:
training and inference images/s, peak training memory, and model-FLOP utilisation (MFU) of the
training step against a bf16 peak: --peak-tflops (790, measured on the H200 where issue 5 was filed), or with
--measure-peak the best rate of large square bf16 matrix products on this GPU, measured first.
"""
import argparse
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import forward_flops, make, timed  # noqa: E402
from vit.model import SHAPE_FLAGS, list_models  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--models", nargs="+", default=["vit_b_16", "vit_ti_16"], choices=list_models())
parser.add_argument("--impls", nargs="+", default=["ours", "torchvision", "timm"],
                    choices=("ours", "torchvision", "timm"))
parser.add_argument("--batch", type=int, default=128)
parser.add_argument("--image-size", type=int, default=224)
parser.add_argument("--patch-size", type=int, help="override the size's patch (ours and torchvision)")
parser.add_argument("--num-layers", type=int, help="override the size's depth (ours and torchvision)")
parser.add_argument("--stem", choices=("patch", "conv"), help="ours only; MFU leaves out the conv stem's FLOPs")
parser.add_argument("--steps", type=int, default=20)  # timed steps per case and round
parser.add_argument("--warmup", type=int, default=5)
parser.add_argument("--min-seconds", type=float, default=1.0, help="time more steps where --steps take less")
parser.add_argument("--rounds", type=int, default=3, help="each case timed this many times in turn; the median counts")
parser.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to start)")
parser.add_argument("--compile-mode", default="default", help="torch.compile's mode, e.g. max-autotune")
parser.add_argument("--peak-tflops", type=float, default=790.0)
parser.add_argument("--measure-peak", action="store_true", help="measure the bf16 peak here instead (a few seconds)")
parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="then profile this many training steps of each case: GPU time by kind of kernel, top kernels")
parser.add_argument("--json", help="also write the rows to this file")
parser.add_argument("--device", default="cuda", help="cpu only to smoke-test this script")
args = parser.parse_args()

device = torch.device(args.device)
if device.type == "cuda" and not torch.cuda.is_available():
    sys.exit("gpu.py: no CUDA GPU here; --device cpu smoke-tests the script")
overrides = {k: getattr(args, k) for k in SHAPE_FLAGS if getattr(args, k) is not None}
sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True


def setup(impl, name, compiled):
    """One case's model, optimiser and batch, warmed up -> (model, train step, inference step, peak training GiB).

    The other cases stay resident while this one runs, so its peak is counted above what they hold."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    model = make(impl, name, args.image_size, **overrides).to(device)
    step_model = torch.compile(model, mode=args.compile_mode) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)

    def train_step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(step_model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer_step():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            step_model(x)

    model.train()
    for _ in range(max(args.warmup, 2)):  # 2: the optimiser's state exists
        train_step()
    sync()
    peak = (torch.cuda.max_memory_allocated() - before) / 2**30 if device.type == "cuda" else float("nan")
    model.eval()
    for _ in range(args.warmup):
        infer_step()
    return model, train_step, infer_step, peak


KINDS = {"attention": ("flash", "fmha", "sdpa", "attention"),  # kernel names; the patch convolution is a GEMM
         "matrix products": ("gemm", "nvjet", "cutlass", "xmma", "triton_mm", "triton_tem", "wgrad", "dgrad")}


def profile_steps(label, train_step):
    """GPU time of --profile training steps by kind of kernel (matched by name), then the kernels with the most."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(args.profile):
            train_step()
        sync()
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = max(sum(e.self_device_time_total for e in kernels) / args.profile / 1e3, 1e-9)  # 0 on a CPU
    by_kind = dict.fromkeys([*KINDS, "other"], 0.0)
    for e in kernels:
        kind = next((k for k, words in KINDS.items() if any(w in e.key.lower() for w in words)), "other")
        by_kind[kind] += e.self_device_time_total / args.profile / 1e3
    print(f"\n# {label}: GPU time per training step {total:.2f} ms: "
          + ", ".join(f"{k} {v:.2f} ms ({v / total:.0%})" for k, v in by_kind.items()))
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25), flush=True)


def matmul_peak():
    """This device's bf16 matrix-product rate, TFLOP/s: the best of square products n x n by n x n (2 n^3 FLOPs)."""
    best = 0.0
    for n in (4096, 8192, 16384) if device.type == "cuda" else (256,):
        a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
        best = max(best, 2 * n ** 3 / timed(lambda: a @ b, 10, 3, sync, 0.5) / 1e12)
        del a, b
    return best


if args.measure_peak:
    args.peak_tflops = matmul_peak()
shape = "".join(f", {k} {v}" for k, v in overrides.items())
print(f"# {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}, "
      f"batch {args.batch}, {args.image_size} px{shape}, bf16 autocast, compile mode {args.compile_mode}, "
      f"median of {args.rounds} rounds, MFU against {args.peak_tflops:.3g} TFLOP/s"
      f"{' (bf16 matrix products, measured here)' if args.measure_peak else ''}", flush=True)
print("| model | impl | mode | train img/s | inference img/s | peak train GiB | train MFU |")
print("|---|---|---|---|---|---|---|", flush=True)
rows = []
# eager first, then compiled (slow to start), so that a run stopped early still has the eager table. The impls of
# one model and mode are timed in turn, round after round, and each reports its median: a GPU this fast runs a small
# ViT as fast as one CPU thread can launch its kernels, and that speed drifts over seconds.
for compiled in ([False, True] if args.compile else [False]):
    mode = "compiled" if compiled else "eager"
    for name in args.models:
        with torch.device("meta"):  # only the configuration is needed, not a second set of weights
            flops = forward_flops(make("ours", name, args.image_size, **overrides).config)
        cases = {}
        for impl in args.impls:
            try:
                cases[impl] = setup(impl, name, compiled)
            except Exception as e:  # e.g. timm not installed: report and go on
                print(f"| {name} | {impl} | {mode} | failed: {e!r:.80} |||", flush=True)
        times = {impl: ([], []) for impl in cases}
        for _ in range(args.rounds):
            for impl, (model, train_step, infer_step, _) in cases.items():
                model.train()
                times[impl][0].append(timed(train_step, args.steps, 1, sync, args.min_seconds))
                model.eval()
                times[impl][1].append(timed(infer_step, args.steps, 1, sync, args.min_seconds))
        for impl, (t_train, t_infer) in times.items():
            train_ips, infer_ips = args.batch / statistics.median(t_train), args.batch / statistics.median(t_infer)
            row = dict(model=name, impl=impl, mode=mode, train_img_s=round(train_ips), infer_img_s=round(infer_ips),
                       peak_gib=round(cases[impl][3], 2),
                       train_mfu=round(train_ips * 3 * flops / (args.peak_tflops * 1e12), 3))
            rows.append(row)
            print("| {model} | {impl} | {mode} | {train_img_s:,} | {infer_img_s:,} | {peak_gib} | {train_mfu:.0%} |"
                  .format(**row), flush=True)
        for impl, (model, train_step, _, _) in cases.items() if args.profile else ():
            model.train()
            profile_steps(f"{name} {impl} {mode}", train_step)
        del cases, times
if args.json:
    with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)
