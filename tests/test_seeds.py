import pytest

from uad.seeds import aggregate, markdown, runs_from_exp_show


def exp_show(values_by_seed, other_param=4):
    def rev(name, seed, value, ts):
        return {"rev": name * 8, "name": name, "data": {
            "timestamp": ts,
            "params": {"params.yaml": {"data": {"model": "cfa", "dataset": "demo", "categories": ["weave"],
                                                 "seed": seed, "cfa": {"epochs": other_param}}}},
            "metrics": {"metrics/cfa/weave.json": {"data": {"image_auroc": value, "aupro": value / 2}}}}}
    exps = [{"revs": [rev(f"s{seed}", seed, v, f"2026-01-0{i + 1}")]} for i, (seed, v) in enumerate(values_by_seed)]
    return [{"rev": "workspace", "data": {}}, {**rev("base", 0, 0.5, "2026-01-00"), "experiments": exps}]


def test_groups_equal_params_and_computes_mean_and_sample_std():
    groups = aggregate(runs_from_exp_show(exp_show([(1, 0.7), (2, 0.8), (3, 0.9)])))
    assert len(groups) == 1
    g = groups[0]
    assert g["seeds"] == [0, 1, 2, 3]
    s = g["stats"]["weave"]["image_auroc"]
    assert s["n"] == 4 and s["mean"] == pytest.approx(0.725) and s["std"] == pytest.approx(0.17078, abs=1e-5)
    assert g["stats"]["weave"]["aupro"]["mean"] == pytest.approx(0.3625)
    assert "| image_auroc | 0.725 ± 0.171 |" in markdown(g)


def test_runs_with_other_params_are_not_mixed_and_a_lone_seed_is_no_group():
    rows = exp_show([(1, 0.7)])
    rows[1]["experiments"] += exp_show([(2, 0.1)], other_param=9)[1]["experiments"]
    groups = aggregate(runs_from_exp_show(rows))
    assert [g["seeds"] for g in groups] == [[0, 1]]


def test_a_rerun_of_the_same_seed_counts_once_newest_wins():
    groups = aggregate(runs_from_exp_show(exp_show([(1, 0.7), (1, 0.9)])))
    assert groups[0]["seeds"] == [0, 1] and groups[0]["stats"]["weave"]["image_auroc"]["mean"] == pytest.approx(0.7)
