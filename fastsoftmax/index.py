"""ItemIndex: an item table for serving exact top-k inner-product retrieval.

The index holds the item embeddings (optionally stored in bfloat16 to halve memory), optional
external item ids and an optional per-item bias. ``search`` runs ``topk_inner_product`` and maps
row positions to ids; ``save`` / ``load`` use ``torch.save`` of plain tensors and numbers, read
back with ``weights_only=True`` (no pickled code), with a format tag, a version and a CRC-32 per
tensor so that a corrupted or foreign file is refused with a clear error.
"""
import os
import zlib
from typing import Optional, Tuple, Union

import torch

from .retrieval import (Exclusions, exclusions_to_csr, topk_inner_product,
                        topk_inner_product_bf16)

__all__ = ["ItemIndex"]

_FORMAT = "fastsoftmax.ItemIndex"
_VERSION = 1
_TABLE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_DTYPE_NAMES = {str(d).replace("torch.", ""): d for d in _TABLE_DTYPES}


def _crc32(t: torch.Tensor) -> int:
    data = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    return zlib.crc32(memoryview(data)) & 0xFFFFFFFF


class ItemIndex:
    """An item table [N, d] with optional ids [N] and bias [N], searchable by inner product.

    Args:
        items: [N, d] floating tensor of item embeddings.
        ids: optional [N] int64 tensor of distinct, non-negative external item ids. Without ids,
            results are row positions 0..N-1.
        bias: optional [N] floating tensor added to every score (stored as float32).
        dtype: storage dtype of the table (float32, bfloat16, float16 or float64); default: the
            dtype of ``items``. Queries are cast to it; scores accumulate in float32 (float64 for
            a float64 table).
        bf16_scan: float32 tables: also keep a bfloat16 copy and search with
            ``topk_inner_product_bf16`` (bfloat16 scan, float64 re-scoring of an over-fetched,
            certified candidate set: the exact float32 top-k, faster where the CPU multiplies
            bfloat16 natively). Costs N x d x 2 more bytes.

    ``search`` is exact for the stored table: with ``dtype=torch.bfloat16`` it returns the exact
    top-k of the bfloat16-rounded table and query.
    """

    def __init__(self, items: torch.Tensor, ids: Optional[torch.Tensor] = None,
                 bias: Optional[torch.Tensor] = None, *,
                 dtype: Optional[torch.dtype] = None, bf16_scan: bool = False) -> None:
        if not isinstance(items, torch.Tensor):
            raise TypeError(f"items must be a torch.Tensor, got {type(items).__name__}")
        if items.dim() != 2:
            raise ValueError(f"items must be [N, d], got shape {tuple(items.shape)}")
        if not items.dtype.is_floating_point:
            raise TypeError(f"items must be a floating tensor, got {items.dtype}")
        dtype = items.dtype if dtype is None else dtype
        if dtype not in _TABLE_DTYPES:
            raise TypeError(f"dtype must be one of {', '.join(_DTYPE_NAMES)}, got {dtype}")
        num_items = items.shape[0]
        self._items = items.detach().to(dtype=dtype).contiguous()
        self._ids = None
        self._sorted_ids = self._id_rows = None
        if ids is not None:
            if not isinstance(ids, torch.Tensor):
                raise TypeError(f"ids must be a torch.Tensor, got {type(ids).__name__}")
            if ids.dtype != torch.int64:
                raise TypeError(f"ids must be int64, got {ids.dtype}")
            if ids.shape != (num_items,):
                raise ValueError(f"ids must have shape ({num_items},), got {tuple(ids.shape)}")
            if ids.device != items.device:
                raise ValueError(f"ids are on {ids.device} but items are on {items.device}")
            if num_items and int(ids.min()) < 0:
                raise ValueError("ids must be non-negative (-1 marks padding in results)")
            sorted_ids, rows = torch.sort(ids)
            if num_items > 1 and bool((sorted_ids[1:] == sorted_ids[:-1]).any()):
                dup = int(sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]][0])
                raise ValueError(f"ids must be distinct; {dup} appears more than once")
            self._ids = ids.detach().contiguous()
            self._sorted_ids, self._id_rows = sorted_ids, rows
        self._scan_table = None
        if bf16_scan:
            if self._items.dtype != torch.float32:
                raise ValueError(f"bf16_scan needs a float32 table, got {self._items.dtype}")
            self._scan_table = self._items.bfloat16()
        self._bias = None
        if bias is not None:
            if not isinstance(bias, torch.Tensor):
                raise TypeError(f"bias must be a torch.Tensor, got {type(bias).__name__}")
            if not bias.dtype.is_floating_point:
                raise TypeError(f"bias must be a floating tensor, got {bias.dtype}")
            if bias.shape != (num_items,):
                raise ValueError(f"bias must have shape ({num_items},), got {tuple(bias.shape)}")
            if bias.device != items.device:
                raise ValueError(f"bias is on {bias.device} but items are on {items.device}")
            self._bias = bias.detach().to(torch.float32).contiguous()

    # ------------------------------------------------------------------------------ accessors

    @property
    def items(self) -> torch.Tensor:
        """The stored table [N, d]."""
        return self._items

    @property
    def ids(self) -> Optional[torch.Tensor]:
        return self._ids

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self._bias

    @property
    def num_items(self) -> int:
        return self._items.shape[0]

    @property
    def dim(self) -> int:
        return self._items.shape[1]

    @property
    def dtype(self) -> torch.dtype:
        return self._items.dtype

    @property
    def device(self) -> torch.device:
        return self._items.device

    def __len__(self) -> int:
        return self.num_items

    def __repr__(self) -> str:
        return (f"ItemIndex(num_items={self.num_items}, dim={self.dim}, dtype={self.dtype}, "
                f"ids={self._ids is not None}, bias={self._bias is not None}, "
                f"bf16_scan={self.bf16_scan}, device={self.device})")

    @property
    def bf16_scan(self) -> bool:
        return self._scan_table is not None

    def to(self, device: Union[str, torch.device]) -> "ItemIndex":
        """A copy of the index on ``device``."""
        return ItemIndex(self._items.to(device),
                         None if self._ids is None else self._ids.to(device),
                         None if self._bias is None else self._bias.to(device),
                         bf16_scan=self.bf16_scan)

    # --------------------------------------------------------------------------------- search

    def _rows_of_ids(self, ids: torch.Tensor, where: str) -> torch.Tensor:
        """Row positions of external ids; ValueError for an id the index does not hold."""
        if self._sorted_ids is None:
            return ids
        ids = ids.to(self._sorted_ids.device)
        pos = torch.searchsorted(self._sorted_ids, ids).clamp_(max=max(self.num_items - 1, 0))
        found = self._sorted_ids[pos] == ids if self.num_items else torch.zeros_like(ids, dtype=torch.bool)
        if not bool(found.all()):
            missing = int(ids[~found][0])
            raise ValueError(f"{where} holds item id {missing}, which is not in the index")
        return self._id_rows[pos]

    def _exclusions_to_rows(self, exclude: Exclusions, batch: int, device: torch.device):
        if self._sorted_ids is None:
            return exclusions_to_csr(exclude, batch, self.num_items, device)
        # Convert to CSR over ids (no range check: ids are not row positions), then map.
        offsets, id_values = exclusions_to_csr(exclude, batch, 2 ** 62, device)
        if id_values.numel() and int(id_values.min()) < 0:
            raise ValueError("exclude holds a negative item id")
        return offsets, self._rows_of_ids(id_values, "exclude").to(device)

    def search(self, query: torch.Tensor, k: int, *, exclude: Optional[Exclusions] = None,
               sorted: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """Exact top-k items for each query row.

        Args:
            query: [B, d] floating tensor on the index's device; cast to the table's dtype.
            k: 1 <= k <= len(index).
            exclude: items each row must not return, as item ids when the index has ids (row
                positions otherwise): a tuple (offsets [B + 1], ids [E]) or a list of B sequences.
            sorted: best first when True.

        Returns:
            (scores [B, k] float32 (float64 for a float64 table), ids [B, k] int64); rows with
            fewer than k eligible items are padded with (-inf, -1).
        """
        if not isinstance(query, torch.Tensor):
            raise TypeError(f"query must be a torch.Tensor, got {type(query).__name__}")
        if query.dim() != 2:
            raise ValueError(f"query must be [B, d], got shape {tuple(query.shape)}")
        if query.shape[1] != self.dim:
            raise ValueError(f"query has d = {query.shape[1]} but the index has d = {self.dim}")
        if not query.dtype.is_floating_point:
            raise TypeError(f"query must be a floating tensor, got {query.dtype}")
        if query.device != self.device:
            raise ValueError(f"query is on {query.device} but the index is on {self.device}")
        csr = None
        if exclude is not None:
            csr = self._exclusions_to_rows(exclude, query.shape[0], query.device)
        if self._scan_table is not None:
            scores, rows = topk_inner_product_bf16(query.to(self.dtype), self._items, k,
                                                   items_bf16=self._scan_table, bias=self._bias,
                                                   exclude=csr, sorted=sorted)
        else:
            scores, rows = topk_inner_product(query.to(self.dtype), self._items, k,
                                              bias=self._bias, exclude=csr, sorted=sorted)
        if self._ids is None:
            return scores, rows
        ids = self._ids[rows.clamp(min=0)]
        return scores, torch.where(rows >= 0, ids, rows)

    # ---------------------------------------------------------------------------- persistence

    def state_dict(self) -> dict:
        tensors = {"items": self._items.cpu()}
        if self._ids is not None:
            tensors["ids"] = self._ids.cpu()
        if self._bias is not None:
            tensors["bias"] = self._bias.cpu()
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "num_items": self.num_items,
            "dim": self.dim,
            "dtype": str(self.dtype).replace("torch.", ""),
            "bf16_scan": self.bf16_scan,
            "tensors": tensors,
            "crc32": {name: _crc32(t) for name, t in tensors.items()},
        }

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes the index to ``path`` (torch.save of tensors and numbers only)."""
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], *,
             map_location: Union[str, torch.device] = "cpu") -> "ItemIndex":
        """Reads an index written by ``save``; ValueError for a corrupted or foreign file."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as exc:  # zip, unpickling and storage errors all mean "not readable"
            raise ValueError(f"{path}: not a readable ItemIndex file (corrupted or truncated?): "
                             f"{type(exc).__name__}: {exc}") from exc
        index = cls._from_state(state, str(path))
        return index.to(map_location) if torch.device(map_location) != index.device else index

    @classmethod
    def _from_state(cls, state, where: str) -> "ItemIndex":
        def bad(msg: str) -> ValueError:
            return ValueError(f"{where}: {msg}")

        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise bad(f"not an ItemIndex file (expected format tag {_FORMAT!r})")
        if state.get("version") != _VERSION:
            raise bad(f"unsupported ItemIndex version {state.get('version')!r} "
                      f"(this fastsoftmax reads version {_VERSION})")
        tensors, crcs = state.get("tensors"), state.get("crc32")
        if not isinstance(tensors, dict) or not isinstance(crcs, dict):
            raise bad("missing tensor table or checksums")
        if set(tensors) != set(crcs) or "items" not in tensors \
                or not set(tensors) <= {"items", "ids", "bias"}:
            raise bad(f"unexpected tensor entries {sorted(tensors)}")
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor):
                raise bad(f"entry {name!r} is not a tensor")
            if _crc32(t) != crcs[name]:
                raise bad(f"checksum mismatch in {name!r}: the file is corrupted")
        items = tensors["items"]
        num_items, dim, dtype = state.get("num_items"), state.get("dim"), state.get("dtype")
        if items.dim() != 2 or tuple(items.shape) != (num_items, dim):
            raise bad(f"items have shape {tuple(items.shape)} but the header says "
                      f"({num_items}, {dim})")
        if _DTYPE_NAMES.get(dtype) != items.dtype:
            raise bad(f"items have dtype {items.dtype} but the header says {dtype!r}")
        try:
            return cls(items, tensors.get("ids"), tensors.get("bias"),
                       bf16_scan=bool(state.get("bf16_scan", False)))
        except (TypeError, ValueError) as exc:
            raise bad(f"inconsistent contents: {exc}") from exc
