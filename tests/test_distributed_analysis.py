"""Distributed analysis: under torchrun each process analyses a contiguous shard of the data;
summed agreement counts and merged covariances give the single-process result."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fu_fast
from fu_fast import FuFastError

# Model and data are rebuilt from seeds in every process. 37 examples split unevenly
# (18 + 19), the conv layer's position sample is capped below its 37*8*8 positions, and
# the data comes as a Dataset of (input, label) pairs.
SETUP = textwrap.dedent("""
    import torch
    from torch.utils.data import TensorDataset

    def setup():
        torch.manual_seed(3)
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(6, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 12), torch.nn.ReLU(), torch.nn.Linear(12, 5),
        ).double()
        g = torch.Generator().manual_seed(4)
        data = TensorDataset(torch.randn(37, 3, 16, 16, generator=g, dtype=torch.float64),
                             torch.randint(0, 5, (37,), generator=g))
        return model, data

    SETTINGS = dict(layers=["1", "3", "6"], repeats=2, levels=11, sample_cap=1000, batch_size=7, seed=5)
""")

WORKER = SETUP + textwrap.dedent("""
    import sys
    import torch.distributed as dist
    import fu_fast

    dist.init_process_group("gloo")
    model, data = setup()
    result = fu_fast.analyze(model, data, **SETTINGS)
    if dist.get_rank() == 0:
        result.save(sys.argv[1])
    dist.destroy_process_group()
""")


def _single_process():
    namespace = {}
    exec(SETUP, namespace)
    model, data = namespace["setup"]()
    return fu_fast.analyze(model, data, **namespace["SETTINGS"])


def test_two_processes_give_the_single_process_result(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(out)], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    together = json.loads(out.read_text())
    alone = _single_process().to_dict()
    assert together["data"]["examples"] == alone["data"]["examples"] == 37
    assert together["model"]["accuracy"] == alone["model"]["accuracy"]
    for a, b in zip(together["layers"], alone["layers"]):
        assert a["name"] == b["name"]
        assert a["prunability"] == b["prunability"]          # integer counts: exactly equal
        ra, rb = a["redundancy"], b["redundancy"]
        assert (ra["samples"], ra["components"]) == (rb["samples"], rb["components"])
        assert ra["explained_variance_ratio"] == pytest.approx(rb["explained_variance_ratio"], abs=1e-12)
        assert a["correlation"]["mean_abs_r"] == pytest.approx(b["correlation"]["mean_abs_r"], rel=1e-10)
    assert together["layers"][0]["redundancy"]["samples"] == 1000


def test_merging_covariance_states_equals_one_accumulator(generator):
    """Chan's pairwise merge of two halves equals accumulating everything in one."""
    from fu_fast.analysis.covariance import CovarianceAccumulator

    x = torch.randn(41, 7, generator=generator, dtype=torch.float64) * 3 + 1
    whole, left, right = CovarianceAccumulator(7), CovarianceAccumulator(7), CovarianceAccumulator(7)
    whole.update(x, torch.arange(41))
    left.update(x[:13], torch.arange(13))
    right.update(x[13:], torch.arange(28))
    merged = CovarianceAccumulator(7)
    for part in (left, right, CovarianceAccumulator(7)):   # an empty shard changes nothing
        merged.merge_state(part.state())
    assert merged.samples == 41
    torch.testing.assert_close(merged.mean, x.mean(0))
    torch.testing.assert_close(torch.from_numpy(merged.covariance()), torch.cov(x.T))
    torch.testing.assert_close(torch.from_numpy(merged.covariance()), torch.from_numpy(whole.covariance()))


def test_distributed_without_a_process_group_is_refused():
    with pytest.raises(FuFastError, match="torchrun"):
        fu_fast.analyze(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)),
                        torch.randn(8, 3), distributed=True)
