"""The end-to-end job on the embedded default: a local folder and simulated data.

So far: simulate a resume corpus and the three survey presets, write each in a different input
format, read each back with its reader, check nothing was lost, build the shared vocabulary
(surveys extend the resume vocabulary) and print a summary table. Later stages (sharding,
pretraining, fine-tuning, evaluation) join here as they land.
"""

from __future__ import annotations

import os

from cluster.report import console, print_rows
from cluster.synth_job import simulate_table, write_layout
from data_shards import storage
from data_shards.readers import read
from data_shards.summary import summarize
from data_shards.vocab import build_vocabulary, count_tokens, merge_counts

#: preset -> (layout written, reader format, file name)
DEMO_INPUTS = {
    "resumes": ("resume-jsonl", "resume-jsonl", "resumes.jsonl"),
    "nlsy79": ("career-code", "career-code", "nlsy79"),
    "nlsy97": ("parquet", "panel", "nlsy97.parquet"),
    "psid": ("csv", "panel", "psid.csv"),
}


def run_local(out: str, resume_people: int, survey_people: int, seed: int) -> list[dict]:
    os.makedirs(out, exist_ok=True) if "://" not in out else None
    rows, summaries, counts = [], [], {}
    for preset, (layout, fmt, name) in DEMO_INPUTS.items():
        people = resume_people if preset == "resumes" else survey_people
        table = simulate_table(preset, people, seed)
        url = storage.join(out, name)
        write_layout(table, url, layout)
        result = read(url, fmt)
        if result.report.people_accepted != table.num_rows:
            raise RuntimeError(
                f"{preset}: wrote {table.num_rows} people but read back {result.report.people_accepted}"
            )
        summary = summarize(result.table, result.report, result.quarantine)
        summaries.append({"preset": preset, "format": fmt, **summary})
        counts[preset] = count_tokens(result.table)
        shares = summary["non_employment_shares"]
        rows.append([
            preset, fmt, summary["people"], summary["job_years"], "-".join(map(str, summary["years_covered"])),
            summary["stay_share"], shares["unemployed"], shares["not_in_labor_force"], shares["education"],
            summarize(table)["oracle_perplexity"], summary["quarantined"],
        ])  # fmt: skip
    pretrain_vocab = build_vocabulary(counts["resumes"])
    pretrain_vocab.save(storage.join(out, "vocab.resumes.json"))
    survey_counts = merge_counts(counts[p] for p in ("nlsy79", "nlsy97", "psid"))
    survey_vocab = build_vocabulary(survey_counts, parent=pretrain_vocab)
    survey_vocab.save(storage.join(out, "vocab.surveys.json"))
    print_rows(
        "simulated corpora, written and read back",
        [
            "preset",
            "read as",
            "people",
            "job-years",
            "years",
            "stay",
            "unemp",
            "nilf",
            "school",
            "oracle ppl (simulated)",
            "quarantined",
        ],
        rows,
    )
    added = survey_vocab.size("job") - pretrain_vocab.size("job")
    console.print(
        f"vocabulary: {pretrain_vocab.size('job') - 3} job codes from resumes; the surveys' vocabulary extends it "
        f"(+{added} job tokens, parent {pretrain_vocab.hash[:12]}) -> {storage.redact(out)}"
    )
    return summaries
