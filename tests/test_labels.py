"""Label conversion on the real MELD CSVs (both encodings) and on broken CSVs."""
from __future__ import annotations

import pytest

from avemo.pipeline.labels import LabelFileError, label_counts, normalise_text, parse_time, read_label_csv
from avemo.shards.labels import EMOTIONS

# ../shared/README.md: anger disgust fear joy neutral sadness surprise, per split
EXPECTED = {
    "train": [1109, 271, 268, 1743, 4710, 683, 1205],
    "dev": [153, 22, 40, 163, 470, 111, 150],
    "test": [345, 68, 50, 402, 1256, 208, 281],
}
ROWS = {"train": 9989, "dev": 1109, "test": 2610}


@pytest.mark.parametrize("encoding", ["current", "legacy"])
@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_real_csv_counts(shared, encoding, split):
    rows = read_label_csv(shared / "data/meld" / encoding / f"{split}_sent_emo.csv", split)
    assert len(rows) == ROWS[split]
    assert all(r["status"] == "ok" for r in rows)
    assert label_counts(rows) == dict(zip(EMOTIONS, EXPECTED[split]))
    keys = [r["key"] for r in rows]
    assert len(set(keys)) == len(keys)  # Sr No. repeats, (Dialogue_ID, Utterance_ID) does not


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_legacy_and_current_normalise_to_the_same_text(shared, split):
    cur = {r["key"]: r for r in read_label_csv(shared / f"data/meld/current/{split}_sent_emo.csv", split)}
    old = {r["key"]: r for r in read_label_csv(shared / f"data/meld/legacy/{split}_sent_emo.csv", split)}
    assert cur.keys() == old.keys()
    for key in cur:
        assert cur[key]["utterance"] == old[key]["utterance"], key
        assert (cur[key]["label"], cur[key]["sentiment"]) == (old[key]["label"], old[key]["sentiment"])
    text = " ".join(r["utterance"] for r in old.values())
    assert not any(0x80 <= ord(c) <= 0x9F for c in text)
    assert "\u2019" not in text and "Â" not in text and "â€" not in text
    assert "company's transition" in cur["dia0_utt0"]["utterance"] if split == "train" else True


def test_real_quirks(shared):
    test = {r["key"]: r for r in read_label_csv(shared / "data/meld/current/test_sent_emo.csv", "test")}
    zero = test["dia155_utt3"]
    assert zero["end_s"] - zero["start_s"] == pytest.approx(0.0, abs=1e-6)
    assert test["dia38_utt4"]["end_s"] - test["dia38_utt4"]["start_s"] == pytest.approx(305, abs=1.0)
    train = read_label_csv(shared / "data/meld/current/train_sent_emo.csv", "train")
    assert not any(r["dialogue_id"] == 60 for r in train)


@pytest.mark.unit
def test_text_and_time_helpers():
    assert normalise_text("It\u0092s  fine\u0085") == "It's fine..."
    assert normalise_text("Itâ€™s") == "It's"          # mojibake of a curly apostrophe
    assert normalise_text("“Hi” — there") == '"Hi" -- there'
    assert parse_time("0:16:16,059") == pytest.approx(976.059)
    assert parse_time("00:16:16,059") == pytest.approx(976.059)
    assert parse_time("16:16") is None


HEADER = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"


def _row(sr, emotion="joy", dia="1", utt="0", sentiment="positive"):
    return f'{sr},Hello there,Ross,{emotion},{sentiment},{dia},{utt},1,1,"0:00:01,000","0:00:02,500"'


@pytest.mark.unit
def test_bad_rows_are_rejected_with_reasons(tmp_path):
    csv = tmp_path / "dev_sent_emo.csv"
    csv.write_text("\n".join([HEADER, _row(1), "", _row(2, emotion="bored"), _row(3, dia="x"),
                              _row(4), _row(5, utt="1"), ",,,,,,,,,,"]) + "\n", encoding="utf-8")
    rows = read_label_csv(csv, "dev")
    assert [(r["key"], r["status"], r["reason"]) for r in rows] == [
        ("dia1_utt0", "ok", ""),
        ("dia1_utt0", "rejected", "unknown_label"),
        ("line5", "rejected", "bad_id"),
        ("dia1_utt0", "rejected", "duplicate_key"),
        ("dia1_utt1", "ok", ""),
    ]
    assert "bored" in rows[1]["detail"]


@pytest.mark.unit
def test_unicode_digits_in_an_id_are_a_bad_id_not_a_crash(tmp_path):
    csv = tmp_path / "dev_sent_emo.csv"   # '1²' and '٣' pass str.isdigit(); int('1²') raises ValueError
    csv.write_bytes("\r\n".join([HEADER, _row(1, dia="1\u00b2"), _row(2, utt="\u0663"), _row(3)]).encode("utf-8"))
    rows = read_label_csv(csv, "dev")
    assert [(r["key"], r["status"], r["reason"]) for r in rows] == [
        ("line2", "rejected", "bad_id"), ("line3", "rejected", "bad_id"), ("dia1_utt0", "ok", "")]
    assert "1\u00b2" in rows[0]["detail"]


@pytest.mark.unit
def test_missing_column_is_one_clear_error(tmp_path):
    csv = tmp_path / "train_sent_emo.csv"
    csv.write_text(HEADER.replace(",Emotion", "") + "\n", encoding="utf-8")
    with pytest.raises(LabelFileError, match="missing required column 'Emotion'"):
        read_label_csv(csv, "train")
