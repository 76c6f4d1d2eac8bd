#!/usr/bin/env python
"""How the model batches texts: batches of RSYNC_EMBED_BATCH texts by count alone (what
sentence-transformers does within one `encode` call, and what this project did before) against
batches also closed at RSYNC_EMBED_TOKEN_BUDGET padded tokens (what `SentenceTransformerEmbedder`
does now). Both sort the texts by length first.

The bundled model pads every text of a batch to the batch's longest and pays per padded token, so
the way texts are grouped decides how much work one text costs. The same stdlib docstrings
(template "{title}\\n\\n{body}") are embedded in groups of the sizes the pipeline hands the model:
a snapshot chunk (256 rows), a change-stream backlog (32) and a few rows at a time (8).

    .venv/bin/python bench/embed_batching.py             # 1,024 texts (~4 min on 2 cores)
    .venv/bin/python bench/embed_batching.py --quick     # 256 texts

Results: a table on stdout and JSON in bench/results/embed_batching.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "embed_batching.json"
GROUP_SIZES = (256, 32, 8)
BUDGETS = (0, 2048, 4096, 8192)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, help="texts to embed (default 1024; --quick 256)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, help=f"JSON path (default {DEFAULT_OUTPUT.relative_to(ROOT)})")
    args = parser.parse_args()
    count = args.texts or (256 if args.quick else 1024)
    output = args.output or (DEFAULT_OUTPUT.with_suffix(".quick.json") if args.quick else DEFAULT_OUTPUT)

    import django

    django.setup()
    import torch
    from django.conf import settings

    from datasources.embedders import DEFAULT_MODEL, get_embedder, length_batches
    from rsync_admin.corpus import rows

    embedder = get_embedder(DEFAULT_MODEL)
    model = embedder.model
    texts = [f"{row['title']}\n\n{row['body']}".strip() for row in rows(count)]
    lengths = [min(n, embedder.max_tokens) for n in embedder.tokenizer.token_counts(texts)]
    model.encode(texts[:64], batch_size=64)  # warm up
    results = []
    print(f"{count:,} stdlib docstrings, mean {sum(lengths) / len(lengths):.1f} tokens, "
          f"{sum(n >= embedder.max_tokens for n in lengths)} at the model's {embedder.max_tokens}-token limit; "
          f"torch threads {torch.get_num_threads()}", flush=True)
    print(f"{'group':>6} {'token budget':>13} {'texts/s':>9} {'padded tokens':>14} {'x plain':>8}", flush=True)
    for size in GROUP_SIZES:
        plain_rate = None
        for budget in BUDGETS:
            seconds, padded = 0.0, 0
            for start in range(0, count, size):
                group = list(range(start, min(start + size, count)))
                batches = length_batches([lengths[i] for i in group], max_batch=settings.RSYNC_EMBED_BATCH,
                                         token_budget=budget)
                calls = [[group[i] for i in batch] for batch in batches]
                padded += sum(len(call) * max(lengths[i] for i in call) for call in calls)
                call_texts = [[texts[i] for i in call] for call in calls]
                started = time.perf_counter()
                embedder.run_model(call_texts)
                seconds += time.perf_counter() - started
            rate = count / seconds
            plain_rate = plain_rate or rate
            results.append({"group_texts": size, "token_budget": budget, "texts_per_s": round(rate, 2),
                            "padded_tokens": padded, "speedup_vs_plain": round(rate / plain_rate, 3)})
            label = "plain" if budget == 0 else f"{budget:,}"
            print(f"{size:>6} {label:>13} {rate:>9.1f} {padded:>14,} {rate / plain_rate:>8.2f}", flush=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "benchmark": "embed_batching", "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "texts": count, "mean_tokens": round(sum(lengths) / len(lengths), 1), "max_batch": settings.RSYNC_EMBED_BATCH,
        "default_token_budget": settings.RSYNC_EMBED_TOKEN_BUDGET, "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "loadavg": os.getloadavg(),
        "note": "plain = token budget 0: texts sorted by length, batches of max_batch texts (as "
                "sentence-transformers batches within one encode call); padded tokens = sum over calls of "
                "texts x longest",
        "results": results,
    }, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
