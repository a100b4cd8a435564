"""A simulated multi-node Ray cluster (ray.cluster_utils.Cluster: a head and a second node):
the evaluators, forced onto the second node by a custom resource, complete a search while the
run directory is gone from its path — they receive everything through the object store."""

from __future__ import annotations

import pytest

optuna = pytest.importorskip("optuna")
ray = pytest.importorskip("ray")

from runs import make_run  # noqa: E402

from nas import study as search  # noqa: E402  (after the skips: it needs optuna)
from nas.evaluate import evaluation_state  # noqa: E402
from nas.latency import table as lut  # noqa: E402
from nas.rundir import TABLE, RunDir  # noqa: E402


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
        search.run_search(
            study,
            space,
            table,
            pool.evaluate,
            search.SearchConfig(trials=6, batch=2, budget_ms=1e6),  # every trial feasible, however busy the machine
            progress=lambda line: None,
        )
        on_second = ray.get(node_id.remote())
    finally:
        pool.shutdown()
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 6 and all(0.0 <= t.values[0] <= 1.0 for t in complete)
    assert on_second == second.node_id and pool.replaced == 0
    hidden.rename(run_dir)


@pytest.mark.slow  # starts a two-node Ray cluster (~8 s)
@pytest.mark.compat
def test_evaluators_that_ask_for_more_gpus_than_the_cluster_has_are_one_line_before_any_actor(two_nodes):
    from nas.errors import NasError
    from workers.evaluator import EvaluatorPool

    with pytest.raises(
        NasError, match=r"not enough GPUs in the Ray cluster for 2 evaluator\(s\) of 0.5 GPU\(s\) each \(it has 0\)"
    ):
        EvaluatorPool({"unused": True}, 2, scoring={"device": "cuda"}, gpus_each=0.5)


@pytest.mark.slow
def test_ray_train_on_the_cluster_keeps_checkpoints_in_storage_path_and_the_driver_writes_the_run(tmp_path, two_nodes):
    """Two Ray Train ranks with --storage-path elsewhere: the run directory gets the final files (from Ray
    Train's result checkpoint), the storage holds the checkpoint, no rank folder or checkpoint copy is
    left in the temp folder, and a resumed run starts from what the driver wrote."""
    import tempfile
    from pathlib import Path

    from safetensors.torch import load_file

    from nas.errors import NasError
    from nas.space_file import load_space
    from nas.training import TrainConfig
    from workers.trainer import train_distributed

    def leftovers() -> set[Path]:
        temp = Path(tempfile.gettempdir())
        return (
            set(temp.glob("nas-rank-*")) | set(temp.glob("nas-checkpoint-*")) | set(temp.glob("*/supernet.safetensors"))
        )

    space, run, storage = load_space("digits-tiny"), tmp_path / "run", tmp_path / "shared"
    before, lines = leftovers(), []
    config = TrainConfig(epochs=1, batch_size=256, random_subnets=0)
    summary = train_distributed(space, None, config, run, 2, False, progress=lines.append, storage_path=str(storage))
    assert 0.0 <= summary["test_largest"] <= 1.0 and any(line.startswith("epoch 1/1") for line in lines)
    saved = list(storage.glob("supernet/checkpoint_*/supernet.safetensors"))
    assert len(saved) == 1 and not (run / "ray_train" / "supernet").exists()
    ours, theirs = load_file(str(run / "supernet.safetensors")), load_file(str(saved[0]))
    assert ours.keys() == theirs.keys() and all(ours[k].equal(theirs[k]) for k in ours)
    assert leftovers() - before == set()

    with pytest.raises(NasError, match="--resume"):
        train_distributed(space, None, config, run, 2, False, progress=lines.append, storage_path=str(storage))
    lines.clear()  # resuming a finished run: the ranks load its checkpoint (sent by the driver) and train no epoch again
    train_distributed(space, None, config, run, 2, True, progress=lines.append, storage_path=str(storage))
    assert not [line for line in lines if line.startswith("epoch ")], lines
    again = load_file(str(run / "supernet.safetensors"))
    assert all(ours[k].equal(again[k]) for k in ours)
    assert leftovers() - before == set()


@pytest.mark.slow
def test_a_search_joins_a_head_started_with_ray_start(tmp_path):
    """`ray start --head --block` as users start it (token authentication where Ray defaults to it),
    a tiny `nas run --ray-address 127.0.0.1:<port>`, then the head stopped by SIGTERM to the process
    this test started (never `ray stop`, which would end every Ray instance on the machine)."""
    import json
    import os
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    from test_faults import REPO, nas_run, tiny_space_file

    if ray.is_initialized():
        ray.shutdown()
    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    if not Path(ray_cli).exists():
        pytest.skip("no `ray` command beside this Python")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address_file = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    saved = address_file.read_bytes() if address_file.exists() else None
    log = (tmp_path / "head.log").open("w")
    head = subprocess.Popen(
        [
            ray_cli,
            "start",
            "--head",
            "--block",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 90
        while "Ray runtime started" not in (tmp_path / "head.log").read_text():
            if head.poll() is not None or time.time() > deadline:
                pytest.skip(f"`ray start --head` did not start here: {(tmp_path / 'head.log').read_text()[-500:]}")
            time.sleep(0.5)
        run = tmp_path / "run"
        started = time.perf_counter()
        done = subprocess.run(
            nas_run(
                "--space",
                str(tiny_space_file(tmp_path)),
                "--epochs",
                "2",
                "--trials",
                "4",
                "--evaluators",
                "1",
                "--budget-ms",
                "1000",
                "--calibrate",
                "0",
                "--validate",
                "0",
                "--ray-address",
                f"127.0.0.1:{port}",
                "--verify",
                "0",
                "--out",
                str(run),
            ),
            capture_output=True,
            text=True,
            timeout=600,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert f"the Ray cluster at 127.0.0.1:{port}" in done.stdout
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["stages"]["search"]["completed"] and (run / "trials.csv").exists()
        print(f"nas run on the head: {time.perf_counter() - started:.0f} s")
    finally:
        head.send_signal(signal.SIGTERM)  # with --block, Ray drains and ends the head's own processes
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # only this test's process group
            head.wait()
        log.close()
        if address_file.exists() and f":{port}" in address_file.read_text():  # the address file that head left
            address_file.unlink()
        if saved is not None and not address_file.exists():
            address_file.write_bytes(saved)
