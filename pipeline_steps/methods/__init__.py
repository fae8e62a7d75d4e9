"""Methods, one file per paper that reads like its algorithm: the supernet it trains, the stages it
runs on that supernet's state, its rule for reading out an architecture; the registry names them.
May import every layer below: `common`, `spaces`, `data`, `supernet`, `evaluation`, `scores`, `transforms`.
"""
from __future__ import annotations

from ..common.errors import NasflowError
from .base import Method
from .darts import Darts
from .darts_pt import DartsPT
from .hep_nas import HEPNas
from .hpe_darts import HPEDarts
from .ostr import OStr
from .se_nas import SENas

METHODS: dict[str, Method] = {m.name: m for m in (
    Darts("darts"),
    DartsPT("darts_pt", variant="pt"), DartsPT("darts_pt_fix_alpha", variant="fix_alpha"),
    DartsPT("darts_pt_mag", variant="mag"),
    OStr("ostr", criterion="ostr"), OStr("ostr_star", criterion="ostr_star"),
    OStr("ostr_naive", criterion="naive"),
    HEPNas("hep_nas"),
    HPEDarts("hpe_darts"), HPEDarts("hpe_darts_naswot", proxy="naswot"),
    SENas("se_nas"), SENas("spos", shrinking=False),
)}
# Each method's protocol generation: raised whenever a change moves that method's numbers (batches,
# schedules, scoring data, ...). A result records the generation it was made with, and the ledger
# shows results of an older generation apart, as stale. Generation 2: one pass over D_tr per epoch,
# HPE's single cosine and random accuracy subset, DARTS-PT's one-pass topology, NASWOT's backward
# rule, HEP's batch 128 / op set / sibling batches, SPOS's live weights.
PROTOCOL_VERSIONS = {name: 2 for name in METHODS}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise NasflowError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return METHODS[name]
