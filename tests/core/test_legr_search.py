"""LeGR in the core: the evolution, the coefficient transform in plans, the coefficients'
JSON and state, with a frontend over plain numpy weights."""

import contextlib
import json

import numpy as np
import pytest
from core_fixtures import DictFrontend, Net, Pruning

from filterprune.core.allocation import allocate_for_filters, allocate_for_flops
from filterprune.core.legr import reward_of, search_coeffs, search_inputs
from filterprune.core.legr_coeffs import load_coeffs, save_coeffs
from filterprune.core.params import LegrParams
from filterprune.core.workflow import create_compressed_model, dry_run
from filterprune.errors import ConfigError

# seed 0: 193 of the seeds 0-199 find the rewarded ranking in these 8 generations (42 does not)
LEGR = {"generations": 8, "population_size": 4, "num_samples": 2, "max_pruning": 0.3,
        "random_seed": 0}  # fmt: skip


def chain(seed=0):
    """x -> c1 (16) -> c2 (16) -> c3 (8) -> output: c1 and c2 prunable."""
    net = Net(seed)
    rng = np.random.default_rng(seed)
    net.weights = {"c1": rng.normal(size=(16, 3, 3, 3)), "c2": rng.normal(size=(16, 16, 3, 3)),
                   "c3": rng.normal(size=(8, 16, 3, 3))}  # fmt: skip
    net.weights["c2"][:8] *= 0.8  # the plain ranking takes some of c2's filters
    return net


class Searching(Pruning):
    """Rewards a candidate for the c2 filters its plan keeps; counts the trials."""

    trials = 0

    @contextlib.contextmanager
    def _ranking_trials(self):
        gid = next(g.id for g in self.analysis.prunable_groups if g.producers == ["c2"])

        def trial(plan):
            Searching.trials += 1
            return float(plan.kept[gid].sum())

        yield trial


class SearchingFrontend(DictFrontend):
    controllers = {"filter_pruning": Searching}


def config(ranking="learned_ranking", **params):
    params = {"prune_first_conv": True, "filters_multiple_of": 1, "pruning_flops_target": 0.3,
              "schedule": "baseline", "interlayer_ranking_type": ranking,
              "legr_params": LEGR, **params}  # fmt: skip
    algo = {"algorithm": "filter_pruning", "pruning_init": 0.3, "params": params}
    return {"input_info": {"sample_size": [1, 3, 4, 4]}, "compression": algo}


def kept_of(ctrl, layer):
    return int(next(k for g, k in ctrl.plan.kept.items()
                    if ctrl.analysis.groups[g].producers == [layer]).sum())  # fmt: skip


def flops_removed(ctrl):
    return 1 - ctrl.pruner.flops(ctrl.plan) / ctrl.pruner.full_flops


# -- the evolution ---------------------------------------------------------------------------
def test_search_is_deterministic_per_seed_and_starts_from_the_identity():
    seen = []

    def reward(c):
        seen.append(c)
        return c["a"][1] - abs(c["b"][0] - 2.0)

    first = search_coeffs(["a", "b"], reward, LegrParams(**LEGR))
    assert seen[0] == {"a": (1.0, 0.0), "b": (1.0, 0.0)} and len(seen) == 8
    assert search_coeffs(["a", "b"], reward, LegrParams(**LEGR)) == first
    assert search_coeffs(["a", "b"], reward, LegrParams(**{**LEGR, "random_seed": 7})) != first


def test_mutation_changes_a_share_of_the_groups_of_a_pool_member():
    seen = []
    keys = list(range(10))
    legr = LegrParams(generations=6, population_size=3, num_samples=3, mutate_percent=0.2)
    search_coeffs(keys, lambda c: seen.append(c) or 0.0, legr)
    pool = seen[:3]  # identity and two random candidates
    for child in seen[3:]:
        # 20% of 10 groups differ from its parent, a member of the pool
        assert min(sum(child[k] != p[k] for k in keys) for p in pool) == 2
        pool = [*pool[1:], child]


def test_best_candidate_wins_and_ties_keep_the_identity():
    assert search_coeffs([0], lambda c: 0.0, LegrParams(**LEGR)) == {0: (1.0, 0.0)}
    best = search_coeffs([0, 1], lambda c: c[0][1] - c[1][1], LegrParams(**LEGR))
    assert best[0][1] > best[1][1]


def test_reward_of_reads_numbers_and_first_items():
    assert reward_of(0.5) == 0.5 and reward_of((0.7, 0.9, 1.2)) == 0.7
    assert reward_of([np.float32(2.0)]) == 2.0 and reward_of(float("nan")) == -np.inf
    with pytest.raises(TypeError, match=r"^`validate_fn` must return a number .*Received: str"):
        reward_of("good")
    with pytest.raises(TypeError, match=r"Received: dict"):
        reward_of({"top1": 1.0})


def test_missing_search_inputs_are_named():
    class Args:
        validate_fn, val_data, train_steps_fn = print, None, None

    with pytest.raises(ConfigError, match=r"^`validate_fn` and `val_data` must be registered "
                       r".*call reg\(\).*Received: val_data=None\.$"):
        search_inputs(Args(), "val_data", "reg()")
    with pytest.raises(ConfigError, match=r"Received: validate_fn=None, val_data=None\.$"):
        search_inputs(None, "val_data", "reg()")


# -- the transform in plans ------------------------------------------------------------------
def plain_and_learned(coeffs, removed=0.3):
    ctrl, _ = create_compressed_model(DictFrontend(), chain(), config("unweighted_ranking"))
    scores = ctrl.pruner.scores(ctrl._weights())
    plain = allocate_for_flops(ctrl.pruner, removed, scores)
    ids = {g.producers[0]: g.id for g in ctrl.analysis.prunable_groups}
    learned = allocate_for_flops(ctrl.pruner, removed, scores,
                                 coeffs={ids[k]: v for k, v in coeffs.items()})  # fmt: skip
    return ctrl, ids, plain[0], learned[0]


def test_identity_coefficients_give_the_plain_allocation():
    _, _, plain, learned = plain_and_learned({"c1": (1.0, 0.0), "c2": (1.0, 0.0)})
    assert plain.keys() == learned.keys()
    assert all(np.array_equal(plain[g], learned[g]) for g in plain)


def test_kappa_moves_the_cut_to_other_groups_within_the_flops_window():
    ctrl, ids, plain, learned = plain_and_learned({"c1": (1.0, 0.0), "c2": (1.0, 5.0)})
    assert plain[ids["c2"]].sum() < 16 and learned[ids["c2"]].sum() == 16
    removed = 1 - ctrl.pruner.analysis_flops(learned) / ctrl.pruner.full_flops
    assert 0.3 <= removed <= 0.32


def test_filter_levels_rank_across_groups():
    ctrl, _ = create_compressed_model(DictFrontend(), chain(), config("unweighted_ranking"))
    ids = {g.producers[0]: g.id for g in ctrl.analysis.prunable_groups}
    scores = ctrl.pruner.scores(ctrl._weights())
    kept, _ = allocate_for_filters(ctrl.pruner, 0.25, scores,
                                   {ids["c1"]: (1.0, 0.0), ids["c2"]: (1.0, 5.0)})  # fmt: skip
    assert kept[ids["c2"]].sum() == 16 and kept[ids["c1"]].sum() == 8  # 8 of 32 go, all in c1
    assert 0.25 <= 1 - sum(k.sum() for k in kept.values()) / 32 <= 0.27


# -- the controller --------------------------------------------------------------------------
def test_search_drives_the_ranking_and_resume_does_not_search(tmp_path):
    Searching.trials = 0
    path = tmp_path / "coeffs.json"
    ctrl, _ = create_compressed_model(SearchingFrontend(), chain(),
                                      config(save_ranking_coeffs_path=str(path)))  # fmt: skip
    plain, _ = create_compressed_model(DictFrontend(), chain(), config("unweighted_ranking"))
    identity = dry_run(DictFrontend(), chain(), config())  # LeGR's first candidate
    assert Searching.trials == 8
    assert kept_of(ctrl, "c2") > max(kept_of(plain, "c2"), kept_of(identity, "c2"))
    assert 0.3 <= flops_removed(ctrl) <= 0.32 and 0.3 <= flops_removed(plain)
    state = json.loads(json.dumps(ctrl.get_compression_state()))
    resumed, _ = create_compressed_model(SearchingFrontend(), chain(), config(), state)
    loaded, _ = create_compressed_model(SearchingFrontend(), chain(),
                                        config(load_ranking_coeffs_path=str(path)))  # fmt: skip
    assert Searching.trials == 8  # neither the resume nor the loaded file searched
    for other in (resumed, loaded):
        assert other.ranking_coeffs == ctrl.ranking_coeffs
        assert other.plan.to_dict(other.analysis) == ctrl.plan.to_dict(ctrl.analysis)
    resumed.set_pruning_level(0.1)  # later levels keep using the coefficients
    ctrl.set_pruning_level(0.1)
    assert resumed.plan.to_dict(resumed.analysis) == ctrl.plan.to_dict(ctrl.analysis)


def test_resume_under_learned_ranking_needs_coefficients():
    plain, _ = create_compressed_model(DictFrontend(), chain(), config("unweighted_ranking"))
    state = plain.get_compression_state()
    with pytest.raises(ConfigError, match=r"^`compression_state.ranking_coeffs` must be set"):
        create_compressed_model(SearchingFrontend(), chain(), config(), state)
    state["ranking_coeffs"] = {"c1": [1.0, 0.0], "c2": [0.0, 1.0]}
    with pytest.raises(ConfigError, match=r"compression_state.ranking_coeffs\['c2'\]` must be "
                       r"\[alpha, kappa\].*alpha > 0\. Received: 'c2': \[0\.0, 1\.0\]"):
        create_compressed_model(SearchingFrontend(), chain(), config(), state)


def test_a_frontend_without_a_search_asks_for_a_file():
    with pytest.raises(ConfigError, match=r"needs a LeGR search.*load_ranking_coeffs_path"):
        create_compressed_model(DictFrontend(), chain(), config())


def test_dry_run_uses_loaded_or_identity_coefficients(tmp_path):
    dry = dry_run(DictFrontend(), chain(), config())
    assert set(dry.ranking_coeffs.values()) == {(1.0, 0.0)}
    path = tmp_path / "c.json"
    save_coeffs(str(path), {g: (2.0, 0.5) for g in dry.ranking_coeffs}, dry.analysis)
    dry = dry_run(DictFrontend(), chain(), config(load_ranking_coeffs_path=str(path)))
    assert set(dry.ranking_coeffs.values()) == {(2.0, 0.5)}


# -- the file --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", r"^`params.load_ranking_coeffs_path` must name a JSON file .*JSONDecode"),
        ('{"version": 2, "ranking_coeffs": {}}', r"c.json: version` must be 1 .*version=2\."),
        ('{"version": 1}', r"c.json: ranking_coeffs` must be set\. Received: keys \['version'\]"),
        ('{"version": 1, "ranking_coeffs": {"c1": [1, 0]}}',
         r"c.json: ranking_coeffs` must name each prunable group .*without coefficients: 'c2'"),
        ('{"version": 1, "ranking_coeffs": {"c1": [1, 0], "c2": [1, 0], "fc": [1, 0]}}',
         r"does not prune: 'fc'; prunable groups without coefficients: none\.$"),
        ('{"version": 1, "ranking_coeffs": {"c1": [1, 0], "c2": [1, "x"]}}',
         r"c.json: ranking_coeffs\['c2'\]` must be \[alpha, kappa\]"),
        ('{"version": 1, "ranking_coeffs": {"c1": [1, 0], "c2": [1, 0, 0]}}',
         r"Received: 'c2': \[1, 0, 0\]\.$"),
    ],
)
def test_bad_coefficient_files_are_named(tmp_path, content, match):
    path = tmp_path / "c.json"
    path.write_text(content)
    dry = dry_run(DictFrontend(), chain(), config())
    with pytest.raises(ConfigError, match=match):
        load_coeffs(str(path), dry.analysis)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"must name a JSON file.*nope.json.*FileNotFoundError"):
        create_compressed_model(DictFrontend(), chain(),
                                config(load_ranking_coeffs_path=str(tmp_path / "nope.json")))
