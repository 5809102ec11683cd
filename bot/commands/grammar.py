"""Text → (command, arguments): one grammar for Teams and the CLI.

Each command declares its usage line in the SPEC's notation, and that line *is* the grammar:

    allocate N PRODUCT to SUBSCRIPTION
    product add NAME --kind K [--country CC] --capacity N [--sku REF]
    audit [--actor X] [--since 7d] [--limit N]
    pack create NAME LICENSE [LICENSE...]

- lower-case words are keywords (matched case-insensitively);
- UPPER-CASE words (or alternatives like `DAILY|WEEKLY|CRON`) take one token;
- `WORD...` takes all remaining tokens (at least one);
- `[ ... ]` is optional;
- `--opt VALUE` is an option with a value, `--flag` a flag; options may come in any order,
  anywhere after the verb. `[--a|--b]` alternatives are flags too.

Names with spaces are quoted ("Contoso Ltd"). A malformed command raises UsageError with what
is wrong; the dispatcher shows it with the usage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bot.domain.errors import did_you_mean

MAX_COMMAND_LENGTH = 4000


class UsageError(ValueError):
    def __init__(self, message: str, command: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.command = command


@dataclass(frozen=True)
class Slot:
    kind: str  # "keyword" | "value" | "rest" | "optional"
    word: str = ""
    items: tuple[Slot, ...] = ()


@dataclass(frozen=True)
class Pattern:
    verb: tuple[str, ...]
    slots: tuple[Slot, ...]
    value_options: frozenset[str]
    flag_options: frozenset[str]


_OPTION = re.compile(r"--[a-z][a-z0-9-]*")
_CLOSING_QUOTE = re.compile(r"(?<!\w)’|’(?!\w)")
# C0/C1 controls (not whitespace) and lone surrogates: never part of a name, and PostgreSQL
# cannot store a NUL or an unpaired surrogate in text at all.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def compile_usage(usage: str) -> Pattern:
    """Read a usage line into a Pattern."""
    # `UPN[,UPN...]` (a comma list) and `E164[-E164]` (a range) are single tokens.
    text = re.sub(r"\b([A-Z][A-Z0-9]*)\[[,-]\1(?:\.\.\.)?\]", r"\1", usage)
    text = text.replace("[", " [ ").replace("]", " ] ")
    words = text.split()
    verb: list[str] = []
    while words and re.fullmatch(r"[a-z][a-z0-9-]*", words[0]):
        verb.append(words.pop(0))
    value_options: set[str] = set()
    flag_options: set[str] = set()

    def parse(i: int, closing: bool) -> tuple[list[Slot], int]:
        slots: list[Slot] = []
        while i < len(words):
            w = words[i]
            if w == "[":
                inner, i = parse(i + 1, True)
                if inner:
                    slots.append(Slot("optional", items=tuple(inner)))
                continue
            if w == "]":
                if not closing:
                    raise ValueError(f"unbalanced ] in usage {usage!r}")
                return slots, i + 1
            if w.startswith("--"):
                names = [n for n in w.split("|") if _OPTION.fullmatch(n)]
                nxt = words[i + 1] if i + 1 < len(words) else ""
                takes_value = bool(nxt) and nxt not in {"[", "]"} and not nxt.startswith("--")
                if takes_value:
                    value_options.update(names)
                    i += 2
                else:
                    flag_options.update(names)
                    i += 1
                continue
            if w.endswith("..."):
                slots.append(Slot("rest", word=w[:-3]))
            elif re.fullmatch(r"[a-z][a-z0-9-]*", w):
                slots.append(Slot("keyword", word=w))
            else:
                slots.append(Slot("value", word=w))
            i += 1
        if closing:
            raise ValueError(f"unbalanced [ in usage {usage!r}")
        return slots, i

    slots, _ = parse(0, False)
    return Pattern(tuple(verb), tuple(slots), frozenset(value_options), frozenset(flag_options))


@dataclass
class Parsed:
    """Positional values by placeholder (a list for `WORD...`), options by name."""

    values: dict[str, str | list[str]] = field(default_factory=dict)
    options: dict[str, str | bool] = field(default_factory=dict)


def check_words(words: list[str]) -> None:
    """Words that came already split (the CLI): the same limits as typed text."""
    if sum(len(w) + 1 for w in words) > MAX_COMMAND_LENGTH:
        raise UsageError(f"The command is longer than {MAX_COMMAND_LENGTH} characters.")
    if any(_CONTROL.search(w) for w in words):
        raise UsageError(
            "The command contains control or invalid characters; type it without them."
        )


def tokenize(text: str) -> list[str]:
    """Split a typed command into words. A quote opens a quoted word only at the start of a
    word or right after `=` (`--name="Ada L"`); elsewhere (it's, O'Brien) it is a letter."""
    if len(text) > MAX_COMMAND_LENGTH:
        raise UsageError(
            f"The command is {len(text)} characters long; at most {MAX_COMMAND_LENGTH}."
        )
    if _CONTROL.search(text):
        raise UsageError(
            "The command contains control or invalid characters; type it without them."
        )
    # Teams and phones turn quotes into typographic ones; treat them as plain quotes.
    text = text.translate(str.maketrans("“”‘\u00a0", '""\' '))
    # Cards put word joiners (and phones non-breaking hyphens) inside names: pasted back, they
    # are the plain names.
    text = text.translate({0x2060: None, 0x2011: "-"})
    text = _CLOSING_QUOTE.sub("'", text)
    words: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        word: list[str] = []
        while i < n and not text[i].isspace():
            ch = text[i]
            if ch in "\"'" and (not word or word[-1] == "="):
                i = _quoted(text, i, word)
                continue
            word.append(ch)
            i += 1
        words.append("".join(word))
    return words


def _quoted(text: str, start: int, word: list[str]) -> int:
    """Read a quoted section into `word`; inside double quotes, \\" and \\\\ are escapes."""
    quote = text[start]
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == quote:
            return i + 1
        if ch == "\\" and quote == '"' and i + 1 < len(text) and text[i + 1] in '"\\':
            ch = text[i + 1]
            i += 1
        word.append(ch)
        i += 1
    raise UsageError(
        f"Could not read the command: a quote is not closed ({quote} at position {start + 1})."
    )


def match(pattern: Pattern, tokens: list[str], command: str) -> Parsed:
    """Match the tokens after the verb against a command's pattern."""
    parsed = Parsed()
    positional: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("--") and len(tok) > 2:
            name, eq, inline = tok.partition("=")
            name = name.lower()
            if name in pattern.flag_options:
                if eq:
                    raise UsageError(f"{name} takes no value.", command)
                parsed.options[name] = True
                i += 1
                continue
            if name in pattern.value_options:
                if eq:
                    value = inline
                elif i + 1 < len(tokens):
                    value = tokens[i + 1]
                    i += 1
                else:
                    raise UsageError(f"{name} needs a value.", command)
                if name in parsed.options:
                    raise UsageError(f"{name} is given twice.", command)
                parsed.options[name] = value
                i += 1
                continue
            known = sorted(pattern.value_options | pattern.flag_options)
            guesses = did_you_mean(name, known)
            hint = (
                " Did you mean " + " or ".join(f"`{g}`" for g in guesses) + "?" if guesses else ""
            )
            raise UsageError(f"Unknown option {name} for `{command}`.{hint}", command)
        positional.append(tok)
        i += 1

    rest = _match_slots(pattern.slots, positional, 0, parsed, command, required=True)
    if rest < len(positional):
        extra = " ".join(positional[rest:])
        raise UsageError(f"Unexpected {extra!r} at the end.", command)
    return parsed


def _match_slots(
    slots: tuple[Slot, ...],
    toks: list[str],
    i: int,
    parsed: Parsed,
    command: str,
    *,
    required: bool,
) -> int:
    for slot in slots:
        if slot.kind == "keyword":
            if i >= len(toks):
                raise UsageError(f"`{slot.word}` is missing.", command)
            if toks[i].lower() != slot.word:
                raise UsageError(f"Expected `{slot.word}`, found {toks[i]!r}.", command)
            i += 1
        elif slot.kind == "value":
            if i >= len(toks):
                raise UsageError(f"{slot.word} is missing.", command)
            parsed.values[slot.word] = toks[i]
            i += 1
        elif slot.kind == "rest":
            if i >= len(toks) and slot.word not in parsed.values:
                raise UsageError(f"{slot.word} is missing.", command)
            existing = parsed.values.get(slot.word)
            items = (
                list(existing)
                if isinstance(existing, list)
                else ([existing] if isinstance(existing, str) else [])
            )
            parsed.values[slot.word] = items + toks[i:]
            i = len(toks)
        elif slot.kind == "optional":
            if i >= len(toks):
                continue
            first = slot.items[0]
            if first.kind == "keyword" and toks[i].lower() != first.word:
                continue
            i = _match_slots(slot.items, toks, i, parsed, command, required=False)
    return i

