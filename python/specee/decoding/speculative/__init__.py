"""Lossless speculative decoding: drafters propose, the target verifies
several tokens in one pass, a cost model decides when drafting pays."""
from .choice import DRAFT_HELP, AutoDrafter, MergedDrafter, open_drafter, parse_draft, resolve_draft_model
from .cost import CostCurve
from .draft_model import ModelDrafter, VocabularyMismatchError, check_same_vocabulary
from .drafters import DraftTree, Drafter, Kind, LookupDrafter
from .eagle import EagleDrafter
from .loop import generate_speculative
from .policy import DRAFT_MAX, DraftPolicy
from .tree import merge_drafts

__all__ = ["AutoDrafter", "CostCurve", "DRAFT_HELP", "DRAFT_MAX", "DraftTree", "DraftPolicy", "Drafter", "EagleDrafter", "Kind",
           "LookupDrafter", "MergedDrafter", "ModelDrafter", "VocabularyMismatchError", "check_same_vocabulary",
           "generate_speculative", "merge_drafts", "open_drafter", "parse_draft", "resolve_draft_model"]
