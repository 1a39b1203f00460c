"""Op graphs for the intra-op sharding ILP (planner/search/milp/sharding.py): a layer as a DAG of
ops on 2-D activations ``[rows, features]``, with the work each op does for one micro-batch.

Rows are tokens (``batch · seq``) for a transformer, pixels (``batch · H · W``) for a convolution
written as a matmul over channels (im2col: a k×k convolution from C_in to C_out channels is a
``[pixels, C_in·k²] × [C_in·k², C_out]`` matmul; Chellapilla et al. 2006, "High Performance
Convolutional Neural Networks for Document Processing"), and samples for an MLP. Splitting the
row dim ``S(0)`` splits whole samples (``batch`` must divide by the mesh size for ops that mix rows
of one sample: attention, pooling); splitting the feature dim ``S(1)`` splits channels, heads or
hidden units.

Builders: ``embedding_lm`` (token embedding, norm, vocabulary projection), ``block_op_graph`` (a transformer block of ``models/graph.py``: its FLOPs, traffic
and parameters per token times the micro-batch's tokens), ``mlp_stack`` (Linear + activation
layers, the graph ``runtime/op_sharding.py`` executes) and ``conv_net`` (convolutions as matmuls,
pooling, a classifier).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from models.graph import Layer, LayerGraph

OpKind = Literal["input", "output", "matmul", "attention", "norm", "elementwise", "embedding"]


@dataclass(frozen=True)
class OpSpec:
    """One op for one micro-batch: ``rows × width`` output, FLOPs and HBM elements of its forward.

    ``in_width``: a matmul's reduction dim k (its weight is ``[in_width, width]``); ``units``: what
    a feature split must divide (attention heads, else ``width``); ``row_groups``: how many
    independent row groups a row split may cut along (samples for attention and pooling, rows
    otherwise)."""

    name: str
    kind: OpKind
    inputs: tuple[str, ...]
    rows: int
    width: int
    in_width: int = 0
    params: float = 0.0
    fwd_flops: float = 0.0
    io_elems: float = 0.0
    bwd_factor: float = 2.0
    units: int = 0
    row_groups: int = 0

    def __post_init__(self) -> None:
        if self.rows < 1 or self.width < 1:
            raise ValueError(f"op {self.name}: rows ({self.rows}) and width ({self.width}) must be >= 1")
        if self.kind in ("matmul", "embedding") and self.in_width < 1:
            raise ValueError(f"op {self.name}: a {self.kind} needs in_width >= 1 (got {self.in_width})")


@dataclass(frozen=True)
class OpGraph:
    """Ops in topological order; the first is the ``input``, the last the ``output`` sink.

    ``tie_boundary``: the output must leave in the input's layout (a repeated block feeds the next
    copy of itself)."""

    name: str
    ops: tuple[OpSpec, ...]
    tie_boundary: bool = False

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for op in self.ops:
            missing = [i for i in op.inputs if i not in seen]
            if missing:
                raise ValueError(f"op graph {self.name}: {op.name} reads {missing} before they are produced")
            if op.name in seen:
                raise ValueError(f"op graph {self.name}: duplicate op name {op.name}")
            seen.add(op.name)
        if not self.ops or self.ops[0].kind != "input" or self.ops[-1].kind != "output":
            raise ValueError(f"op graph {self.name}: must start with an input op and end with an output op")

    def op(self, name: str) -> OpSpec:
        return next(o for o in self.ops if o.name == name)

    def signature(self) -> tuple:
        """Identical layers (same ops, shapes and costs) share it; the name is left out."""
        return (self.ops, self.tie_boundary)


def _io(name: str, rows: int, width: int, inputs: tuple[str, ...] = ()) -> OpSpec:
    return OpSpec(name, "output" if inputs else "input", inputs, rows, width)


def _matmul(name: str, src: str, rows: int, k: int, n: int) -> OpSpec:
    """``[rows, k] × [k, n]``: 2·rows·k·n FLOPs, backward twice that (Narayanan et al. 2021 §5.1)."""
    return OpSpec(name, "matmul", (src,), rows, n, k, float(k * n), 2.0 * rows * k * n, float(rows * (k + n)))


def _elementwise(
    name: str, srcs: tuple[str, ...], rows: int, width: int, io_per_row: float, bwd: float = 2.0
) -> OpSpec:
    return OpSpec(name, "elementwise", srcs, rows, width, io_elems=io_per_row * rows, bwd_factor=bwd)


def _block_width(layer: Layer, hidden: int) -> dict[str, tuple[int, int]]:
    """(in, out) features of each block matmul: column linears read the hidden size, row ones write it."""
    out: dict[str, tuple[int, int]] = {}
    for o in layer.ops:
        if o.kind == "matmul":
            other = round(o.exec_fwd_flops / (2 * hidden))
            out[o.name] = (hidden, other) if o.tp_role == "column" else (other, hidden)
    return out


def _block_inputs(names: list[str]) -> dict[str, tuple[str, ...]]:
    """The pre-norm block's dataflow (Vaswani et al. 2017, pre-norm as models/graph.py builds it)."""
    residual_a = next(n for n in names if n.startswith("attn.") and "residual" in n)
    residual_f = next(n for n in names if n.startswith("ffn.") and "residual" in n)
    up = "ffn.gate_up" if "ffn.gate_up" in names else "ffn.fc1"
    qkv_out = "attn.rope" if "attn.rope" in names else "attn.qkv"
    return {
        "attn.norm": ("x",),
        "attn.qkv": ("attn.norm",),
        "attn.rope": ("attn.qkv",),
        "attn.core": (qkv_out,),
        "attn.out": ("attn.core",),
        residual_a: ("x", "attn.out"),
        "ffn.norm": (residual_a,),
        up: ("ffn.norm",),
        "ffn.act": (up,),
        "ffn.down": ("ffn.act",),
        "ffn.fc2": ("ffn.act",),
        residual_f: (residual_a, "ffn.down" if "ffn.down" in names else "ffn.fc2"),
    }


def block_op_graph(layer: Layer, graph: LayerGraph, batch: int) -> OpGraph:
    """A dense pre-norm transformer block for a micro-batch of ``batch`` sequences.

    Per-token FLOPs, traffic and backward factors are ``models/graph.py``'s, times the tokens."""
    spec = graph.spec
    if layer.kind != "block" or layer.moe or spec.mla is not None or spec.parallel_residual:
        raise ValueError(
            f"{layer.name}: the sharding graph covers dense pre-norm blocks (no MoE, MLA, parallel residual)"
        )
    h, rows = spec.hidden_size, batch * graph.seq_len
    names = [o.name for o in layer.ops]
    inputs, widths = _block_inputs(names), _block_width(layer, h)
    ops = [_io("x", rows, h)]
    width_of = {"x": h}
    for o in layer.ops:
        src = inputs[o.name]
        k, n = widths.get(o.name, (width_of[src[0]], width_of[src[0]]))
        if o.name == "ffn.act":
            n = width_of[src[0]] // (2 if spec.gated else 1)
        kind: OpKind = "norm" if o.name.endswith(".norm") else "elementwise"
        if o.kind in ("matmul", "attention"):
            kind = "matmul" if o.kind == "matmul" else "attention"
        units = spec.kv_heads if kind == "attention" else 0
        params = float(k * n) if kind == "matmul" else (float(h) if kind == "norm" else 0.0)
        ops.append(
            OpSpec(
                o.name,
                kind,
                src,
                rows,
                n,
                k if kind == "matmul" else 0,
                params,
                o.exec_fwd_flops * rows,
                o.io_elems * rows,
                o.bwd_factor,
                units,
                batch if kind == "attention" else rows,
            )  # fmt: skip
        )
        width_of[o.name] = n
    ops.append(_io("y", rows, h, (ops[-1].name,)))
    return OpGraph(f"{layer.name}[b={batch},s={graph.seq_len}]", tuple(ops), tie_boundary=True)


def mlp_stack(widths: list[int], rows: int, name: str = "mlp") -> OpGraph:
    """``Linear(w0→w1), act, Linear(w1→w2), act, …, Linear`` on ``rows`` samples: ops ``fc{i}``
    and ``act{i}`` (the layer indices of ``nn.Sequential`` that ``runtime/op_sharding.py`` runs)."""
    if len(widths) < 2:
        raise ValueError(f"an MLP stack needs at least two widths (got {widths})")
    ops = [_io("x", rows, widths[0])]
    for i, (k, n) in enumerate(zip(widths, widths[1:])):
        ops.append(_matmul(f"fc{2 * i}", ops[-1].name, rows, k, n))
        if i < len(widths) - 2:
            ops.append(_elementwise(f"act{2 * i + 1}", (ops[-1].name,), rows, n, 2.0))
    ops.append(_io("y", rows, widths[-1], (ops[-1].name,)))
    return OpGraph(f"{name}{widths}x{rows}", tuple(ops))


def embedding_lm(vocab: int, hidden: int, rows: int) -> OpGraph:
    """Token ids → embedding (``in_width`` = vocab: a table lookup, traffic of one row per token,
    backward a scatter-add) → norm → vocabulary projection: the ends of a language model."""
    ops = [_io("ids", rows, 1)]
    table = float(vocab * hidden)
    ops.append(OpSpec("embed", "embedding", ("ids",), rows, hidden, vocab, table, 0.0, 2.0 * rows * hidden, 1.0))
    ops.append(OpSpec("norm", "norm", ("embed",), rows, hidden, params=float(hidden), io_elems=2.0 * rows * hidden))
    ops.append(_matmul("logits", "norm", rows, hidden, vocab))
    ops.append(_io("y", rows, vocab, ("logits",)))
    return OpGraph(f"embedding_lm[v={vocab},h={hidden}]x{rows}", tuple(ops))


def conv_net(batch: int, image: int, channels: list[int], fc: list[int], kernel: int = 3) -> OpGraph:
    """Conv (k×k, 'same' padding, as an im2col matmul over channels) + ReLU + 2×2 pooling per
    stage, then the classifier's Linear layers on the flattened features.

    Pooling reads 4 pixels per output pixel; the flatten turns ``[batch·H·W, C]`` into
    ``[batch, H·W·C]``: a row split stays a split of whole samples, a channel split stays a
    feature split (channel-minor flatten of each pixel keeps the channel blocks of each rank
    contiguous per pixel, so the split is a strided feature split, which costs the same)."""
    ops = [_io("x", batch * image * image, channels[0])]
    side = image
    for i, (c_in, c_out) in enumerate(zip(channels, channels[1:])):
        pixels = batch * side * side
        ops.append(_matmul(f"conv{i}", ops[-1].name, pixels, c_in * kernel * kernel, c_out))
        ops.append(_elementwise(f"relu{i}", (ops[-1].name,), pixels, c_out, 2.0))
        side //= 2
        pool = _elementwise(f"pool{i}", (ops[-1].name,), batch * side * side, c_out, 5.0)
        ops.append(OpSpec(**{**pool.__dict__, "row_groups": batch}))
    ops.append(_elementwise("flatten", (ops[-1].name,), batch, side * side * channels[-1], 2.0))
    ops[-1] = OpSpec(**{**ops[-1].__dict__, "row_groups": batch, "units": channels[-1]})
    widths = [side * side * channels[-1]] + fc
    for j, (k, n) in enumerate(zip(widths, widths[1:])):
        ops.append(_matmul(f"fc{j}", ops[-1].name, batch, k, n))
        if j < len(fc) - 1:
            ops.append(_elementwise(f"fc_relu{j}", (ops[-1].name,), batch, n, 2.0))
    ops.append(_io("y", batch, fc[-1], (ops[-1].name,)))
    return OpGraph(f"convnet{channels}+{fc}x{batch}", tuple(ops))
