"""The analytical cost model: pure formulas, no solver and no rendering.

``layer`` prices one layer per micro-batch (roofline compute, tp/ep/cp collectives, activation
bytes per recompute option); ``chunks`` splits blocks over pipeline chunks; ``data_parallel``
prices ZeRO, HSDP and the optimizer; ``schedule`` simulates a pipeline schedule exactly;
``memory`` holds the per-GPU memory terms; ``estimate`` composes them into typed ``records``;
``timeline`` reads an estimate back as what each rank does and holds over one step.
"""
