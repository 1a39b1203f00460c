"""The pipeline split: which blocks each model chunk holds, and what a chunk sums to.

Chunk ``j`` (of pp·v) runs on pipeline rank ``j mod pp`` (Megatron-LM / torch.distributed.pipelining
"loop" order); the first chunk also holds the embedding, the last the head.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.graph import LayerGraph
from planner.config import Parallel
from planner.cost.layer import LayerCost


@dataclass(frozen=True)
class ChunkInfo:
    index: int  # global model chunk j = c·pp + r
    pp_rank: int
    first_block: int
    num_blocks: int
    has_embedding: bool
    has_head: bool
    layer_ids: tuple[int, ...]  # indices into graph.layers


def split_layers(num_blocks: int, chunks: int) -> list[int]:
    """Blocks per chunk when the plan does not say: as even as the blocks allow, the embedding
    on the first chunk and the head on the last (Megatron-LM's default, which needs
    ``num_layers % (pp·vpp) == 0``; torchtitan's ``generate_split_points``). When the blocks do
    not divide, the extra blocks go to middle chunks first, so the first and last chunks, which
    also hold the embedding and head, get the fewer: 126 blocks on 16 chunks -> 7, 8 x 14, 7,
    Llama 3 405B's split (Dubey et al. 2024, §3.3.2: "we reduce one Transformer layer each from
    the first and the last stages"). Counting the embedding and head as a layer each
    (``split_counting_ends``) would instead put 3 blocks on middle chunks of 1T GPT's 128 blocks
    on 64 stages, where Megatron runs 2 everywhere (Narayanan et al. 2021, Table 1)."""
    base, extra = divmod(num_blocks, chunks)
    sizes = [base] * chunks
    middle_first = list(range(1, chunks - 1)) + ([0, chunks - 1] if chunks > 1 else [0])
    for k in middle_first[:extra]:
        sizes[k] += 1
    return sizes


def split_counting_ends(num_blocks: int, chunks: int) -> list[int]:
    """Blocks per chunk counting the embedding as one layer of the first chunk and the head as one
    of the last (Megatron-LM ``--account-for-{embedding,loss}-in-pipeline-split``), extra units
    to middle chunks first: 96 blocks on 16 chunks -> 5, 7, 7, 6, ..., 6, 5. The placement MILP
    widens interleaved chunk sizes to include it, so the ends can be balanced."""
    if chunks == 1:
        return [num_blocks]
    sizes = split_layers(num_blocks + 2, chunks)
    sizes[0] -= 1
    sizes[-1] -= 1
    for k in (0, chunks - 1):  # tiny models: a chunk may hold only the embedding/head
        while sizes[k] < 0:
            sizes[k] += 1
            sizes[max(range(1, chunks - 1), key=lambda i: sizes[i], default=k)] -= 1
    return sizes


def make_chunks(graph: LayerGraph, par: Parallel) -> list[ChunkInfo]:
    sizes = list(par.stage_layers) if par.stage_layers else split_layers(len(graph.blocks), par.chunks)
    out, start = [], 0
    n_layers = len(graph.layers)
    for j, size in enumerate(sizes):
        ids = list(range(1 + start, 1 + start + size))
        first, last = j == 0, j == len(sizes) - 1
        ids = ([0] if first else []) + ids + ([n_layers - 1] if last else [])
        out.append(ChunkInfo(j, j % par.pp, start, size, first, last, tuple(ids)))
        start += size
    return out


def chunk_sums(chunk: ChunkInfo, costs: list[LayerCost], par: Parallel) -> tuple[float, float, float, float]:
    """Forward, backward (+recompute) seconds, activation bytes per micro-batch, max remat bytes."""
    f = b = act = remat = 0.0
    for lid in chunk.layer_ids:
        c = costs[lid]
        opt = par.recompute_of(lid - 1) if 0 < lid <= par_blocks(costs) else "none"
        f += c.fwd_s
        b += c.bwd_s + c.recompute_s[opt]
        act += c.act_bytes[opt]
        if opt != "none":
            remat = max(remat, c.remat_bytes)
    return f, b, act, remat


def par_blocks(costs: list[LayerCost]) -> int:
    return len(costs) - 2
