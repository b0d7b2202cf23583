"""Model kinds: CAREER (career.py) and the paper's baselines, one pure nn.Module file each.

The registry is `trainer.models.registry` (`KINDS`, `build`, `config_from_dict`); the output they
all share is `trainer.models.output`; closed-form fitting (markov) is `trainer.closed_form`.
"""
