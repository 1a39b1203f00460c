"""Human-readable (rich) and JSON renderings of estimates and presets, shared by the CLI."""

from __future__ import annotations

import json

import yaml
from rich.console import Console
from rich.table import Table

from hardware.gpu import list_gpus, load_gpu, preset_data
from models.errors import SpecError
from models.graph import build_graph
from models.load import list_presets, load_model

SCHEMA_VERSION = "1.0"
GiB = 2**30


def _gib(x: float) -> str:
    return f"{x / GiB:.2f}"


def parallel_dict(par, num_micro_batches: int) -> dict:
    return {"dp": par.dp, "tp": par.tp, "pp": par.pp, "cp": par.cp, "ep": par.ep, "zero_stage": par.zero,
            "micro_batch_size": par.micro_batch, "num_micro_batches": num_micro_batches,
            "schedule": par.schedule, "virtual_stages": par.vpp, "sequence_parallel": par.sequence_parallel,
            "recompute": par.recompute if isinstance(par.recompute, str) else list(par.recompute),
            "stage_layers": list(par.stage_layers) if par.stage_layers else None}


def estimate_json(result, inputs) -> dict:
    t = result.train
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "estimate",
        "inputs": {"model": result.model.model_dump(), "cluster": result.cluster.model_dump(),
                   "training": {"global_batch_size": t.global_batch, "seq_len": t.seq_len, "dtype": t.dtype,
                                "attention_impl": t.attention_impl, "grad_reduce_dtype": t.grad_reduce_dtype,
                                "norm_impl": t.norm_impl, "tp_overlap": t.tp_overlap},
                   "refs": inputs.refs},
        "parallelism": parallel_dict(result.par, result.predicted["num_micro_batches"]),
        "fits": result.fits,
        "predicted": result.predicted,
    }


def estimate_table(out: Console, result) -> None:
    p, par = result.predicted, result.par
    head = Table(title=f"{result.model.name} on {result.cluster.num_gpus} x {result.cluster.gpu.name}",
                 show_header=False, title_justify="left")
    head.add_row("plan", f"dp {par.dp} · tp {par.tp} · pp {par.pp} · cp {par.cp} · ep {par.ep} · zero {par.zero} · "
                 f"micro-batch {par.micro_batch} x {p['num_micro_batches']} · {par.schedule}"
                 f"{f' (vpp {par.vpp})' if par.vpp > 1 else ''} · recompute {par.recompute if isinstance(par.recompute, str) else 'per-layer'}"
                 f"{' · sp' if par.sequence_parallel else ''}")
    head.add_row("step time", f"{p['step_time_s']:.3f} s")
    head.add_row("throughput", f"{p['tokens_per_s']:,.0f} tokens/s  ({p['tokens_per_s_per_gpu']:,.0f} per GPU)")
    head.add_row("MFU / HFU", f"{p['mfu']:.1%} / {p['hfu']:.1%}  ({p['model_tflops_per_gpu']:.1f} model TFLOP/s per GPU)")
    tb = p["time_breakdown_s"]
    zero = tb.get("zero_exposed_s", 0.0)
    head.add_row("time", f"pipeline {tb['pipeline_s']:.3f} s (bubble {p['pipeline_bubble_s']:.3f} s, exposed tp/ep/cp comm "
                 f"{tb['exposed_comm_in_layers_s']:.3f} s{f', exposed ZeRO comm {zero:.3f} s' if zero > 0 else ''}) "
                 f"+ dp sync {tb['dp_sync_exposed_s']:.3f} s + optimizer {tb['optimizer_s']:.3f} s")
    head.add_row("peak memory", f"{_gib(p['peak_memory_bytes'])} GiB of {_gib(p['memory_capacity_bytes'])} GiB usable"
                 f"{'' if result.fits else '  [red]DOES NOT FIT[/red]'}")
    out.print(head)
    out.print(_stage_table(p))


def _stage_table(p: dict) -> Table:
    cols = ["stage", "blocks", "fwd/bwd ms", "weights", "grads", "optim", "activ", "in-flight", "transient",
            "other", "total GiB"]
    table = Table(*cols, title="per pipeline stage (memory in GiB per GPU, times per micro-batch)", title_justify="left")
    for s in p["stages"]:
        m = s["memory"]
        blocks = ", ".join(f"{c['layers'][0]}-{c['layers'][1] - 1}" if c["layers"][1] > c["layers"][0] else "-"
                           for c in s["chunks"])
        extras = ("E" if any(c["has_embedding"] for c in s["chunks"]) else "") + \
                 ("H" if any(c["has_head"] for c in s["chunks"]) else "")
        f = sum(c["fwd_s_per_microbatch"] for c in s["chunks"]) * 1e3
        b = sum(c["bwd_s_per_microbatch"] for c in s["chunks"]) * 1e3
        other = m["comm_buffer_bytes"] + m["workspace_bytes"] + m["fragmentation_bytes"]
        table.add_row(str(s["pp_rank"]), f"{blocks} {extras}".strip(), f"{f:.1f}/{b:.1f}", _gib(m["weights_bytes"]),
                      _gib(m["gradients_bytes"]), _gib(m["optimizer_bytes"]), _gib(m["activations_bytes"]),
                      f"{m['inflight_microbatches']:.2f}", _gib(m["transient_bytes"]), _gib(other), _gib(m["total_bytes"]))
    return table


def presets_list(out: Console, kind: str, fmt: str) -> None:
    if kind not in ("all", "models", "gpus"):
        raise SpecError(f"presets list: kind must be models, gpus or all (got {kind!r})")
    models = list_presets() if kind in ("all", "models") else []
    gpus = list_gpus() if kind in ("all", "gpus") else []
    if fmt == "json":
        print(json.dumps({"models": models, "gpus": gpus}, indent=2))
        return
    if models:
        t = Table("model", "layers", "hidden", "heads/kv", "params", "type", title="model presets", title_justify="left")
        for name in models:
            s = load_model(name)
            n = build_graph(s, min(s.max_seq_len, 2048)).num_params
            t.add_row(name, str(s.num_layers), str(s.hidden_size), f"{s.num_heads}/{s.kv_heads}", f"{n / 1e9:.2f} B",
                      "MoE" if s.moe else ("encoder" if s.attention_mask == "bidirectional" else "dense"))
        out.print(t)
    if gpus:
        t = Table("gpu", "bf16 TFLOP/s", "HBM GiB", "HBM TB/s", "intra GB/s", "inter GB/s", title="GPU presets",
                  title_justify="left")
        for name in gpus:
            g = load_gpu(name)
            t.add_row(name, *(f"{x:g}" if x is not None else "-" for x in (g.peak_bf16_tflops, g.hbm_bytes / GiB, g.hbm_TBps,
                      g.intra_node_bw_GBps, g.inter_node_bw_GBps)))
        out.print(t)


def preset_show(out: Console, name: str, fmt: str) -> None:
    if name in list_presets():
        spec = load_model(name)
        data = spec.model_dump(exclude_none=True)
        g = build_graph(spec, min(spec.max_seq_len, 2048))
        data["derived"] = {"params": g.num_params, "params_b": round(g.num_params / 1e9, 3)}
    elif name in list_gpus():
        data = preset_data(name)
    else:
        load_model(name)  # raises the unknown-preset error with suggestions
        return
    if fmt == "json":
        print(json.dumps(data, indent=2))
    else:
        out.print(yaml.safe_dump(data, sort_keys=False).rstrip(), highlight=False)


def run_report_table(out: Console, rep: dict) -> None:
    """Per-step losses and times, then measured vs predicted with relative errors."""
    steps = Table("step", "loss", "step s", "tokens/s", title=f"run on {rep['world_size']} {rep['device_type']} ranks",
                  title_justify="left")
    for s in rep["steps"]:
        steps.add_row(str(s["step"]), f"{s['loss']:.5f}", f"{s['step_time_s']:.4f}", f"{s['tokens_per_s']:,.0f}")
    out.print(steps)
    cmp = Table("figure", "measured", "predicted", "relative error", title="measured vs predicted", title_justify="left")
    for key, pred in rep["predicted"].items():
        meas = rep["measured"].get(key)
        rel = rep["relative_error"].get(key)
        cmp.add_row(key, f"{meas:,.4g}" if meas is not None else "-", f"{pred:,.4g}",
                    f"{rel:+.1%}" if rel is not None else "n/a (CPU counts activations only)")
    out.print(cmp)
