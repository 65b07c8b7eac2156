"""The deterministic bottom-k of `rebuild` (pipelines/rebuild_beam.py): which frames (MuLan
windows) form the refit sample and the drift probe, as a Beam CombineFn whose result does not
depend on how the runner groups and merges its inputs.

A row's priority is fit.py's `frames_priority(key, n_frames, seed)[row]`; the k rows with the
smallest (priority, key, row) are kept and returned in (key, row) order, exactly as
rebuild.bottom_k does in one process over every row.
"""
from __future__ import annotations

import apache_beam as beam
import numpy as np

from tokenmill.pipelines.ingest import frames_priority


def candidates(key: str, feats: np.ndarray, n: int, seed: int):
    """(priorities uint64 [m], key, rows int64 [m], features float32 [m, D]): the segment's m = min(n, T)
    lowest-priority rows, the only ones that can be in a global bottom-n."""
    prio = frames_priority(key, feats.shape[0], seed)
    take = np.sort(np.argsort(prio, kind="stable")[:n])
    return prio[take], key, take.astype(np.int64), np.ascontiguousarray(feats[take], dtype=np.float32)


class BottomKRows(beam.CombineFn):
    """The k rows with the smallest (priority, key, row) over the whole dataset, returned in
    dataset order (key, then row): exactly rebuild.bottom_k of all rows, in any combine order.
    An accumulator is pruned to k rows whenever it exceeds 2k; a row seen twice (two --input files
    that decode to the same content, hence the same key) counts once."""

    def __init__(self, k: int):
        self.k = k

    def create_accumulator(self):
        return (np.empty(0, np.uint64), np.empty(0, object), np.empty(0, np.int64), None)

    @staticmethod
    def _order(acc):
        prio, keys, rows, _ = acc
        order = np.lexsort((rows, keys.astype(str), prio))
        if len(order) > 1:   # drop exact repeats of (priority, key, row)
            p, k, r = prio[order], keys[order].astype(str), rows[order]
            keep = np.concatenate([[True], (p[1:] != p[:-1]) | (k[1:] != k[:-1]) | (r[1:] != r[:-1])])
            order = order[keep]
        return order

    def _prune(self, acc, final=False):
        if len(acc[0]) <= 2 * self.k and not final:
            return acc
        if not len(acc[0]):
            return acc
        keep = self._order(acc)[: self.k]
        return acc[0][keep], acc[1][keep], acc[2][keep], acc[3][keep]

    @staticmethod
    def _concat(accs):
        accs = [a for a in accs if len(a[0])]
        if not accs:
            return BottomKRows.create_accumulator(None)
        if len(accs) == 1:
            return accs[0]
        return tuple(np.concatenate([a[j] for a in accs]) for j in range(4))

    def add_input(self, acc, element):
        prio, key, rows, feats = element
        return self._prune(self._concat([acc, (prio, np.full(len(prio), key, dtype=object), rows, feats)]))

    def merge_accumulators(self, accs):
        return self._prune(self._concat(list(accs)))

    def extract_output(self, acc):
        """(keys list[str], rows int64 [n], features float32 [n, D] or None), key then row order."""
        prio, keys, rows, feats = self._prune(acc, final=True)
        if feats is None or not len(prio):
            return [], np.empty(0, np.int64), None
        order = np.lexsort((rows, keys.astype(str)))
        return [str(k) for k in keys[order]], rows[order], np.asarray(feats[order], dtype=np.float32)


def selection(key: str, n_frames: int, n: int, seed: int):
    """candidates() without features: which rows of a segment can be in a global bottom-n."""
    prio = frames_priority(key, n_frames, seed)
    take = np.sort(np.argsort(prio, kind="stable")[:n])
    return prio[take], key, take.astype(np.int64), np.empty((len(take), 0), np.float32)
