"""clue-run's in-context scoring (`icl` head: the context once, its KV cache shared by every label)
against lm-evaluation-harness's Hugging Face backend (one full sequence per label), on the SAME
requests: FewCLUE tnews (15 labels) and eprstmt (2), k = 0 and 4.

The model is randomly initialised with the shape of a real small decoder (the Qwen2.5-0.5B config:
hidden 896, 14 heads, 2 KV heads, MLP 4864) but fewer layers and a character vocabulary built from
the data (no checkpoint can be downloaded here; speed does not depend on the weights). Both sides
get the same model object, the same tokenizer and the same (context, continuation) strings.
Reported: the largest log-likelihood difference, and the process CPU time of each side in this one
run (the machine is shared: CPU time, not wall time), as a dated file in bench/results/.

lm-eval must NOT be installed in the project's venv; run this with an interpreter that has it, e.g.
    python3 -m venv /work/venvs/lmeval && /work/venvs/lmeval/bin/pip install --no-deps lm-eval==0.4.13
    (a .pth file pointing at the project's site-packages gives it torch and transformers)
    PYTHONPATH=. CLUE_DATA_DIR=... OMP_NUM_THREADS=1 /work/venvs/lmeval/bin/python bench/lm_scoring.py
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from clue_runner.data.splits import load_split
from clue_runner.engine.evaluate import predict_logits
from clue_runner.features.incontext import Renderer, pack_requests
from clue_runner.heads.incontext import IclHead, IclParams
from clue_runner.models.backbone import Backbone
from clue_runner.tasks import get_task

QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
                  max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
TASKS = ("fewclue_tnews", "fewclue_eprstmt")


def char_tokenizer(data_dir: Path):
    """One token per character of the FewCLUE files (the same tokenizer for both harnesses)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = set()
    for path in sorted((data_dir / "fewclue").glob("*/*.json.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            chars.update(fh.read())
    vocab = {t: i for i, t in enumerate(["<|endoftext|>", "<unk>", *sorted(chars)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<unk>",
                                   pad_token="<|endoftext|>")


def model_of_shape(vocab: int, layers: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, num_hidden_layers=layers, bos_token_id=0, eos_token_id=0, **QWEN25_05B)
    return Qwen2ForCausalLM(config).eval()


def ours(model, tokenizer, requests, batch_size: int) -> tuple[np.ndarray, float]:
    """[n, C] log-likelihoods as the icl head computes them in a run (its length-bucketed eval batches)."""
    head = IclHead(Backbone(model, "causal_lm"), get_task(TASKS[0]), IclParams()).eval()
    enc = pack_requests(requests, np.zeros(len(requests), dtype=np.int64))
    start = time.process_time()
    scores, _ = predict_logits(head, enc, batch_size, tokenizer.pad_token_id, torch.device("cpu"), None)
    return scores, time.process_time() - start


def lm_eval_side(model, tokenizer, requests, batch_size: int) -> tuple[list[list[float]], float]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device="cpu")
    flat = [(i, j, r.text, a) for i, r in enumerate(requests) for j, a in enumerate(r.answers)]
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=(ctx, cont), idx=n)
                 for n, (_, _, ctx, cont) in enumerate(flat)]
    start = time.process_time()
    results = lm.loglikelihood(instances, disable_tqdm=True)
    seconds = time.process_time() - start
    out = [[0.0] * len(r.answers) for r in requests]
    for (i, j, _, _), (ll, _) in zip(flat, results):
        out[i][j] = ll
    return out, seconds


def requests_for(task_name: str, tokenizer, k: int, n: int, data_dir: Path, max_length: int):
    task = get_task(task_name)
    head_words = list(task.lm_words().values())
    renderer = Renderer(task.lm.template(), head_words, task.lm.separator, k=k, seed=0)
    dev = load_split(task, "dev", data_dir=str(data_dir), limit=n).examples
    pool = load_split(task, "train", data_dir=str(data_dir)).examples if k else []
    return [renderer.request(tokenizer, ex, i, pool, max_length) for i, ex in enumerate(dev)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("CLUE_DATA_DIR", "../shared/data"))
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--examples", type=int, default=48, help="dev examples per task and k")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data_dir = Path(args.data_dir)
    tokenizer = char_tokenizer(data_dir)
    model = model_of_shape(len(tokenizer), args.layers)
    rows = []
    for task_name in TASKS:
        for k in (0, 4):
            requests = requests_for(task_name, tokenizer, k, args.examples, data_dir, args.max_length)
            ours(model, tokenizer, requests[:4], args.batch_size)  # warm-up: first-call allocations count for neither
            lm_eval_side(model, tokenizer, requests[:4], args.batch_size)
            mine, my_cpu = ours(model, tokenizer, requests, args.batch_size)
            theirs, their_cpu = lm_eval_side(model, tokenizer, requests, args.batch_size)
            diff = max(abs(mine[i, j] - theirs[i][j]) for i, r in enumerate(requests) for j in range(len(r.answers)))
            same = all(int(np.argmax(mine[i, : len(r.answers)])) == int(np.argmax(theirs[i]))
                       for i, r in enumerate(requests))
            rows.append({"task": task_name, "k": k, "examples": len(requests), "labels": len(requests[0].answers),
                         "context_tokens_mean": round(float(np.mean([len(r.context) for r in requests])), 1),
                         "max_abs_ll_diff": float(diff), "same_predictions": same,
                         "clue_run_cpu_s": round(my_cpu, 2), "lm_eval_cpu_s": round(their_cpu, 2),
                         "speedup": round(their_cpu / max(my_cpu, 1e-9), 2)})
            print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    write(rows, args)


def write(rows: list[dict], args) -> None:
    import lm_eval
    import transformers

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
    out = Path(__file__).resolve().parent / "results" / f"lm_scoring-{stamp}.md"
    lines = [f"# In-context scoring: clue-run vs lm-evaluation-harness {lm_eval.__version__} (HF backend)", "",
             f"{datetime.now(timezone.utc):%Y-%m-%d}, CPU, 1 thread, process CPU time of each side in one run "
             "(after an untimed warm-up call of each on 4 requests). "
             f"Model: random Qwen2 with the Qwen2.5-0.5B shape (hidden 896, 14/2 heads, MLP 4864), {args.layers} layers, "
             f"character vocabulary from the FewCLUE files (same tokenizer, model and request strings for both); "
             f"batch size {args.batch_size}; first {args.examples} dev examples (few_all); demonstrations from "
             f"train few_all, seed 0; transformers {transformers.__version__}, torch {torch.__version__}.", "",
             "| task | k | examples × labels | context tokens (mean) | max abs Δ log-lik | same predictions | clue-run CPU s | lm-eval CPU s | speed-up |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['k']} | {r['examples']} × {r['labels']} | {r['context_tokens_mean']} | "
                     f"{r['max_abs_ll_diff']:.2e} | {r['same_predictions']} | {r['clue_run_cpu_s']} | "
                     f"{r['lm_eval_cpu_s']} | {r['speedup']}× |")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"→ {out}")


if __name__ == "__main__":
    main()
