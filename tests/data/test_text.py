"""Text rules (data/text.py): the sentence splitter on the cases the field's data has, Lead-3 without Daily Mail
bylines, the first sentences of a generation."""

from __future__ import annotations

import pytest

from peftsum.data.text import first_sentences, lead3, split_sentences, strip_byline

DAILY_MAIL = ("By . Daily Mail Reporter . PUBLISHED: . 14:11 EST, 25 October 2013 . | . UPDATED: . 15:36 EST, "
              "25 October 2013 . The bishop of Limburg was suspended on Wednesday. He spent 31 million euros on his "
              "home. Mr. Tebartz-van Elst met the Pope in Rome. The Vatican confirmed it.")


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
