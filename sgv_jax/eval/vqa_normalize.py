r"""Answer normalisation of the VQA-family evaluators, quirks included (REFERENCE: the sources
below; tests/test_eval_metrics_vqa.py checks every function against them).

Two normalisers exist and both matter:
- `evalai_normalize`: m4c's `EvalAIAnswerProcessor` (LLaVA `llava/eval/m4c_evaluator.py`, copied
  from MMF). LLaVA applies it to TextVQA predictions and ground truths, and to every VQAv2 /
  VizWiz answer before writing the upload file.
- `vqa_punctuation` + `vqa_digit_article`: `VQAEval.processPunctuation/processDigitArticle` of
  the official VQA evaluator (GT-Vision-Lab/VQA `PythonEvaluationTools/vqaEvaluation/vqaEval.py`
  at a013f00), which the EvalAI server runs for VQAv2; VizWiz's evaluator uses the same tables.

Quirks kept on purpose: `PERIOD_STRIP` is written `(?!<=\d)` (a look-ahead for the text "<=" and a
digit, not a look-behind) and is called with `re.UNICODE` as its *count* argument, so at most
32 periods are removed; the comma test differs between the two (`(?<=\d)(\,)+(?=\d)` vs
`(\d)(\,)(\d)`); contractions are replaced only after articles are dropped.
"""

from __future__ import annotations

import re

# The two sources hold identical tables (checked in the tests): contractions, number words,
# articles, punctuation.
CONTRACTIONS = {
    'aint': "ain't", 'arent': "aren't", 'cant': "can't", 'couldve': "could've",
    'couldnt': "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    'didnt': "didn't", 'doesnt': "doesn't", 'dont': "don't", 'hadnt': "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", 'hasnt': "hasn't", 'havent': "haven't",
    'hed': "he'd", "hed've": "he'd've", "he'dve": "he'd've", 'hes': "he's", 'howd': "how'd",
    'howll': "how'll", 'hows': "how's", "Id've": "I'd've", "I'dve": "I'd've", 'Im': "I'm",
    'Ive': "I've", 'isnt': "isn't", 'itd': "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    'itll': "it'll", "let's": "let's", 'maam': "ma'am", 'mightnt': "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", 'mightve': "might've",
    'mustnt': "mustn't", 'mustve': "must've", 'neednt': "needn't", 'notve': "not've",
    'oclock': "o'clock", 'oughtnt': "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", 'shant': "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", 'shouldve': "should've", 'shouldnt': "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": 'somebodyd',
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", 'somebodyll': "somebody'll",
    'somebodys': "somebody's", 'someoned': "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", 'someonell': "someone'll", 'someones': "someone's",
    'somethingd': "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", 'somethingll': "something'll", 'thats': "that's",
    'thered': "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    'therere': "there're", 'theres': "there's", 'theyd': "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", 'theyll': "they'll", 'theyre': "they're", 'theyve': "they've",
    'twas': "'twas", 'wasnt': "wasn't", "wed've": "we'd've", "we'dve": "we'd've", 'weve': "we've",
    'werent': "weren't", 'whatll': "what'll", 'whatre': "what're", 'whats': "what's",
    'whatve': "what've", 'whens': "when's", 'whered': "where'd", 'wheres': "where's",
    'whereve': "where've", 'whod': "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    'wholl': "who'll", 'whos': "who's", 'whove': "who've", 'whyll': "why'll", 'whyre': "why're",
    'whys': "why's", 'wont': "won't", 'wouldve': "would've", 'wouldnt': "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", 'yall': "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", 'youd': "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", 'youll': "you'll", 'youre': "you're", 'youve': "you've",
}

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
                "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ("a", "an", "the")
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
               "@", "`", ",", "?", "!")
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
EVALAI_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
VQA_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")


def _strip_punctuation(text: str, comma_strip: re.Pattern) -> str:
    out = text
    # A mark touching a space, or any text with a digit comma, loses the mark; otherwise the
    # mark becomes a space. The test reads the *input* text, the replacement the running one.
    drop = comma_strip.search(text) is not None
    for mark in PUNCTUATION:
        if drop or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return PERIOD_STRIP.sub("", out, re.UNICODE)  # count=re.UNICODE (32), as the sources


def vqa_digit_article(text: str) -> str:
    """Lower-case words; number words to digits; articles dropped; contractions restored."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def vqa_punctuation(text: str) -> str:
    """`VQAEval.processPunctuation` (official VQA / VizWiz evaluators)."""
    return _strip_punctuation(text, VQA_COMMA_STRIP)


def evalai_normalize(text: str) -> str:
    """`EvalAIAnswerProcessor.__call__`: tokenize, whitespace, punctuation, digits/articles."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return vqa_digit_article(_strip_punctuation(text, EVALAI_COMMA_STRIP))
