"""The Ray sharding job: input -> validated records -> vocabulary -> webdataset shards + manifest.

One module per job of the job:

    config.py   `ShardConfig` (how a dataset is cut; part of its identity), `ShardResult`,
                `code_version`
    job.py      `shard_dataset`: the driver, both Ray passes and the order of their steps
    plan.py     pass 1 (`read_and_split`, one task per input block) and the driver's plan
                between the passes (vocabulary, duplicate ids, shards)
    write.py    pass 2 for one shard: encode + tar + sha256 + atomic write (no Ray)
    commit.py   the staging folder (reuse after a killed run) and the commit: quarantine.jsonl,
                vocab.json, then manifest.json (the commit marker)

The job assumes Ray is initialised (`cluster.ray_session.connect_ray` is the one place that
starts or joins it); importing this package does not import Ray.
"""

from data_shards.shard.commit import Commit, commit
from data_shards.shard.config import Progress, ShardConfig, ShardResult, code_version
from data_shards.shard.job import shard_dataset
from data_shards.shard.plan import (
    BlockSummary,
    DatasetPlan,
    find_duplicates,
    plan_dataset,
    plan_shards,
    read_and_split,
)
from data_shards.shard.write import Segment, ShardOutput, ShardTask, build_shard, write_shard

__all__ = [
    "BlockSummary",
    "Commit",
    "DatasetPlan",
    "Progress",
    "Segment",
    "ShardConfig",
    "ShardOutput",
    "ShardResult",
    "ShardTask",
    "build_shard",
    "code_version",
    "commit",
    "find_duplicates",
    "plan_dataset",
    "plan_shards",
    "read_and_split",
    "shard_dataset",
    "write_shard",
]
