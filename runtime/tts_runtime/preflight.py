"""``tts-runtime preflight``: a device self-test before any GPU time is spent or traffic served.

The project's origin story is a ``cuFFT error: CUFFT_INVALID_SIZE`` deep inside XTTS synthesis on a
host whose CUDA stack did not match. So the preflight runs the very operations XTTS runs, with the same
shapes, on the device the policy picks, checks each output (shape, finite) and times it:

- the speaker encoder's MelSpectrogram: 16 kHz, n_fft 512, win 400, hop 160, Hamming, 64 mels
  (``get_conditioning_latents`` runs it on the model's device);
- the GPT conditioning mels: 22.05 kHz, n_fft 2048 / hop 256 / win 1024 and n_fft 4096 / hop 1024 /
  win 4096, 80 mels (on CPU at inference, on the device for every training batch);
- a conv1d (cuDNN, as in HiFi-GAN and VITS) and a matmul (cuBLAS, as in the GPT).

Policies (the contract's ``DevicePolicy``): RequireGPU fails with ``ExitCode.PREFLIGHT_FAILED`` and a
message naming the failing op and the versions; PreferGPU falls back to CPU and says so; CPU tests the
CPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from tts_contract.contract import DevicePolicy, ExitCode

log = logging.getLogger(__name__)


class OpResult(BaseModel):
    name: str
    device: str
    ok: bool
    seconds: float
    shape: list[int] | None = None
    expected_shape: list[int]
    error: str | None = None


class DeviceInfo(BaseModel):
    cuda_available: bool
    gpu_count: int = 0
    gpu_name: str | None = None
    compute_capability: str | None = None
    #: GPU architectures this torch build has kernels for (``torch.cuda.get_arch_list()``)
    arch_list: list[str] = Field(default_factory=list)
    gpu_memory_total_mib: int | None = None
    gpu_memory_free_mib: int | None = None
    cuda_unavailable_reason: str | None = None


class PreflightResult(BaseModel):
    ok: bool
    policy: DevicePolicy
    #: the device work should run on: ``cuda:0`` or ``cpu``
    device: str
    fell_back_to_cpu: bool = False
    message: str
    exit_code: int
    python: str
    torch: str
    torchaudio: str | None = None
    cuda: str | None = None
    cudnn: int | None = None
    device_info: DeviceInfo
    ops: list[OpResult]
    seconds: float

    @property
    def gpu(self) -> bool:
        return self.device.startswith("cuda")

    def failed_ops(self) -> list[OpResult]:
        return [op for op in self.ops if not op.ok]


@dataclass(frozen=True)
class _Op:
    name: str
    expected_shape: tuple[int, ...]
    #: builds its inputs on a device and returns the output tensor
    run: Callable[[Any], Any]


def _mel_op(name: str, sample_rate: int, seconds: float, n_mels: int, **stft: Any) -> _Op:
    n_samples = int(sample_rate * seconds)
    frames = n_samples // stft["hop_length"] + 1  # torchaudio pads the signal (center=True)

    def run(device: Any) -> Any:
        import torch
        import torchaudio

        mel = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_mels=n_mels, **stft).to(device)
        audio = torch.randn(1, n_samples, device=device) * 0.1
        return mel(audio)

    return _Op(name, (1, n_mels, frames), run)


def _ops() -> list[_Op]:
    import torch

    def conv1d(device: Any) -> Any:
        conv = torch.nn.Conv1d(80, 256, kernel_size=7, padding=3).to(device)
        return conv(torch.randn(1, 80, 400, device=device))

    def matmul(device: Any) -> Any:
        a = torch.randn(1024, 1024, device=device)
        return a @ a.T

    return [
        _mel_op(
            "speaker-encoder mel (16 kHz, n_fft 512, win 400, hop 160, hamming, 64 mels)",
            16000,
            3.0,
            64,
            n_fft=512,
            win_length=400,
            hop_length=160,
            window_fn=torch.hamming_window,
        ),
        _mel_op(
            "conditioning mel (22.05 kHz, n_fft 2048, win 1024, hop 256, 80 mels)",
            22050,
            6.0,
            80,
            n_fft=2048,
            win_length=1024,
            hop_length=256,
            power=2,
            f_min=0,
            f_max=8000,
        ),
        _mel_op(
            "conditioning mel (22.05 kHz, n_fft 4096, win 4096, hop 1024, 80 mels)",
            22050,
            6.0,
            80,
            n_fft=4096,
            win_length=4096,
            hop_length=1024,
            power=2,
            f_min=0,
            f_max=8000,
        ),
        _Op("conv1d (80->256 channels, kernel 7)", (1, 256, 400), conv1d),
        _Op("matmul (1024x1024 fp32)", (1024, 1024), matmul),
    ]


def _run_op(op: _Op, device: Any) -> OpResult:
    import torch

    started = time.perf_counter()
    try:
        out = op.run(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        shape = list(out.shape)
        error = None
        if shape != list(op.expected_shape):
            error = f"output shape {shape}, expected {list(op.expected_shape)}"
        elif not bool(torch.isfinite(out).all()):
            error = "output has NaN or infinite values"
        return OpResult(
            name=op.name,
            device=str(device),
            ok=error is None,
            seconds=round(seconds, 4),
            shape=shape,
            expected_shape=list(op.expected_shape),
            error=error,
        )
    except Exception as e:  # any failure of the op (cuFFT, cuDNN, OOM) is the finding, not a crash
        log.debug("preflight op %s failed on %s:\n%s", op.name, device, traceback.format_exc())
        return OpResult(
            name=op.name,
            device=str(device),
            ok=False,
            seconds=round(time.perf_counter() - started, 4),
            expected_shape=list(op.expected_shape),
            error=f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
        )


def _device_info() -> DeviceInfo:
    import torch

    try:
        available = torch.cuda.is_available()
    except Exception as e:  # a broken driver can raise here rather than answer False
        return DeviceInfo(cuda_available=False, cuda_unavailable_reason=f"{type(e).__name__}: {e}")
    if not available:
        reason = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device visible"
        return DeviceInfo(cuda_available=False, cuda_unavailable_reason=reason)
    major, minor = torch.cuda.get_device_capability(0)
    free, total = torch.cuda.mem_get_info(0)
    return DeviceInfo(
        cuda_available=True,
        gpu_count=torch.cuda.device_count(),
        gpu_name=torch.cuda.get_device_name(0),
        compute_capability=f"{major}.{minor}",
        arch_list=torch.cuda.get_arch_list(),
        gpu_memory_total_mib=total // 2**20,
        gpu_memory_free_mib=free // 2**20,
    )


def _arch_problem(info: DeviceInfo) -> str | None:
    """Why this torch build cannot run on the GPU (e.g. Blackwell sm_120 on a CUDA 11.8 build), if so."""
    if not info.compute_capability or not info.arch_list:
        return None
    major, minor = (int(x) for x in info.compute_capability.split("."))
    sm = major * 10 + minor
    built = {int(a.split("_")[1]) for a in info.arch_list if a.startswith("sm_")}
    ptx = {int(a.split("_")[1]) for a in info.arch_list if a.startswith("compute_")}
    # a cubin runs on the same major version at an equal or higher minor; PTX JIT-compiles forward
    if any(b // 10 == major and b <= sm for b in built) or any(p <= sm for p in ptx):
        return None
    return (
        f"GPU {info.gpu_name} is sm_{sm}, but this torch build has kernels for "
        f"{', '.join(info.arch_list)} only (use a node with a supported GPU or an image built for this one)"
    )


def _versions() -> dict[str, Any]:
    import torch

    try:
        import torchaudio

        ta: str | None = torchaudio.__version__
    except ImportError:
        ta = None
    cudnn = None
    try:
        cudnn = torch.backends.cudnn.version()
    except Exception:  # no cuDNN in this build
        cudnn = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchaudio": ta,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
    }


def _describe(versions: dict[str, Any], info: DeviceInfo) -> str:
    gpu = f"{info.gpu_name} (sm {info.compute_capability})" if info.gpu_name else "no GPU"
    cuda, cudnn = versions["cuda"] or "none", versions["cudnn"] or "none"
    return f"torch {versions['torch']}, CUDA {cuda}, cuDNN {cudnn}, {gpu}"


def run_preflight(policy: DevicePolicy | str = DevicePolicy.REQUIRE_GPU) -> PreflightResult:
    """Test the device ``policy`` asks for; never raises for a failing device, reports it instead."""
    import torch

    policy = DevicePolicy(policy)
    started = time.perf_counter()
    versions = _versions()
    info = _device_info()
    ops: list[OpResult] = []
    gpu_failure: str | None = None

    if policy is not DevicePolicy.CPU:
        if not info.cuda_available:
            gpu_failure = f"no usable GPU: {info.cuda_unavailable_reason}"
        elif problem := _arch_problem(info):
            gpu_failure = problem
        else:
            cuda = torch.device("cuda:0")
            ops = [_run_op(op, cuda) for op in _ops()]
            if failed := [op for op in ops if not op.ok]:
                gpu_failure = "; ".join(f"{op.name} failed on {op.device}: {op.error}" for op in failed)

    def result(
        ok: bool, device: str, message: str, code: ExitCode, fell_back: bool = False
    ) -> PreflightResult:
        return PreflightResult(
            ok=ok,
            policy=policy,
            device=device,
            fell_back_to_cpu=fell_back,
            message=message,
            exit_code=int(code),
            device_info=info,
            ops=ops,
            seconds=round(time.perf_counter() - started, 3),
            **versions,
        )

    described = _describe(versions, info)
    if policy is not DevicePolicy.CPU and gpu_failure is None:
        return result(True, "cuda:0", f"GPU preflight passed on {described}", ExitCode.SUCCESS)
    if policy is DevicePolicy.REQUIRE_GPU:
        return result(
            False,
            "none",
            f"GPU preflight failed (policy RequireGPU): {gpu_failure} [{described}]",
            ExitCode.PREFLIGHT_FAILED,
        )

    cpu_ops = [_run_op(op, torch.device("cpu")) for op in _ops()]
    ops.extend(cpu_ops)
    fell_back = policy is DevicePolicy.PREFER_GPU
    prefix = f"GPU unusable ({gpu_failure}); falling back to CPU (policy PreferGPU). " if fell_back else ""
    if failed := [op for op in cpu_ops if not op.ok]:
        why = "; ".join(f"{op.name}: {op.error}" for op in failed)
        return result(
            False, "none", f"{prefix}CPU preflight failed: {why} [{described}]", ExitCode.PREFLIGHT_FAILED
        )
    return result(True, "cpu", f"{prefix}CPU preflight passed [{described}]", ExitCode.SUCCESS, fell_back)


def format_table(res: PreflightResult) -> str:
    info = res.device_info
    lines = [
        f"policy      {res.policy.value}",
        f"device      {res.device}" + ("  (fell back to CPU)" if res.fell_back_to_cpu else ""),
        f"torch       {res.torch}   torchaudio {res.torchaudio or '-'}   python {res.python}",
        f"CUDA        {res.cuda or '-'}   cuDNN {res.cudnn or '-'}",
    ]
    if info.cuda_available:
        lines.append(
            f"GPU         {info.gpu_name}  sm {info.compute_capability}  "
            f"{info.gpu_memory_free_mib} / {info.gpu_memory_total_mib} MiB free  ({info.gpu_count} visible)"
        )
        lines.append(f"arch list   {' '.join(info.arch_list) or '-'}")
    else:
        lines.append(f"GPU         none ({info.cuda_unavailable_reason})")
    lines.append("")
    width = max((len(op.name) for op in res.ops), default=10)
    if res.ops:
        lines.append(f"{'op':<{width}}  {'device':<7} {'ms':>9}  {'result'}")
    else:
        lines.append("no op ran: there was no device to run them on")
    for op in res.ops:
        verdict = "ok" if op.ok else f"FAILED: {op.error}"
        lines.append(f"{op.name:<{width}}  {op.device:<7} {op.seconds * 1000:>9.1f}  {verdict}")
    lines.append("")
    lines.append(("PASS  " if res.ok else "FAIL  ") + res.message)
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device-policy",
        choices=[p.value for p in DevicePolicy],
        default=DevicePolicy.REQUIRE_GPU.value,
        help="RequireGPU: fail unless the GPU passes; PreferGPU: fall back to CPU; CPU: test the CPU "
        "(default: RequireGPU)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the result as one JSON object (for machines)"
    )


def run(args: argparse.Namespace) -> int:
    res = run_preflight(args.device_policy)
    if args.json:
        print(json.dumps(res.model_dump(mode="json")))
    else:
        print(format_table(res))
    if res.fell_back_to_cpu:
        log.warning("%s", res.message)
    elif not res.ok:
        log.error("%s", res.message)
    return res.exit_code
