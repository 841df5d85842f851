"""A deterministic generator of synthetic news-style articles with highlight summaries.

Everything here is written by this project: names, places and templates are invented or generic,
no news text is copied.  Each article reports one event (who, what, where, when, how many), adds a
quote, background and filler sentences; its 2-4 highlights restate the key facts in other words,
so a summary is derivable from the article but is not a copy of one of its sentences.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

from ..utils import atomic_path

FIRST = ["Maria", "James", "Aisha", "Tomas", "Elena", "Kwame", "Priya", "Lukas", "Sofia", "Daniel",
         "Mei", "Omar", "Hannah", "Diego", "Ingrid", "Samuel", "Yuki", "Fatima", "Peter", "Lena"]
LAST = ["Alvarez", "Brennan", "Okafor", "Lindqvist", "Moreau", "Tanaka", "Kowalski", "Haddad",
        "Fischer", "Nakamura", "Osei", "Petrov", "Ramirez", "Sullivan", "Varga", "Whitfield"]
ROLES = ["mayor", "chief executive", "police spokesperson", "head coach", "lead researcher",
         "fire chief", "school principal", "health minister", "union leader", "festival director"]
PLACES = ["Northbridge", "Port Alder", "Kessington", "Valmont", "Redfield", "Lake Orrin",
          "Eastmoor", "San Caldera", "Briarwood", "Hollin Bay", "Marrowgate", "Teskova"]
ORGS = ["the city council", "Brightline Energy", "the regional hospital", "Northstar Rail",
        "the national weather service", "Greenway Foods", "the university", "Harbor Logistics",
        "the football club", "the transport authority", "Crescent Bank", "the museum trust"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]

EVENTS = [
    {"kind": "flood", "lead": "Heavy rain flooded {n} homes in {place} on {day}, forcing families to leave overnight.",
     "fact": "Emergency crews used boats to reach streets where the water rose above a metre.",
     "hl": ["Floods hit {n} homes in {place} after heavy rain on {day}.",
            "Families were moved out overnight as water rose above a metre.",
            "{person} said repairs could take until {month}."]},
    {"kind": "factory", "lead": "{org} announced on {day} that it will open a new factory in {place}, creating {n} jobs.",
     "fact": "The plant is expected to cost about {money} million dollars and to start production in {month}.",
     "hl": ["{org} will build a factory in {place} with {n} new jobs.",
            "The plant costs about {money} million dollars and opens in {month}.",
            "{person} called the deal good news for the region."]},
    {"kind": "match", "lead": "The {place} team won the regional final on {day}, beating its rivals by {small} goals in front of {n} fans.",
     "fact": "It was the club's first title in {years} years.",
     "hl": ["{place} won the regional final by {small} goals on {day}.",
            "The win ended a {years}-year wait for a title.",
            "{person} praised the players and the {n} supporters."]},
    {"kind": "study", "lead": "Researchers at {org} said on {day} that a study of {n} volunteers in {place} found that daily walking lowered blood pressure.",
     "fact": "The volunteers walked for at least {small}0 minutes a day over {years} months.",
     "hl": ["A study of {n} people in {place} links daily walks to lower blood pressure.",
            "Volunteers walked at least {small}0 minutes a day for {years} months.",
            "{person} said more work is needed before doctors change advice."]},
    {"kind": "fire", "lead": "A fire destroyed a warehouse owned by {org} in {place} early on {day}, and {small} firefighters were treated for smoke.",
     "fact": "Around {n} tonnes of stored goods were lost, according to early estimates.",
     "hl": ["Fire destroyed a {org} warehouse in {place} on {day}.",
            "{small} firefighters needed treatment and {n} tonnes of goods were lost.",
            "{person} said the cause is still under investigation."]},
    {"kind": "rail", "lead": "{org} said on {day} that a new rail line linking {place} to {place2} will open in {month}, cutting the journey to {small}0 minutes.",
     "fact": "The line took {years} years to build and will carry up to {n} passengers a day.",
     "hl": ["A rail line from {place} to {place2} opens in {month}.",
            "Trips will take {small}0 minutes and the line can carry {n} people a day.",
            "{person} said the project took {years} years."]},
    {"kind": "strike", "lead": "About {n} workers at {org} in {place} went on strike on {day} over pay and working hours.",
     "fact": "The union is asking for a rise of {small} percent and shorter weekend shifts.",
     "hl": ["{n} workers at {org} in {place} began a strike on {day}.",
            "They want a {small} percent pay rise and shorter weekend shifts.",
            "{person} said talks would resume in {month}."]},
    {"kind": "festival", "lead": "The {place} summer festival drew a record {n} visitors over the weekend, organisers said on {day}.",
     "fact": "This year's programme included {small}0 concerts and a night market along the river.",
     "hl": ["A record {n} people visited the {place} festival.",
            "The event had {small}0 concerts and a river night market.",
            "{person} hopes to grow the festival again by {month}."]},
]
QUOTES = [
    '"We have never seen anything like this," said {person}, the {role}.',
    '"This matters for every family in {place}," {person}, the {role}, told reporters.',
    '"We will keep working until the job is done," said {person}, {role} of {place}.',
    '"People deserve clear answers," the {role}, {person}, said in a statement.',
]
CONTEXT = [
    "{person}, the {role}, said repairs could take until {month}.",
    "{person}, the {role}, called the deal good news for the region.",
    "{person}, the {role}, praised the players and thanked the supporters.",
    "{person}, the {role}, said more work is needed before doctors change their advice.",
    "{person}, the {role}, said the cause of the fire is still under investigation.",
    "{person}, the {role}, noted that the project took longer than planned.",
    "{person}, the {role}, said talks with the company would resume in {month}.",
    "{person}, the {role}, said organisers hope to grow the festival again by {month}.",
]
FILLER = [
    "Local shops reported a busy week as news of the event spread.",
    "Officials said they would publish a full report later in the year.",
    "The area has a population of roughly {pop} people.",
    "Weather forecasters expect mild conditions for the rest of the week.",
    "Residents were invited to a public meeting at the town hall.",
    "Similar events took place in neighbouring districts last year.",
    "A spokesperson declined to comment on the financial details.",
    "Volunteers handed out water and food at the scene.",
    "The story drew wide attention on social media.",
    "Several roads in the centre were closed for part of the day.",
    "Analysts said it was too early to judge the long-term effects.",
    "Schools in the district remained open as usual.",
]


def _article(rng: random.Random) -> tuple[str, str]:
    event_index = rng.randrange(len(EVENTS))
    event = EVENTS[event_index]
    place, place2 = rng.sample(PLACES, 2)
    v = {
        "person": f"{rng.choice(FIRST)} {rng.choice(LAST)}", "role": rng.choice(ROLES),
        "place": place, "place2": place2, "org": rng.choice(ORGS), "day": rng.choice(DAYS),
        "month": rng.choice(MONTHS), "n": rng.choice([rng.randint(12, 95), rng.randint(100, 9000)]),
        "small": rng.randint(2, 9), "years": rng.randint(2, 40), "money": rng.randint(5, 900),
        "pop": f"{rng.randint(5, 400)},000",
    }
    sentences = [event["lead"], event["fact"], rng.choice(QUOTES), CONTEXT[event_index]]
    sentences += rng.sample(FILLER, rng.randint(2, 6))
    body = sentences[:2] + rng.sample(sentences[2:], len(sentences) - 2)
    paragraphs, i = [], 0
    while i < len(body):
        k = rng.randint(1, 3)
        paragraphs.append(" ".join(s.format(**v) for s in body[i:i + k]))
        i += k
    article = f"{v['place'].upper()} -- " + "\n\n".join(paragraphs)
    n_hl = rng.randint(2, 3) if rng.random() < 0.7 else 3
    highlights = "\n".join(h.format(**v) for h in event["hl"][:n_hl])
    return article, highlights.replace("{org}", v["org"])


def generate(n: int, seed: int) -> list[dict]:
    """``n`` examples with keys id, article, highlights; the same seed gives the same corpus."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        article, highlights = _article(rng)
        rows.append({"id": f"demo-{seed}-{i:06d}", "article": article, "highlights": highlights})
    return rows


DEFAULT_SIZES = {"train": 2000, "validation": 300, "test": 300}


def write_demo_corpus(out_dir: str | Path, sizes: dict[str, int] | None = None, seed: int = 1234) -> Path:
    """Write train.csv / validation.csv / test.csv (columns id, article, highlights)."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for offset, (split, n) in enumerate((sizes or DEFAULT_SIZES).items()):
        with atomic_path(out / f"{split}.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["id", "article", "highlights"])
            writer.writeheader()
            writer.writerows(generate(n, seed + 1000 * offset))
    return out
