"""Which device to serve on, decided once at start by the devicePolicy and the device preflight.

``tts_runtime.preflight.run_preflight`` runs the STFT/mel shapes XTTS uses and a matmul on the
device the policy asks for: RequireGPU refuses to start without a GPU that passes (a clear verdict
instead of the seed's cuFFT crash deep inside the first synthesis), PreferGPU falls back to the CPU
and says why, CPU checks the CPU ops only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tts_contract.contract import DevicePolicy, ExitCode

from .engine import LoadError


@dataclass
class DeviceChoice:
    device: str
    #: "passed", or "passed (CPU fallback)" when PreferGPU found no usable GPU
    preflight: str
    message: str = ""
    report: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "preflight": self.preflight,
            "message": self.message,
            "report": self.report,
        }


def choose_device(policy: DevicePolicy) -> DeviceChoice:
    """The device to load on; raises ``LoadError`` (exit code 69) when the policy cannot be met."""
    from tts_runtime.preflight import run_preflight

    result = run_preflight(policy)
    if not result.ok:
        code = ExitCode(result.exit_code) if result.exit_code else ExitCode.PREFLIGHT_FAILED
        raise LoadError(result.message, code)
    return DeviceChoice(
        device=result.device,
        preflight="passed (CPU fallback)" if result.fell_back_to_cpu else "passed",
        message=result.message,
        report=result.model_dump(mode="json"),
    )
