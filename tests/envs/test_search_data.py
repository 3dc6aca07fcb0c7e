"""Loaders for the real formats, on small files written here."""

import json

import pytest

from envs.search.data import DataFormatError, iter_corpus_jsonl, load_tasks

PROMPT = "Answer the given question. ... For example, <answer> Beijing </answer>. Question: who wrote hamlet?\n"


def test_searchr1_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [
        {"data_source": "nq", "prompt": [{"role": "user", "content": PROMPT}],
         "reward_model": {"style": "rule", "ground_truth": {"target": ["Shakespeare", "William Shakespeare"]}},
         "extra_info": {"split": "test", "index": 0}},
        {"data_source": "hotpotqa", "prompt": [{"role": "user", "content": "Question: 2+2?"}],
         "reward_model": {"style": "rule", "ground_truth": {"target": ["4"]}},
         "extra_info": {"split": "test", "index": 1}},
    ]
    path = tmp_path / "test.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    tasks = load_tasks(path)
    assert [t.question for t in tasks] == ["who wrote hamlet?", "2+2?"]
    assert tasks[0].golden_answers == ("Shakespeare", "William Shakespeare")
    assert [t.data_source for t in tasks] == ["nq", "hotpotqa"]
    assert tasks[0].id == "nq-test-0"


def test_flashrag_jsonl(tmp_path):
    d = tmp_path / "triviaqa"
    d.mkdir()
    p = d / "dev.jsonl"
    p.write_text(json.dumps({"id": "dev_0", "question": "Capital of France?", "golden_answers": ["Paris"]}) + "\n\n"
                 + json.dumps({"question": "Who?", "golden_answers": "Me"}) + "\n")
    tasks = load_tasks(p)
    assert [(t.id, t.golden_answers, t.data_source) for t in tasks] == [
        ("dev_0", ("Paris",), "triviaqa"), ("triviaqa-2", ("Me",), "triviaqa")]


def test_bad_files_name_the_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"question": "q", "golden_answers": ["a"]}\n{"golden_answers": ["b"]}\n')
    with pytest.raises(DataFormatError, match="x.jsonl:2"):  # FlashRAG (golden_answers): the bad line
        load_tasks(p)
    p.write_text('{"question": "q"}\n')
    with pytest.raises(DataFormatError, match=r"x.jsonl: no answer column: expected one of .*golden_answers"):
        load_tasks(p)
    with pytest.raises(DataFormatError, match="unknown dataset format"):
        (tmp_path / "x.csv").write_text("")
        load_tasks(tmp_path / "x.csv")
    with pytest.raises(FileNotFoundError):
        load_tasks(tmp_path / "missing.jsonl")


def test_corpus_jsonl(tmp_path):
    p = tmp_path / "corpus.jsonl"
    p.write_text(json.dumps({"id": "0", "contents": "\"T\"\ntext"}) + "\n"
                 + json.dumps({"id": 7, "title": "U", "text": "more"}) + "\n")
    assert list(iter_corpus_jsonl(p)) == [{"id": "0", "contents": "\"T\"\ntext"},
                                         {"id": "7", "contents": "\"U\"\nmore"}]
    p.write_text('{"id": "0"}\n')
    with pytest.raises(DataFormatError, match="contents"):
        list(iter_corpus_jsonl(p))


# ------------------------------------------------------------------ verl parquet and HF `datasets` data
@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """`datasets.load_dataset` writes its arrow cache under tmp_path, not ~/.cache."""
    config = pytest.importorskip("datasets.config")
    monkeypatch.setattr(config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    return tmp_path


def _write_parquet(rows, path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_verl_parquet_ground_truth_string(tmp_path):
    rows = [
        {"data_source": "triviaqa", "prompt": [{"role": "system", "content": "Answer briefly."},
                                              {"role": "user", "content": "Who wrote Hamlet?"}],
         "reward_model": {"style": "rule", "ground_truth": "Shakespeare"},
         "extra_info": {"split": "train", "index": 7, "question": None}},
        {"data_source": "nq", "prompt": [{"role": "user", "content": "Template ... Question: ignored?"}],
         "reward_model": {"style": "rule", "ground_truth": "Paris"},
         "extra_info": {"split": "train", "index": 8, "question": "Capital of France?"}},
    ]
    tasks = load_tasks(_write_parquet(rows, tmp_path / "verl.parquet"))
    assert [t.question for t in tasks] == ["Who wrote Hamlet?", "Capital of France?"]  # extra_info.question wins
    assert [t.golden_answers for t in tasks] == [("Shakespeare",), ("Paris",)]
    assert [t.data_source for t in tasks] == ["triviaqa", "nq"]
    assert [t.id for t in tasks] == ["triviaqa-train-7", "nq-train-8"]


def test_verl_parquet_ground_truth_list_and_string_prompt(tmp_path):
    rows = [{"prompt": "Question: 2+2?", "reward_model": {"ground_truth": ["4", "four"]}},
            {"prompt": "What is the capital of Peru?", "reward_model": {"ground_truth": ["Lima"]}}]
    tasks = load_tasks(_write_parquet(rows, tmp_path / "arith.parquet"))
    assert [(t.id, t.question, t.golden_answers, t.data_source) for t in tasks] == [
        ("arith-x-0", "2+2?", ("4", "four"), "arith"),  # no data_source: the file's name is the task type
        ("arith-x-1", "What is the capital of Peru?", ("Lima",), "arith")]


def test_verl_parquet_without_ground_truth_names_it(tmp_path):
    p = _write_parquet([{"prompt": "Question: q?", "reward_model": {"style": "rule"}}], tmp_path / "v.parquet")
    with pytest.raises(DataFormatError, match=r"v.parquet row 0: missing reward_model.ground_truth"):
        load_tasks(p)
    p = _write_parquet([{"data_source": "nq", "reward_model": {"ground_truth": "a"}}], tmp_path / "w.parquet")
    with pytest.raises(DataFormatError, match=r"w.parquet: no question column: expected one of question, prompt"):
        load_tasks(p)


def test_hf_parquet_and_json_files(hf_cache):
    # parquet without reward_model: HF columns, read by datasets.load_dataset("parquet")
    p = _write_parquet([{"question": "who painted the mona lisa", "golden_answers": ["Leonardo da Vinci"]},
                        {"question": "boiling point of water in celsius", "golden_answers": ["100", "100 °C"]}],
                       hf_cache / "nq_open.parquet")
    tasks = load_tasks(p)
    assert [(t.id, t.question, t.golden_answers, t.data_source) for t in tasks] == [
        ("nq_open-0", "who painted the mona lisa", ("Leonardo da Vinci",), "nq_open"),
        ("nq_open-1", "boiling point of water in celsius", ("100", "100 °C"), "nq_open")]
    # a JSON array (not JSON Lines) with question + answer, an id and a TriviaQA-style answer record
    j = hf_cache / "trivia.json"
    j.write_text(json.dumps([
        {"id": "tq1", "question": "Largest planet?", "answer": {"value": "Jupiter", "aliases": ["Jupiter", "Jove"]}},
        {"id": "tq2", "question": "Smallest planet?", "answer": {"value": "Mercury", "aliases": []}}], indent=1))
    tasks = load_tasks(j)
    assert [(t.id, t.question, t.golden_answers, t.data_source) for t in tasks] == [
        ("tq1", "Largest planet?", ("Jupiter", "Jove"), "trivia"), ("tq2", "Smallest planet?", ("Mercury",), "trivia")]
    # JSON Lines with `answers` (no golden_answers): HF path; answers may be a string on one row, a list on another
    jl = hf_cache / "mixed.jsonl"
    jl.write_text(json.dumps({"question": "q1", "answers": "a1", "data_source": "web"}) + "\n"
                  + json.dumps({"question": "q2", "answers": ["a2", "b2"]}) + "\n")
    assert [(t.id, t.golden_answers, t.data_source) for t in load_tasks(jl)] == [
        ("web-0", ("a1",), "web"), ("mixed-1", ("a2", "b2"), "mixed")]


def test_hf_file_missing_column_names_it_and_the_formats(hf_cache):
    p = _write_parquet([{"question": "q", "context": "c"}], hf_cache / "data.parquet")
    with pytest.raises(DataFormatError) as e:
        load_tasks(p)
    msg = str(e.value)
    assert "data.parquet: no answer column: expected one of reward_model.ground_truth, golden_answers, answers, " \
           "answer; found columns ['context', 'question']" in msg
    assert "Search-R1/verl parquet" in msg and "FlashRAG jsonl" in msg and "save_to_disk" in msg
    j = hf_cache / "noq.json"
    j.write_text(json.dumps([{"prompt_text": "q", "answer": "a"}]))
    with pytest.raises(DataFormatError, match=r"noq.json: no question column: expected one of question, query.*"
                                              r"found columns \['answer', 'prompt_text'\]"):
        load_tasks(j)
    (hf_cache / "empty.jsonl").write_text("\n")
    with pytest.raises(DataFormatError, match=r"empty.jsonl: no tasks \(an empty file\)"):
        load_tasks(hf_cache / "empty.jsonl")
    bad = hf_cache / "broken.json"
    bad.write_text("[{not json")
    with pytest.raises(DataFormatError, match=r"broken.json: datasets.load_dataset\('json'\) cannot read it"):
        load_tasks(bad)


def test_save_to_disk_dataset_dir(hf_cache):
    datasets = pytest.importorskip("datasets")
    d = hf_cache / "popqa"
    datasets.Dataset.from_dict({"question": ["Who is the author of Dune?", "What is Paris the capital of?"],
                                "answer": ["Frank Herbert", "France"]}).save_to_disk(str(d))
    tasks = load_tasks(d)
    assert [(t.id, t.question, t.golden_answers, t.data_source) for t in tasks] == [
        ("popqa-0", "Who is the author of Dune?", ("Frank Herbert",), "popqa"),
        ("popqa-1", "What is Paris the capital of?", ("France",), "popqa")]
    empty = hf_cache / "not_a_dataset"
    empty.mkdir()
    with pytest.raises(DataFormatError, match="not_a_dataset: a directory that is not a datasets save_to_disk"):
        load_tasks(empty)


def test_save_to_disk_dataset_dict_picks_the_split(hf_cache):
    datasets = pytest.importorskip("datasets")
    from envs.search.config import SearchEnvConfig
    from envs.search.factory import load_split_tasks

    squad = {"text": ["Denver Broncos"], "answer_start": [177]}
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"question": ["Who won Super Bowl 50?", "Where?"],
                                             "answers": [squad, {"text": ["Santa Clara", "Levi's Stadium"],
                                                                 "answer_start": [1, 2]}]}),
        "validation": datasets.Dataset.from_dict({"question": ["Who lost?"],
                                                  "answers": [{"text": ["Carolina Panthers"], "answer_start": [0]}]}),
    })
    d = hf_cache / "squad"
    dd.save_to_disk(str(d))
    train = load_tasks(d, split="train")
    assert [(t.id, t.question, t.golden_answers, t.data_source) for t in train] == [
        ("squad-train-0", "Who won Super Bowl 50?", ("Denver Broncos",), "squad"),
        ("squad-train-1", "Where?", ("Santa Clara", "Levi's Stadium"), "squad")]
    assert [(t.id, t.golden_answers) for t in load_tasks(d, split="eval")] == [
        ("squad-validation-0", ("Carolina Panthers",))]
    assert [t.question for t in load_tasks(d / "validation")] == ["Who lost?"]  # one split's own directory
    # the env config: `data` = the dict dir -> train split for training, validation for evaluation
    cfg = SearchEnvConfig(data=str(d))
    assert len(load_split_tasks(cfg, hf_cache, "train")) == 2
    assert [t.question for t in load_split_tasks(cfg, hf_cache, "eval")] == ["Who lost?"]
    with pytest.raises(DataFormatError, match=r"squad: a DatasetDict with splits \['train', 'validation'\], and "
                                              r"no split name"):
        load_tasks(d)
    with pytest.raises(DataFormatError, match=r"splits \['train', 'validation'\], and split 'test' \(tried test\)"):
        load_tasks(d, split="test")
