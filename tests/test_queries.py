"""Sec. 3.3 task-specific collection: class names -> each source's queries (golden answers written by hand)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import omnisource

ROOT = Path(__file__).resolve().parents[1]

# Kinetics-400 class names with the queries a person writes by hand from Sec. 3.3 and footnote 4
KINETICS = ["playing guitar", "beekeeping", "skiing (not slalom or crosscountry)", "riding or walking with horse",
            "massaging person's head", "dribbling basketball"]


@pytest.mark.parametrize("word, expected", [
    ("beekeeping", "beekeep"),     # the paper's footnote 4
    ("running", "run"), ("swimming", "swim"),                     # doubled consonant halved
    ("dancing", "dance"), ("carving", "carve"), ("massaging", "massage"), ("skating", "skate"),
    ("dribbling", "dribble"), ("juggling", "juggle"), ("wrestling", "wrestle"),
    ("riding", "ride"), ("making", "make"),                        # short consonant-vowel-consonant stem
    ("playing", "play"), ("bowling", "bowl"), ("curling", "curl"), ("singing", "sing"), ("skiing", "ski"),
    ("kissing", "kiss"), ("shoes", "shoe"), ("ponies", "pony"), ("glasses", "glass"), ("boxes", "box"),
    ("tennis", "tennis"), ("bus", "bus"), ("ice", "ice"), ("sing", "sing"), ("thing", "thing"),
])
def test_stem_known_forms(word, expected):
    assert omnisource.stem(word) == expected


def test_class_words_split_names_of_every_released_layout():
    assert omnisource.class_words("ApplyEyeMakeup") == ["apply", "eye", "makeup"]          # UCF101
    assert omnisource.class_words("brush_hair") == ["brush", "hair"]                       # HMDB51
    assert omnisource.class_words("skiing (not slalom or crosscountry)") == ["skiing"]     # Kinetics note
    assert omnisource.class_words("massaging person's head") == ["massaging", "persons", "head"]
    assert omnisource.class_words("hula-hooping") == ["hula", "hooping"]


def test_hashtags_permute_and_stem_two_word_names():
    assert omnisource.hashtags("playing guitar") == ["playingguitar", "guitarplaying", "playguitar", "guitarplay"]
    assert omnisource.hashtags("beekeeping") == ["beekeeping", "beekeep"]
    # stop words are not part of tags; three content words keep their order (6 orders would be mostly noise)
    assert omnisource.hashtags("riding or walking with horse") == ["ridingwalkinghorse", "ridewalkhorse"]
    assert omnisource.hashtags("skiing (not slalom or crosscountry)") == ["skiing", "ski"]


def test_task_queries_every_source_in_label_order():
    rows = omnisource.task_queries(KINETICS[:2])
    assert [(r["source"], r["label"], r["query"]) for r in rows] == [
        ("google", 0, "playing guitar"),
        ("instagram", 0, "#playingguitar"), ("instagram", 0, "#guitarplaying"), ("instagram", 0, "#playguitar"),
        ("instagram", 0, "#guitarplay"),
        ("youtube", 0, "playing guitar"),
        ("google", 1, "beekeeping"), ("instagram", 1, "#beekeeping"), ("instagram", 1, "#beekeep"),
        ("youtube", 1, "beekeeping")]
    assert {r["class"] for r in rows if r["label"] == 1} == {"beekeeping"}


def test_google_queries_split_by_year():
    rows = omnisource.task_queries(["dribbling basketball"], sources=("google",), years=(2017, 2019))
    assert [(r["query"], r["after"], r["before"]) for r in rows] == [
        ("dribbling basketball", "2017-01-01", "2018-01-01"), ("dribbling basketball", "2018-01-01", "2019-01-01"),
        ("dribbling basketball", "2019-01-01", "2020-01-01")]


def test_unknown_source_is_an_error():
    with pytest.raises(ValueError, match="flickr"):
        omnisource.task_queries(["a"], sources=("flickr",))


def test_write_queries_command_on_a_class_list(tmp_path):
    """As a user runs it: the target's classes.txt -> queries.jsonl, one JSON query per line."""
    (tmp_path / "kin").mkdir()
    (tmp_path / "kin" / "classes.txt").write_text("\n".join(KINETICS) + "\n")
    (tmp_path / "kin" / "val.txt").write_text("v0.mp4 0\n")          # a target folder as train.py reads it
    out = tmp_path / "queries.jsonl"
    res = subprocess.run([sys.executable, "omnisource.py", "--data-root", str(tmp_path), "--target", "kin",
                          "--write-queries", str(out), "--query-years", "2018:2019"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == omnisource.task_queries(KINETICS, years=(2018, 2019))
    per_class = [sum(r["label"] == i for r in rows) for i in range(len(KINETICS))]
    # google: 2 years; youtube: 1; instagram: 4 tags for the 2-word names, 2 for the others
    assert per_class == [2 + 1 + 4, 2 + 1 + 2, 2 + 1 + 2, 2 + 1 + 2, 2 + 1 + 2, 2 + 1 + 4]
    assert str(out) in res.stdout


def test_write_queries_bad_years_flag(tmp_path):
    (tmp_path / "kin").mkdir()
    (tmp_path / "kin" / "classes.txt").write_text("a\nb\n")
    (tmp_path / "kin" / "val.txt").write_text("v0.mp4 0\n")
    res = subprocess.run([sys.executable, "omnisource.py", "--data-root", str(tmp_path), "--target", "kin",
                          "--write-queries", str(tmp_path / "q.jsonl"), "--query-years", "2019"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "--query-years" in res.stderr and len(res.stderr.strip().splitlines()) == 1
