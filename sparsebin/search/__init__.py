"""Packed binary codes: exact Hamming / Jaccard search (`CodeIndex`) and recall against dense neighbours."""

from sparsebin.search.codes import CodeIndex, pack_bits, recall_at_k, unpack_bits

__all__ = ["CodeIndex", "pack_bits", "recall_at_k", "unpack_bits"]
