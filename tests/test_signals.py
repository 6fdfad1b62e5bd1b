"""Signal formulas on hand-made distributions, checked against scipy and by hand."""
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy

from toggle.signals import SIGNALS, SignalOptions, StepTokens, compute_signals, describe
from toggle.trace import StepOutputs


def outputs(probs=None, attn=None, hidden=None, gold=None, answer_steps=None):
    n = len(probs if probs is not None else attn if attn is not None else hidden)
    lp = None if probs is None else torch.log(torch.tensor(probs, dtype=torch.float32))
    return StepOutputs(
        steps=(n,), answer_steps=(answer_steps or 0,), logprobs=lp,
        attn=None if attn is None else torch.tensor(attn, dtype=torch.float32),
        hidden=None if hidden is None else torch.tensor(hidden, dtype=torch.float32),
        gold_logprob=None if gold is None else torch.tensor(gold, dtype=torch.float32),
    )


BASE = [[0.7, 0.2, 0.1], [0.25, 0.25, 0.5], [0.98, 0.01, 0.01]]
CAND = [[0.6, 0.3, 0.1], [0.5, 0.25, 0.25], [0.98, 0.01, 0.01]]


def test_distribution_signals_match_scipy_and_hand_values():
    v = compute_signals(["jsd", "kl", "top1_agree", "p_ratio", "entropy_delta"], outputs(CAND), outputs(BASE))
    for t in range(3):
        assert v["jsd"][t] == pytest.approx(jensenshannon(BASE[t], CAND[t], base=2) ** 2, abs=1e-6)
        assert v["kl"][t] == pytest.approx(entropy(BASE[t], CAND[t]), abs=1e-6)
        assert v["entropy_delta"][t] == pytest.approx(entropy(CAND[t]) - entropy(BASE[t]), abs=1e-6)
    assert v["top1_agree"].tolist() == [1.0, 0.0, 1.0]
    # p_ratio: candidate / base probability of the base's argmax token
    assert v["p_ratio"] == pytest.approx([0.6 / 0.7, 0.25 / 0.5, 1.0], abs=1e-6)
    assert v["jsd"][2] == 0.0 and v["kl"][2] == 0.0


def test_base_side_signals_by_hand():
    v = compute_signals(["base_p", "base_entropy", "base_margin", "base_rank"], outputs(CAND), outputs(BASE))
    assert v["base_p"] == pytest.approx([0.7, 0.5, 0.98], abs=1e-6)
    h0 = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))  # 0.8018 nats
    h2 = -(0.98 * math.log(0.98) + 2 * 0.01 * math.log(0.01))
    assert v["base_entropy"] == pytest.approx([h0, 1.5 * math.log(2), h2], abs=1e-6)
    assert v["base_margin"] == pytest.approx([0.5, 0.25, 0.97], abs=1e-6)
    # step 1: b = token 2, q = (0.5, 0.25, 0.25): only token 0 is strictly above q(b); the tie does not count
    assert v["base_rank"].tolist() == [0.0, 1.0, 0.0]


P4 = [[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]]
Q4 = [[0.1, 0.2, 0.3, 0.4], [0.35, 0.05, 0.4, 0.2]]


@pytest.mark.parametrize("k, expected", [
    (1, [0.0, 0.0]),  # top tokens 0 vs 3, then 3 vs 2
    (2, [0.0, 0.5]),  # {0,1} vs {3,2}; {3,2} vs {2,0}
    (3, [2 / 3, 2 / 3]),  # {0,1,2} vs {3,2,1}; {3,2,1} vs {2,0,3}
    (10, [1.0, 1.0]),  # k is clamped to the vocabulary: all 4 tokens on both sides
])
def test_topk_overlap_by_hand(k, expected):
    v = compute_signals(["topk_overlap", "base_rank"], outputs(Q4), outputs(P4), options=SignalOptions(topk=k))
    assert v["topk_overlap"] == pytest.approx(expected)
    assert v["base_rank"].tolist() == [3.0, 2.0]


class _Path:
    def __init__(self, tokens, base_tokens=None):
        self.tokens, self.base_tokens = tuple(tokens), base_tokens


# vocabulary of 3, token 2 ends the text
STOP_BASE = [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.2, 0.6], [0.1, 0.1, 0.8]]
STOP_CAND = [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.5, 0.3, 0.2]]


def test_stop_signals_by_hand():
    tokens = StepTokens.of([_Path([0, 2]), _Path([2, 2])], eos={2})
    out = compute_signals(["base_stop", "cand_stop"], StepOutputs((2, 2), (0, 0), torch.log(torch.tensor(STOP_CAND))),
                          StepOutputs((2, 2), (0, 0), torch.log(torch.tensor(STOP_BASE))), tokens=tokens)
    assert out["base_stop"].tolist() == [0.0, 1.0, 1.0, 1.0]
    assert out["cand_stop"].tolist() == [0.0, 0.0, 1.0, 0.0]
    # without end-of-sequence ids nothing ends
    assert compute_signals(["cand_stop"], outputs(STOP_CAND), outputs(STOP_BASE))["cand_stop"].tolist() == [0.0] * 4


def test_token_match_on_the_base_path_and_on_the_candidates_own():
    cand, base = outputs(STOP_CAND), outputs(STOP_BASE)
    # the base's own path (search, teacher audit): the candidate's greedy choice vs the path's token
    on_base = StepTokens.of([_Path([0, 2, 2, 2])], eos={2})
    assert compute_signals(["token_match"], cand, base, tokens=on_base)["token_match"].tolist() == [1, 0, 1, 0]
    assert compute_signals(["token_match"], cand, base)["token_match"].tolist() == [1, 0, 1, 0]  # = top1_agree
    # free-running: the path is the candidate's own continuation, compared with the base's own,
    # position by position; the base's continuation ended after 2 tokens
    free = StepTokens.of([_Path([0, 1, 2, 0], base_tokens=(0, 2))], eos={2})
    assert compute_signals(["token_match"], cand, base, tokens=free)["token_match"].tolist() == [1, 0, 0, 0]
    # chunked the same
    assert compute_signals(["token_match"], cand, base, tokens=free, chunk=1)["token_match"].tolist() == [1, 0, 0, 0]


def test_topk_is_not_part_of_the_trace_options():
    # topk only enters the arithmetic on the outputs: resolving for a pass drops it
    assert SignalOptions(topk=3).resolved(4) == SignalOptions().resolved(4)
    default = compute_signals(["topk_overlap"], outputs(Q4), outputs(P4))
    assert default["topk_overlap"] == pytest.approx([1.0, 1.0])  # default topk = 5 >= |V| = 4


def test_jsd_bounds_exactly():
    same = compute_signals(["jsd", "kl"], outputs(BASE), outputs(BASE))
    assert same["jsd"].tolist() == [0.0, 0.0, 0.0] and same["kl"].tolist() == [0.0, 0.0, 0.0]
    disjoint = compute_signals(["jsd"], outputs([[1.0, 0.0]]), outputs([[0.0, 1.0]]))
    assert disjoint["jsd"][0] == pytest.approx(1.0)  # one bit: the maximum


def test_cosines():
    base = outputs(attn=[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], hidden=[[1.0, 2.0], [3.0, -1.0]])
    cand = outputs(attn=[[0.25, 0.25, 0.0], [0.0, 1.0, 0.0]], hidden=[[2.0, 4.0], [1.0, 3.0]])
    v = compute_signals(["attn_cos", "hidden_cos"], cand, base)
    assert v["attn_cos"] == pytest.approx([1.0, 0.0])  # scale does not matter; orthogonal rows give 0
    assert v["hidden_cos"] == pytest.approx([1.0, 0.0])


def test_gold_signals_run_on_the_answer_axis():
    base = outputs(probs=BASE, gold=[math.log(0.5), math.log(0.8)], answer_steps=2)
    cand = outputs(probs=CAND, gold=[math.log(0.25), math.log(0.8)], answer_steps=2)
    v = compute_signals(["gold_p_ratio", "gold_logprob", "jsd"], cand, base)
    assert v["gold_p_ratio"] == pytest.approx([0.5, 1.0])
    assert v["gold_logprob"] == pytest.approx([math.log(0.25), math.log(0.8)])
    assert len(v["jsd"]) == 3


def test_chunking_does_not_change_values():
    torch.manual_seed(0)
    lp_b = torch.log_softmax(torch.randn(50, 17), -1)
    lp_c = torch.log_softmax(torch.randn(50, 17), -1)
    b = StepOutputs((20, 30), (0, 0), logprobs=lp_b, hidden=torch.randn(50, 4))
    c = StepOutputs((20, 30), (0, 0), logprobs=lp_c, hidden=torch.randn(50, 4))
    names = ["jsd", "kl", "p_ratio", "top1_agree", "entropy_delta", "hidden_cos", "base_p", "base_entropy",
             "base_margin", "base_rank", "topk_overlap"]
    whole, chunked = compute_signals(names, c, b), compute_signals(names, c, b, chunk=7)
    for n in names:
        np.testing.assert_allclose(whole[n], chunked[n], rtol=1e-12)
        assert whole[n].shape == (50,)


def test_registry_documents_every_signal():
    rows = describe()
    assert [r["name"] for r in rows] == list(SIGNALS)
    for r in rows:
        assert r["meaning"] and "=" in r["formula"] and r["axis"] in ("step", "answer")
    required = {"jsd", "kl", "top1_agree", "p_ratio", "attn_cos", "hidden_cos", "entropy_delta"}
    assert required <= set(SIGNALS) and {"gold_p_ratio", "gold_logprob"} <= set(SIGNALS)


def test_signal_options_resolve_negative_layers():
    o = SignalOptions(hidden_layer=-1, attn_layers=(-2, 0, -2)).resolved(4)
    assert o.hidden_layer == 3 and o.attn_layers == (0, 2)
    assert SignalOptions().resolved(3).attn_layers == (0, 1, 2)
    with pytest.raises(IndexError):
        SignalOptions(hidden_layer=5).resolved(4)
    frac = SignalOptions(hidden_layer=0.5, attn_layers=((0.0, 0.34), -1)).resolved(7)
    assert frac.hidden_layer == 3 and frac.attn_layers == (0, 1, 2, 6)
