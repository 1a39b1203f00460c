"""``autopar import-hf``: a Hugging Face ``config.json`` -> an autopar model spec file.

The spec comes from :func:`models.hf_import.from_hf_config`, named exactly as ``--model`` names
the same config (a directory without ``_name_or_path`` is named after the directory), so
``--model written.yaml`` and ``--model CONFIG`` load the same :class:`ModelSpec`. Fields left
at ``null`` are omitted from the file (every nullable field defaults to null, so nothing
changes on load); everything else is written out so the file says what the model is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from models.errors import SpecError, format_validation_error
from models.graph import build_graph
from models.hf_import import from_hf_config
from models.hf_report import ImportReport, import_report
from models.load import apply_overrides, hf_default_name  # the rules --model applies
from models.spec import ModelSpec, MoESpec
from planner.commands.common import Opt, write_output

FORMATS = ("yaml", "json")


IMPORT_OPTIONS = (
    Opt("source", str, ..., (), "A Hugging Face config.json, or a directory holding one.", argument=True),
    Opt("out_path", Path | None, None, ("--out", "-o"), "Write the spec to this .yaml/.json file."),
    Opt("name", str | None, None, ("--name",), "Model name (default: from _name_or_path or the folder)."),
    Opt("fmt", str | None, None, ("--format", "-f"), "yaml or json (default: -o's suffix, else yaml)."),
    Opt("sets", list[str] | None, None, ("--set",), "Override a field: model.KEY=VALUE (repeatable)."),
)


@dataclass(frozen=True)
class Imported:
    spec: ModelSpec
    report: ImportReport
    config_path: Path
    overrides: Mapping[str, object]


def import_hf(source: str, name: str | None = None, overrides: Mapping[str, object] | None = None) -> Imported:
    """Read ``source`` (a config.json or a directory holding one), map it to a spec and apply
    ``overrides`` (``--set model.KEY=VALUE``, dotted paths) last, as ``--model`` does."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise SpecError(f"{source}: directory has no config.json")
    elif not path.is_file():
        raise SpecError(f"{source}: no such file or directory")
    default_name = hf_default_name(path)  # as models.load names it, for the directory or the file
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SpecError(f"{path}: cannot read a JSON config: {' '.join(str(exc).split())}") from None
    if not isinstance(cfg, dict):
        raise SpecError(f"{path}: expected a JSON object of config keys, got {type(cfg).__name__}")
    if name is None and not cfg.get("_name_or_path"):
        name = default_name
    spec = from_hf_config(cfg, name, origin=str(path))
    if overrides:
        try:
            spec = ModelSpec.model_validate(apply_overrides(spec.model_dump(), overrides))
        except ValidationError as exc:
            raise SpecError(format_validation_error(exc, f"model spec from {path} with overrides")) from None
    return Imported(spec, import_report(cfg), path, dict(overrides or {}))


def output_format(fmt: str | None, out_path: Path | None) -> str:
    """The format to write: ``--format`` if given, else the ``-o`` suffix, else YAML.

    A mismatch is an error because ``--model`` reads spec files by their extension.
    """
    suffix = out_path.suffix.lower() if out_path else ""
    if out_path is not None and suffix not in (".yaml", ".yml", ".json"):
        raise SpecError(f"-o {out_path}: use a .yaml, .yml or .json file name (--model reads files by extension)")
    by_suffix = "json" if suffix == ".json" else "yaml"
    if fmt is None:
        return by_suffix
    if fmt not in FORMATS:
        raise SpecError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    if out_path is not None and fmt != by_suffix:
        raise SpecError(f"--format {fmt} does not match -o {out_path} (--model reads files by extension)")
    return fmt


def dump_spec(imported: Imported, fmt: str) -> str:
    """The spec file text: a YAML header comment saying where it came from, or plain JSON."""
    data = imported.spec.model_dump(mode="json", exclude_none=True)
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    header = f"# autopar model spec, imported by `autopar import-hf` from {imported.config_path}\n"
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)  # no wrapped strings


def summary_lines(imported: Imported) -> list[str]:
    """What was imported (sizes, MoE, MLA, parameters) and where each field came from."""
    s, r = imported.spec, imported.report
    traits = [
        s.norm,
        f"{s.position} positions",
        s.activation,
        f"{'tied' if s.tie_embeddings else 'untied'} embeddings",
        "bias" if s.bias else "no bias",
    ]
    traits += ["bidirectional"] * (s.attention_mask == "bidirectional") + ["parallel residual"] * s.parallel_residual
    traits += ["qk norm"] * s.qk_norm + ([f"norm eps {s.norm_eps:g}"] if s.norm_eps else [])
    if s.sliding_window:
        every = f", full attention every {s.full_attention_every} layers" if s.full_attention_every else ""
        traits.append(f"sliding window {s.sliding_window}{every}")
    head = "MLA head dims below" if s.mla else f"head dim {s.dim_per_head}"
    lines = [
        f"imported {imported.config_path} (model_type '{r.model_type}') as {s.name}",
        f"  family     {r.model_type}: " + ", ".join(traits),
        f"  sizes      layers {s.num_layers} · hidden {s.hidden_size} · heads {s.num_heads} / kv {s.kv_heads} "
        f"({head}) · ffn {s.ffn_hidden_size} · vocab {s.vocab_size} · max seq {s.max_seq_len}",
    ]
    if s.moe is not None:
        m = s.moe
        shared = f", {m.num_shared_experts} shared" if m.num_shared_experts else ""
        lines.append(
            f"  MoE        {m.num_experts} experts, top-{m.top_k}, expert ffn {m.expert_ffn_hidden_size}"
            f"{shared}; {s.num_moe_layers} of {s.num_layers} layers; {_router(m)}"
        )
    if s.position == "rope" and (s.rope_theta or s.rope_scaling):
        lines.append("  rope       " + _rope(s))
    if s.mla is not None:
        lines.append("  MLA        " + ", ".join(f"{k} {v}" for k, v in s.mla.model_dump().items()))
    params = build_graph(s, min(s.max_seq_len, 2048)).num_params  # parameters do not depend on seq_len
    lines.append(f"  params     {params:,.0f} ({params / 1e9:.2f} B)")
    lines.append("  read       " + ", ".join(f"{k} -> {v}" for k, v in r.read.items()))
    if r.defaulted:
        lines.append("  defaulted  " + ", ".join(f"{k} (not given) = {v}" for k, v in r.defaulted.items()))
    if r.absent:
        lines.append("  absent     " + ", ".join(f"{k} -> {v}" for k, v in r.absent.items()) + " (spec defaults)")
    lines.append("  fixed      " + ", ".join(f"{k} = {v}" for k, v in r.fixed.items()) + " (by the architecture)")
    if imported.overrides:
        lines.append("  --set      " + ", ".join(f"model.{k} = {v}" for k, v in imported.overrides.items()))
    if r.ignored:
        lines.append(f"  ignored    {len(r.ignored)} keys: " + ", ".join(r.ignored))
    return lines


def _router(m: MoESpec) -> str:
    """The router in words: score, expert bias, scaling and group-limited routing."""
    parts = [f"{m.router_score_function} router"]
    parts += ["expert bias"] * m.router_expert_bias
    parts += [f"weights x{m.router_topk_scaling_factor:g}"] if m.router_topk_scaling_factor else []
    parts += [f"top-{m.router_group_topk} of {m.router_num_groups} groups"] if m.router_num_groups else []
    return ", ".join(parts)


def _rope(s: ModelSpec) -> str:
    """RoPE base and context extension: 'theta 500000, llama3 scaling x8 of 8192 tokens'."""
    parts = [f"theta {s.rope_theta:.12g}"] if s.rope_theta else ["theta (framework default)"]
    r = s.rope_scaling
    if r is not None:
        factor = f" x{r.factor:g}" if r.factor else ""
        base = f" of {r.original_max_seq_len} tokens" if r.original_max_seq_len else ""
        parts.append(f"{r.type} scaling{factor}{base}")
    return ", ".join(parts)


@dataclass(frozen=True)
class ImportResult:
    """The imported spec as text, and what was read, defaulted and ignored (for stderr)."""

    text: str
    summary: list[str]
    out_path: Path | None  # where the text goes; None: stdout


def run_import(
    source: str, out_path: Path | None, name: str | None, fmt: str | None, sets: dict[str, dict[str, object]]
) -> ImportResult:
    """Import, and write ``out_path`` if given. ``sets`` is :func:`planner.inputs.parse_sets`
    output; only ``model.*`` keys apply here."""
    fmt = output_format(fmt, out_path)
    for target in ("cluster", "training"):
        if sets.get(target):
            raise SpecError(f"import-hf imports a model only: --set {target}.{next(iter(sets[target]))} does not apply")
    imported = import_hf(source, name, sets.get("model"))
    text = dump_spec(imported, fmt)
    if out_path is not None:
        write_output(out_path, text)
    return ImportResult(text, summary_lines(imported), out_path)
