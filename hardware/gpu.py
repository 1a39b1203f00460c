"""GPU specs: peak FLOP/s per dtype, HBM, links, and the efficiencies the cost model applies.

One YAML data file per preset in ``hardware/presets/<name>.yaml``; nothing here hard-codes a
number. Peaks are *dense* datasheet figures (never the "with sparsity" ones, which are 2x).
Efficiencies are fractions of those peaks that real kernels reach; they are starting points
meant to be replaced by ``autopar calibrate`` measurements.

Units: TFLOP/s = 1e12 FLOP/s; GB/s and TB/s are decimal (1e9 and 1e12 bytes/s), as vendors
quote them; ``hbm_bytes`` is bytes (marketing "80 GB" is taken as 80 GiB, see docs/hardware.md).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Literal, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, model_validator

from models.errors import SpecError, format_validation_error

PRESETS_DIR = Path(__file__).parent / "presets"

Dtype = Literal["bf16", "fp16", "fp8", "fp32", "tf32"]
DTYPES: tuple[str, ...] = ("bf16", "fp16", "fp8", "fp32", "tf32")
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]


class _Strict(BaseModel):
    # allow_inf_nan=False: an `.inf` latency or a NaN size is an error, never a step time of inf s.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class EfficiencySpec(_Strict):
    """Fractions of peak that kernels reach on this GPU (0 < x <= 1). Tune from measurements."""

    matmul: dict[Dtype, Fraction] = Field(
        description="Fraction of the dtype's peak that large GEMMs reach; missing dtypes fall back to bf16, then fp16."
    )
    attention: dict[Dtype, Fraction] = Field(
        description="Fraction of the dtype's peak that fused (flash) attention fwd+bwd reaches; same fallback."
    )
    memory_bw: Fraction = Field(description="Fraction of hbm_TBps that elementwise/memory-bound kernels reach.")
    intra_node_link: Fraction = Field(
        description="NCCL bus bandwidth / intra_node_bw_GBps for large collectives inside a node."
    )
    inter_node_link: Fraction = Field(description="NCCL bus bandwidth / inter_node_bw_GBps over the NIC.")
    kernel_overhead_us: float = Field(ge=0.0, description="Fixed cost per kernel launch, microseconds.")
    overlap_slowdown: float = Field(
        default=0.19,
        ge=0.0,
        lt=1.0,
        description="How much slower compute kernels run while a collective runs beside them (NCCL takes "
        "SMs and memory bandwidth): 0.19 = 19% slower, the mean measured on A100, H100, MI250 and MI210 "
        "(arXiv 2507.03114). The hidden part of an overlapped collective costs this much compute.",
    )

    @property
    def overlap_tax(self) -> float:
        """Seconds of step time per second of collective hidden under compute: σ/(1+σ) (hardware.comm.exposed_s)."""
        return self.overlap_slowdown / (1.0 + self.overlap_slowdown)

    @model_validator(mode="after")
    def _check_fallback(self) -> EfficiencySpec:
        for table in ("matmul", "attention"):
            if not {"bf16", "fp16"} & set(getattr(self, table)):
                raise ValueError(f"efficiency.{table} needs a bf16 or fp16 entry (the fallback for other dtypes)")
        return self


class GPUSpec(_Strict):
    """One accelerator (one rank) and the default node it ships in."""

    name: str = Field(description="Canonical lowercase preset name, e.g. h100-sxm-80gb.")
    description: str = Field(description="What the device is, in words.")
    generation: str = Field(
        default="other",
        description="Architecture generation (ampere, hopper, blackwell, ...): the key of the cost model's "
        "fitted compute scales (planner/stacks/fitted.yaml).",
    )
    source: str = Field(description="Where every number comes from (datasheet, paper, table).")
    peak_bf16_tflops: PositiveFloat | None = Field(description="Dense bf16 tensor peak; null = no bf16 units (V100).")
    peak_fp16_tflops: PositiveFloat = Field(description="Dense fp16 tensor peak.")
    peak_fp32_tflops: PositiveFloat = Field(description="fp32 peak (non-tensor SIMT/vector unless noted).")
    peak_tf32_tflops: PositiveFloat | None = Field(description="Dense tf32 tensor peak; null = no tf32 mode.")
    peak_fp8_tflops: PositiveFloat | None = Field(description="Dense fp8 tensor peak; null = no fp8 units.")
    hbm_bytes: PositiveInt = Field(le=2**50, description="Device memory capacity in bytes (80 GB taken as 80 * 2**30).")
    hbm_TBps: PositiveFloat = Field(description="Peak device-memory bandwidth, TB/s (1e12 B/s).")
    intra_node_bw_GBps: PositiveFloat = Field(
        description="Per-GPU, one-direction bandwidth to the other GPUs of its node (NVLink/xGMI), GB/s."
    )
    inter_node_bw_GBps: PositiveFloat = Field(
        description="Per-GPU, one-direction NIC bandwidth of the default node (400 Gb/s = 50 GB/s)."
    )
    gpus_per_node: PositiveInt = Field(le=4096, description="GPUs in the default node / NVLink domain (GB200: 72).")
    intra_node_latency_us: float = Field(ge=0.0, description="Per-step latency of an intra-node ring, us.")
    inter_node_latency_us: float = Field(ge=0.0, description="Per-step latency of a ring step over the NIC, us.")
    efficiency: EfficiencySpec = Field(description="Achievable fractions of the peaks above.")

    @model_validator(mode="after")
    def _check_efficiency_dtypes(self) -> GPUSpec:
        # An efficiency for a dtype the GPU cannot run is a data-file mistake, not a tuning choice.
        for table in ("matmul", "attention"):
            for dtype in getattr(self.efficiency, table):
                if self._peak_tflops(dtype) is None:
                    raise ValueError(
                        f"efficiency.{table} has a {dtype} entry but peak_{dtype}_tflops is null for {self.name}"
                    )
        return self

    def _peak_tflops(self, dtype: str) -> float | None:
        if dtype not in DTYPES:
            raise SpecError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
        return getattr(self, f"peak_{dtype}_tflops")

    def peak_flops(self, dtype: str) -> float:
        """Dense datasheet peak in FLOP/s for ``dtype``; SpecError if this GPU has no such units."""
        tflops = self._peak_tflops(dtype)
        if tflops is None:
            have = [d for d in DTYPES if getattr(self, f"peak_{d}_tflops") is not None]
            raise SpecError(f"{self.name} has no {dtype} peak figure; it supports {', '.join(have)}")
        return tflops * 1e12

    def matmul_flops(self, dtype: str) -> float:
        """Achievable GEMM FLOP/s: ``peak_flops(dtype) * efficiency.matmul[dtype]`` (bf16/fp16 fallback)."""
        return self.peak_flops(dtype) * _lookup(self.efficiency.matmul, dtype)

    def attention_flops(self, dtype: str) -> float:
        """Achievable flash-attention FLOP/s: ``peak_flops(dtype) * efficiency.attention[dtype]``."""
        return self.peak_flops(dtype) * _lookup(self.efficiency.attention, dtype)

    @property
    def hbm_effective_Bps(self) -> float:
        """Bytes/s that memory-bound kernels reach: ``hbm_TBps * 1e12 * efficiency.memory_bw``."""
        return self.hbm_TBps * 1e12 * self.efficiency.memory_bw

    @property
    def hbm_GiB(self) -> float:
        return self.hbm_bytes / 2**30


def _lookup(table: Mapping[Dtype, float], dtype: str) -> float:
    # Fallback order bf16 -> fp16: without a measurement for (say) tf32, the closest tensor-core
    # figure is a better guess than 1.0. EfficiencySpec guarantees one of the two exists.
    for key in (dtype, "bf16", "fp16"):
        if key in table:
            return table[cast(Dtype, key)]  # a key of the table, so one of the Dtype literals
    raise AssertionError("unreachable: EfficiencySpec requires a bf16 or fp16 entry")


def list_gpus() -> list[str]:
    """Names of the GPU presets shipped in hardware/presets/, sorted."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def unknown_name_error(kind: str, name: str, known: list[str]) -> SpecError:
    """One-line error for an unknown preset name, suggesting the closest known names."""
    # Substring hits first ("h100" -> h100-sxm-80gb, h100-sxm-96gb): difflib's ratio is low for
    # short prefixes of long names; then difflib for typos ("h100-sxm-80g").
    key = name.strip().lower()
    close = [k for k in known if key and key in k]
    close += [k for k in difflib.get_close_matches(key, known, n=3, cutoff=0.5) if k not in close]
    close = close[:3]
    hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(known)}"
    return SpecError(f"unknown {kind} {name!r}; {hint}")


def load_gpu(name: str) -> GPUSpec:
    """Load the preset ``hardware/presets/<name>.yaml``; SpecError (with suggestions) if unknown."""
    key = name.strip().lower()
    known = list_gpus()
    if key not in known:
        raise unknown_name_error("GPU preset", name, known)
    return _load_preset(key)


def preset_data(name: str) -> dict:
    """The raw mapping of a preset file (for ``extends:`` merges). The name must be known."""
    with open(PRESETS_DIR / f"{name}.yaml", encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise SpecError(f"GPU preset {name}: expected a mapping at top level")
    return data


@cache
def _load_preset(name: str) -> GPUSpec:
    data = preset_data(name)
    try:
        spec = GPUSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, f"GPU preset {name}")) from None
    if spec.name != name:
        raise SpecError(f"GPU preset file {name}.yaml declares name {spec.name!r}; they must match")
    return spec
