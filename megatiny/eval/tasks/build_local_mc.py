"""Regenerate `megatiny_local_mc.jsonl`, the bundled offline multiple-choice task.

    python -m megatiny.eval.tasks.build_local_mc

Every item is written here by hand (facts) or from a template (arithmetic, counting); the
answer's position among the four choices is drawn from a fixed seed, so the file is identical on
every run. Fields: `id`, `category`, `question`, `choices` (4 strings), `answer` (index).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from megatiny.fileio import atomic_write_text

OUTPUT = Path(__file__).with_name("megatiny_local_mc.jsonl")
SEED = 1234

# (category, question, correct answer, three wrong answers)
FACTS: list[tuple[str, str, str, tuple[str, str, str]]] = [
    # category "world": everyday knowledge
    ("world", "What color is the sky on a clear day?", "blue", ("green", "red", "brown")),
    ("world", "How many days are there in a week?", "seven", ("five", "ten", "twelve")),
    ("world", "Which animal says moo?", "a cow", ("a cat", "a dog", "a duck")),
    ("world", "What do bees make?", "honey", ("milk", "silk", "bread")),
    ("world", "Which season comes after winter?", "spring", ("autumn", "summer", "winter")),
    ("world", "What is frozen water called?", "ice", ("steam", "sand", "glass")),
    ("world", "Which planet do we live on?", "Earth", ("Mars", "Venus", "Jupiter")),
    ("world", "What do you use to cut paper?", "scissors", ("a spoon", "a pillow", "a cup")),
    ("world", "Where do fish live?", "in water", ("in trees", "in the desert", "in clouds")),
    ("world", "How many legs does a spider have?", "eight", ("six", "four", "ten")),
    ("world", "What gives light during the day?", "the sun", ("the moon", "a candle", "the sea")),
    ("world", "Which meal is eaten in the morning?", "breakfast", ("dinner", "supper", "dessert")),
    ("world", "What is the capital of France?", "Paris", ("Berlin", "Madrid", "Rome")),
    ("world", "What is the capital of Japan?", "Tokyo", ("Beijing", "Seoul", "Bangkok")),
    ("world", "What is the capital of Italy?", "Rome", ("Paris", "Vienna", "Lisbon")),
    ("world", "Which ocean is the largest?", "the Pacific Ocean",
     ("the Atlantic Ocean", "the Indian Ocean", "the Arctic Ocean")),
    ("world", "How many hours are there in a day?", "twenty-four", ("twelve", "thirty", "sixty")),
    ("world", "What do plants need from the sun to grow?", "light", ("noise", "salt", "plastic")),
    ("world", "Which tool is used to hit a nail?", "a hammer", ("a brush", "a towel", "a fork")),
    ("world", "What falls from clouds when it rains?", "water", ("sand", "leaves", "coins")),
    ("world", "Which animal is known for its long neck?", "the giraffe",
     ("the mouse", "the rabbit", "the frog")),
    ("world", "What do you wear on your feet?", "shoes", ("hats", "gloves", "scarves")),
    ("world", "Which month comes after January?", "February", ("March", "December", "June")),
    ("world", "What is the boiling point of water at sea level in Celsius?", "100 degrees",
     ("50 degrees", "0 degrees", "212 degrees")),
    ("world", "What is the freezing point of water in Celsius?", "0 degrees",
     ("100 degrees", "32 degrees", "10 degrees")),
    ("world", "Which organ pumps blood through the body?", "the heart",
     ("the lungs", "the liver", "the stomach")),
    ("world", "What do cows eat?", "grass", ("meat", "stones", "plastic")),
    ("world", "Where does a bird usually live?", "in a nest", ("in a shoe", "in a cup", "in an oven")),
    ("world", "What do you call a baby dog?", "a puppy", ("a kitten", "a calf", "a chick")),
    ("world", "What do you call a baby cat?", "a kitten", ("a puppy", "a foal", "a lamb")),
    # category "language": English words and grammar
    ("language", "What is the opposite of hot?", "cold", ("warm", "red", "fast")),
    ("language", "What is the opposite of up?", "down", ("over", "high", "top")),
    ("language", "What is the opposite of big?", "small", ("large", "tall", "wide")),
    ("language", "What is the opposite of day?", "night", ("noon", "morning", "week")),
    ("language", "What is the opposite of open?", "closed", ("wide", "empty", "new")),
    ("language", "What is the opposite of happy?", "sad", ("glad", "funny", "loud")),
    ("language", "What is the opposite of old?", "young", ("ancient", "tired", "gray")),
    ("language", "What is the opposite of fast?", "slow", ("quick", "strong", "light")),
    ("language", "What is the plural of child?", "children", ("childs", "childes", "child")),
    ("language", "What is the plural of mouse?", "mice", ("mouses", "mousen", "meese")),
    ("language", "What is the past tense of go?", "went", ("goed", "gone", "going")),
    ("language", "What is the past tense of eat?", "ate", ("eated", "eaten", "eats")),
    ("language", "What is the past tense of see?", "saw", ("seed", "seen", "sawed")),
    ("language", "Which word is a color?", "yellow", ("table", "run", "quickly")),
    ("language", "Which word is a number?", "nine", ("nice", "nose", "nest")),
    ("language", "Which word is an animal?", "horse", ("house", "hose", "horn")),
    ("language", "Which word rhymes with cat?", "hat", ("dog", "cup", "sun")),
    ("language", "Which word rhymes with tree?", "bee", ("bark", "leaf", "root")),
    ("language", "What letter comes after A in the alphabet?", "B", ("C", "Z", "D")),
    ("language", "How many letters are in the English alphabet?", "twenty-six",
     ("twenty", "thirty", "twelve")),
    ("language", "Which word means the same as big?", "large", ("tiny", "thin", "short")),
    ("language", "Which word means the same as begin?", "start", ("finish", "stop", "end")),
    # category "code": programming knowledge
    ("code", "In Python, which keyword defines a function?", "def", ("func", "function", "define")),
    ("code", "In Python, which keyword starts a loop over the items of a list?", "for",
     ("loop", "each", "repeat")),
    ("code", "In Python, what does len([1, 2, 3]) return?", "3", ("2", "6", "1")),
    ("code", "In Python, which value means false?", "False", ("Nope", "Never", "Off")),
    ("code", "In Python, which symbol starts a comment?", "#", ("//", "--", "%")),
    ("code", "In Python, which function prints text to the screen?", "print",
     ("echo", "write_out", "say")),
    ("code", "In Python, what is the result of 7 // 2?", "3", ("3.5", "4", "2")),
    ("code", "In Python, what is the result of 2 ** 3?", "8", ("6", "9", "5")),
    ("code", "In Python, which keyword imports a module?", "import", ("include", "using", "require")),
    ("code", "In Python, which type holds key-value pairs?", "dict", ("list", "tuple", "int")),
    ("code", "In Python, which method adds an item to the end of a list?", "append",
     ("push", "insert_end", "add_last")),
    ("code", "In Python, what does 'abc'.upper() return?", "'ABC'", ("'abc'", "'Abc'", "'aBC'")),
    ("code", "In C, which symbol ends a statement?", ";", (":", ".", "!")),
    ("code", "In JavaScript, which keyword declares a constant?", "const",
     ("final", "static", "fixed")),
    ("code", "In SQL, which statement reads rows from a table?", "SELECT",
     ("FETCHROW", "READ", "LOOKUP")),
    ("code", "In HTML, which tag makes a link?", "<a>", ("<link_to>", "<url>", "<go>")),
    ("code", "Which number system uses only 0 and 1?", "binary", ("decimal", "roman", "hexadecimal")),
    ("code", "In git, which command records staged changes?", "git commit",
     ("git save", "git store", "git keep")),
    ("code", "In a shell, which command lists the files in a directory?", "ls",
     ("show", "files", "dir_list")),
    ("code", "In Python, which keyword handles an exception?", "except",
     ("catch", "rescue", "handle")),
]

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                "seventeen", "eighteen", "nineteen", "twenty"]


def _arithmetic(rng: random.Random, count: int) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """Small additions and subtractions with near-miss distractors."""
    items = []
    while len(items) < count:
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        if rng.random() < 0.5:
            question, answer = f"What is {a} plus {b}?", a + b
        else:
            a, b = max(a, b), min(a, b)
            question, answer = f"What is {a} minus {b}?", a - b
        wrong = sorted({answer + d for d in (-2, -1, 1, 2, 10) if answer + d >= 0} - {answer})
        rng.shuffle(wrong)
        items.append(("math", question, str(answer), tuple(str(w) for w in wrong[:3])))
    return items


def _counting(rng: random.Random, count: int) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """'Which number comes after N?' in words."""
    items = []
    for n in rng.sample(range(0, 19), count):
        wrong = [NUMBER_WORDS[m] for m in (n, n + 2, (n + 5) % 21)]
        items.append(("math", f"Which number comes after {NUMBER_WORDS[n]}?", NUMBER_WORDS[n + 1],
                      tuple(wrong)))
    return items


def build_items(seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    raw = list(FACTS) + _arithmetic(rng, 30) + _counting(rng, 10)
    items = []
    for index, (category, question, answer, wrong) in enumerate(raw):
        if len(set(wrong) | {answer}) != 4:
            raise ValueError(f"item {index} ({question!r}) needs four distinct choices")
        choices = [answer, *wrong]
        rng.shuffle(choices)
        items.append({"id": index, "category": category, "question": question,
                      "choices": choices, "answer": choices.index(answer)})
    return items


def render(items: list[dict]) -> str:
    """The JSON-lines text of `items`, as shipped in megatiny_local_mc.jsonl."""
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


def main() -> None:
    items = build_items()
    atomic_write_text(OUTPUT, render(items))
    print(f"wrote {len(items)} items to {OUTPUT}")


if __name__ == "__main__":
    main()
