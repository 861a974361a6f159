"""preflight: the XTTS STFT shapes, a conv and a matmul, per device policy, through the real CLI."""

from __future__ import annotations

import json

import pytest
import torch

from tts_contract.contract import DevicePolicy, ExitCode
from tts_runtime.preflight import _Op, _run_op, run_preflight

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")

EXPECTED_SHAPES = [[1, 64, 301], [1, 80, 517], [1, 80, 130], [1, 256, 400], [1024, 1024]]


def test_cpu_policy_runs_every_op_on_cpu() -> None:
    res = run_preflight(DevicePolicy.CPU)
    assert res.ok and res.device == "cpu" and res.exit_code == ExitCode.SUCCESS
    assert not res.fell_back_to_cpu
    assert [op.shape for op in res.ops] == EXPECTED_SHAPES
    assert all(op.ok and op.device == "cpu" and op.seconds > 0 for op in res.ops)
    assert res.torch == torch.__version__


@no_gpu
def test_prefer_gpu_falls_back_to_cpu_and_says_so() -> None:
    res = run_preflight("PreferGPU")
    assert res.ok and res.device == "cpu" and res.fell_back_to_cpu
    assert "falling back to CPU" in res.message
    assert all(op.device == "cpu" for op in res.ops)


@no_gpu
def test_require_gpu_fails_with_the_contract_code_via_the_cli(run_runtime_cli) -> None:
    table = run_runtime_cli("preflight", "--device-policy", "RequireGPU")
    assert table.returncode == ExitCode.PREFLIGHT_FAILED == 69
    assert "FAIL" in table.stdout and "no usable GPU" in table.stdout
    assert f"torch {torch.__version__}" in table.stdout  # the message names the versions
    as_json = run_runtime_cli("preflight", "--device-policy", "RequireGPU", "--json")
    assert as_json.returncode == 69
    res = json.loads(as_json.stdout)
    assert res["ok"] is False and res["exit_code"] == 69 and res["policy"] == "RequireGPU"
    assert res["cuda"] == torch.version.cuda and "no usable GPU" in res["message"]


def test_cpu_policy_via_the_cli(run_runtime_cli) -> None:
    result = run_runtime_cli("preflight", "--device-policy", "CPU")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(" ok\n") == len(EXPECTED_SHAPES)
    assert "PASS" in result.stdout and "n_fft 4096" in result.stdout


def test_bad_outputs_fail_the_op() -> None:
    # the checks themselves must be able to fail: a NaN result, a wrong shape, an exception
    cpu = torch.device("cpu")
    nan = _run_op(_Op("nan", (2,), lambda d: torch.tensor([1.0, float("nan")], device=d)), cpu)
    assert not nan.ok and "NaN" in (nan.error or "")
    shape = _run_op(_Op("shape", (3,), lambda d: torch.zeros(2, device=d)), cpu)
    assert not shape.ok and "expected [3]" in (shape.error or "")

    def boom(d: torch.device) -> torch.Tensor:
        raise RuntimeError("cuFFT error: CUFFT_INVALID_SIZE")

    raised = _run_op(_Op("stft", (1,), boom), cpu)
    assert not raised.ok and raised.error == "RuntimeError: cuFFT error: CUFFT_INVALID_SIZE"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_require_gpu_passes_on_a_gpu(run_runtime_cli) -> None:
    res = run_preflight(DevicePolicy.REQUIRE_GPU)
    assert res.ok, res.message
    assert res.device == "cuda:0" and res.device_info.gpu_name
    assert [op.shape for op in res.ops] == EXPECTED_SHAPES
    assert all(op.ok and op.device == "cuda:0" for op in res.ops)
    result = run_runtime_cli("preflight", "--device-policy", "RequireGPU", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["device"] == "cuda:0"
