"""Synthetic long retrieval prompts: many short made-up documents, one holds the answer.

Every document describes one invented facility (a unique name) with a few plausible
facts; many distractors carry an access code of their own, so a compressor that
keeps "some access code" but not *the* one asked about is caught. The needle's code
and its facility name occur nowhere else in the prompt. Everything is a pure
function of (seed, target size, needle position): the same arguments give the same
bytes on every machine.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from proxy.core.tokens import count_tokens

__all__ = ["RetrievalCase", "make_retrieval_case", "make_retrieval_cases"]

INSTRUCTION = (
    "Answer the question using only the facility records below. "
    "Reply with the exact value asked for."
)

_NAMES = (
    "Ostrander Halvorsen Brightwater Kestrel Marlow Penhallow Quillfeather Ravensworth "
    "Sablewood Thistledown Umberfield Vantrell Wexcombe Yarrowby Ashgrove Bellmont Corrington "
    "Dunmere Elderbrook Fairhaven Greyhollow Hartwell Ivybridge Juniper Kingsmere Larchmont "
    "Millbrook Northcott Oakhurst Pembroke Quarrington Redcliffe Stonebridge Tamsworth "
    "Underhill Valemont Westbury Yelverton Alderney Blackthorn Coldharbour Davenport Easterly "
    "Foxley Glenrothes Holloway Inverleigh Jessamy Kilbride Lockwood Mardale Netherby "
    "Orchardleigh Pinewood Rookley Saltmarsh Trelawney Wychwood Aldbury Brackenridge"
).split()
_KINDS = (
    "archive|depot|clinic|observatory|warehouse|library|laboratory|boathouse|granary|foundry|"
    "workshop|conservatory|print shop|signal station|seed bank|tannery|pumping station|"
    "repair yard|records office|ferry terminal"
).split("|")
_CITIES = (
    "Lisbon Tallinn Porto Ghent Bergen Trieste Cork Lyon Gdansk Utrecht Bilbao Turku "
    "Valletta Aarhus Split Basel Graz Leeds Bologna Krakow"
).split()
_PEOPLE = (
    "Amara Quist|Bruno Feld|Celia Vance|Dmitri Ohlsson|Esme Calder|Farid Nasser|Greta Moll|"
    "Hugo Brandt|Ines Varela|Jonas Pike|Katya Lorne|Luca Benedetti|Mira Holt|Nils Aberg|"
    "Odile Marchand|Pavel Roth|Rosa Delgado|Soren Kask|Tilda Reyes|Viktor Hale"
).split("|")


@dataclass(frozen=True)
class RetrievalCase:
    instruction: str
    documents: tuple[str, ...]
    question: str
    answer: str  # the key value, e.g. "4812"
    entity: str  # the needle's distinctive name word, e.g. "Ostrander"
    needle_index: int

    def full_prompt(self) -> str:
        return "\n\n".join([self.instruction, *self.documents, self.question])


def _facility(rng: random.Random, used: set[str]) -> tuple[str, str]:
    while True:
        word = rng.choice(_NAMES)
        kind = rng.choice(_KINDS)
        name = f"{word} {kind}"
        if word not in used:
            used.add(word)
            return word, name


def _fresh_code(rng: random.Random, used: set[int]) -> int:
    while True:
        code = rng.randrange(1000, 10000)
        if code not in used:
            used.add(code)
            return code


def _facts(rng: random.Random, name: str, codes: set[int]) -> list[str]:
    city = rng.choice(_CITIES)
    person = rng.choice(_PEOPLE)
    side = rng.choice(("east", "west", "north", "south"))
    intro = (
        f"The {name} stands on the {side} side of {city} and opened in {rng.randrange(1890, 2020)}."
    )
    pool = [
        f"It is run by {person}, who oversees a staff of {rng.randrange(3, 90)} people.",
        f"Visitors are received between {rng.randrange(7, 11)} am and {rng.randrange(3, 8)} pm "
        f"on weekdays.",
        f"Its storage hall holds about {rng.randrange(2, 60) * 100} crates and "
        f"{rng.randrange(2, 40)} vehicles.",
        f"The building was renovated in {rng.randrange(1950, 2024)} "
        "after a storm damaged the roof.",
        f"Deliveries arrive by rail from {rng.choice(_CITIES)} every {rng.choice(_DAYS)}.",
        f"The internal phone extension of the front desk is {rng.randrange(100, 999)}.",
    ]
    rng.shuffle(pool)
    facts = pool[: rng.randrange(1, 4)]
    if rng.random() < 0.5:
        facts.insert(
            rng.randrange(len(facts) + 1), _code_sentence(rng, name, _fresh_code(rng, codes))
        )
    return [intro, *facts]


_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")


def _code_sentence(rng: random.Random, name: str, code: int) -> str:
    return rng.choice(
        (
            f"The access code for the {name} is {code}.",
            f"Staff enter the {name} with access code {code}.",
            f"The {name} uses the door access code {code}.",
        )
    )


def make_retrieval_case(seed: int, target_tokens: int, needle_fraction: float) -> RetrievalCase:
    """A prompt of about ``target_tokens`` cl100k tokens with the needle at ``needle_fraction``."""
    rng = random.Random(f"linguagate-retrieval:{seed}:{target_tokens}")
    used_names: set[str] = set()
    codes: set[int] = set()
    entity, needle_name = _facility(rng, used_names)
    # Above every year, crate count and extension a distractor can mention.
    answer = rng.randrange(6001, 10000)
    codes.add(answer)
    needle_facts = [f for f in _facts(rng, needle_name, codes) if "access code" not in f]
    # Never first: the intro sentence names the facility, the code comes later in the record.
    needle_facts.insert(
        rng.randrange(1, len(needle_facts) + 1), _code_sentence(rng, needle_name, answer)
    )
    needle = " ".join(needle_facts)

    question = f"Question: What is the access code for the {needle_name}?"
    budget = (
        target_tokens - count_tokens(INSTRUCTION) - count_tokens(question) - count_tokens(needle)
    )
    distractors: list[str] = []
    spent = 0
    while spent < budget:
        if len(used_names) >= len(_NAMES):
            used_names = {entity}  # names repeat beyond ~60 documents; the needle's never does
        word, name = _facility(rng, used_names)
        doc = " ".join(_facts(rng, name, codes))
        distractors.append(doc)
        spent += count_tokens(doc) + 1  # +1: the blank line between documents
    if any(re.search(rf"\b{answer}\b", d) for d in distractors):
        raise AssertionError("needle value leaked into a distractor")  # cannot happen: see above
    position = min(len(distractors), max(0, round(needle_fraction * len(distractors))))
    documents = (*distractors[:position], needle, *distractors[position:])
    return RetrievalCase(
        instruction=INSTRUCTION,
        documents=tuple(documents),
        question=question,
        answer=str(answer),
        entity=entity,
        needle_index=position,
    )


def make_retrieval_cases(target_tokens: int, count: int, seed: int = 0) -> list[RetrievalCase]:
    """``count`` prompts with the needle spread evenly: at 1/6, 1/2, 5/6 of the prompt for 3."""
    return [make_retrieval_case(seed + i, target_tokens, (i + 0.5) / count) for i in range(count)]
