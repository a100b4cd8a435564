"""A simulated multi-node Ray cluster (ray.cluster_utils.Cluster: a head and a second node):
the evaluators, forced onto the second node by a custom resource, complete a search while the
run directory is gone from its path — they receive everything through the object store."""

from __future__ import annotations

import optuna
import pytest
import ray

from nas import search
from nas.evaluate import evaluation_state
from nas.latency import table as lut
from nas.rundir import TABLE, RunDir
from runs import make_run


@pytest.fixture(scope="module")
def two_nodes():
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    second = cluster.add_node(num_cpus=2, resources={"evaluator_node": 3})  # two evaluators and the node probe
    ray.init(address=cluster.address, logging_level="ERROR")
    yield cluster, second
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_evaluators_on_another_node_score_a_search_without_the_run_directory(tmp_path, two_nodes):
    from workers.evaluator import EvaluatorPool

    _, second = two_nodes
    run_dir = make_run(tmp_path / "run")
    space, _ = RunDir(run_dir).space_and_data()
    table = lut.LatencyTable.load(run_dir / TABLE, space)
    state = evaluation_state(run_dir)  # the driver reads the run directory, once
    hidden = run_dir.rename(tmp_path / "hidden")  # from here on nothing can open it by its path
    assert not run_dir.exists()

    @ray.remote(num_cpus=0, resources={"evaluator_node": 0.001})
    def node_id():
        return ray.get_runtime_context().get_node_id()

    pool = EvaluatorPool(state, 2, resources={"evaluator_node": 1})
    try:
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
        search.run_search(study, space, table, pool.evaluate, search.SearchConfig(trials=6, batch=2, budget_ms=100.0), progress=lambda line: None)
        on_second = ray.get(node_id.remote())
    finally:
        pool.shutdown()
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 6 and all(0.0 <= t.values[0] <= 1.0 for t in complete)
    assert on_second == second.node_id and pool.replaced == 0
    hidden.rename(run_dir)
