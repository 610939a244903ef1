"""The case-study flows by name (imported on demand: importing one flow module loads its whole stack)."""

from __future__ import annotations


def flows() -> dict:
    from flows.long_document import long_document
    from flows.mobile_bert import mobile_bert

    return {"mobile-bert": mobile_bert, "long-document": long_document}
