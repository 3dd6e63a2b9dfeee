"""In-context language-model baselines: `lm-base` (the question alone), `lm-steered` (a description of
the group before the question, in OpinionQA's `portray`, `bio` or `qa` style, Santurkar et al. 2023;
on preference tasks the user's earlier choices) and `few-shot` (the group's K context items with its
answers, then the question; GPO paper).

Every prompt ends in `Answer:`; the option probabilities are read from the next-token logits of the
answer letters (`gpo_bench.lm`). On preference tasks the model judges `Response A` against
`Response B`, once in each order, and the two readings are averaged. A prompt with context items that
does not fit the model drops context items, never the question; `report()` gives, per K and group,
how many context items the prompts held (`context_fitted`, the fewest over the group's targets), how
many prompts lost items (`truncated_prompts`) and the prediction cache's counts (`prediction_cache`),
which the runner writes to result.json (`predict`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..cards import Limit
from ..data import Item
from ..errors import unknown_name
from ..lm import LETTERS, CausalLM, FittedPrompt
from ..protocol import Episode
from ..registry import METHODS
from .base import Method, Setup

ANSWER = "Answer:"
STYLES = ("portray", "bio", "qa")
COUNTRY_TASKS = ("globalopinionqa",)  # tasks whose groups are countries
FEW_SHOT_HEADER = (
    "Here are survey questions, each with the answer most common in a group of people and the share of the group "
    "that chose each option. Answer the last question as the group would.\n\n"
)
JUDGE_FEW_SHOT_HEADER = (
    "Here are conversations in which a user chose between two responses, each with the user's choice. "
    "Answer the last one as this user would.\n\n"
)
JUDGE_HEADER = "Here is a conversation and two possible next responses. Which response does the user prefer?\n"
HISTORY_HEADER = "Here are conversations in which this user chose between two responses:\n\n"


def answer_shares(target: np.ndarray) -> str:
    """The group's most common answer where the question's own answer will go, then all its shares:
    `Answer: B (group: A 31%, B 52%, C 17%)`. (Shares alone after `Answer` make a small model answer
    with their first letter: on OpinionQA, SmolLM2 put 0.57 on `A` against the groups' 0.22.)"""
    shares = ", ".join(f"{LETTERS[i]} {100 * p:.0f}%" for i, p in enumerate(target))
    return f"{ANSWER} {LETTERS[int(np.argmax(target))]} (group: {shares})\n\n"


@dataclass(frozen=True)
class Attribute:
    """How to describe a group of one demographic attribute: the noun for `bio`, the survey question
    and its options for `qa`, a first-person statement for `bio` and a clause for `portray`
    (`{}` is the group's value, or its phrase where the bare value does not read well)."""

    noun: str
    question: str
    options: tuple[str, ...]
    statement: str
    portrayal: str
    phrases: dict[str, str] = field(default_factory=dict)

    def phrase(self, value: str) -> str:
        return self.phrases.get(value, value)


# OpinionQA's attributes (Pew ATP), phrased after the steering prompts of Santurkar et al. 2023.
ATTRIBUTES = {
    "CREGION": Attribute(
        "geographic region",
        "Which part of the United States do you currently live in?",
        ("Northeast", "Midwest", "South", "West"),
        "I currently live in the {} of the United States.",
        "you lived in the {} of the United States",
    ),
    "AGE": Attribute(
        "age",
        "How old are you?",
        ("18-29", "30-49", "50-64", "65+"),
        "I am {} years old.",
        "you were {} years old",
        {"65+": "65 or more"},
    ),
    "SEX": Attribute(
        "gender",
        "What is your sex?",
        ("Male", "Female"),
        "I am {}.",
        "you were {}",
        {"Male": "male", "Female": "female"},
    ),
    "EDUCATION": Attribute(
        "education",
        "What is the highest level of schooling or degree that you have completed?",
        (
            "Less than high school",
            "High school graduate",
            "Some college, no degree",
            "Associate's degree",
            "College graduate/some postgrad",
            "Postgraduate",
        ),
        "The highest level of schooling I have completed is {}.",
        "the highest level of schooling you had completed was {}",
        {
            "Less than high school": "less than high school",
            "High school graduate": "high school",
            "Some college, no degree": "some college, without a degree",
            "Associate's degree": "an associate's degree",
            "College graduate/some postgrad": "a college degree or some postgraduate study",
            "Postgraduate": "a postgraduate degree",
        },
    ),
    "RELIG": Attribute(
        "religion",
        "What is your present religion, if any?",
        (
            "Protestant",
            "Roman Catholic",
            "Mormon",
            "Orthodox",
            "Jewish",
            "Muslim",
            "Buddhist",
            "Hindu",
            "Atheist",
            "Agnostic",
            "Other",
            "Nothing in particular",
        ),
        "In terms of religion, I am {}.",
        "in terms of religion, you were {}",
        {
            "Atheist": "an atheist",
            "Agnostic": "an agnostic",
            "Mormon": "a Mormon",
            "Nothing in particular": "nothing in particular",
        },
    ),
    "POLPARTY": Attribute(
        "political affiliation",
        "In politics today, do you consider yourself a",
        ("Republican", "Democrat", "Independent", "Something else"),
        "In politics today, I consider myself a {}.",
        "in politics today, you considered yourself a {}",
        {"Independent": "an Independent", "Something else": "something else"},
    ),
    "INCOME": Attribute(
        "income",
        "Last year, what was your total family income from all sources, before taxes?",
        ("Less than $30,000", "$30,000-$50,000", "$50,000-$75,000", "$75,000-$100,000", "$100,000 or more"),
        "Last year, my total family income from all sources, before taxes, was {}.",
        "last year, your total family income from all sources, before taxes, was {}",
        {"Less than $30,000": "less than $30,000"},
    ),
    "POLIDEOLOGY": Attribute(
        "political ideology",
        "In general, would you describe your political views as",
        ("Very conservative", "Conservative", "Moderate", "Liberal", "Very liberal"),
        "In general, I would describe my political views as {}.",
        "in general, you would describe your political views as {}",
        {v: v.lower() for v in ("Very conservative", "Conservative", "Moderate", "Liberal", "Very liberal")},
    ),
    "RACE": Attribute(
        "race or ethnicity",
        "What is your race or ethnicity?",
        ("White", "Black", "Asian", "Hispanic", "Other"),
        "I am {}.",
        "you were {}",
    ),
}
COUNTRY = Attribute("country", "Which country are you from?", (), "I am from {}.", "you are from {}")
GROUP = Attribute(
    "group", "Which group of people do you belong to?", (), "I belong to the group {}.", "you belonged to the group {}"
)


def group_attribute(task_name: str, group: str) -> tuple[Attribute, str]:
    """The attribute a group id names, and its value: `POLPARTY_Democrat` → POLPARTY, `Democrat`;
    a GlobalOpinionQA country (`India (Current national sample)` → `India`); else the group itself."""
    attribute, sep, value = group.partition("_")
    if sep and attribute in ATTRIBUTES:
        return ATTRIBUTES[attribute], value
    if task_name in COUNTRY_TASKS:
        return COUNTRY, re.sub(r"\s*\(.*\)$", "", group)
    return GROUP, group


def steering_text(style: str, task_name: str, group: str) -> str:
    """The group description put before the question, in one of OpinionQA's styles."""
    attribute, value = group_attribute(task_name, group)
    phrase = attribute.phrase(value)
    if style == "portray":
        return f"Answer the following question as if {attribute.portrayal.format(phrase)}.\n\n"
    if style == "bio":
        return (
            f"Below you will be asked to provide a short description of your {attribute.noun} and then answer "
            f"some questions.\nDescription: {attribute.statement.format(phrase)}\n\n"
        )
    if not attribute.options:  # a question without fixed options: the answer is the value itself
        return f"Question: {attribute.question}\n{ANSWER} {value}\n\n"
    options = attribute.options if value in attribute.options else (*attribute.options, value)
    lettered = "".join(f"{LETTERS[i]}. {o}\n" for i, o in enumerate(options))
    return f"Question: {attribute.question}\n{lettered}{ANSWER} {LETTERS[options.index(value)]}\n\n"


Order = tuple[int, ...]  # the candidates of an item in the order a prompt shows them


def history_text(blocks: list[str]) -> str:
    """A user's earlier choices (the steering of `lm-steered` on preference tasks)."""
    return HISTORY_HEADER + "".join(blocks) + "Now judge for this user.\n\n" if blocks else ""


class LMMethod(Method):
    """Shared by every language-model method: the loaded model, prompts, and the recorded facts.

    Tasks with lettered options (OpinionQA, GlobalOpinionQA) show an item as `Question: …` with
    lettered options. Preference tasks (the personalized protocols) show it as a judge question:
    the conversation and `Response A` / `Response B`, asked in both orders and the two readings
    averaged (the probability of a response is the mean of its probability as A and as B)."""

    # the keys every LM method card shares (`gpo_bench.lm.CausalLM` reads them)
    SETTINGS = {
        "batch_tokens": Limit(int, 1),
        "chat_template": Limit(bool),
        "dtype": Limit(str, choices=("auto", "float32", "bfloat16", "float16")),
        "load_8bit": Limit(bool),
        "max_length": Limit(int, 1, nullable=True),
        "model": Limit(str),
    }

    def __init__(self, settings: dict, setup: Setup) -> None:
        super().__init__(settings, setup)
        self.lm = CausalLM(settings, setup.device, setup.cache_dir)
        self.judge = setup.split.personalized
        self.facts: dict = {"model": settings["model"], "load_s": round(self.lm.loaded.load_s, 3)}
        self.prediction_facts: dict = {}

    def fit(self) -> dict:
        return self.facts

    def report(self) -> dict:
        return {**self.prediction_facts, "prediction_cache": dict(self.lm.cache_stats)}

    def item(self, item_id: str) -> Item:
        return self.setup.task.items[item_id]

    def orders(self, item_id: str) -> list[Order]:
        """The candidate orders an item is asked in: both for a judged pair, else the item's own."""
        identity = tuple(range(self.n_candidates(item_id)))
        return [identity, identity[::-1]] if self.judge else [identity]

    def block(self, item_id: str, order: Order | None = None) -> str:
        """The item as a prompt shows it, candidates in `order` (default: the item's own)."""
        item = self.item(item_id)
        shown = [item.candidates[c] for c in (order or range(len(item.candidates)))]
        if self.judge:
            responses = "".join(f"Response {LETTERS[j]}: {c}\n" for j, c in enumerate(shown))
            return f"{JUDGE_HEADER}Conversation: {item.prompt}\n{responses}"
        options = "".join(f"{LETTERS[j]}. {c}\n" for j, c in enumerate(shown))
        return f"Question: {item.prompt}\n{options}"

    def answered(self, item_id: str, target: np.ndarray) -> str:
        """A context item with the group's answer: the shares of a survey group, the choice of a user."""
        if self.judge:
            return self.block(item_id) + f"{ANSWER} {LETTERS[int(np.argmax(target))]}\n\n"
        return self.block(item_id) + answer_shares(target)

    def chosen_block(self, item_id: str, target: np.ndarray) -> str:
        """A user's earlier comparison as a statement of what they preferred."""
        item = self.item(item_id)
        chosen = int(np.argmax(target))
        return (
            f"Conversation: {item.prompt}\nPreferred response: {item.candidates[chosen]}\n"
            f"Other response: {item.candidates[1 - chosen]}\n\n"
        )

    @staticmethod
    def where(episode: Episode, item_id: str) -> str:
        """An episode's target item as errors name it."""
        return f"group {episode.group!r} item {item_id!r}"

    def prompt(self, prefix: str, item_id: str, order: Order | None, what: str) -> FittedPrompt:
        """`prefix`, the item and `Answer:` (no context items to drop); `what` names it in errors."""
        text = prefix + self.block(item_id, order) + ANSWER
        return self.lm.fit_prompt(lambda _: text, 0, what)

    def context_prompt(
        self, blocks: list[str], frame: Callable[[list[str]], str], item_id: str, order: Order | None, what: str
    ) -> FittedPrompt:
        """`frame(blocks)`, then the item and `Answer:`; context blocks are dropped from the front (the
        farthest from the question) until the prompt fits."""
        question = self.block(item_id, order) + ANSWER
        return self.lm.fit_prompt(lambda n: frame(blocks[len(blocks) - n :]) + question, len(blocks), what)

    def few_shot_prompt(self, group: str, blocks: list[str], item_id: str, order: Order | None) -> FittedPrompt:
        """The group's context items with its answers (`blocks`, from `answered`), then the question."""
        header = JUDGE_FEW_SHOT_HEADER if self.judge else FEW_SHOT_HEADER
        return self.context_prompt(
            blocks, lambda kept: header + "".join(kept), item_id, order, f"group {group!r} item {item_id!r}"
        )

    def score(
        self, episode: Episode, build: Callable[[str, Order], FittedPrompt], uses_context: bool = False
    ) -> list[np.ndarray]:
        """The episode's target distributions: every target asked in each of its orders, each reading
        mapped back to the item's own candidate order and averaged. With `uses_context`, records how
        many of the episode's context items the prompts held."""
        orders = {i: self.orders(i) for i in episode.targets}
        asked = [(i, order) for i in episode.targets for order in orders[i]]
        fitted = [build(i, order) for i, order in asked]
        if uses_context:
            self.record_fit(episode, fitted)
        readings = self.lm.option_probs([f.ids for f in fitted], [len(order) for _, order in asked])
        out = {i: np.zeros(self.n_candidates(i)) for i in episode.targets}
        for (i, order), probs in zip(asked, readings, strict=True):
            out[i][list(order)] += probs / len(orders[i])
        return [out[i] for i in episode.targets]

    def record_fit(self, episode: Episode, fitted: list[FittedPrompt]) -> None:
        cell = self.prediction_facts.setdefault("context_fitted", {}).setdefault(str(episode.shots), {})
        cell[episode.group] = min(f.context_used for f in fitted)
        truncated = sum(f.context_used < len(episode.context) for f in fitted)
        self.prediction_facts["truncated_prompts"] = self.prediction_facts.get("truncated_prompts", 0) + truncated


@METHODS.register("lm-base", "causal LM reading the question alone (no group information)")
class LMBase(LMMethod):
    same_for_every_seed = True  # the prompt is the question alone

    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        return self.score(episode, lambda i, order: self.prompt("", i, order, self.where(episode, i)))


@METHODS.register("lm-steered", "causal LM told who the group is (portray/bio/qa), or shown a user's earlier choices")
class LMSteered(LMMethod):
    SETTINGS = {**LMMethod.SETTINGS, "style": Limit(str, choices=STYLES)}
    same_for_every_seed = True  # on survey groups: the group's name and the question

    def __init__(self, settings: dict, setup: Setup) -> None:
        if settings["style"] not in STYLES:
            raise unknown_name("steering style", settings["style"], list(STYLES))
        super().__init__(settings, setup)

    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        if self.judge:  # a user is described by their preference history: their K context comparisons
            blocks = [self.chosen_block(i, t) for i, t in zip(episode.context, episode.context_targets, strict=True)]
            return self.score(
                episode,
                lambda i, order: self.context_prompt(blocks, history_text, i, order, self.where(episode, i)),
                uses_context=True,
            )
        prefix = steering_text(self.settings["style"], self.setup.task.name, episode.group)
        return self.score(episode, lambda i, order: self.prompt(prefix, i, order, self.where(episode, i)))


@METHODS.register("few-shot", "causal LM given the group's K context items with its answers")
class FewShot(LMMethod):
    def predict_episode(self, episode: Episode) -> list[np.ndarray]:
        blocks = [self.answered(i, t) for i, t in zip(episode.context, episode.context_targets, strict=True)]
        return self.score(
            episode, lambda i, order: self.few_shot_prompt(episode.group, blocks, i, order), uses_context=True
        )
