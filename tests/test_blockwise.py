"""The block-wise estimator (nas.blockwise, nas bench blockwise): student blocks start as the parent's block,
the additive prediction, determinism, and the bench's resumable table scored against a truth file."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from nas.bench import blockwise as bench
from nas.bench import truth
from nas.blockwise import (
    SKIP,
    LocalRecipe,
    Students,
    choice_key,
    layer_scores,
    parent_arch,
    predict,
    tokens_before,
    train_students,
    widths,
)
from nas.data import load_dataset
from nas.errors import NasError
from nas.io import append_line
from nas.space_file import load_space
from nas.standalone import Recipe
from nas.subnet import ViT

SPACE = """
name: blockwise-tiny
image_size: 32
patch_size: 8
in_chans: 1
num_classes: 10
head_dim: 8
embed_dim: [16, 24]
depth: [1, 2]
heads: [1, 2]
mlp_ratio: [1, 2]
kernels: [softmax, relu, taylor]
taylor:
  order: [1, 2]
  variant: [compact]
data: digits
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "blockwise-tiny.yaml"
    path.write_text(SPACE)
    space = load_space(path)
    dataset = load_dataset("digits", space.image_size, space.in_chans)
    dataset.split = {**dataset.split, "train": dataset.split["train"][:256], "val": dataset.split["val"][:128]}
    return path, space, dataset


def test_an_untrained_student_of_the_parents_kernel_at_full_width_is_the_parents_block(tiny):
    _, space, dataset = tiny
    torch.manual_seed(0)
    parent = ViT(parent_arch(space, 24)).eval()
    students = Students(space, parent, 1).eval()
    assert sorted(students.specs) == ["relu", "softmax", "taylor-o1", "taylor-o2-compact"]
    x, _ = dataset.batch("val", torch.arange(16))
    with torch.no_grad():
        tokens = tokens_before(parent, x, 1)
        assert torch.equal(students(tokens, students.choice("softmax", 2, 2)), parent.blocks[1](tokens, parent.grid))
    scores = layer_scores(parent, students, dataset)
    assert scores["softmax/h2/m2"] == pytest.approx(dataset.top1(parent, "val"), abs=1e-6)
    assert len(scores) == 4 * len(widths(space)) + 1 and SKIP in scores  # layer 1 is past depth 1: it can be skipped
    assert SKIP not in layer_scores(parent, Students(space, parent, 0).eval(), dataset)  # every arch has layer 0


def test_an_arch_is_predicted_as_its_parent_plus_the_change_of_each_replacement(tiny):
    _, space, _ = tiny
    one = space.make_arch(16, [space.make_layer(space.kernel_choices()[1], 1, 2)])  # relu, depth 1
    two = space.make_arch(
        16, [space.make_layer(space.kernel_choices()[0], 2, 2), space.make_layer(space.kernel_choices()[2], 1, 1)]
    )
    table = {
        16: {
            "parent": 0.80,
            "layers": [{"relu/h1/m2": 0.70, "softmax/h2/m2": 0.79}, {SKIP: 0.75, "taylor-o1/h1/m1": 0.78}],
        }
    }
    assert choice_key(one.layers[0]) == "relu/h1/m2"
    assert predict(one, table) == pytest.approx(0.80 - 0.10 - 0.05)
    assert predict(two, table) == pytest.approx(0.80 - 0.01 - 0.02)
    with pytest.raises(NasError, match="embed_dim 24"):
        predict(space.make_arch(24, list(one.layers)), table)
    with pytest.raises(NasError, match="not in the block-wise table"):
        predict(space.make_arch(16, [space.make_layer(space.kernel_choices()[1], 2, 1)]), table)


def test_local_distillation_is_deterministic_and_lowers_the_students_loss(tiny):
    _, space, dataset = tiny
    torch.manual_seed(0)
    parent = ViT(parent_arch(space, 16)).eval()
    recipe = LocalRecipe(epochs=3, batch_size=32)
    first, losses = train_students(parent, 0, space, dataset, recipe, seed=3)
    second, again = train_students(parent, 0, space, dataset, recipe, seed=3)
    assert losses == again and losses[-1] < losses[0]
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    assert all(not p.requires_grad for p in parent.parameters())  # the parent stays frozen


@pytest.mark.slow
def test_the_bench_builds_a_resumable_table_and_scores_it_against_a_truth_file(tiny, tmp_path):
    path, space, dataset = tiny
    config = bench.BlockwiseConfig(
        recipe=Recipe(epochs=1, batch_size=128), local=LocalRecipe(epochs=1, batch_size=128), jobs=2
    )
    out, work, lines = tmp_path / "table.jsonl", tmp_path / "work", []
    split = truth.split_digest(load_dataset("digits", space.image_size, space.in_chans).split)
    table = bench.run(space, "digits", split, out, work, config, progress=lines.append)
    records, cut = bench.read_table(out)
    assert cut == 0 and sorted(records) == [(16, 0), (16, 1), (24, 0), (24, 1)]
    assert set(table) == {16, 24} and len(table[16]["layers"]) == 2 and SKIP in table[24]["layers"][1]
    assert all(r["parent"] == r["parent_curve"][-1] for r in records.values())
    assert len(list(work.glob("parent-*.pt"))) == 2
    # a rerun trains nothing; a cut last line is dropped and that layer alone is built again
    again = []
    assert bench.run(space, "digits", split, out, work, config, progress=again.append) == table
    assert "0 layer(s) to distil" in again[0]
    text = out.read_text().splitlines(keepends=True)
    out.write_text("".join(text[:-1]) + text[-1][:40])
    resumed = []
    bench.run(space, "digits", split, out, work, config, progress=resumed.append)
    assert "1 layer(s) to distil" in resumed[1] and sum(1 for _ in out.open()) == 4
    with pytest.raises(NasError, match="another local"):
        bench.run(
            space,
            "digits",
            split,
            out,
            work,
            replace(config, local=LocalRecipe(epochs=2, batch_size=128)),
            progress=lambda line: None,
        )
    # scored against a hand-made truth file of three archs
    key = {"format": truth.FORMAT, "space": space.name, "data": "digits", "split": split, "recipe": Recipe().to_dict()}
    truth_path = tmp_path / "truth.jsonl"
    archs = [space.largest(), space.smallest(), parent_arch(space, 16)]
    for arch, final in zip(archs, (0.9, 0.5, 0.7)):
        append_line(truth_path, {**key, "digest": arch.digest, "arch": arch.to_dict(), "seed": 0, "curve": [final]})
    rows, summary = bench.score_against_truth(
        bench.table_of(bench.read_table(out)[0], space), space, truth_path, split, "digits"
    )
    assert (
        [r["standalone"] for r in rows] == [0.9, 0.5, 0.7]
        and summary["archs"] == 3
        and summary["estimator"] == "blockwise"
    )
    assert rows[2]["inherited"] == pytest.approx(
        table[16]["parent"]
        + sum(table[16]["layers"][i][choice_key(archs[2].layers[i])] - table[16]["parent"] for i in range(2))
    )
    assert json.loads(json.dumps(summary))["truth"]["archs"] == 3
    with pytest.raises(NasError, match="another split"):
        bench.score_against_truth(table, space, truth_path, "0" * 16, "digits")


def test_nas_bench_blockwise_refuses_a_missing_truth_file_in_one_line(tmp_path, capsys):
    from nas.cli import main

    assert (
        main(
            [
                "bench",
                "blockwise",
                "--space",
                "digits-tiny",
                "--truth",
                str(tmp_path / "none.jsonl"),
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.jsonl: no such file" in err[0] and list(tmp_path.iterdir()) == []


def test_nas_bench_blockwise_refuses_a_truth_of_another_space_before_the_work(tmp_path, capsys):
    from nas.bench import truth
    from nas.cli import main

    other = load_space("digits-tiny")
    key = {
        "format": truth.FORMAT,
        "space": other.name,
        "data": "digits",
        "split": "0" * 16,
        "recipe": Recipe().to_dict(),
    }
    path = tmp_path / "truth.jsonl"
    append_line(
        path, {**key, "digest": other.largest().digest, "arch": other.largest().to_dict(), "seed": 0, "curve": [0.5]}
    )
    assert (
        main(["bench", "blockwise", "--space", "odd-one-out", "--truth", str(path), "--out", str(tmp_path / "out")])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "made on space digits-tiny" in err[0]
        and not (tmp_path / "out" / "blockwise_odd-one-out.jsonl").exists()
    )
