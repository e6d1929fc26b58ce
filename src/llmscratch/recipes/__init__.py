"""Recipes: one short file per task (pretrain, classify, demo, ...), each a typed config and one `run` function.

The config dataclass is the only source of the task's command-line flags, `--config` file keys and defaults
(llmscratch.config); `run(cfg)` builds the model, the data and the Task and hands them to the Trainer
(llmscratch.train.trainer). The CLI (llmscratch.cli) only parses flags into the config and calls `run`.
See docs/recipes.md for how to add one.
"""
