"""Text rules (data/text.py): the sentence splitter on the cases the field's data has, Lead-3 without Daily Mail
bylines, the first sentences of a generation."""

from __future__ import annotations

import pytest

from peftsum.data.text import first_sentences, has_byline, lead3, split_sentences, strip_byline

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


BODY = "A pensioner who was found dead was named. He was 81. Police came. Four."


@pytest.mark.parametrize("header", [
    "By . Sam Webb . Follow @@SamWebb . ",  # the "Follow @@name" line
    "By . Emma Glanfield . Follow @@EmmaGlanfield . PUBLISHED: . 05:05 EST, 18 December 2013 . | . UPDATED: . "
    "09:40 EST, 18 December 2013 . ",
    "By . Alex Greig . and Lydia Warren . and Snejana Farberov . PUBLISHED: . 11:02 EST, 3 March 2014 . ",  # 3 authors
    "By . Daily Mail Reporter and Associated Press Reporter for MailOnline and The Mail on Sunday . ",  # > 80 chars
    "By . J.K. Smith . ",  # an author with initials
    "Created: . 10:41 EST, 2 May 2014 . ",
    "By . Mark Duell . Last updated at 10:21 AM on 12th October 2011 . ",
    "By . Sam Greenhill and Rebecca Camber . In London . ",
])
def test_lead3_drops_the_whole_daily_mail_header_family(header):
    """Before: each of the first five headers left pieces of itself inside Lead-3 (the old rules knew fixed shapes:
    an author line under 80 characters, PUBLISHED / UPDATED / Last updated)."""
    assert strip_byline(header + BODY) == BODY and has_byline(header + BODY)
    assert lead3(header + BODY).split("\n") == ["A pensioner who was found dead was named.", "He was 81.",
                                                "Police came."]


@pytest.mark.parametrize("article", [
    "(CNN) -- The storm hit the coast on Monday. Two died. Roads closed. Four.",
    "(CNN)The storm hit the coast on Monday. Two died. Roads closed. Four.",
    "LONDON, England (Reuters) -- The storm hit the coast on Monday. Two died. Roads closed. Four.",
    "By the time police arrived, the flag was gone. It was stolen. Nobody saw it. Four.",
    "By . Sam Webb . On 18 December 2013 a man was seen in the park . Two. Three.",  # a dated first sentence stays
    "Updated figures show that prices rose again in March. Two died. Roads closed. Four.",  # a word, not a label
    "Created in 1990, the charity has helped thousands. Two died. Roads closed. Four.",
])
def test_articles_without_a_header_and_first_sentences_are_kept(article):
    stripped = strip_byline(article)
    assert stripped.endswith("Two. Three.") or stripped.endswith("Four.")
    if not article.startswith("By . "):
        assert stripped == article and not has_byline(article)
    else:
        assert stripped.startswith("On 18 December 2013 a man")


def test_lead3_of_the_daily_mail_article():
    assert lead3(DAILY_MAIL) == ("The bishop of Limburg was suspended on Wednesday.\nHe spent 31 million euros on "
                                 "his home.\nMr. Tebartz-van Elst met the Pope in Rome.")
    assert strip_byline("No byline here. At all.") == "No byline here. At all."


def test_first_sentences_keeps_the_papers_three():
    assert first_sentences("One. Two. Three. Four and five", 3) == "One.\nTwo.\nThree."
