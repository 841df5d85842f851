"""The CNN/DailyMail evaluation protocol on strings with known answers: ROUGE values worked out by hand,
the summary-level ROUGE-L as the headline, the sentence splitter on the cases the field's data has, Lead-3 on
Daily Mail bylines, and the GPT-2 paper's zero-shot protocol."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from peftsum.config import GPT2_PAPER_DECODING, DecodingConfig, load_config
from peftsum.data.text import first_sentences, lead3, split_sentences, strip_byline
from peftsum.evaluate.generate import decode_ids, describe_decoding, prompt_seed
from peftsum.evaluate.metrics import HEADLINE, LABELS, rouge_means, rouge_per_example
from peftsum.methods import build_method

REFERENCE = "Police arrest man.\nFloods hit town.\nSchool closes early today."


def test_reordered_sentences_score_as_the_field_scores_them():
    """Three reference sentences in reverse order: one LCS over the whole text (rouge-score's rougeL) can keep
    only one sentence in order, the longest ("school closes early today", 4 of 10 tokens) -> 40.0; the
    summary-level ROUGE-L (rougeLsum) matches every sentence -> 100."""
    reordered = "School closes early today.\nFloods hit town.\nPolice arrest man."
    s = rouge_per_example([reordered], [REFERENCE])
    assert s["rougeL"][0] == pytest.approx(40.0)
    assert s["rougeLsum"][0] == pytest.approx(100.0)
    assert s["rouge1"][0] == pytest.approx(100.0)
    # the figure: 3 sentences of 2, 2 and 3 tokens, last first -> LCS 3 of 7 -> 42.86
    ref = "Police arrest.\nFloods hit.\nSchool closes early."
    pred = "School closes early.\nFloods hit.\nPolice arrest."
    s = rouge_per_example([pred], [ref])
    assert s["rougeL"][0] == pytest.approx(300 / 7)
    assert s["rougeLsum"][0] == pytest.approx(100.0)
    assert HEADLINE == "rougeLsum" and LABELS[HEADLINE] == "ROUGE-L"


def test_rouge_values_worked_out_by_hand():
    """ref: the cat sat on the mat; pred: the cat lay on the mat.  Unigrams: 5 of 6 on each side -> 83.33;
    bigrams: the cat, on the, the mat = 3 of 5 -> 60.0; LCS the cat on the mat = 5 of 6 -> 83.33.  A summary
    is scored against its own reference, not against itself: an unrelated one scores 0."""
    s = rouge_per_example(["the cat lay on the mat", "dogs bark loudly"], ["the cat sat on the mat"] * 2)
    assert s["rouge1"][0] == pytest.approx(500 / 6)
    assert s["rouge2"][0] == pytest.approx(60.0)
    assert s["rougeL"][0] == pytest.approx(500 / 6)
    assert s["rougeLsum"][0] == pytest.approx(500 / 6)
    assert s["rouge1"][1] == 0.0 and s["rougeLsum"][1] == 0.0
    assert rouge_means(s)["rouge2"] == pytest.approx(30.0)
    # the stemmer: "arrested" and "arrests" both stem to "arrest"
    assert rouge_per_example(["police arrested men"], ["police arrests men"])["rouge1"][0] == pytest.approx(100.0)


def test_summary_level_rouge_reads_sentences_split_by_the_splitter():
    """A generated summary on one line is split into sentences before ROUGE-Lsum, so its sentence order
    counts no more than the reference's."""
    one_line = "School closes early today. Floods hit town. Police arrest man."
    assert rouge_per_example([one_line], [REFERENCE])["rougeLsum"][0] == pytest.approx(100.0)


@pytest.mark.parametrize("text,expected", [
    ("The U.S. Senate voted on Tuesday. Mr. Smith said it was fine. J.K. Rowling agreed.",
     ["The U.S. Senate voted on Tuesday.", "Mr. Smith said it was fine.", "J.K. Rowling agreed."]),
    ('He said: "It is over." Then he left.', ['He said: "It is over."', "Then he left."]),
    ("The rate rose 3.5 percent to 4.2 percent. Shares fell.", ["The rate rose 3.5 percent to 4.2 percent.",
                                                               "Shares fell."]),
    ("Dr. Jones, of St. Mary's hospital, disagreed. It was 5 p.m. when police came.",
     ["Dr. Jones, of St. Mary's hospital, disagreed.", "It was 5 p.m. when police came."]),
    ("First line without a stop\nSecond line.", ["First line without a stop", "Second line."]),
])
def test_sentence_splitter_on_abbreviations_quotes_decimals_and_lines(text, expected):
    assert split_sentences(text) == expected


DAILY_MAIL = ("By . Daily Mail Reporter . PUBLISHED: . 14:11 EST, 25 October 2013 . | . UPDATED: . 15:36 EST, "
              "25 October 2013 . The bishop of Limburg was suspended on Wednesday. He spent 31 million euros on his "
              "home. Mr. Tebartz-van Elst met the Pope in Rome. The Vatican confirmed it.")


@pytest.mark.parametrize("article,first", [
    (DAILY_MAIL, "The bishop of Limburg was suspended on Wednesday."),
    ("By . Mark Duell . Last updated at 10:21 AM on 12th October 2011 . A man was arrested. He was freed. It "
     "rained. Done.", "A man was arrested."),
    ("PUBLISHED: . 10:11 EST, 4 July 2012 . | . UPDATED: . 10:43 EST, 4 July 2012 . The U.S. Army said so. Two. "
     "Three. Four.", "The U.S. Army said so."),
    ("By . Sam Greenhill and Rebecca Camber . In London . A fact here. Two. Three. Four.", "A fact here."),
    ("By the time police arrived, the flag was gone. It was stolen. Nobody saw it. Four.",
     "By the time police arrived, the flag was gone."),
])
def test_lead3_skips_daily_mail_bylines(article, first):
    lead = lead3(article).split("\n")
    assert len(lead) == 3 and lead[0] == first
    assert not any(s.startswith(("By .", "PUBLISHED", "UPDATED", "|")) for s in lead)


def test_lead3_of_the_daily_mail_article():
    assert lead3(DAILY_MAIL) == ("The bishop of Limburg was suspended on Wednesday.\nHe spent 31 million euros on "
                                 "his home.\nMr. Tebartz-van Elst met the Pope in Rome.")
    assert strip_byline("No byline here. At all.") == "No byline here. At all."


def test_first_sentences_keeps_the_papers_three():
    assert first_sentences("One. Two. Three. Four and five", 3) == "One.\nTwo.\nThree."


def test_zero_shot_follows_the_gpt2_paper_unless_told_otherwise():
    cfg = load_config("assignment", None, [("method.name", "zero-shot")])
    paper = build_method(cfg).decoding()
    assert (paper.do_sample, paper.top_k, paper.max_new_tokens, paper.max_sentences, paper.num_beams) == \
        (True, 2, 100, 3, 1)
    assert "top-k sampling (k = 2" in describe_decoding(paper) and "first 3 generated sentences" in \
        describe_decoding(paper)
    greedy = build_method(load_config("assignment", None, [("method.name", "zero-shot"),
                                                           ("method.zero_shot.protocol", "decoding")])).decoding()
    assert greedy == cfg.eval.decoding
    # the assignment preset decodes every trained method as fairseq's BART CNN/DailyMail setting
    lora = build_method(load_config("assignment", None, [("method.name", "lora")])).decoding()
    assert (lora.num_beams, lora.length_penalty, lora.min_new_tokens, lora.max_new_tokens,
            lora.no_repeat_ngram_size) == (4, 2.0, 55, 140, 3)


def test_top_k_sampling_is_seeded_per_article_and_keeps_the_top_k():
    """Each article's tokens come from its own generator (seed + its tokens): the same whatever batch it is
    in; with k = 1 sampling is greedy; every sampled token is among the row's top 2."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500, initializer_range=0.3,
                                       eos_token_id=499, bos_token_id=499)).eval()
    m = build_method(load_config(None, None, [("method.name", "zero-shot")]))
    m.prepare_model(model)
    prompts = [torch.randint(0, 499, (n,)) for n in (7, 5, 9)]
    dec = dataclasses.replace(GPT2_PAPER_DECODING, max_new_tokens=15, seed=3)
    seeds = [prompt_seed(p.tolist(), 3) for p in prompts]
    together = decode_ids(model, m, prompts, dec, 499, 0, seeds)
    alone = [decode_ids(model, m, [p], dec, 499, 0, [s])[0] for p, s in zip(prompts, seeds)]
    assert together == alone
    other = decode_ids(model, m, prompts, dataclasses.replace(dec, seed=4), 499, 0,
                       [prompt_seed(p.tolist(), 4) for p in prompts])
    assert other != together  # the seed matters
    greedy = decode_ids(model, m, prompts, DecodingConfig(max_new_tokens=15, no_repeat_ngram_size=0), 499, 0)
    k1 = decode_ids(model, m, prompts, dataclasses.replace(dec, top_k=1), 499, 0, seeds)
    assert k1 == greedy
    with torch.no_grad():  # every sampled token is one of the two most likely after its prefix
        for p, row in zip(prompts, together):
            for j, tok in enumerate(row):
                logits = model(torch.cat([p, torch.tensor(row[:j], dtype=torch.long)])[None]).logits[0, -1]
                assert tok in torch.topk(logits, 2).indices.tolist()


def test_a_sentence_cut_summary_counts_the_tokens_it_keeps(tokenizer):
    """With max_sentences the summary's length is that of the kept sentences (what ROUGE scores), while
    'ran to the limit' still describes the generation."""
    from peftsum.evaluate.generate import finish

    ids = tokenizer("One fact. Two facts. Three facts. Four facts and more")["input_ids"]
    dec = dataclasses.replace(GPT2_PAPER_DECODING, max_new_tokens=len(ids))
    s = finish(tokenizer, ids, dec)
    assert s.text == "One fact.\nTwo facts.\nThree facts."
    assert s.tokens == len(tokenizer(s.text)["input_ids"]) < len(ids) and s.at_limit
    plain = finish(tokenizer, ids[:4], DecodingConfig(max_new_tokens=10))
    assert plain == ("One fact. Two", 4, False)
