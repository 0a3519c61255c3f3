"""Theorem registry: each identity, bound and rate of the source papers as a runnable check.

``pathkl check`` runs them; see ``proofs_check/README.md`` for how to add a claim.
"""

from .registry import Claim, Outcome, Result, all_claims, claim, get_claim, run_claim

__all__ = ["Claim", "Outcome", "Result", "all_claims", "claim", "get_claim", "run_claim"]
