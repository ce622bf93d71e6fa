"""Text for the `ui` corpus: software interface and message strings as translations print them.

On the external check sets most of the base model's edits sat in lines with brackets: a
full-width `（` before a Latin word read as `t`, `G` or `任`, an accelerator key `(N)` as `N)`,
`[file(s)]` as `ffilefsL`, and `--strip` inside Chinese as `一strip`. Our other corpora put
brackets round Chinese words only. Here Latin terms, keys, options and placeholders sit in
half- and full-width brackets inside Chinese and English, and a Latin run inside Chinese is
spaced as most translations space it (a space each side more often than not). Every generator
is a pure function of a `random.Random`.
"""
from __future__ import annotations

import random
import string

from fedocr.data import text
from fedocr.data.text_wide import cased, code, english_sentence, english_word, identifier, number

Brackets = list[tuple[str, str, float]]  # (open, close, weight)

# Parentheses lead, as in the check sets' messages and menus.
BRACKETS: Brackets = [("(", ")", 5), ("（", "）", 4), ("[", "]", 2), ("【", "】", 1), ("<", ">", 1),
                      ("《", "》", 1), ("\"", "\"", 1), ("“", "”", 1), ("'", "'", 0.5), ("|", "|", 0.5)]
ASCII_BRACKETS: Brackets = [b for b in BRACKETS if b[0].isascii()]  # English text around: no full-width forms
ACCELERATOR_BRACKETS: Brackets = [("(", ")", 3), ("（", "）", 2)]   # 保存(S), 另存为（A）
SYNOPSIS_BRACKETS: Brackets = [("[", "]", 3), ("<", ">", 1)]      # 用法：tar [选项] <文件>
PLACEHOLDERS = ["%s", "%d", "%u", "%ld", "%1$s", "{}", "{0}", "{name}", "$HOME", "${VAR}", "@FILE@"]
MAX_CHARS = 70
ENDINGS = ["", "", "。", "：", ":", ".", "？", "?", "！", "…", "...", "；"]


def bracketed(inner: str, rng: random.Random, pairs: Brackets = BRACKETS) -> str:
    """`inner` in one pair of brackets drawn by weight."""
    opening, closing, _ = rng.choices(pairs, weights=[b[2] for b in pairs])[0]
    return opening + inner + closing


def pangu_space(rng: random.Random) -> str:
    """The gap a translation leaves between its Chinese and Latin runs, drawn once per line
    (a translator spaces consistently): a space more often than not."""
    return " " if rng.random() < 0.6 else ""


def option(rng: random.Random) -> str:
    """A command-line option: -s, --strip, --base=URL, -o FILE."""
    if rng.random() < 0.35:
        short = "-" + rng.choice(string.ascii_letters)
        return short + (" " + english_word(rng).upper() if rng.random() < 0.2 else "")
    name = "-".join(english_word(rng) for _ in range(rng.randint(1, 2)))
    return "--" + name + (rng.choice(["=", " "]) + english_word(rng).upper() if rng.random() < 0.3 else "")


def latin_term(rng: random.Random) -> str:
    """What a Chinese UI string carries in Latin: names, keys, options, placeholders, codes."""
    kind = rng.random()
    if kind < 0.3:
        return " ".join(cased(english_word(rng), rng, title=0.5, upper=0.2) for _ in range(rng.randint(1, 2)))
    if kind < 0.45:
        return option(rng)
    if kind < 0.55:
        return rng.choice(PLACEHOLDERS)
    if kind < 0.65:
        name = identifier(rng)
        callable_name = "(" not in name and not name.startswith("-")
        return name + ("()" if callable_name and rng.random() < 0.5 else "")
    if kind < 0.75:
        return "".join(rng.choice(string.ascii_uppercase) for _ in range(rng.randint(2, 6)))
    if kind < 0.85:
        return code(rng)
    return number(rng)


def menu_label(rng: random.Random) -> str:
    """A menu item with its accelerator key: 保存(S)、另存为（A）..."""
    key = rng.choice(string.ascii_uppercase + string.digits[:3])
    item = text.chinese_words(rng, rng.randint(1, 3)) + bracketed(key, rng, ACCELERATOR_BRACKETS)
    if rng.random() < 0.3:
        item += rng.choice(["、", "，", " "]) + text.chinese_words(rng, rng.randint(1, 2)) + bracketed(
            rng.choice(string.ascii_uppercase), rng, ACCELERATOR_BRACKETS)
    return item + rng.choice(["", "", "...", "…"])


def message(rng: random.Random) -> str:
    """A translated message: Chinese with Latin terms, some in brackets, some Chinese in brackets."""
    gap = pangu_space(rng)
    parts = [text.chinese_words(rng, rng.randint(1, 3))]
    for _ in range(rng.randint(1, 2)):
        pick = rng.random()
        if pick < 0.4:
            parts.append(gap + latin_term(rng) + gap)
        elif pick < 0.75:
            inner = latin_term(rng) if rng.random() < 0.7 else text.chinese_words(rng, rng.randint(1, 3))
            parts.append(rng.choice(["", "", " "]) + bracketed(inner, rng))
        else:
            parts.append(rng.choice(["，", "、", "：", ": ", ", "]))
        parts.append(text.chinese_words(rng, rng.randint(1, 3)))
    return "".join(parts).strip() + rng.choice(ENDINGS)


def usage_line(rng: random.Random) -> str:
    """Command help: options with a Chinese or English description, or a usage synopsis."""
    if rng.random() < 0.3:
        args = " ".join(bracketed(rng.choice([option(rng), english_word(rng).upper(), text.chinese_words(rng, 1)]),
                                  rng, SYNOPSIS_BRACKETS) for _ in range(rng.randint(1, 3)))
        return rng.choice(["用法：", "Usage: ", "用法: "]) + english_word(rng) + " " + args + rng.choice(["", "..."])
    flags = option(rng) + (", " + option(rng) if rng.random() < 0.4 else "")
    chinese = rng.random() < 0.6
    description = text.chinese_words(rng, rng.randint(1, 5)) if chinese else english_sentence(rng)
    if rng.random() < 0.3:
        description += " " + bracketed(latin_term(rng), rng, BRACKETS if chinese else ASCII_BRACKETS)
    # One space: a crop cannot show how many spaces a help text's column gap was typed with.
    return flags + " " + description


def english_with_brackets(rng: random.Random) -> str:
    """English UI prose with a bracketed or parenthesised aside: `strings in [file(s)] (stdin)`."""
    words = english_sentence(rng).split(" ")
    inner = rng.choice([english_word(rng), english_word(rng) + "(s)", option(rng), identifier(rng),
                        english_word(rng) + " " + english_word(rng), "e.g. " + english_word(rng)])
    words.insert(rng.randint(0, len(words)), bracketed(inner, rng, ASCII_BRACKETS))
    return " ".join(words)


UI_GENERATORS = [message, menu_label, usage_line, english_with_brackets]
UI_WEIGHTS = [0.45, 0.2, 0.15, 0.2]


def ui_line(rng: random.Random) -> str:
    """The ui corpus: messages, menu labels, command help and bracketed English, at most
    MAX_CHARS characters (longer draws are drawn again: a UI string is one line)."""
    while True:
        generator = rng.choices(UI_GENERATORS, weights=UI_WEIGHTS)[0]
        line = generator(rng)
        if len(line) <= MAX_CHARS:
            return line
