"""The single-node search of one cell, pure numpy: fine k-means, probes, refinement rounds.

This is the algorithm that wins at 100k (docs: performance), written once. The driver runs it
on a table that fits one process; every cell of a larger table runs it inside one Spark task.
Either way the blocks run in a pool of threads with one BLAS thread each:

1. fine spherical k-means on a seeded hash sample of the cell's members;
2. ``probe``: each item's top-k among the members of its ``n_probe`` nearest fine clusters,
   its own first (:func:`knnspark.graph.probed_topk`), in blocks of :func:`block_rows`
   items taken in cluster order (a block's queries share their own clusters);
3. ``refine`` x ``n_refine``: each item re-scores its neighbours' neighbours and the items that
   list it (:func:`knnspark.graph.refine_topk`), keeping the best k. On real embeddings one
   round lifts recall far more cheaply than more probes (a round costs about three probes).

Blocks depend on the data alone, never on the thread count, so the graph is the same on any
machine. With a target recall, :func:`tune_cell` checks a sample's exact top-k after every step
and adds rounds, then probes, until the sample's lower 95% bound reaches the target.

No pandas, no pyspark here: the Arrow adapter (:func:`knnspark.udfs.cell_topk`) and the Spark
plan (:mod:`knnspark.cells`) wrap it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from knnspark import compression, graph, kernel, sampling
from knnspark.kmeans import fit_spherical_kmeans, nearest_centroids, probe_recall_curve
from knnspark.metrics import recall_per_item

__all__ = [
    "BLOCK_ROWS",
    "CellIndex",
    "block_rows",
    "carried_graph",
    "CellSearch",
    "probes_home_first",
    "run_step",
    "search_cell",
    "tune_cell",
    "tune_start",
]

#: Queries per block. Fixed (not derived from the thread count) so blocks, and with them every
#: float32 product, are the same on any machine. A block's queries spread their probes over most
#: clusters, so a larger block means more rows per product and fewer member gathers per query:
#: one core, n_probe 6 on the word set, 32,768 queries took 3.6-3.7 s in 8,192-row blocks
#: against 4.1-4.6 s in 4,096-row ones.
BLOCK_ROWS = 8192
#: A block holds at least this many queries per fine cluster of the cell. A block's queries
#: probe most clusters (1M x 64 synthetic, 1,000 clusters: ~900 distinct per 8,192-row block),
#: and each probed cluster's members are gathered once per block, so with fixed blocks the
#: gathers grow as items x clusters, i.e. as N squared: probing 2M x 64 took 160 s in 8,192-row
#: blocks against 104 s in 65,536-row ones (1M: 43.5 s against 36.4 s at 32,768; the
#: 320k word set: 34.1 s against 31.3 s at 16,384). The graph does not depend on the blocks.
QUERIES_PER_CLUSTER = 32
#: Most working bytes of one block (per thread): its query vectors (float32) and its candidate
#: pairs (up to 4 k per query before they are compacted, 20 bytes each, and a copy).
BLOCK_WORK_BYTES = 128 * 1024 * 1024
#: Widest probe list kept per member from the index (int32 each: 40 bytes a member at the
#: default 10 probes, 16% of a 64-d float32 vector, 3% of a 384-d one); wider probes, as in
#: exact mode, are selected per block instead.
NEAR_MAX_WIDTH = 16
#: Rows per chunk of the members' nearest-cluster pass.
NEAR_ROWS = 4096
#: Most refinement rounds a target-recall run adds after one probe pass before it probes more.
MAX_ROUNDS_PER_PASS = 3
#: Default probes (or every cluster, when fewer).
DEFAULT_N_PROBE = 10


@dataclass(frozen=True)
class CellSearch:
    """How a cell is searched (resolved from :class:`~knnspark.config.KnnConfig`).

    Attributes
    ----------
    k : int
        Neighbours per item (already clipped to the table).
    target_bucket_size : int
        Members per fine cluster the k-means aims for.
    n_clusters : int or None
        Fine clusters (``None``: ``ceil(members / target_bucket_size)``).
    n_probe : int or None
        Fine clusters each item probes (``None``: 10, or all when fewer).
    n_refine : int
        Refinement rounds (none when ``n_probe`` covers every cluster: the search is exact).
    refine_fanout : int or None
        A round scores the lists of an item's best ``refine_fanout`` neighbours (``None``: k).
    kmeans_iter : int
    kmeans_sample_size : int or None
        Sample rows of the fine k-means (``None``: 64 per cluster, 10,000 to 200,000).
    seed : int
    block_bytes : int
        Memory budget of one score matrix.
    exact : bool
        Probe every cluster, refine nothing: the exact answer.
    recipe : tuple of (str, int) or None
        The steps to run, as :func:`tune_cell` found them on one cell: ``("probe", n_probe)``
        (merged into the graph so far) and ``("refine", round)``. ``None``: probe ``n_probe``,
        then ``n_refine`` rounds.
    rerank : int
        Over coded vectors (:class:`knnspark.compression.CodedVectors`), the search keeps
        ``rerank x k`` neighbours by the decoded products and the exact re-rank cuts them to
        ``k``; unused over float32 vectors.
    """

    k: int
    target_bucket_size: int = 1000
    n_clusters: int | None = None
    n_probe: int | None = None
    n_refine: int = 2
    refine_fanout: int | None = None
    kmeans_iter: int = 20
    kmeans_sample_size: int | None = None
    seed: int = 42
    block_bytes: int = 64 * 1024 * 1024
    exact: bool = False
    recipe: tuple[tuple[str, int], ...] | None = None
    rerank: int = 1

    def short_list(self) -> CellSearch:
        """These steps searching ``rerank x k`` wide: what a search over codes keeps for its
        exact re-rank."""
        return dataclasses.replace(self, k=self.k * self.rerank)

    def resolve_n_clusters(self, n_members: int) -> int:
        if self.n_clusters is not None:
            return max(1, min(self.n_clusters, n_members))
        return max(1, math.ceil(n_members / self.target_bucket_size))

    def resolve_sample_size(self, n_members: int, n_clusters: int) -> int:
        if self.kmeans_sample_size is not None:
            return min(n_members, max(self.kmeans_sample_size, n_clusters))
        return min(n_members, max(10_000, 64 * n_clusters, n_clusters), 200_000)

    def resolve_n_probe(self, n_clusters: int) -> int:
        if self.exact:
            return n_clusters
        return min(n_clusters, DEFAULT_N_PROBE if self.n_probe is None else self.n_probe)

    def resolve_recipe(self, n_clusters: int) -> tuple[tuple[str, int], ...]:
        """The steps of a search of ``n_clusters`` fine clusters."""
        if self.recipe is not None:
            return self.recipe
        n_probe = self.resolve_n_probe(n_clusters)
        # Probing every cluster scores every pair: the graph is exact, a round cannot change it.
        n_refine = 0 if n_probe >= n_clusters else self.n_refine
        return (("probe", n_probe), *(("refine", r) for r in range(1, n_refine + 1)))


def block_rows(n_clusters: int, dim: int, k: int) -> int:
    """Queries per block of a cell of ``n_clusters`` fine clusters: a multiple of
    :data:`BLOCK_ROWS`, about :data:`QUERIES_PER_CLUSTER` per cluster, within
    :data:`BLOCK_WORK_BYTES`. It depends on the cell alone (never on threads), so blocks, and
    with them every float32 product, are the same on any machine."""
    want = -(-QUERIES_PER_CLUSTER * n_clusters // BLOCK_ROWS)  # in BLOCK_ROWS, rounded up
    row_bytes = 4 * max(dim, 1) + 2 * 4 * max(k, 1) * 20
    cap = BLOCK_WORK_BYTES // (row_bytes * BLOCK_ROWS)
    return BLOCK_ROWS * max(1, min(want, cap))


def probes_home_first(
    x: np.ndarray, home: np.ndarray, centroids: np.ndarray, n_probe: int
) -> np.ndarray:
    """The ``n_probe`` nearest clusters of each row (shape (b, d)) with the row's own cluster
    ``home`` (shape (b,)) first: shape (b, n_probe)."""
    near = nearest_centroids(x, centroids, n_probe)
    others = near != home[:, None]
    # Stable: keep the nearest-first order of the other clusters, drop home (or the last).
    order = np.argsort(~others, axis=1, kind="stable")[:, : near.shape[1] - 1]
    rest = np.take_along_axis(near, order, axis=1)
    return np.concatenate([home[:, None].astype(near.dtype), rest], axis=1)


class CellIndex:
    """A cell's members, its fine clusters, and the search steps over them.

    Parameters
    ----------
    keys : ndarray of shape (m,), int64
        Member keys, ascending (equal scores break by key).
    vecs : ndarray of shape (m, d), float32
        Their unit vectors.
    params : CellSearch
    n_threads : int
        Threads searching blocks (the graph does not depend on it).
    progress : callable, optional
        Called with ``(blocks done, blocks)`` as blocks finish (the driver's heartbeat).
    centroids : ndarray of shape (c, d), float32, optional
        Fine centroids fitted before (a saved index's): no k-means is fitted, and the members
        are assigned to these exactly as the run that fitted them assigned its own.
    """

    def __init__(
        self,
        keys: np.ndarray,
        vecs: np.ndarray,
        params: CellSearch,
        n_threads: int = 1,
        progress: Callable[[int, int], None] | None = None,
        centroids: np.ndarray | None = None,
    ) -> None:
        m = len(keys)
        self.keys, self.vecs, self.params = keys, vecs, params
        self.k = min(params.k, max(m - 1, 0))
        self.n_threads = max(1, n_threads)
        self.progress = progress
        n_clusters = params.resolve_n_clusters(m)
        sample_rows = sampling.sample_rows(
            keys, params.seed, params.resolve_sample_size(m, n_clusters)
        )
        n_clusters = max(1, min(n_clusters, len(sample_rows)))
        self.n_sample = len(sample_rows)
        if centroids is not None:
            self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
            n_clusters = len(self.centroids)
        else:
            self.centroids = fit_spherical_kmeans(
                vecs[sample_rows], n_clusters, n_iter=params.kmeans_iter, seed=params.seed
            )
        # Each member's nearest fine clusters, once: the first is its home, the rest its
        # probes. Computing the home alone and then every block's probes scored every member
        # against every centroid twice (the float64 product is most of it: 4M x 64 with 4,000
        # clusters spent about 45 s on each). A first probe wider than the argmax passes
        # (exact mode) keeps only the home and selects its probes per block.
        recipe = params.resolve_recipe(n_clusters)
        width = max((v for kind, v in recipe if kind == "probe"), default=1)
        width = min(width, n_clusters) if width <= NEAR_MAX_WIDTH else 1
        self.near = self._nearest(width)
        self.home = self.near[:, 0]
        self.cluster_rows = np.lexsort((np.arange(m), self.home)).astype(np.int64)
        self.offsets = np.searchsorted(self.home[self.cluster_rows], np.arange(n_clusters + 1))
        # Probes in blocks that grow with the clusters (:func:`block_rows`); rounds in fixed
        # ones: a round gathers its queries' lists, not clusters, so larger blocks give it
        # nothing to share (1M x 64 rounds took 29-36 s at either size, run to run).
        self.block_rows = block_rows(n_clusters, vecs.shape[1], self.k)
        self.probe_blocks = self._blocks(self.block_rows)
        self.blocks = self._blocks(BLOCK_ROWS)
        self._last: np.ndarray | None = None  # the graph the last round started from

    def _nearest(self, width: int) -> np.ndarray:
        """Each member's ``width`` nearest fine clusters (shape (m, width), int32), in fixed
        row chunks over the thread pool: each row's result is its own, so the chunks and
        threads change nothing."""
        vecs, centroids = self.vecs, self.centroids
        m = len(vecs)
        chunks = [np.arange(s, min(s + NEAR_ROWS, m)) for s in range(0, m, NEAR_ROWS)]
        out = np.empty((m, width), dtype=np.int32)

        def one(rows: np.ndarray) -> None:
            out[rows] = nearest_centroids(vecs[rows], centroids, width)

        self._each(one, chunks)
        return out

    def _each(
        self,
        one: Callable[[np.ndarray], None],
        chunks: list[np.ndarray],
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """``one(rows)`` for every chunk, in ``n_threads`` threads of one BLAS thread each.

        numpy releases the GIL in the products, sorts and gathers, so ``n_threads`` threads of
        one BLAS thread each search about ``n_threads`` times as fast as one (100k x 384: 7.3 s
        in two threads against 14.6 s in one; two threads each calling a two-thread BLAS took as
        long as one). The BLAS limit holds for the pool's lifetime only.
        """
        with threadpool_limits(1, user_api="blas"), ExitStack() as stack:
            if self.n_threads == 1:
                results = map(one, chunks)
            else:
                pool = ThreadPoolExecutor(self.n_threads, thread_name_prefix="knnspark-cell")
                results = stack.enter_context(pool).map(one, chunks)
            for done, _ in enumerate(results, start=1):
                if progress:
                    progress(done, len(chunks))

    @property
    def n_clusters(self) -> int:
        return len(self.centroids)

    def cluster_sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def _blocks(self, rows: int) -> list[np.ndarray]:
        return [self.cluster_rows[s : s + rows] for s in range(0, len(self.cluster_rows), rows)]

    def _run(
        self,
        fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
        blocks: list[np.ndarray],
    ):
        """``fn(rows) -> (pos, scores)`` over every block (:meth:`_each`), assembled into a
        graph."""
        m = len(self.keys)
        pos = np.full((m, self.k), -1, dtype=np.int64)
        scores = np.full((m, self.k), -np.inf, dtype=np.float32)

        def one(rows: np.ndarray) -> None:
            p, s = fn(rows)
            pos[rows], scores[rows] = p, s

        self._each(one, blocks, self.progress)
        return pos, scores

    def probe(self, n_probe: int) -> tuple[np.ndarray, np.ndarray]:
        """Every member's top-k among the members of its ``n_probe`` nearest clusters: positions
        (m, k) in ``keys`` (``-1`` padding) and float32 scores."""
        vecs, home, centroids, near = self.vecs, self.home, self.centroids, self.near
        n_probe = min(n_probe, self.n_clusters)
        block_bytes = self.params.block_bytes

        def fn(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            if n_probe <= near.shape[1]:
                # The same columns: the home is the nearest cluster, and the argmax passes
                # select a prefix of any wider selection.
                probes = near[rows, :n_probe]
            else:
                probes = probes_home_first(vecs[rows], home[rows], centroids, n_probe)
            return graph.probed_topk(
                vecs, rows, probes, self.cluster_rows, self.offsets, self.k,
                block_bytes=block_bytes,
            )  # fmt: skip

        return self._run(fn, self.probe_blocks)

    def query(
        self,
        queries: np.ndarray,
        n_probe: int,
        n_refine: int = 0,
        graph_pos: np.ndarray | None = None,
        fanout: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k members of each of ``queries`` (shape (b, d), unit vectors that are not
        members): the ``n_probe`` nearest clusters probed, then ``n_refine`` rounds over the
        members' graph ``graph_pos`` (shape (m, kg), member positions, ``-1`` padding), as the
        cell's own search does for its members. Positions (b, k) in ``keys`` and scores, ranked
        by (score desc, key asc); blocks of :data:`BLOCK_ROWS` queries over the threads."""
        b = len(queries)
        k = min(self.params.k, len(self.keys))
        n_probe = min(n_probe, self.n_clusters)
        pos = np.full((b, k), -1, dtype=np.int64)
        scores = np.full((b, k), -np.inf, dtype=np.float32)
        chunks = [np.arange(s, min(s + BLOCK_ROWS, b)) for s in range(0, b, BLOCK_ROWS)]
        block_bytes = self.params.block_bytes

        def one(rows: np.ndarray) -> None:
            q = queries[rows]
            probes = nearest_centroids(q, self.centroids, n_probe)
            p, sc = graph.probed_topk(
                self.vecs, rows, probes, self.cluster_rows, self.offsets, k,
                block_bytes=block_bytes, queries=q,
            )  # fmt: skip
            if graph_pos is not None and n_probe < self.n_clusters:
                for _ in range(n_refine):
                    p, sc = graph.refine_queries(self.vecs, q, p, graph_pos, k, fanout=fanout)
            pos[rows], scores[rows] = p, sc

        self._each(one, chunks, self.progress)
        return pos, scores

    def update(
        self,
        pos: np.ndarray,
        scores: np.ndarray,
        searched: np.ndarray,
        n_probe: int,
        n_refine: int,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """An earlier graph brought up to date after items were added, changed or removed:
        the incremental run's search.

        ``searched`` (the new and changed items) are probed as the full search probes every
        member, and each enters the list of every member of its probed clusters whose k-th it
        beats (the probe's own products, :func:`knnspark.graph.probed_topk`'s
        ``reverse_bar``) and of every item it found (:func:`knnspark.graph.push_reverse`).
        Then ``n_refine`` rounds in the NN-descent way with its "new" flags: a round re-scores
        only the pairs that involve an entry added since the last one (an item's new
        neighbour, or a new entry of a neighbour's list), for the searched items and the items
        whose lists gained one from the probes, plus every pair of the items that lost a
        neighbour (a deleted or changed one). Every other list stays as it was, which is the
        saving. On the 320k words, 10% new and 1% changed, two threads: recall 0.9596 on 8,000
        sampled items against a full search's 0.9582, in 11.4 s against its 39 s.

        Parameters
        ----------
        pos : ndarray of shape (m, k), int64
            The earlier graph in this index's positions (:func:`carried_graph`): entries of
            removed or changed items dropped (``-1``), empty lists for the searched items.
        scores : ndarray of shape (m, k), float32
        searched : ndarray of shape (s,), int64
            Positions of the new and changed items.
        n_probe, n_refine : int

        Returns
        -------
        pos, scores : the updated graph
        info : dict
            ``n_searched``; ``n_refined`` (rows a round re-scored, summed over rounds);
            ``n_pushed`` (rows a push changed, summed).
        """
        pos, scores = pos.copy(), scores.copy()
        k, vecs, block_bytes = self.k, self.vecs, self.params.block_bytes
        n_probe = min(n_probe, self.n_clusters)
        near, home, centroids = self.near, self.home, self.centroids
        searched = np.unique(searched)
        # What the first round counts as new: everything but the carried entries, and every
        # entry of a list that lost one (its remaining neighbours' lists are scored again).
        last = pos.copy()
        last[pos[:, k - 1] < 0] = -1

        # The probes score each searched item against every member of its clusters: every
        # pair in which it beats the member's k-th is a reverse update, kept on the way (the
        # searched items themselves are skipped: their own search fills their lists).
        # A list that lost entries takes what beats its worst remaining one (its rounds fill
        # the rest); only an empty one takes anything.
        bar = np.where(pos >= 0, scores, np.inf).min(axis=1).astype(np.float32)
        bar[pos[:, 0] < 0] = -np.inf
        bar[searched] = np.inf
        found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        # Rounds re-score the lists of the searched items, of those that lost a neighbour, and
        # of those a searched item entered from the probes' products: the new item's own
        # neighbours are likely theirs too. Without the last, the lists of old items missed
        # the new items only their own probes would have found, and kept missing them every
        # later day (320k words, 10% new, 1% changed, recall on 8,000 items: 0.9538 against a
        # full rebuild's 0.9582, update 7.4 s; with them 0.9596, 11.4 s; probing 14 clusters
        # instead: 0.9566, 8.8 s). A list that gained an item by a push alone needs no round.
        focus = np.zeros(len(pos), dtype=bool)
        focus[searched] = True
        focus[last[:, k - 1] < 0] = True

        def probe(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            if n_probe <= near.shape[1]:
                probes = near[rows, :n_probe]
            else:
                probes = probes_home_first(vecs[rows], home[rows], centroids, n_probe)
            return graph.probed_topk(vecs, rows, probes, self.cluster_rows, self.offsets, k,
                                     block_bytes=block_bytes, reverse_bar=bar,
                                     reverse_out=found)  # fmt: skip

        # Blocks in cluster order, as the full search takes them (a block's queries share
        # clusters); they depend on the searched rows alone, never on the threads.
        in_order = searched[np.argsort(home[searched], kind="stable")]
        self._fill(pos, scores, probe, in_order, self.block_rows)
        if found:
            member, query, approx = (np.concatenate([f[i] for f in found]) for i in range(3))
            # At most k per member can enter: keep those (by the float32 scores) before the
            # float64 re-score.
            keep = graph.top_per_group(member, query, approx, len(pos), k)[0]
            member = np.broadcast_to(np.arange(len(pos))[:, None], keep.shape)[keep >= 0]
            query = keep[keep >= 0]
            # Re-scored in float64, as every score of the graph is (the order of ``found``
            # follows the threads, but the merge sorts its candidates).
            exact = graph.pair_scores(vecs, member, query)
            # Disjoint: the searched items' entries were dropped from every carried list, and
            # a (member, query) pair is scored once.
            rows, new_pos, new_s = graph.merge_pairs(pos, scores, member, query, exact,
                                                     disjoint=True)  # fmt: skip
            pos[rows], scores[rows] = new_pos, new_s
            focus[rows] = True
        rows, new_pos, new_s = graph.push_reverse(pos, scores, searched)
        pos[rows], scores[rows] = new_pos, new_s
        n_pushed, n_refined = len(rows), 0
        for _ in range(n_refine):
            fresh = graph.fresh_entries(pos, last)
            todo_mask = fresh.any(axis=1) & focus
            todo = np.flatnonzero(todo_mask)
            if len(todo) == 0:
                break
            n_refined += len(todo)
            reverse = graph.reverse_lists(pos, scores, k, only=todo_mask)
            last = pos.copy()
            # Reads the graph as the round found it: _fill writes after every block ran.
            round_rows = functools.partial(
                graph.refine_topk, vecs, graph=last, reverse=reverse, k=k, fresh=fresh,
                scores=scores.copy(),
            )  # fmt: skip
            self._fill(pos, scores, round_rows, todo, BLOCK_ROWS)
            changed = todo[np.any(pos[todo] != last[todo], axis=1)]
            rows, new_pos, new_s = graph.push_reverse(pos, scores, changed)
            pos[rows], scores[rows] = new_pos, new_s
            n_pushed += len(rows)
        info = {"n_searched": len(searched), "n_refined": n_refined, "n_pushed": n_pushed}
        return pos, scores, info

    def _fill(
        self,
        pos: np.ndarray,
        scores: np.ndarray,
        fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
        rows: np.ndarray,
        block: int,
    ) -> None:
        """``pos[r], scores[r] = fn(r)`` for blocks of ``block`` of ``rows`` (in order), over
        the threads: every block reads what was there before any block wrote."""
        chunks = [rows[s : s + block] for s in range(0, len(rows), block)]
        results: dict[int, tuple[np.ndarray, np.ndarray]] = {}

        def one(i: int) -> None:
            results[i] = fn(chunks[i])

        self._each(lambda idx: one(int(idx[0])), [np.array([i]) for i in range(len(chunks))])
        for i, chunk in enumerate(chunks):
            p, s = results[i]
            pos[chunk], scores[chunk] = p, s

    def refine(
        self, pos: np.ndarray, scores: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """One refinement round over the graph ``(pos, scores)``; also the share of entries it
        changed. Pairs the previous round already scored are skipped."""
        fanout = min(self.k, self.params.refine_fanout or self.k)
        fresh, fresh_top = graph.round_flags(pos, self._last, fanout)
        self._last = pos
        reverse = graph.reverse_lists(pos, scores, self.k)
        vecs, k = self.vecs, self.k

        def fn(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return graph.refine_topk(
                vecs, rows, pos, reverse, k, fresh,
                fanout=fanout, fresh_top=fresh_top, scores=scores,
            )  # fmt: skip

        new_pos, new_scores = self._run(fn, self.blocks)
        return new_pos, new_scores, float(np.mean(new_pos != pos))


def carried_graph(
    keys: np.ndarray,
    item: np.ndarray,
    nbr: np.ndarray,
    score: np.ndarray,
    k: int,
    stale: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """An earlier neighbour table as a graph over today's items, keeping only what still holds.

    A pair survives when both items are still there with the vectors they had (a score is the
    cosine of two vectors: it holds while neither changed); an entry naming a deleted or
    changed item is dropped, and new or changed items start with empty lists.

    Parameters
    ----------
    keys : ndarray of shape (m,), int64
        Today's item keys, ascending.
    item, nbr : ndarray of shape (r,), int64
        The earlier table's pairs, as keys (keys no longer in ``keys`` are the deleted items).
    score : ndarray of shape (r,), float32
    k : int
    stale : ndarray of shape (m,), bool
        Today's items whose earlier lists and entries do not hold: new and changed ones.

    Returns
    -------
    pos, scores : ndarray of shape (m, k)
        Positions in ``keys`` (``-1`` padding) and scores, best first.
    """
    m = len(keys)

    def position(x: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(keys, x), max(m - 1, 0))
        found = (keys[at] == x) if m else np.zeros(len(x), dtype=bool)
        return np.where(found, at, -1)

    i, j = position(item), position(nbr)
    ok = (i >= 0) & (j >= 0)
    ok[ok] = ~stale[i[ok]] & ~stale[j[ok]]
    return graph.top_per_group(i[ok], j[ok], score[ok].astype(np.float32), m, k)


def run_step(
    index: CellIndex,
    step: tuple[str, int],
    pos: np.ndarray | None,
    scores: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One step of a recipe: a probe pass (merged into the graph so far) or a round."""
    kind, value = step
    if kind == "probe":
        new_pos, new_scores = index.probe(value)
        if pos is None:
            return new_pos, new_scores, {"step": "search", "n_probe": value}
        pos, scores = graph.merge_graphs(pos, scores, new_pos, new_scores)
        return pos, scores, {"step": "search", "n_probe": value}
    if kind == "refine":
        pos, scores, changed = index.refine(pos, scores)
        return pos, scores, {"step": "refine", "round": value, "changed": round(changed, 6)}
    raise ValueError(f"unknown search step {step!r}")


def search_cell(
    keys: np.ndarray,
    vecs: np.ndarray | compression.CodedVectors,
    params: CellSearch,
    n_threads: int = 1,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Every member's top-k among the cell's members, by the steps of ``params``.

    Parameters
    ----------
    keys : ndarray of shape (m,), int64
        Member keys, ascending.
    vecs : ndarray of shape (m, d), float32, or CodedVectors
        Their unit vectors, or their codes: then the steps search the decoded vectors for
        ``params.rerank x k`` neighbours each, and :func:`knnspark.compression.rerank` keeps
        the best ``k`` by the exact cosine.

    Returns
    -------
    pos : ndarray of shape (m, min(k, m - 1)), int64
        Neighbour positions in ``keys``, best first (``-1`` padding).
    scores : ndarray of shape (m, min(k, m - 1)), float32
    info : dict
        ``n_clusters``, ``steps``, ``cluster_members_max``.
    """
    width = max(min(params.k, len(keys) - 1), 0)
    if width == 0:
        empty = np.zeros((len(keys), width), dtype=np.int64)
        return empty, empty.astype(np.float32), {"n_clusters": 0, "steps": []}
    coded = isinstance(vecs, compression.CodedVectors)
    if coded:
        params = params.short_list()
    index = CellIndex(keys, vecs, params, n_threads)
    pos = scores = None
    steps = []
    for step in params.resolve_recipe(index.n_clusters):
        pos, scores, record = run_step(index, step, pos, scores)
        steps.append(record)
    if coded:
        pos, scores = compression.rerank(vecs, pos, width)
    info = {
        "n_clusters": index.n_clusters,
        "steps": steps,
        "cluster_members_max": int(index.cluster_sizes().max()),
    }
    return pos, scores, info


def tune_start(
    index: CellIndex, sample_rows: np.ndarray, target_recall: float, block_bytes: int
) -> tuple[int, np.ndarray, np.ndarray]:
    """Exact top-k of the tuning sample within the cell, and the ``n_probe`` a target-recall
    search starts from.

    Refinement closes most of the gap left by probing: on the word embeddings, two rounds
    leave about 0.55-0.8 x the square of probing's miss rate (0.34 -> 0.09, 0.18 -> 0.019,
    0.10 -> 0.006). So start where probing alone misses the square root of what the target
    allows (0.78 for 0.95, 0.86 for 0.98, 0.68 for 0.90): two rounds then land a little above
    the target, which the sample's lower bound needs. (Starting too low costs far more than a
    few extra probes: rounds on a poor graph gain little.)

    Returns
    -------
    n_probe : int
    rows : ndarray of shape (s,), int64
        The sample's positions that have a full top-k.
    exact_scores : ndarray of shape (s, k), float32
    """
    keys, vecs, k = index.keys, index.vecs, index.k
    nbr, exact = kernel.topk_cosine(vecs[sample_rows], keys[sample_rows], vecs, keys, k,
                                    block_bytes=block_bytes)  # fmt: skip
    full = np.all(nbr >= 0, axis=1)
    rows, nbr, exact = sample_rows[full], nbr[full], exact[full]
    curve = probe_recall_curve(
        vecs[rows], vecs[np.searchsorted(keys, nbr)], index.centroids, reverse=False
    )
    start_at = max(0.5, 1 - math.sqrt(1 - target_recall))
    n_probe = int(np.argmax(curve >= start_at)) + 1 if np.any(curve >= start_at) else len(curve)
    return n_probe, rows, exact


def tune_cell(
    index: CellIndex,
    rows: np.ndarray,
    exact_scores: np.ndarray,
    target_recall: float,
    n_probe: int,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Search until the sample's recall reaches ``target_recall`` at the lower end of its 95%
    interval: refine while a round still closes a good part of the remaining gap, then probe
    twice as many clusters (merged into the graph) and refine again.

    Parameters
    ----------
    rows : ndarray of shape (s,), int64
        Sample positions; ``exact_scores`` (s, k) their exact top-k scores (:func:`tune_start`).
    n_probe : int
        Where to start.
    on_step : callable, optional
        Called with each step's record as it finishes (for logs).

    Returns
    -------
    pos, scores : the graph
    info : dict
        ``n_probe``, ``n_refine`` (rounds run), the sample's ``recall`` and ``ci95_low``, the
        ``steps`` taken and the ``recipe`` that replays them (:attr:`CellSearch.recipe`).
    """
    steps: list[dict[str, Any]] = []
    recipe: list[tuple[str, int]] = [("probe", min(n_probe, index.n_clusters))]

    def measure(scores: np.ndarray, step: dict[str, Any]) -> tuple[float, float]:
        per_item = recall_per_item(scores[rows], exact_scores)
        mean = float(per_item.mean())
        low = mean - 1.96 * float(per_item.std()) / math.sqrt(max(len(per_item), 1))
        step.update(sample_recall=round(mean, 4), sample_recall_ci95_low=round(low, 4))
        steps.append(step)
        if on_step:
            on_step(step)
        return mean, low

    n_probe = min(n_probe, index.n_clusters)
    pos, scores = index.probe(n_probe)
    mean, low = measure(scores, {"step": "search", "n_probe": n_probe})
    rounds, in_pass, gain = 0, 0, 1.0
    while low < target_recall:
        if in_pass < MAX_ROUNDS_PER_PASS and gain >= 0.25 * (1 - mean):
            rounds += 1
            in_pass += 1
            recipe.append(("refine", rounds))
            pos, scores, changed = index.refine(pos, scores)
            before = mean
            mean, low = measure(scores, {"step": "refine", "round": rounds,
                                         "changed": round(changed, 6)})  # fmt: skip
            gain = mean - before
        elif n_probe < index.n_clusters:
            n_probe = min(index.n_clusters, 2 * n_probe)
            recipe.append(("probe", n_probe))
            new_pos, new_scores = index.probe(n_probe)
            pos, scores = graph.merge_graphs(pos, scores, new_pos, new_scores)
            mean, low = measure(scores, {"step": "search", "n_probe": n_probe})
            in_pass, gain = 0, 1.0
        else:
            break
    info = {
        "n_probe": n_probe,
        "n_refine": rounds,
        "recall": round(mean, 4),
        "ci95_low": round(low, 4),
        "steps": steps,
        "recipe": tuple(recipe),
    }
    return pos, scores, info
