"""Text for the wide corpus: what real documents print besides our domains' phrases.

The base model first learned English from a few dozen words, so it guessed at real ones
(`office` → `ofce`, `JOINT` → hanzi). Here English comes from wordfreq's frequency list (real
words, common ones common, in lower, Title and ALL-CAPS case), and lines hold what the
check sets showed it misreading: e-mail addresses and URLs, tax IDs and mixed letter/digit
codes full of confusables (0/O, 1/l/I, 5/S, rn/m), percentages and full-width punctuation
between Chinese and Latin runs. Every generator is a pure function of a `random.Random`.
"""
from __future__ import annotations

import bisect
import random
import string
from functools import cache

from fedocr.data import text

UPPER_DIGITS = string.ascii_uppercase + string.digits
CONFUSABLE = "0O1lI5S8B2Z6G9grnmcoe"
TLDS = ["com", "cn", "com.cn", "org", "net", "edu.cn", "gov.cn", "io", "co"]
CN_PUNCT_PAIRS = ["：", "，", "。", "；", "、", "（", "）", "“", "”", "《", "》", "！", "？"]
EN_PUNCT = [",", ".", ";", ":", "!", "?", " -", " (", ")", "'s", "\"", "/"]


@cache
def _english_vocabulary() -> tuple[list[str], list[float]]:
    """wordfreq's 30,000 most frequent English words as (words, cumulative sqrt-flattened
    frequencies); words with characters outside printable ASCII are left out."""
    from wordfreq import top_n_list, word_frequency  # lazily: only corpus generation needs it

    words = [w for w in top_n_list("en", 30_000) if w.isascii() and any(c.isalpha() for c in w)]
    cumulative, total = [], 0.0
    for word in words:
        total += word_frequency(word, "en") ** 0.5
        cumulative.append(total)
    return words, cumulative


def english_word(rng: random.Random) -> str:
    words, cumulative = _english_vocabulary()
    return words[bisect.bisect_left(cumulative, rng.random() * cumulative[-1])]


def cased(word: str, rng: random.Random, title: float = 0.2, upper: float = 0.12) -> str:
    pick = rng.random()
    if pick < upper:
        return word.upper()
    return word.capitalize() if pick < upper + title else word


def english_sentence(rng: random.Random) -> str:
    """Prose-like English: frequency-drawn words, a capital, commas and a closing mark."""
    style = rng.random()
    n = rng.randint(1, 9)
    if style < 0.15:  # a heading in capitals
        return " ".join(english_word(rng) for _ in range(min(n, 5))).upper()
    if style < 0.35:  # a Title Case heading or UI label
        return " ".join(english_word(rng).capitalize() for _ in range(min(n, 6)))
    words = [english_word(rng) for _ in range(n)]
    for i in range(1, n):
        if rng.random() < 0.08:
            words[i - 1] += rng.choice(EN_PUNCT[:4])
        if rng.random() < 0.1:
            words[i] = cased(words[i], rng, title=0.8, upper=0.2)
    if rng.random() < 0.15:
        words.insert(rng.randint(0, n), rng.choice([str(rng.randint(0, 2030)), f"{rng.uniform(0, 100):.1f}%",
                                                    f"({english_word(rng)})", f"\"{english_word(rng)}\""]))
    line = " ".join(words)
    return line[:1].upper() + line[1:] + rng.choice([".", ".", "", ":", "?", "!", ";"])


def _handle(rng: random.Random) -> str:
    parts = [english_word(rng) for _ in range(rng.randint(1, 2))]
    name = rng.choice([".", "_", "-", ""]).join(parts)
    return name + (str(rng.randint(1, 999)) if rng.random() < 0.3 else "")


def email(rng: random.Random) -> str:
    domain = rng.choice(["-", ""]).join(english_word(rng) for _ in range(rng.randint(1, 2)))
    return f"{_handle(rng)}@{domain}.{rng.choice(TLDS)}"


def url(rng: random.Random) -> str:
    host = rng.choice(["www.", "", "api.", "mail."]) + english_word(rng) + "." + rng.choice(TLDS)
    path = "/".join(english_word(rng) for _ in range(rng.randint(0, 3)))
    return rng.choice(["https://", "http://", ""]) + host + ("/" + path if path else "")


def code(rng: random.Random) -> str:
    """Identifiers: tax IDs, serial and part numbers, versions, invoice numbers."""
    kind = rng.random()
    if kind < 0.25:  # unified social credit code (18 characters)
        return rng.choice(["91", "92", "93", "12", "52"]) + text._digits(rng, 6) + "".join(
            rng.choice(UPPER_DIGITS) for _ in range(10))
    if kind < 0.5:  # letters and digits that look alike
        return "".join(rng.choice(CONFUSABLE + UPPER_DIGITS) for _ in range(rng.randint(4, 12)))
    if kind < 0.7:
        return ("".join(rng.choice(string.ascii_uppercase) for _ in range(rng.randint(1, 3)))
                + rng.choice(["-", "", " "]) + text._digits(rng, rng.randint(2, 6)) + rng.choice(["", "A", "B", "X", "-V2"]))
    if kind < 0.85:
        return rng.choice(["v", "V", "version ", ""]) + ".".join(str(rng.randint(0, 20)) for _ in range(rng.randint(2, 3)))
    return rng.choice(["No.", "NO.", "#", "INV-", "PO-"]) + text._digits(rng, rng.randint(4, 10))


def identifier(rng: random.Random) -> str:
    """Names from source code and logs: snake_case, SCREAMING_CASE, dotted calls, options."""
    words = [english_word(rng) for _ in range(rng.randint(2, 4))]
    kind = rng.random()
    if kind < 0.4:
        return "_".join(words)
    if kind < 0.6:
        return "_".join(words).upper()
    if kind < 0.8:
        return ".".join(words[:2]) + rng.choice(["()", "(" + words[-1] + ")", ""])
    return rng.choice(["--", "-"]) + "-".join(words[:2]) + rng.choice(["", "=" + words[-1].upper()])


def plain_text_markup(rng: random.Random) -> str:
    """What plain-text documents (README, NEWS, forms) draw with ASCII: headings underlined with a
    run of one mark, rules, bullets, bracketed tags and fill-in blanks."""
    title = english_sentence(rng).rstrip(".:?!;")
    mark = rng.choice("=-~*#_")
    run = mark * rng.randint(3, 30)
    kind = rng.random()
    if kind < 0.3:
        return rng.choice([run, title + " " + run, run + " " + title])
    if kind < 0.55:
        return rng.choice(["* ", "- ", "+ ", "o "]) + title
    if kind < 0.75:
        return f"[{rng.choice([english_word(rng).upper(), identifier(rng), str(rng.randint(0, 99999))])}] " + title
    label = rng.choice([cased(english_word(rng), rng, title=0.7), text.chinese_words(rng, rng.randint(1, 2))])
    return label + rng.choice([": ", "：", " "]) + "_" * rng.randint(4, 20)


def number(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.35:
        return f"{rng.uniform(0, 100):.{rng.randint(0, 2)}f}%"
    if kind < 0.6:
        return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}" + (f":{rng.randint(0, 59):02d}" if rng.random() < 0.3 else "")
    return text.amount(rng)


def mixed_line(rng: random.Random) -> str:
    """Chinese with Latin runs between full-width punctuation: labels, terms, codes, numbers."""
    label = text.chinese_words(rng, rng.randint(1, 3))
    value = rng.choice([email, url, code, identifier, number, english_sentence, text.date, text.phone])(rng)
    kind = rng.random()
    if kind < 0.45:
        return label + rng.choice(["：", ":", "： ", ""]) + value
    if kind < 0.75:
        tail = text.chinese_words(rng, rng.randint(1, 4))
        return label + rng.choice(["", " "]) + value + rng.choice(["", " "]) + tail + rng.choice(["", "。", "，"])
    parts = [text.chinese_words(rng, rng.randint(1, 3)) if i % 2 == 0 else cased(english_word(rng), rng)
             for i in range(rng.randint(2, 5))]
    return rng.choice(CN_PUNCT_PAIRS[:4] + [" ", ""]).join(parts)


def wide_line(rng: random.Random) -> str:
    """The wide corpus: a third the base model's own corpus (so it keeps what it reads), the
    rest English prose and UI strings, identifiers, plain-text markup and mixed Chinese/Latin lines."""
    kind = rng.random()
    if kind < 0.35:
        return text.pretrain_line(rng)
    if kind < 0.6:
        return english_sentence(rng)
    if kind < 0.73:
        value = rng.choice([email, url, code, identifier, number])(rng)
        return rng.choice(["", cased(english_word(rng), rng, title=0.6) + rng.choice([": ", " "])]) + value
    if kind < 0.8:
        return plain_text_markup(rng)
    return mixed_line(rng)
