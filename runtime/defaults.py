"""Defaults shared by the runtime's entry points and the CLI; no torch import (cheap for ``cli.py``).

``DEFAULT_LR``: SGD's learning rate when none is given (``--optimizer sgd`` of ``autopar run`` and
``python -m runtime.launch``, :data:`runtime.recipe.SGD_PARITY` of
:func:`runtime.parity.check_parity`; AdamW's default is ``runtime.recipe.ADAMW_LR``). 0.1 moves the debug models' losses visibly within a few
steps; the parity tests rely on that, as SGD at a tiny rate would hide a wrongly scaled gradient.

``DEFAULT_RANK_TIMEOUT_S``: seconds a rank may stay stopped, or silent in a collective (gloo's
timeout), before `autopar run` ends naming it (runtime.supervise): long enough for a first step
that compiles or loads data, short enough that a dead rank does not hold the job for gloo's
default 30 minutes.
"""

from __future__ import annotations

DEFAULT_LR = 0.1
DEFAULT_RANK_TIMEOUT_S = 300.0
