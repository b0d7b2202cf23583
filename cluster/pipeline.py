"""The end-to-end job on the embedded default: a local Ray instance, a local folder, simulated data.

So far:
1. simulate a resume corpus and the three survey designs, and write each in a different input
   format (resume JSON Lines, a career-code folder, a Parquet panel, a CSV panel);
2. read each back with its reader and check that nothing was lost;
3. shard each with the Ray sharding job into `OUT/datasets/NAME/` (the surveys extend the
   resume vocabulary, as fine-tuning data must);
4. stream each dataset's validation split through the loader;
5. pretrain a small CAREER model on the resumes (DeepSpeed ZeRO-1 on 2 Ray Train workers) and
   fine-tune it on NLSY79, against the oracle and an order-1 Markov model;
and print what happened. Evaluation reports join here as they land.
"""

from __future__ import annotations

import json
import os

from cluster.ray_session import connect_ray
from cluster.report import console, print_rows
from cluster.synth_job import simulate_table, write_layout
from data_shards import storage
from data_shards.inputs import InputSpec
from data_shards.readers import read
from data_shards.shard import ShardConfig, shard_dataset
from data_shards.stream import CareerLoader, StreamConfig
from data_shards.summary import summarize
from data_shards.writers import LAYOUTS

#: preset -> (layout written, file name); each is read back with its layout's reader format
DEMO_INPUTS = {
    "resumes": ("resume-jsonl", "resumes.jsonl"),
    "nlsy79": ("career-code", "nlsy79"),
    "nlsy97": ("parquet", "nlsy97.parquet"),
    "psid": ("csv", "psid.csv"),
}


def run_local(
    out: str,
    resume_people: int,
    survey_people: int,
    seed: int,
    num_cpus: int | None = None,
    train_updates: int = 60,
    ray_address: str | None = None,
) -> dict:
    out = storage.absolute(out)  # Ray Train workers run in another working directory
    if "://" not in out:
        os.makedirs(out, exist_ok=True)
    inputs_url = storage.join(out, "inputs")
    datasets_url = storage.join(out, "datasets")
    read_rows, shard_rows, summaries = [], [], {}
    connect_ray(ray_address, num_cpus)
    parent_vocab = None
    for preset, (layout, name) in DEMO_INPUTS.items():
        fmt = LAYOUTS[layout].reads_as
        people = resume_people if preset == "resumes" else survey_people
        table = simulate_table(preset, people, seed)
        url = storage.join(inputs_url, name)
        write_layout(table, url, layout)
        result = read(url, fmt)
        if result.report.people_accepted != table.num_rows:
            raise RuntimeError(
                f"{preset}: wrote {table.num_rows} people but read back {result.report.people_accepted}"
            )
        summary = summarize(result.table, result.report, result.quarantine)
        shares = summary["non_employment_shares"]
        read_rows.append([
            preset, fmt, summary["people"], summary["job_years"], "-".join(map(str, summary["years_covered"])),
            summary["stay_share"], shares["unemployed"], shares["not_in_labor_force"], shares["education"],
            summarize(table)["oracle_perplexity"], summary["quarantined"],
        ])  # fmt: skip

        # Small blocks: the demo's small surveys still give every training worker data.
        config = ShardConfig(people_per_block=128, blocks_per_shard=16)
        sharded = shard_dataset(
            InputSpec(format=fmt, url=url), datasets_url, preset, config, parent_vocab
        )
        if preset == "resumes":
            parent_vocab = storage.join(sharded.dataset_url, "vocab.json")
        manifest = sharded.manifest
        loader = CareerLoader(
            sharded.dataset_url,
            StreamConfig(split="valid", loop=False, shuffle=False),
            num_workers=0,
        )
        batches = tokens = 0
        for batch in loader:
            batches += 1
            tokens += int(batch["lengths"].sum())
        shard_rows.append([
            preset, manifest.totals["people_written"], manifest.totals["people_quarantined"], manifest.totals["tokens"],
            manifest.totals["shards"], manifest.extra["bytes_per_token"], batches, tokens, round(loader.padding_share, 3),
            "extends resumes" if manifest.parent_hash else "new",
        ])  # fmt: skip
        summaries[preset] = {"read": summary, "manifest": manifest.totals}

    print_rows(
        "1-2. simulated corpora, written in four input formats and read back",
        ["preset", "read as", "people", "job-years", "years", "stay", "unemp", "nilf", "school",
         "oracle ppl (simulated)", "quarantined"],
        read_rows,
    )  # fmt: skip
    print_rows(
        f"3-4. sharded with Ray into {storage.redact(datasets_url)} and streamed (valid split)",
        ["dataset", "people", "quarantined", "job-years", "shards", "bytes/token", "valid batches",
         "valid job-years", "padding", "vocabulary"],
        shard_rows,
    )  # fmt: skip
    console.print(
        f"datasets ready for training: {', '.join(storage.join(datasets_url, p) for p in DEMO_INPUTS)}"
    )
    if train_updates:
        summaries["training"] = _train_demo(out, datasets_url, train_updates)
    return summaries


def _train_demo(out: str, datasets_url: str, updates: int) -> dict:
    """Pretrain on the resumes, fine-tune on NLSY79, compare with Markov and the oracle."""
    import pyarrow as pa

    from data_shards.manifest import load_manifest
    from eval.markov import fit_markov
    from trainer.config import make_config
    from trainer.launch import ray_train

    runs = storage.join(out, "runs")
    resumes, nlsy79 = storage.join(datasets_url, "resumes"), storage.join(datasets_url, "nlsy79")
    settings = dict(
        updates=updates, tokens_per_update=8000, zero_stage=1, eval_every=max(updates // 2, 1)
    )
    overrides = ["loader_workers=0", "cpu_threads=1"]
    ray_train(
        make_config("pretrain", "small", overrides, **settings),
        resumes,
        storage.join(runs, "pretrain"),
    )
    ray_train(make_config("finetune", "small", overrides, **settings), nlsy79, storage.join(runs, "finetune"),
              base=storage.join(runs, "pretrain", "package"))  # fmt: skip
    pre = json.loads(storage.read_text(storage.join(runs, "pretrain", "metrics.json")))
    fine = json.loads(storage.read_text(storage.join(runs, "finetune", "metrics.json")))
    survey = read(storage.join(out, "inputs", "nlsy79"), "career-code").table
    split = survey.column("split").to_numpy(zero_copy_only=False)
    markov = fit_markov(
        survey.filter(pa.array(split == "train")), survey.filter(pa.array(split == "valid"))
    )
    markov_valid = markov.perplexity(survey.filter(pa.array(split == "valid")))
    oracle = (load_manifest(nlsy79).oracle_perplexity or {}).get("valid")
    print_rows(
        "5. CAREER (small) pretrained on resumes, fine-tuned on NLSY79: validation perplexity",
        ["model", "data", "updates", "tokens seen", "valid ppl", "NLSY79 Markov", "NLSY79 oracle"],
        [["pretrained", "resumes", pre["updates"], int(pre["tokens_seen"]), pre["best_valid_perplexity"], None, None],
         ["fine-tuned", "nlsy79", fine["updates"], int(fine["tokens_seen"]), fine["best_valid_perplexity"],
          markov_valid, oracle]],
    )  # fmt: skip
    packages = ", ".join(storage.join(runs, r, "package") for r in ("pretrain", "finetune"))
    console.print(f"model packages: {packages}")
    return {
        "pretrain": pre["best_valid_perplexity"],
        "finetune": fine["best_valid_perplexity"],
        "markov": markov_valid,
    }
