"""The search: outer candidates (``candidates``), their closed-form bounds (``bounds``), the
placement MILP families (``milp``) solved by constraint generation (``solve``), one branch and
bound shared by ``plan``, ``sweep`` and ``explain`` (``bnb``), heuristic plans (``heuristics``),
the runner-ups (``alternatives``), the certificate (``certificate``) and the two last steps that
never slow the plan (``polish``); ``outer.search`` runs them in that order.
"""

from planner.knobs import Knobs
from planner.search.candidates import enumerate_candidates
from planner.search.context import CandidateResult, CandStatus, SearchContext, SearchStatus
from planner.search.outer import SearchResult, search
from planner.search.solve import solve_candidate

__all__ = [
    "CandStatus",
    "CandidateResult",
    "Knobs",
    "SearchContext",
    "SearchResult",
    "SearchStatus",
    "enumerate_candidates",
    "search",
    "solve_candidate",
]
