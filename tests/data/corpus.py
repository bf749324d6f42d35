"""Deterministic synthetic text for data tests (multilingual, digits, emoji, whitespace)."""
import random

WORDS = ("the of and to in is was for on that with as by at from his her an were are which this be "
         "data model token train layer über naïve café 東京 日本語 données 12 345 6789 3.14 🙂 🚀").split()


def make_text(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(1, 4)):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 40))]
        lines.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ""]))
    return "\n".join(lines) + ("  \t" if rng.random() < 0.1 else "")


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [make_text(rng) for _ in range(n)]
