"""The synthetic demo corpus (data/demo.py): deterministic and not extractive."""


from peftsum.data.demo import generate


def test_demo_corpus_is_deterministic_and_not_extractive():
    a, b = generate(50, seed=4), generate(50, seed=4)
    assert a == b and generate(50, seed=5) != a
    for r in a:
        sents = [s.strip() for s in r["article"].replace("\n", " ").split(". ")]
        assert 2 <= len(r["highlights"].split("\n")) <= 4
        assert all(h.rstrip(".") not in sents for h in r["highlights"].split("\n"))
