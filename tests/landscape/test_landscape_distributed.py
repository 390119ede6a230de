import numpy as np
import torch
import torch.multiprocessing as mp

from landscape_dist_worker import run_single, worker
from normlens.landscape import LandscapeResult
from normlens.landscape import distributed as dd
from normlens.landscape.store import GridStore


def test_two_gloo_processes_equal_one(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = run_single()
    finally:
        torch.set_num_threads(threads)
    grid_file = tmp_path / "grid.npz"
    mp.spawn(worker, args=(2, str(tmp_path / "init"), str(tmp_path), str(grid_file)), nprocs=2, join=True)
    for rank in range(2):
        result = LandscapeResult.load(tmp_path / f"rank{rank}.npz")
        np.testing.assert_array_equal(result.loss, single.loss)
        np.testing.assert_array_equal(result.accuracy, single.accuracy)
    # rank 0 wrote the whole grid and removed the per-rank shards
    assert grid_file.exists() and not dd.shard_paths(grid_file)
    recomputed = []
    resumed = run_single(grid_file, on_chunk=lambda c, n: recomputed.append(c))  # the complete file is read back
    np.testing.assert_array_equal(resumed.loss, single.loss)
    assert recomputed == []  # nothing recomputed


def test_shards_of_a_killed_distributed_run_are_merged(tmp_path):
    path = tmp_path / "g.npz"
    fp = {"model": "m", "directions": "d"}
    for rank, chunks in [(0, [0, 2]), (1, [1])]:
        shard = GridStore(path, fp, 10, 3)
        for c in chunks:
            shard.record(c, np.full(len(shard.chunk_cells(c)), float(c)), None, save=False)
        shard.save(dd.shard_path(path, rank))
    store = GridStore.open(path, fp, 10, 3)
    dd.merge_shards(store)
    assert store.chunk_done.tolist() == [True, True, True, False]
    np.testing.assert_array_equal(store.loss[:9], np.repeat([0.0, 1.0, 2.0], 3))
    assert dd.assign_chunks(store.missing_chunks(), 0, 2).tolist() == [3]
    assert dd.assign_chunks(np.arange(5), 1, 2).tolist() == [1, 3]
