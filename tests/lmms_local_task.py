"""Writes an offline lmms-eval task: lmms-eval's own `pope` task (its prompt, `process_results`
and metrics, by `include:` of the installed pope.yaml) over a small local POPE-format dataset.

    python tests/lmms_local_task.py OUT_DIR N

Runs where lmms-eval and `datasets` are importable (the .lmms/ folder `make lmms` fills), not in
the test's own interpreter. OUT_DIR/data/test.parquet holds the questions (columns as lmms-lab's
POPE: question_id, question, answer, image_source, image, category), read by the task through
`datasets.load_dataset("parquet", data_files=...)` (lmms_eval/api/task.py `download`): nothing
is fetched. Each image is also OUT_DIR/data/<row>.png and the questions are in
OUT_DIR/data/questions.json, for the test's own interpreter. OUT_DIR/tasks/pope_local.yaml is the
task, for `--include_path OUT_DIR/tasks`.
"""

import io
import json
import os
import sys

import lmms_eval
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

TASK = "pope_local"


def write_dataset(path: str, n: int) -> None:
    """A parquet file whose schema metadata carries the `datasets` features (as
    `Dataset.to_parquet` writes it), so the image column loads as PIL images."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(0)
    rows = {"question_id": [], "question": [], "answer": [], "image_source": [], "image": [],
            "category": []}
    for i in range(n):
        size = (20 + 7 * i % 13, 16 + 5 * i % 11)
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
            buffer, format="PNG")
        rows["question_id"].append(str(i + 1))
        rows["question"].append(f"Is there a {('dog', 'red car', 'person')[i % 3]} in the image?")
        rows["answer"].append("yes" if i % 3 else "no")
        rows["image_source"].append(f"COCO_val2014_{i:012d}")
        rows["image"].append({"bytes": buffer.getvalue(), "path": None})
        with open(os.path.join(os.path.dirname(path), f"{i}.png"), "wb") as f:
            f.write(buffer.getvalue())  # the same image, for the test's own interpreter
        rows["category"].append(("adversarial", "popular", "random")[i % 3])
    features = {k: {"dtype": "string", "_type": "Value"} for k in rows}
    features["image"] = {"_type": "Image"}
    # The Image feature's storage type; inferred from all-None paths it would be null.
    rows["image"] = pa.array(rows["image"], pa.struct([("bytes", pa.binary()),
                                                       ("path", pa.string())]))
    table = pa.table(rows).replace_schema_metadata(
        {"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(table, path)
    with open(os.path.join(os.path.dirname(path), "questions.json"), "w") as f:
        json.dump(rows["question"], f)


def write_task(tasks_dir: str, parquet: str) -> None:
    pope_yaml = os.path.join(os.path.dirname(lmms_eval.__file__), "tasks", "pope", "pope.yaml")
    os.makedirs(tasks_dir, exist_ok=True)
    with open(os.path.join(tasks_dir, f"{TASK}.yaml"), "w") as f:
        f.write(f"include: {pope_yaml}\ntask: {TASK}\ndataset_path: parquet\n"
                f"dataset_kwargs:\n  data_files:\n    test: {parquet}\n")


if __name__ == "__main__":
    out_dir, n = sys.argv[1], int(sys.argv[2])
    parquet = os.path.join(out_dir, "data", "test.parquet")
    write_dataset(parquet, n)
    write_task(os.path.join(out_dir, "tasks"), parquet)
